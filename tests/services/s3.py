"""moto's S3 server in a child process on 127.0.0.1, over TLS, holding a public bucket.

earth2studio's ``GFS`` reads ``s3://noaa-gfs-bdp-pds`` through obstore with unsigned
requests. obstore takes the endpoint from ``AWS_ENDPOINT_URL_S3`` (path-style once an
endpoint is set) but, since earth2studio passes explicit client options, not
``AWS_ALLOW_HTTP``: hence TLS, with a throwaway certificate clients trust through
``SSL_CERT_FILE``.

The server runs in its own process group (moto is not thread-safe enough to share the
test process, and a child is out of reach of pytest-socket's patching), picks its own
free port and reports it on stdout, so there is no race for a port.

Run as a script, this module is that child: ``python s3.py --cert C --key K``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The bucket earth2studio's GFS source reads.
BUCKET = "noaa-gfs-bdp-pds"
#: Seconds to wait for the child to report its port.
START_TIMEOUT = 60.0
#: Anyone may read the bucket's objects (earth2studio's requests are unsigned).
PUBLIC_READ = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "PublicRead",
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
        }
    ],
}


class S3Server:
    """A running moto S3 server (see the module docstring).

    Parameters
    ----------
    cert, key : Path
        PEM certificate and key the server presents (see :mod:`services.tls`).
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # The child never needs credentials or a proxy; keep the caller's out of it.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # noqa: S105 - moto's dummy credentials
        }
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--cert", str(cert), "--key", str(key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.pgid = self.process.pid
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise
        self.url = f"https://127.0.0.1:{self.port}"
        self._client: Any = None

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.5):
                    line = self.process.stdout.readline()
                    if line.startswith("PORT "):
                        return int(line.split()[1])
                    if not line:
                        break
                if self.process.poll() is not None:
                    break
        raise RuntimeError(f"moto's S3 server did not start (exit code {self.process.poll()})")

    @property
    def client(self) -> Any:
        """A boto3 S3 client for setting the server up (signed, trusting the certificate)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
                verify=str(self.cert),
                config=Config(s3={"addressing_style": "path"}, proxies={}),
            )
        return self._client

    def create_public_bucket(self, bucket: str = BUCKET) -> None:
        """Create ``bucket`` with a public-read policy."""
        self.client.create_bucket(Bucket=bucket)
        policy = {
            **PUBLIC_READ,
            "Statement": [
                {
                    **PUBLIC_READ["Statement"][0],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        self.client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def put(self, key: str, data: bytes | str, bucket: str = BUCKET) -> None:
        """Store an object."""
        body = data.encode() if isinstance(data, str) else data
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def delete(self, key: str, bucket: str = BUCKET) -> None:
        """Remove an object."""
        self.client.delete_object(Bucket=bucket, Key=key)

    def keys(self, bucket: str = BUCKET) -> list[str]:
        """Every key in ``bucket``."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        """Stop the server and everything in its process group, and wait for them.

        Raises
        ------
        RuntimeError
            If a process of the group is still there afterwards.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        stop_process_group(self.process, self.pgid)


def stop_process_group(process: subprocess.Popen[Any], pgid: int, grace: float = 10.0) -> None:
    """SIGTERM a child's process group, SIGKILL it after ``grace`` s, and check it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(pgid):
            break
    if process.stdout is not None:
        process.stdout.close()
    if _group_alive(pgid):
        raise RuntimeError(f"process group {pgid} outlived SIGKILL")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts for killpg: reap it, then ask again.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


@contextmanager
def running(cert: Path, key: Path) -> Iterator[S3Server]:
    """An :class:`S3Server` for the duration of the block, with the GFS bucket created."""
    server = S3Server(cert, key)
    try:
        server.create_public_bucket()
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """The child: serve moto's S3 on 127.0.0.1 (a free port, printed) until SIGTERM."""
    import argparse

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        # Nothing to flush (moto keeps everything in memory), and a graceful close would
        # wait for the clients' keep-alive connections to end.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1",
        0,
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
        ssl_context=(args.cert, args.key),
    )
    print(f"PORT {server.port}", flush=True)  # noqa: T201 - the parent reads it
    server.serve_forever()


if __name__ == "__main__":
    main()
