"""The only place that loads CorrDiff, picks the device and sets precision.

Loading goes through earth2studio's own ``CorrDiffTaiwan.load_model``. What it gets
wrong, and what we do instead:

* ``load_model`` extracts ``corrdiff_inference_package.zip`` next to the zip on *every*
  load: it pays the unzip each time and fails in a read-only directory (a shared model
  directory on a cluster, a read-only container volume). We extract once into a cache
  directory keyed by the zip's path, size and modification time, and hand ``load_model``
  a directory holding the extracted folder and an *empty* stub zip, so its own
  ``extractall`` has nothing to do.
* ``load_model`` sets ``use_fp16=True``, which stores the weights in half precision. On
  CUDA/ROCm that is the published setting; on a CPU the wrappers never cast inputs to
  half, so every call re-casts all weights and computes in float32 anyway. On CPU we
  switch the weights back to float32 once (exact: every float16 is a float32).
* physicsnemo's inference-mode ``GroupNorm`` allocates four activation-sized temporaries
  per layer; ``speed.use_inplace_group_norm`` gives it the same arithmetic with one
  (bitwise equal, about a third of a CPU call was spent there).
* ``load_model`` converts the networks to ``channels_last``: right for GPUs, slower on a
  CPU, where we convert them back (``speed.prefer_layout``).
* physicsnemo's ``from_checkpoint`` builds each network with random weights, then loads
  the checkpoint over every one of them. At the published width that is 160 M random
  draws thrown away: about a second of a two-second load on 2 cores. The layers get
  zeros instead while we load (:func:`weights_from_checkpoint_only`); the load is strict,
  so a parameter the checkpoint lacks is an error either way, never a zero.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.speed import prefer_layout, use_inplace_group_norm

if TYPE_CHECKING:
    import torch
    from earth2studio.models.dx import CorrDiffTaiwan

    from corrdiff_tools.models.declaration import Declaration

logger = logging.getLogger(__name__)

#: The published package on NVIDIA's NGC registry (needs the internet).
DEFAULT_PACKAGE = "ngc://models/nvidia/modulus/corrdiff_inference_package@1"
PACKAGE_ZIP = "corrdiff_inference_package.zip"
PACKAGE_DIR = "corrdiff_inference_package"
CHECKPOINTS = ("checkpoints/regression.mdlus", "checkpoints/diffusion.mdlus")
DATASET = "dataset/2023-01-24-cwb-4years_5times.zarr"
#: Size of a zip with no entries (just the end-of-central-directory record).
EMPTY_ZIP_BYTES = 22
#: Most a package may expand to. The published one is about 650 MB zipped and barely
#: compresses (float weights); a zip that claims more is refused before anything is written.
MAX_EXTRACTED_BYTES = 8 * 2**30
MAX_COMPRESSION_RATIO = 20

#: The classes a CorrDiff package's checkpoints may name. physicsnemo's ``from_checkpoint``
#: imports whatever ``__module__`` a checkpoint's ``args.json`` names and instantiates its
#: ``__name__``: a package is code. We read args.json first and refuse anything else.
ALLOWED_CLASSES = {
    "regression": {"UNet", "CorrDiffRegressionUNet"},
    "diffusion": {"EDMPrecondSR", "EDMPrecondSuperResolution"},
}
#: Classes a checkpoint may nest (the wrapped backbone), and the modules all may come from.
ALLOWED_NESTED = {"SongUNet", "SongUNetPosEmbd", "SongUNetPosLtEmbd", "DhariwalUNet"}
ALLOWED_MODULES = (
    "modulus.models.diffusion",
    "physicsnemo.models.diffusion",
    "physicsnemo.models.diffusion_unets",
    "physicsnemo.diffusion.preconditioners",
)


def cache_root() -> Path:
    """Root of our caches: ``$CORRDIFF_TOOLS_CACHE``, else under earth2studio's model cache."""
    explicit = os.environ.get("CORRDIFF_TOOLS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    from corrdiff_tools.network import earth2studio_cache

    return earth2studio_cache("model") / "corrdiff_tools"


def is_remote(spec: str) -> bool:
    """Whether a package spec is a URL (ngc://, s3://, https://, ...) rather than a path."""
    return "://" in spec and not spec.startswith("file://")


def check_package_spec(spec: str) -> None:
    """Validate ``--model-package`` without loading anything.

    Raises
    ------
    UsageError
        If a local path does not hold the zip or its extracted folder.
    """
    if is_remote(spec):
        return
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.exists():
        raise UsageError(
            f"--model-package {spec} does not exist: give a directory holding {PACKAGE_ZIP} "
            f"or its extracted {PACKAGE_DIR}/ folder"
        )
    if path.is_file() and path.suffix != ".zip":
        raise UsageError(f"--model-package {spec} is a file but not a zip: give the {PACKAGE_ZIP}")
    folder = path / PACKAGE_DIR
    if path.is_dir() and not (path / PACKAGE_ZIP).is_file() and folder.is_dir():
        missing = _missing_files(folder)
        if missing:
            raise UsageError(f"--model-package {spec}: {PACKAGE_DIR}/{missing[0]} is missing")
    if path.is_dir() and not (path / PACKAGE_ZIP).is_file() and not _extracted_root(path):
        raise UsageError(
            f"--model-package {spec} holds neither {PACKAGE_ZIP} nor an extracted {PACKAGE_DIR}/ "
            f"with {CHECKPOINTS[0]}: point it at the directory you downloaded the package to"
        )


def _missing_files(folder: Path) -> list[str]:
    """Files of the package layout that ``folder`` (an extracted package) lacks."""
    return [name for name in (*CHECKPOINTS, DATASET) if not (folder / name).exists()]


def _extracted_root(path: Path) -> Path | None:
    """The extracted package folder under (or at) ``path``, if there is one."""
    for candidate in (path / PACKAGE_DIR, path):
        if all((candidate / c).is_file() for c in CHECKPOINTS):
            return candidate
    return None


def _zip_supersedes(directory: Path, extracted: Path) -> bool:
    """Whether ``directory`` holds a real package zip newer than its extracted folder.

    An extracted folder is used in place (no copy, no unzip) unless a non-empty zip beside
    it is newer. This covers a folder the user unzipped, one earth2studio unzipped next to
    its download, and this tool's own cache directories, whose zip is an empty stub.
    """
    archive = directory / PACKAGE_ZIP
    if not archive.is_file() or archive.stat().st_size <= EMPTY_ZIP_BYTES:
        return False
    newest = max((extracted / c).stat().st_mtime for c in CHECKPOINTS)
    return archive.stat().st_mtime > newest


def cache_key(path: Path) -> str:
    """A cache folder's name for a file: its resolved path, size and modification time."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_stub_zip(directory: Path) -> None:
    """An empty zip: ``load_model``'s ``extractall`` then extracts nothing."""
    with zipfile.ZipFile(directory / PACKAGE_ZIP, "w"):
        pass


def package_identity(spec: str) -> dict[str, Any]:
    """What identifies a model package for ``--resume``: the URL, or path + content digest.

    A local package is fingerprinted by the SHA-256 of its checkpoints and grid and
    normalisation files, whatever its form: the zip NGC ships and the folder it unzips to
    give the same digest (the zip's members are hashed), so weights replaced behind the
    same path are noticed, and the same package moved, spelled differently or unzipped
    is recognised. ``same_as`` lists the digests earlier versions recorded for the same
    content (the whole zip's), which ``--resume`` also accepts.
    """
    if is_remote(spec):
        return {"url": spec}
    path = Path(spec.removeprefix("file://")).expanduser().resolve()
    root = _extracted_root(path) if path.is_dir() else None
    if root is not None and not _zip_supersedes(path, root):
        # Sorted by the name relative to the package, as a zip's members are: both forms
        # hash alike (zip_member_sha256s).
        dataset = sorted(
            (p for p in (root / DATASET).rglob("*") if p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        files = {
            f.relative_to(root).as_posix(): f for f in (*(root / c for c in CHECKPOINTS), *dataset)
        }
        digests = file_sha256s(list(files.values()))
        return {"path": str(path), "sha256": _combined(zip(files, digests, strict=True))}
    archive = path if path.is_file() else path / PACKAGE_ZIP
    whole = file_sha256s([archive])[0]
    legacy = _combined([(PACKAGE_ZIP, whole)])
    try:
        members = zip_member_sha256s(archive, whole)
    except (OSError, zipfile.BadZipFile):
        members = None  # not a readable zip: prepare_package says so, in one line
    canonical = _combined(members) if members else legacy
    return {"path": str(path), "sha256": canonical, "same_as": [legacy]}


def folder_identity(folder: Path, files: Sequence[Path]) -> dict[str, Any]:
    """Path and content digest of a package folder made of ``files`` (a generic package).

    The digest covers each file's name and content, in the order given, as
    :func:`package_identity` does for Taiwan's package.
    """
    digests = file_sha256s(list(files))
    named = zip([f.name for f in files], digests, strict=True)
    return {"path": str(folder.expanduser().resolve()), "sha256": _combined(named)}


def _combined(named: Any) -> str:
    """One SHA-256 over (name, digest) pairs, in order."""
    digest = hashlib.sha256()
    for name, value in named:
        digest.update(name.encode())
        digest.update(bytes.fromhex(value))
    return digest.hexdigest()


def zip_member_sha256s(archive: Path, archive_digest: str) -> list[tuple[str, str]]:
    """(name in the package folder, SHA-256) of a package zip's checkpoints and dataset.

    The names are relative to ``corrdiff_inference_package/``, as an extracted folder's
    files are, in the same order (checkpoints, then the dataset's files sorted), so both
    forms hash alike. Remembered by the zip's own digest in the same index as
    :func:`file_sha256s`: the published package's 650 MB are read once.
    """
    import json

    index = cache_root() / "digests.json"
    key = f"zip-members|{archive_digest}"
    try:
        known = json.loads(index.read_text())
        cached = known.get(key) if isinstance(known, dict) else None
    except (OSError, ValueError):
        known, cached = {}, None
    if isinstance(cached, list) and all(isinstance(pair, list) for pair in cached):
        return [(str(name), str(value)) for name, value in cached]
    prefix = f"{PACKAGE_DIR}/"
    with zipfile.ZipFile(archive) as opened:
        names = [info.filename for info in opened.infolist() if not info.is_dir()]
        checkpoints = [f"{prefix}{c}" for c in CHECKPOINTS if f"{prefix}{c}" in names]
        dataset = sorted(n for n in names if n.startswith(f"{prefix}{DATASET}/"))
        pairs = []
        for name in (*checkpoints, *dataset):
            digest = hashlib.sha256()
            with opened.open(name) as handle:
                while block := handle.read(2**20):
                    digest.update(block)
            pairs.append((name.removeprefix(prefix), digest.hexdigest()))
    known = known if isinstance(known, dict) else {}
    known[key] = [list(pair) for pair in pairs]
    with contextlib.suppress(OSError):  # best effort, as for file_sha256s
        index.parent.mkdir(parents=True, exist_ok=True)
        staging = index.with_name(f".{index.name}.{os.getpid()}")
        staging.write_text(json.dumps(known))
        staging.replace(index)
    return pairs


def file_sha256(path: Path) -> str:
    """SHA-256 of one file (see :func:`file_sha256s`)."""
    return file_sha256s([path])[0]


def file_sha256s(paths: Sequence[Path]) -> list[str]:
    """SHA-256 of each file, computed once per version of the file.

    Remembered under :func:`cache_root` by path, size, inode and modification time (as
    git's index does), so the published package's 650 MB of checkpoints are not hashed
    again on every run (0.5 s for 680 MB on 2 cores with the page cache warm, more from
    disk). A file rewritten in place gets a new modification time, and so a new digest.
    The index is read once and written at most once per call.
    """
    import json

    index = cache_root() / "digests.json"
    try:
        known = json.loads(index.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    digests = []
    changed = False
    for path in paths:
        stat = path.stat()
        where = f"{path.resolve()}|"
        key = f"{where}{stat.st_size}|{stat.st_ino}|{stat.st_mtime_ns}"
        value = known.get(key)
        if not (isinstance(value, str) and len(value) == 64):
            with path.open("rb") as handle:
                value = hashlib.file_digest(handle, "sha256").hexdigest()
            known = {k: v for k, v in known.items() if not k.startswith(where)}
            known[key] = value
            changed = True
        digests.append(value)
    if changed:
        try:  # best effort: a read-only cache only means hashing again next time
            index.parent.mkdir(parents=True, exist_ok=True)
            staging = index.with_name(f".{index.name}.{os.getpid()}")
            staging.write_text(json.dumps(known))
            staging.replace(index)
        except OSError:
            pass
    return digests


def resolve_zip(spec: str) -> Path:
    """Local path of the package zip, downloading it (via earth2studio) if remote."""
    if not is_remote(spec):
        path = Path(spec.removeprefix("file://")).expanduser()
        return path if path.is_file() else path / PACKAGE_ZIP
    from earth2studio.models.auto import Package

    import_corrdiff_alone()
    from earth2studio.models.dx.corrdiff import CorrDiffTaiwan

    if spec == DEFAULT_PACKAGE:
        package = CorrDiffTaiwan.load_default_package()
    else:
        package = Package(spec, cache_options={"same_names": True})
    logger.info(
        "fetching the model package %s into %s (downloaded once, then read from there)",
        spec,
        package.cache,
    )
    try:
        return Path(package.resolve(PACKAGE_ZIP))
    except Exception as err:  # noqa: BLE001 - fsspec/ngc raise many types when offline
        from corrdiff_tools import network
        from corrdiff_tools.sources import OFFLINE_HINT

        forget_download(package)

        why = network.unreachable_reason(err) or network.summarise(err)
        raise RunError(
            f"could not download the model package {spec} ({why}): {OFFLINE_HINT}"
        ) from err


def forget_download(package: Any) -> None:
    """Drop a package download that broke off, so the next attempt starts afresh.

    fsspec's whole-file cache records a file as complete *before* downloading it and
    writes that record to disk only afterwards: a download cut short leaves the cut file
    behind, and, in this process, an in-memory record that says it is whole (its
    filesystem instances are cached), so a second run in the same process would read the
    cut zip. Both go; the on-disk record never listed it.
    """
    with contextlib.suppress(Exception):
        type(package.fs).clear_instance_cache()
    with contextlib.suppress(OSError, TypeError):
        (Path(package.cache) / PACKAGE_ZIP).unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on ``path`` (created if need be).

    Around a package's download or extraction: torchrun's ranks and parallel runs wait
    for the first process to finish and then find its result, instead of each doing the
    work again. Where the filesystem cannot ``flock`` every process goes ahead, and the
    staging-and-rename in :func:`extract_once` still leaves one whole copy.
    """
    import fcntl

    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readable and writable by all (less the umask): a cache shared by a group, or
        # another user's lock file, must not stop a run. A read-only descriptor can
        # hold a flock too.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
    try:
        if fd is None:
            logger.debug("cannot open the lock %s: going ahead unlocked", path)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                logger.debug("no flock on %s (%s): going ahead unlocked", path, err)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def extract_once(
    zip_path: Path,
    target: Path,
    complete: Callable[[Path], bool],
    finish: Callable[[Path], None],
    shown: str,
    downloaded_from: str | None = None,
) -> None:
    """Extract ``zip_path`` into ``target`` unless a ``complete`` extraction is there.

    The zip is unpacked into a staging folder beside ``target`` (bounded, see
    :func:`_extract_bounded`), ``finish`` checks and completes it (raising
    :class:`UsageError` for a zip that is not a package), and it is renamed into place:
    a reader never sees half a package.

    Raises
    ------
    UsageError
        For a damaged zip the user gave (``shown``: the option and value).
    RunError
        For a damaged zip ``downloaded_from`` an address, which is removed from the
        cache first: left there, it would fail every run.
    """
    try:
        _extract_once(zip_path, target, complete, finish, shown.split(" ", 1)[0])
    except zipfile.BadZipFile as err:
        if downloaded_from is not None:
            zip_path.unlink(missing_ok=True)
            raise RunError(
                f"the model package downloaded from {downloaded_from} is damaged ({err}); it "
                f"was removed from the cache ({zip_path.parent}): run again to download it anew"
            ) from None
        raise UsageError(f"{shown} is not a valid zip file ({err})") from None


def _extract_once(
    zip_path: Path,
    target: Path,
    complete: Callable[[Path], bool],
    finish: Callable[[Path], None],
    flag: str,
) -> None:
    if complete(target):  # the usual case: nothing to lock (a read-only cache too)
        logger.debug("model package already extracted in %s", target)
        return
    with exclusive(target.parent / f".{target.name}.lock"):
        if complete(target):  # extracted by the process this one waited for
            return
        logger.info("extracting %s into %s (once)", zip_path, target)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
        try:
            started = time.perf_counter()
            with zipfile.ZipFile(zip_path) as archive:
                _extract_bounded(archive, zip_path, staging, flag)
            logger.info("extracted in %.1f s", time.perf_counter() - started)
            finish(staging)
            if target.exists():
                # Another process (where there is no flock) finished first: never pull a
                # directory out from under a reader; keep theirs and drop ours.
                if complete(target):
                    return
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _extract_bounded(
    archive: zipfile.ZipFile, zip_path: Path, target: Path, flag: str = "--model-package"
) -> None:
    """Extract a package zip, refusing one that would expand beyond reason (a zip bomb).

    The declared sizes are checked before anything is written, and each member is copied
    with a budget of its declared size, so a zip that lies about its sizes stops there.
    """
    members = archive.infolist()
    declared = sum(member.file_size for member in members)
    limit = min(MAX_EXTRACTED_BYTES, MAX_COMPRESSION_RATIO * zip_path.stat().st_size + 2**26)
    if declared > limit:
        raise UsageError(
            f"{flag} {zip_path} would expand to {declared / 2**30:.1f} GiB from "
            f"{zip_path.stat().st_size / 2**20:.0f} MiB (more than {limit / 2**30:.1f} GiB): "
            "this is not a CorrDiff package"
        )
    root = target.resolve()
    for member in members:
        destination = (target / member.filename).resolve()
        if not destination.is_relative_to(root):
            raise UsageError(f"{flag} {zip_path}: {member.filename} points outside it")
        if member.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source, destination.open("wb") as sink:
            left = member.file_size
            while chunk := source.read(min(2**20, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise UsageError(
                        f"{flag} {zip_path}: {member.filename} holds more than the "
                        f"{member.file_size} bytes it declares: this is not a CorrDiff package"
                    )
                sink.write(chunk)


def prepare_package(spec: str) -> Path:
    """Return a directory that ``CorrDiffTaiwan.load_model`` can load without re-extracting.

    The directory holds ``corrdiff_inference_package/`` (extracted once, or a link to a
    folder the user already extracted) and an empty stub zip.

    Parameters
    ----------
    spec : str
        ``--model-package``: a URL (the NGC default), a directory, or the zip itself.
    """
    local = None if is_remote(spec) else Path(spec.removeprefix("file://")).expanduser()
    extracted = _extracted_root(local) if local is not None and local.is_dir() else None
    if extracted is not None and local is not None and not _zip_supersedes(local, extracted):
        target = cache_root() / "packages" / cache_key(extracted)
        if not (target / PACKAGE_ZIP).is_file():
            target.mkdir(parents=True, exist_ok=True)
            link = target / PACKAGE_DIR
            if not link.exists():
                link.symlink_to(extracted.resolve(), target_is_directory=True)
            _write_stub_zip(target)
        return target

    zip_path = resolve_zip(spec)
    if not zip_path.is_file():
        raise UsageError(f"--model-package: {zip_path} does not exist")
    target = cache_root() / "packages" / cache_key(zip_path)

    def complete(folder: Path) -> bool:
        return (folder / PACKAGE_ZIP).is_file() and _extracted_root(folder) is not None

    def finish(staging: Path) -> None:
        if _extracted_root(staging) is None:
            missing = _missing_files(staging / PACKAGE_DIR)
            raise UsageError(
                f"--model-package {zip_path} is not a complete CorrDiff package: it lacks "
                f"{PACKAGE_DIR}/{(missing or CHECKPOINTS)[0]}"
            )
        _write_stub_zip(staging)

    # Damaged in transit, a zip in earth2studio's cache is removed (it would fail every run).
    extract_once(
        zip_path, target, complete, finish, f"--model-package {zip_path}",
        downloaded_from=spec if is_remote(spec) else None,
    )  # fmt: skip
    return target


@dataclass(frozen=True)
class DeviceInfo:
    """The torch device a run uses, and how to describe it to a person."""

    device: torch.device
    description: str

    @property
    def is_gpu(self) -> bool:
        """Whether this is a CUDA or ROCm device."""
        return bool(self.device.type == "cuda")


def resolve_device(spec: str) -> DeviceInfo:
    """Turn ``--device auto|cpu|cuda|cuda:N`` into a device, checking that it exists.

    ROCm GPUs appear to torch as ``cuda``; the description says which it really is,
    e.g. "AMD Instinct MI300X (gfx942), ROCm/HIP 7.0" or "NVIDIA H100, CUDA 13.0".
    """
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return DeviceInfo(torch.device("cpu"), f"CPU, {torch.get_num_threads()} threads")
    if spec != "cuda" and not spec.startswith("cuda:"):
        raise UsageError(f"--device {spec!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {spec}: no CUDA or ROCm GPU is visible to torch {torch.__version__} "
            "(check the driver, HIP_VISIBLE_DEVICES/CUDA_VISIBLE_DEVICES, or use --device cpu)"
        )
    index = 0 if spec == "cuda" else spec.split(":", 1)[1]
    if (
        not (str(index).isascii() and str(index).isdigit())
        or int(index) >= torch.cuda.device_count()
    ):
        raise UsageError(
            f"--device {spec}: there are {torch.cuda.device_count()} GPU(s), "
            f"numbered 0 to {torch.cuda.device_count() - 1}"
        )
    device = torch.device(f"cuda:{int(index)}")
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip:
        arch = getattr(props, "gcnArchName", "").split(":")[0]
        description = f"{props.name} ({arch}), ROCm/HIP {torch.version.hip}"
    else:
        description = f"{props.name}, CUDA {torch.version.cuda}"
    return DeviceInfo(device, description)


def default_batch_size(samples: int, requested: int | None, device: DeviceInfo) -> tuple[int, bool]:
    """``--batch-size`` if given, else all samples on CPU or what fits in free GPU memory.

    Returns the batch size and whether it may still be halved on out-of-memory.
    """
    if requested is not None:
        return requested, False
    if not device.is_gpu:
        return samples, False
    import torch

    free, _ = torch.cuda.mem_get_info(device.device)
    # About 1.7 GiB per sample in float16 at full width (the blog's 7.5 GB for 4 samples,
    # weights included); keep a quarter of free memory in reserve.
    per_sample = int(1.7 * 2**30)
    return max(1, min(samples, int(free * 0.75) // per_sample)), True


def host_peak_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_bytes(device: DeviceInfo) -> int:
    """Peak memory of the run: allocated on the GPU, or resident on the host for a CPU run."""
    if device.is_gpu:
        import torch

        return int(torch.cuda.max_memory_allocated(device.device))
    return host_peak_bytes()


@contextlib.contextmanager
def quiet_native_output(enabled: bool) -> Iterator[None]:
    """Silence stdout and stderr at the C level while heavy libraries import.

    warp (imported by physicsnemo) prints "Could not find or load the NVIDIA CUDA driver"
    from native code on every machine without an NVIDIA driver, ROCm ones included.
    It is harmless and unrelated to the user's run, so it is hidden unless --debug.
    Python exceptions raised by the import still propagate and are reported.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def import_corrdiff_alone() -> None:
    """Import earth2studio's CorrDiff module without its other diagnostic models.

    See :mod:`corrdiff_tools.imports`: 10 s of start-up instead of 29 s on 2 cores.
    """
    from corrdiff_tools.imports import import_alone

    import_alone("earth2studio.models.dx.corrdiff")


def import_model_stack(debug: bool, verbose: bool) -> None:
    """Import earth2studio's CorrDiff once, quietly, then quieten its logging.

    Only CorrDiff, not every earth2studio diagnostic model (see
    :func:`import_corrdiff_alone`). earth2studio configures a loguru sink at import; it
    is replaced by one that shows only errors (warnings with ``verbose``, everything
    with ``debug``).
    """
    with quiet_native_output(not debug):
        import_corrdiff_alone()
    try:
        from loguru import logger as loguru_logger
    except ImportError:  # pragma: no cover - loguru comes with earth2studio
        return
    loguru_logger.remove()
    level = "DEBUG" if debug else "WARNING" if verbose else "ERROR"
    loguru_logger.add(sys.stderr, level=level, format="{level}: {message}")


#: ``--precision`` choices and the dtype names the store records.
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def resolve_precision(requested: str, device: DeviceInfo, published: str = "fp16") -> str:
    """Resolve ``--precision auto|fp32|fp16|bf16`` for ``device``.

    auto is ``published`` on a GPU (the model's ``Declaration.gpu_precision``; for
    CorrDiff Taiwan fp16, as earth2studio's ``load_model`` sets ``use_fp16``) and fp32 on
    a CPU.

    Raises
    ------
    UsageError
        For fp16 on a CPU: physicsnemo computes in float16 only on CUDA/ROCm devices.
    """
    if requested == "auto":
        return published if device.is_gpu else "fp32"
    if requested == "fp16" and not device.is_gpu:
        raise UsageError(
            "--precision fp16 needs a GPU: physicsnemo computes in float16 only on CUDA or "
            "ROCm devices; on a CPU use --precision bf16 (faster where the CPU has bfloat16 "
            "instructions) or fp32"
        )
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested!r} is not a precision: use fp32, fp16 or bf16")
    return requested


def autocast_network(inner: Any, dtype: Any) -> Any:
    """A physicsnemo backbone run under ``torch.autocast`` to ``dtype``, returning float32.

    For ``--precision bf16``: the weights stay float32 and each operation autocast lists
    runs in bfloat16 (physicsnemo's own mixed-precision route: ``amp_mode`` on the
    backbone). The backbone is wrapped, rather than the whole preconditioner called under
    autocast, because physicsnemo's ``EDMPrecondSR`` and ``UNet`` refuse a backbone output
    of another dtype unless ``torch.is_autocast_enabled()``, which without an argument asks
    about CUDA only: on a CPU that check fails. Returning float32 from the backbone passes
    it on every device; the EDM preconditioning and the sampler stay float32/float64.
    """
    inner.amp_mode = True  # physicsnemo's layers refuse autocast without it
    return _autocast_class()(inner, dtype)


@functools.cache
def _autocast_class() -> type:
    import torch

    class AutocastNetwork(torch.nn.Module):
        """See :func:`autocast_network`."""

        def __init__(self, inner: Any, dtype: Any) -> None:
            super().__init__()
            self.inner = inner
            self.dtype = dtype

        @property
        def amp_mode(self) -> bool:  # physicsnemo's wrappers delegate these to .model
            return bool(self.inner.amp_mode)

        @property
        def profile_mode(self) -> bool:
            return bool(self.inner.profile_mode)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            with torch.autocast(args[0].device.type, dtype=self.dtype):
                return self.inner(*args, **kwargs).float()

    return AutocastNetwork


def set_precision(
    model: CorrDiffTaiwan, device: DeviceInfo, precision: str = "auto", published: str = "fp16"
) -> str:
    """Put both networks in ``precision``; return its dtype name for the provenance.

    See :func:`resolve_precision` for the choices and the default.

    fp16 is earth2studio's ``use_fp16`` (weights and activations in float16 on the GPU);
    fp32 keeps float32 weights (exact: ``load_model`` rounded them to float16, and every
    float16 is a float32); bf16 keeps float32 weights and autocasts the backbones
    (:func:`autocast_network`).
    """
    import torch

    chosen = resolve_precision(precision, device, published)
    for net in (model.regression_model, model.residual_model):
        wrapped = isinstance(net.model, _autocast_class())
        if wrapped and chosen != "bf16":  # back from bf16: the backbone as loaded
            net.model = net.model.inner
            net.model.amp_mode = False
        net.use_fp16 = chosen == "fp16"  # the physicsnemo setter converts the weights
        if chosen == "bf16" and not wrapped:
            net.model = autocast_network(net.model, torch.bfloat16)
    return PRECISIONS[chosen]


def _checkpoint_args(path: Path) -> dict[str, Any]:
    """``args.json`` of a ``.mdlus`` checkpoint (a tar in older physicsnemo, a zip in newer)."""
    import json
    import tarfile

    if tarfile.is_tarfile(path):  # checked first, as physicsnemo does
        with tarfile.open(path) as archive:
            member = next(m for m in archive.getmembers() if Path(m.name).name == "args.json")
            handle = archive.extractfile(member)
            if handle is None:
                raise ValueError("args.json is not a file")
            return dict(json.load(handle))
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if Path(n).name == "args.json")
        return dict(json.loads(archive.read(name)))


def _named_classes(args: Any) -> list[tuple[str, str]]:
    """Every (``__module__``, ``__name__``) pair anywhere in a checkpoint's args."""
    found = []
    if isinstance(args, dict):
        if "__module__" in args or "__name__" in args:
            found.append((str(args.get("__module__")), str(args.get("__name__"))))
        for value in args.values():
            found.extend(_named_classes(value))
    elif isinstance(args, list):
        for value in args:
            found.extend(_named_classes(value))
    return found


def check_checkpoint_classes(
    root: Path,
    spec: str,
    checkpoints: Sequence[str] = CHECKPOINTS,
    option: str = "--model-package",
    folder: str = f"{PACKAGE_DIR}/",
) -> None:
    """Refuse checkpoints that name classes a CorrDiff package does not use, before import.

    ``checkpoints`` are the (regression, diffusion) paths under ``root``: the Taiwan
    package's by default. Each message starts with ``option`` and the spec, and names a
    checkpoint with the ``folder`` prefix; a generic package (``models.generic``) passes
    its own checkpoints, ``package`` and no prefix.

    Raises
    ------
    UsageError
        Naming the checkpoint and the class it asks for.
    """
    for kind, checkpoint in zip(("regression", "diffusion"), checkpoints, strict=True):
        path = root / checkpoint
        try:
            classes = _named_classes(_checkpoint_args(path))
        except (OSError, ValueError, StopIteration, zipfile.BadZipFile) as err:
            raise UsageError(
                f"{option} {spec}: {folder}{checkpoint} is not a physicsnemo "
                f"checkpoint with an args.json ({type(err).__name__})"
            ) from None
        if not classes:
            raise UsageError(f"{option} {spec}: {checkpoint} names no model class")
        top = classes[0][1]
        allowed = ALLOWED_CLASSES[kind] | ALLOWED_NESTED
        for module, name in classes:
            if (
                top not in ALLOWED_CLASSES[kind]
                or name not in allowed
                or not module.startswith(ALLOWED_MODULES)
            ):
                raise UsageError(
                    f"{option} {spec}: {checkpoint} asks to import {module}.{name}, "
                    f"which a CorrDiff package does not use ({kind}: "
                    f"{' or '.join(sorted(ALLOWED_CLASSES[kind]))}); refusing to load it "
                    "(a model package is code: use only packages you trust)"
                )


def check_loaded(model: CorrDiffTaiwan, spec: str) -> None:
    """Refuse a package whose grid or normalisation has the wrong shape, naming the file."""
    dataset = f"{PACKAGE_DIR}/{DATASET}"
    expected = {
        "XLAT/XLONG": (tuple(model.out_lat_full.shape), (450, 450)),
        "era5_center": (tuple(model.in_center.shape), (12, 1, 1)),
        "cwb_center": (tuple(model.out_center.shape), (4, 1, 1)),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise UsageError(
                f"--model-package {spec}: {dataset} has {name} of shape {got}, CorrDiff Taiwan "
                f"needs {want}: this is not the Taiwan package, or it is damaged"
            )


#: physicsnemo's layer modules that draw their initial weights with ``_weight_init``.
_INITIALISING_MODULES = (
    "physicsnemo.nn.module.conv_layers",
    "physicsnemo.nn.module.fully_connected_layers",
)


@contextlib.contextmanager
def weights_from_checkpoint_only() -> Iterator[None]:
    """While in effect, physicsnemo's layers start from zeros instead of random weights.

    For loading a checkpoint, which replaces every parameter: ``Module.from_checkpoint``
    loads with ``strict=True`` (earth2studio does not change that), so a parameter the
    checkpoint lacks raises instead of staying zero. The loaded tensors are the
    checkpoint's, exactly as after a random start (pinned by a test against
    earth2studio's own ``load_model``). One difference: torch's global random generator
    is not advanced by the draws; nothing in a run uses it (the sampler's noise comes
    from its own seeded generators). A physicsnemo that no longer has these modules, or
    ``_weight_init`` in them, is left as it is: its layers start at random, as usual.
    """
    import importlib

    import torch

    def zeros(shape: Sequence[int], *how: Any, **more: Any) -> Any:
        return torch.zeros(*shape)  # whatever the initialisation mode and fans

    replaced = []
    for name in _INITIALISING_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:  # moved in another physicsnemo: its layers draw as usual
            continue
        original = getattr(module, "_weight_init", None)
        if callable(original):
            replaced.append((module, original))
            setattr(module, "_weight_init", zeros)  # noqa: B010 - a private name of theirs
    try:
        yield
    finally:
        for module, original in replaced:
            setattr(module, "_weight_init", original)  # noqa: B010


def load_corrdiff(
    spec: str, device: DeviceInfo, precision: str = "auto"
) -> tuple[CorrDiffTaiwan, str]:
    """Load CorrDiff Taiwan from ``spec`` onto ``device`` in ``precision`` (``--precision``).

    Returns
    -------
    tuple
        The earth2studio ``CorrDiffTaiwan`` module (eval mode) and the precision name.
    """
    from earth2studio.models.auto import Package

    import_corrdiff_alone()
    from earth2studio.models.dx.corrdiff import CorrDiffTaiwan

    directory = prepare_package(spec)
    root = directory / PACKAGE_DIR
    missing = _missing_files(root)
    if missing:
        raise UsageError(f"--model-package {spec}: {PACKAGE_DIR}/{missing[0]} is missing")
    check_checkpoint_classes(root, spec)
    try:
        with weights_from_checkpoint_only():
            model = CorrDiffTaiwan.load_model(Package(str(directory)))
    except Exception as err:  # noqa: BLE001 - a broken package fails in many ways
        raise UsageError(
            f"--model-package {spec} could not be loaded ({type(err).__name__}: {err}): "
            "check that it is a complete CorrDiff Taiwan inference package"
        ) from None
    check_loaded(model, spec)
    return ready(model, device, precision, "fp16", layout=True)


def ready(
    model: Any, device: DeviceInfo, precision: str, published: str, layout: bool
) -> tuple[Any, str]:
    """A loaded CorrDiff (any family) in ``precision``, on ``device``, with our levers.

    ``published`` is what ``--precision auto`` means on a GPU for this model. The
    GroupNorm lever leaves float32 results bitwise unchanged; the memory layout
    (``layout``: contiguous on a CPU) does not, so package models keep the one
    earth2studio loads them in and their stores stay bitwise earth2studio's own call.
    """
    dtype = set_precision(model, device, precision, published)
    model = model.to(device.device).eval()
    for net in (model.regression_model, model.residual_model):
        if layout:
            prefer_layout(net, device.is_gpu)
        use_inplace_group_norm(net)
    return model, dtype


def load_generic(
    spec: str, device: DeviceInfo, precision: str = "auto", declared: Declaration | None = None
) -> tuple[Any, str]:
    """Load a package model's folder (``--model``, made local) onto ``device``.

    Through earth2studio's own ``load_model``: a generic package with our fixes for real
    regions (:func:`corrdiff_tools.models.generic.load`), or CorrDiffCMIP6's where
    ``declared`` names it (:func:`corrdiff_tools.models.cmip6_net.load`); then in
    ``precision`` with the same levers as CorrDiff Taiwan (:func:`ready`).
    """
    from corrdiff_tools.models import cmip6, generic

    shown = f"--model {spec}"
    if declared is not None and declared.name == cmip6.NAME:
        from corrdiff_tools.models import cmip6_net

        loaded = cmip6_net.load(spec, device=str(device.device), shown=shown)
    else:
        loaded = generic.load(spec, device=str(device.device), shown=shown)
    published = "fp32" if declared is None else declared.gpu_precision
    return ready(loaded, device, precision, published, layout=False)
