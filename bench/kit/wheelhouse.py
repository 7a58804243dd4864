"""The GPU kit's wheelhouse: what a bare GPU machine lacks, fetched here, installed there.

The lent GPU machine (``../shared/FACTS.md``, "The lent GPU machine") has Python 3.12, torch
and the common scientific stack, but neither earth2studio nor physicsnemo nor zarr, and no
package index; at most 64 MiB travels with the working tree. So:

    python bench/kit/wheelhouse.py download            # here: cp312 wheels into .whl/
    python bench/kit/wheelhouse.py check               # here: every requirement is met
    python3 bench/kit/wheelhouse.py install            # there: no index, into /tmp/kit-site

What travels is what the run tool and the benchmarks really import (traced, and
rehearsed in a fresh Python 3.12 environment by ``bench/kit/rehearse.sh``), in the
versions of ``constraints.txt``, minus what the machine already has (:data:`IMAGE`) and
minus three modules the libraries import but neither route uses, which
``bench/kit/standins.py`` stands in for: warp-lang (392 MB installed), pygrib, and s3fs
with botocore (:data:`STOOD_IN`).

``install`` puts the wheels into a ``--target`` directory (``pip install --no-index
--no-deps``) rather than a virtual environment: the machine's ``python3`` is itself a
virtual environment (``/opt/torch/.venv``), and a venv made from it with
``--system-site-packages`` sees the base interpreter's packages, not its torch. With
``PYTHONPATH`` pointing at the target, the machine's own torch, numpy and CUDA stack are
used as they are. The target also gets a ``sitecustomize.py`` that installs the stand-ins
in every Python process (the benchmarks spawn many). Then it checks that every module a
run needs imports and that ``torch.cuda.is_available()``, and fails loudly if not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the wheels go (ignored by git; carried to the machine with ``carry``).
WHEELS = ROOT / ".whl"
#: Where ``install`` puts them on the machine.
TARGET = Path("/tmp/kit-site")  # noqa: S108 - a bare, single-user machine's scratch
#: What may travel besides the working tree (64 MiB in all; the tree is about 1 MiB).
BUDGET = 56 * 2**20

#: Distributions to carry (versions from constraints.txt). From a trace of
#: ``run_corrdiff.py`` (local package, file input) and ``bench/blog_way.py``, less what
#: the image has and what is stood in for; confirmed by ``bench/kit/rehearse.sh``.
CARRY = (
    "antlr4-python3-runtime",  # omegaconf's parser (physicsnemo's full import, the blog's)
    "cftime",
    "dask",
    "donfig",
    "earth2studio",
    "gitdb",
    "GitPython",  # physicsnemo's Module.save records the git state (building a package)
    "google-crc32c",
    "h5netcdf",
    "importlib-metadata",
    "lazy-importer",
    "loguru",
    "netCDF4",
    "numcodecs",
    "nvidia-physicsnemo",
    "nvtx",
    "obspec",
    "obstore",
    "omegaconf",
    "pyproj",  # the synthetic package's Lambert-conformal grid (corrdiff_tools.synthetic)
    "pyvers",
    "smmap",
    "tensordict",
    "termcolor",
    "treelib",
    "zarr",
)
#: Stood in for by ``bench/kit/standins.py`` (module -> distributions it spares).
STOOD_IN = {
    "warp": ("warp-lang",),
    "pygrib": ("pygrib",),
    "s3fs": ("s3fs", "aiobotocore", "botocore", "aioitertools", "jmespath"),
}
#: What the GPU machine's image has, as the device tool's KINDS.md lists it (2026-11-17);
#: the subset the routes import. Versions where a session saw them.
IMAGE = {
    "torch": "2.11.0",
    "numpy": "2.5.2",
    "huggingface-hub": "1.33.0",
    "safetensors": "0.8.0",
    "torchvision": "0.26.0",
    "jaxtyping": "0.3.11",
    **{
        name: ""
        for name in (
            "aiohappyeyeballs aiohttp aiosignal anyio attrs certifi charset-normalizer "
            "cloudpickle einops filelock frozenlist fsspec h11 h5py httpcore httpx idna "
            "jinja2 markupsafe mpmath msgpack multidict networkx packaging pandas pillow "
            "propcache psutil pyarrow pygments python-dateutil pyyaml requests rich scipy "
            "setuptools six sympy timm toolz tqdm typing-extensions urllib3 wrapt xarray "
            "yarl zipp pytest hypothesis iniconfig pluggy click onnx"
        ).split()
    },
}
#: Requirements the carried wheels declare that neither route imports: not carried, and
#: ``check`` fails on any declared requirement not listed here (a new dependency after a
#: version bump). ``bench/kit/rehearse.sh`` proves the routes run without them.
DECLARED_NOT_IMPORTED = {
    "partd": "dask's out-of-core shuffle",
    "gcsfs": "earth2studio's Google Cloud sources (ARCO ERA5)",
    "python-dotenv": "earth2studio's optional .env loading",
    "hydra-core": "physicsnemo's training configurations",
}
#: Pure-Python projects published only as a source archive: built into a wheel here.
SOURCE_ONLY = ("antlr4-python3-runtime",)
#: The platforms pip may pick a cp312 wheel for (manylinux tags match exactly).
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
    "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
)  # fmt: skip
#: Modules a run and the benchmarks import: ``install`` checks each.
MODULES = (
    "corrdiff_tools.cli",
    "earth2studio.models.dx.corrdiff",
    "earth2studio.data",
    "earth2studio.io",
    "earth2studio.models.dx",
    "physicsnemo.diffusion.preconditioners.legacy",
    "physicsnemo.models.diffusion_unets",
    "tensordict",
    "zarr",
    "numcodecs",
    "xarray",
    "dask.array",
    "netCDF4",
)


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """``name -> version`` of every line ``name==version`` in the constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            found[normalise(name)] = version.strip()
    return found


def requested() -> list[str]:
    """``name==version`` of every distribution to carry, pinned as tested."""
    versions = pins()
    missing = [name for name in CARRY if normalise(name) not in versions]
    if missing:
        raise SystemExit(f"not pinned in constraints.txt: {', '.join(missing)}")
    return [f"{name}=={versions[normalise(name)]}" for name in CARRY]


def download(dest: Path) -> None:
    """Fetch the cp312 manylinux wheels of :data:`CARRY` into ``dest``; check the size."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    binary = [spec for spec in requested() if spec.split("==")[0] not in SOURCE_ONLY]
    source = [spec for spec in requested() if spec.split("==")[0] in SOURCE_ONLY]
    platform_args = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--implementation", "cp", *platform_args, "-d", str(dest), *binary],
        check=True,
    )  # fmt: skip
    if source:
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), *source], check=True)
    report(dest)


def wheels(directory: Path) -> list[Path]:
    """The wheels in ``directory``, by name."""
    return sorted(directory.glob("*.whl"))


def report(directory: Path) -> int:
    """Print the wheelhouse's size, largest first; fail if it is over :data:`BUDGET`."""
    found = wheels(directory)
    total = sum(path.stat().st_size for path in found)
    for path in sorted(found, key=lambda p: -p.stat().st_size):
        print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path.name}")
    print(f"{total / 2**20:8.2f} MiB  in {len(found)} wheels (budget {BUDGET / 2**20:.0f} MiB)")
    if total > BUDGET:
        raise SystemExit(f"the wheelhouse is {total / 2**20:.1f} MiB, over its budget")
    return total


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    """A wheel's distribution name and its ``Requires-Dist`` lines."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    dist = re.search(r"^Name: (.+)$", text, re.M)
    needs = re.findall(r"^Requires-Dist: (.+)$", text, re.M)
    return normalise(dist.group(1).strip() if dist else wheel.name.split("-")[0]), needs


def check(directory: Path) -> list[str]:
    """Every requirement of every carried wheel, met by the wheels, the image or a stand-in.

    Evaluated for CPython 3.12 on Linux with ``packaging``'s markers; extras are not
    requirements. Returns the unmet ones (and prints them).
    """
    from packaging.requirements import Requirement

    environment = {"python_version": "3.12", "python_full_version": "3.12.3",
                   "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix",
                   "extra": ""}  # fmt: skip
    carried = dict(_metadata(wheel) for wheel in wheels(directory))
    have = set(carried) | {normalise(n) for n in IMAGE}
    have |= {normalise(d) for dists in STOOD_IN.values() for d in dists}
    have |= set(DECLARED_NOT_IMPORTED)
    unmet = []
    for dist, needs in sorted(carried.items()):
        for line in needs:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if normalise(requirement.name) not in have:
                unmet.append(f"{dist} needs {requirement}")
    wanted = {normalise(n) for n in CARRY}
    absent = sorted(wanted - set(carried))
    unmet += [f"{name} is not in {directory}" for name in absent]
    for line in unmet:
        print(f"unmet: {line}")
    print(f"{len(carried)} wheels; {len(unmet)} unmet requirement(s)")
    return unmet


SITECUSTOMIZE = '''"""The GPU kit: stand-ins for modules imported but unused (see standins.py)."""
import importlib.machinery
import importlib.util
import sys

import kit_standins

kit_standins.install()
# Chain to a sitecustomize further down the path, if the image has one.
_here = __file__.rsplit("/", 1)[0]
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if p and p.rstrip("/") != _here]
)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
'''


def install(directory: Path, target: Path, cpu: bool) -> None:
    """Install the wheels into ``target`` with no index, then prove the kit works."""
    found = wheels(directory)
    if not found:
        raise SystemExit(f"no wheels in {directory}: run 'wheelhouse.py download' where pip works")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--no-compile", "--disable-pip-version-check", "--upgrade", "--target", str(target),
         *map(str, found)],
        check=True,
    )  # fmt: skip
    shutil.copy(Path(__file__).with_name("standins.py"), target / "kit_standins.py")
    (target / "sitecustomize.py").write_text(SITECUSTOMIZE)
    verify(target, cpu)
    print(f"kit ready: export PYTHONPATH={target}:{ROOT}")


def verify(target: Path, cpu: bool) -> None:
    """Import every module of :data:`MODULES` in a fresh process; check the device."""
    probe = (
        "import importlib, json, sys, torch\n"
        f"missing = []\n"
        f"for name in {list(MODULES)!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        missing.append(f'{name}: {type(err).__name__}: {err}')\n"
        "import kit_standins\n"
        "print(json.dumps({'missing': missing, 'cuda': torch.cuda.is_available(),\n"
        "    'torch': torch.__version__, 'stood_in': sorted(n for n in kit_standins.STAND_INS\n"
        "        if isinstance(sys.modules.get(n), kit_standins.StandInModule))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the kit does not import:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"torch {result['torch']}, CUDA available: {result['cuda']}; "
          f"stood in: {', '.join(result['stood_in']) or 'none'}")  # fmt: skip
    if result["missing"]:
        raise SystemExit("modules missing from the kit:\n  " + "\n  ".join(result["missing"]))
    if not cpu and not result["cuda"]:
        raise SystemExit("torch.cuda.is_available() is False: no GPU for the kit to measure")


def image_requirements() -> list[str]:
    """What to install to stand for the GPU machine's image in a rehearsal (pip lines)."""
    return [f"{name}=={version}" if version else name for name, version in IMAGE.items()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image", help="print what stands for the GPU image in a rehearsal")
    for name in ("download", "check", "install"):
        command = sub.add_parser(name)
        command.add_argument("--wheels", type=Path, default=WHEELS)
        if name == "install":
            command.add_argument("--target", type=Path, default=TARGET)
            command.add_argument("--cpu", action="store_true", help="no GPU needed (rehearsal)")
    args = parser.parse_args()
    if args.command == "image":
        print("\n".join(image_requirements()))
    elif args.command == "download":
        download(args.wheels)
    elif args.command == "check":
        report(args.wheels)
        if check(args.wheels):
            raise SystemExit(1)
    else:
        install(args.wheels, args.target, args.cpu)


if __name__ == "__main__":
    main()
