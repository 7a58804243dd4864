"""Loopback stand-ins for the services a run downloads from, for tests of the real clients.

- :mod:`services.grib`: GFS-like GRIB2 files and their NOAA ``.idx`` indexes, encoded by hand.
- :mod:`services.tls`: a throwaway self-signed server certificate for 127.0.0.1.
- :mod:`services.s3`: moto's S3 server in a child process, holding the ``noaa-gfs-bdp-pds``
  bucket.
- :mod:`services.ngc`: the NGC model registry's file API, serving a model package zip.
- :mod:`services.hf`: the Hugging Face Hub's API (revision, tree, resolve), serving a model
  repository's files at one commit.
- :mod:`services.faults`: an HTTPS proxy in front of the S3 server that injects faults.

Every server binds to 127.0.0.1 only, starts and stops inside a fixture, and leaves no
process or thread behind.
"""
