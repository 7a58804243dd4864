import os
import zipfile
from pathlib import Path

import pytest
import torch

from corrdiff_tools import model
from corrdiff_tools.errors import UsageError
from corrdiff_tools.synthetic import FULL_PARAMETERS, build_networks, build_package


def test_prepare_package_extracts_once_into_the_cache(package_dir: Path) -> None:
    first = model.prepare_package(str(package_dir))
    assert first.parent == model.cache_root() / "packages"
    assert (first / "corrdiff_inference_package" / "checkpoints" / "diffusion.mdlus").is_file()
    with zipfile.ZipFile(first / model.PACKAGE_ZIP) as stub:
        assert stub.namelist() == []  # load_model's extractall has nothing to do
    marker = first / "corrdiff_inference_package" / "marker"
    marker.write_text("still here")
    assert model.prepare_package(str(package_dir)) == first
    assert marker.read_text() == "still here"  # not re-extracted
    marker.unlink()
    assert sorted(p.name for p in package_dir.iterdir()) == [model.PACKAGE_ZIP]


def test_extracted_folder_is_used_in_place(tmp_path: Path) -> None:
    build_package(tmp_path / "pkg", zipped=False)
    directory = model.prepare_package(str(tmp_path / "pkg"))
    link = directory / "corrdiff_inference_package"
    assert link.is_symlink()
    assert link.resolve() == (tmp_path / "pkg" / "corrdiff_inference_package").resolve()


def test_zip_given_directly(package_dir: Path) -> None:
    assert model.prepare_package(str(package_dir / model.PACKAGE_ZIP)) == model.prepare_package(
        str(package_dir)
    )


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p, "holds neither corrdiff_inference_package.zip nor an extracted"),
        (
            lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt",
            "is a file but not a zip",
        ),
    ],
)
def test_check_package_spec_rejects(tmp_path: Path, make, fragment: str) -> None:
    target = make(tmp_path)
    with pytest.raises(UsageError, match=fragment):
        model.check_package_spec(str(target))


def test_a_zip_that_is_not_a_package_is_a_usage_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / model.PACKAGE_ZIP, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(
        UsageError,
        match="is not a complete CorrDiff package: it lacks corrdiff_inference_package/checkpoints/regression.mdlus",
    ):
        model.prepare_package(str(tmp_path))
    (tmp_path / model.PACKAGE_ZIP).write_bytes(b"truncated")
    with pytest.raises(UsageError, match="is not a valid zip file"):
        model.prepare_package(str(tmp_path))


def test_remote_specs_are_not_checked_locally() -> None:
    assert model.is_remote(model.DEFAULT_PACKAGE)
    model.check_package_spec(model.DEFAULT_PACKAGE)
    assert not model.is_remote("file:///data/pkg")


def test_cpu_runs_in_float32_and_describes_itself(loaded_model: object) -> None:
    assert next(loaded_model.residual_model.parameters()).dtype == torch.float32
    assert next(loaded_model.regression_model.parameters()).dtype == torch.float32
    info = model.resolve_device("cpu")
    assert info.description == f"CPU, {torch.get_num_threads()} threads" and not info.is_gpu


def test_gpu_request_without_gpu_is_a_usage_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="no CUDA or ROCm GPU is visible"):
        model.resolve_device("cuda:0")


def test_published_architecture_parameter_counts() -> None:
    regression, diffusion = build_networks("full")
    assert sum(p.numel() for p in regression.parameters()) == FULL_PARAMETERS["regression"]
    assert sum(p.numel() for p in diffusion.parameters()) == FULL_PARAMETERS["diffusion"]


@pytest.mark.network
@pytest.mark.enable_socket
def test_default_ngc_package_loads() -> None:
    loaded, precision = model.load_corrdiff(model.DEFAULT_PACKAGE, model.resolve_device("auto"))
    assert loaded.out_lat.shape == (448, 448)


def test_the_cache_directory_itself_is_a_valid_package(package_dir: Path) -> None:
    cached = model.prepare_package(str(package_dir))
    model.check_package_spec(str(cached))
    assert model.prepare_package(str(cached)).resolve() != package_dir.resolve()
    loaded, _ = model.load_corrdiff(str(cached), model.resolve_device("cpu"))
    assert loaded.out_lat.shape == (448, 448)


def test_an_extracted_folder_beside_an_older_zip_is_used_in_place(tmp_path: Path) -> None:
    import os

    build_package(tmp_path, zipped=True)
    with zipfile.ZipFile(tmp_path / model.PACKAGE_ZIP) as archive:
        archive.extractall(tmp_path)  # what earth2studio's load_model leaves behind
    old = (tmp_path / model.PACKAGE_ZIP).stat().st_mtime - 60
    os.utime(tmp_path / model.PACKAGE_ZIP, (old, old))
    directory = model.prepare_package(str(tmp_path))
    assert (directory / "corrdiff_inference_package").is_symlink()
    os.utime(tmp_path / model.PACKAGE_ZIP, (old + 600, old + 600))  # a newer zip wins
    directory = model.prepare_package(str(tmp_path))
    assert not (directory / "corrdiff_inference_package").is_symlink()


LAZY_DX = """
import sys
from corrdiff_tools import model
model.import_model_stack(debug=False, verbose=False)
others = sorted(m for m in sys.modules if m.startswith("earth2studio.models.dx.")
                and m.split(".")[3] not in ("corrdiff", "base"))
from earth2studio.models.dx.corrdiff import CorrDiffTaiwan
print(others, CorrDiffTaiwan.__module__)
"""


@pytest.mark.slow
def test_a_run_imports_earth2studios_corrdiff_alone_and_the_rest_is_there_when_asked_for() -> None:
    """earth2studio's dx __init__ imports every diagnostic model: 29 s of start-up, not 10."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = LAZY_DX + (
        "from earth2studio.models.dx import ClimateNet, CorrDiffTaiwan as Again, Identity\n"
        "assert Again is CorrDiffTaiwan and ClimateNet.__name__ == 'ClimateNet'\n"
        "import earth2studio.models.dx as dx\n"
        "assert dx.Identity is Identity and 'CorrDiffTaiwan' in dx.__all__\n"
        "print('whole')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True
    )
    assert done.stdout.split() == ["[]", "earth2studio.models.dx.corrdiff", "whole"], done.stdout


def test_a_file_digest_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    import hashlib
    import json

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    first = model.file_sha256(weights)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    index = model.cache_root() / "digests.json"
    remembered = json.loads(index.read_text())
    key = next(k for k in remembered if k.startswith(f"{weights.resolve()}|"))
    # A remembered digest is used as is (proof: a planted one comes back) ...
    index.write_text(json.dumps({**remembered, key: "0" * 64}))
    assert model.file_sha256(weights) == "0" * 64
    # ... until the file changes: same size, new content and modification time.
    weights.write_bytes(b"b" * 1000)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model.file_sha256(weights) == hashlib.sha256(b"b" * 1000).hexdigest()
    kept = [k for k in json.loads(index.read_text()) if k.startswith(f"{weights.resolve()}|")]
    assert len(kept) == 1  # one entry per file, not one per version
    index.write_text("not json")  # a damaged index is ignored, then rewritten
    assert model.file_sha256(weights) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_loading_skips_the_random_start_and_gives_load_models_own_tensors(
    package_dir: Path,
) -> None:
    """Zeros instead of random draws while loading: the same weights, the draws saved."""
    from earth2studio.models.auto import Package
    from earth2studio.models.dx.corrdiff import CorrDiffTaiwan

    torch.manual_seed(1)
    first = torch.rand(4)
    torch.manual_seed(1)
    ours, _ = model.load_corrdiff(str(package_dir), model.resolve_device("cpu"))
    assert torch.equal(torch.rand(4), first)  # our load drew nothing from torch's generator
    torch.manual_seed(1)
    theirs = CorrDiffTaiwan.load_model(Package(str(model.prepare_package(str(package_dir)))))
    assert not torch.equal(torch.rand(4), first)  # earth2studio's drew its random start
    for name in ("regression_model", "residual_model"):
        expected = getattr(theirs, name).state_dict()
        got = getattr(ours, name).state_dict()
        assert got.keys() == expected.keys() and len(got) > 50
        for key, tensor in expected.items():
            # earth2studio keeps float16 on a CPU; ours is the same values in float32.
            assert torch.equal(got[key], tensor.float()), f"{name}.{key}"
    import physicsnemo.nn.module.conv_layers as conv_layers
    from physicsnemo.nn.module.utils import weight_init

    assert conv_layers._weight_init is weight_init._weight_init  # restored after loading


def test_the_zero_start_leaves_a_physicsnemo_without_those_modules_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import physicsnemo.nn.module.conv_layers as conv_layers

    original = conv_layers._weight_init
    monkeypatch.setattr(
        model, "_INITIALISING_MODULES", ("physicsnemo.nn.module.gone", conv_layers.__name__)
    )
    with model.weights_from_checkpoint_only():
        assert conv_layers._weight_init is not original
        start = conv_layers._weight_init([3, 2], mode="kaiming_uniform", fan_in=2, fan_out=3)
        assert torch.equal(start, torch.zeros(3, 2))
    assert conv_layers._weight_init is original
