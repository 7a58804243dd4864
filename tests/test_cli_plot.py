"""plot_corrdiff.py end to end through plot_main, on stores written by the run tool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import drawn_files
from PIL import Image, ImageSequence

from corrdiff_tools import render, store
from corrdiff_tools.cli import plot_main, run_main
from corrdiff_tools.quantities import KELVIN

ROOT = Path(__file__).resolve().parents[1]
#: Small images, drawn in this process (worker processes cost seconds to start; the tests
#: that are about workers ask for them).
FAST = ["--dpi", "30", "-q", "--jobs", "1"]


@pytest.fixture(scope="session")
def ensemble(package_dir: Path, input_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-tool store: 2 times x 3 samples."""
    path = tmp_path_factory.mktemp("ensemble") / "gaemi.zarr"
    code = run_main(
        ["2024-07-24T06/2024-07-24T12", "--samples", "3", "--steps", "2", "--source", str(input_file),
         "--model-package", str(package_dir), "--device", "cpu", "--output", str(path), "-q"]
    )  # fmt: skip
    assert code == 0
    return path


def plot(*args: str) -> int:
    return plot_main([*args])


@pytest.mark.slow  # six maps; names by time and lead, quickly: test_forecast_store_names_files_by_lead_time
def test_one_file_per_time_and_sample_with_sortable_names(ensemble: Path, tmp_path: Path) -> None:
    assert plot(str(ensemble), "--outdir", str(tmp_path / "out"), "--jobs", "1", *FAST) == 0
    names = sorted(p.name for p in drawn_files(tmp_path / "out"))
    assert names == [
        f"corrdiff-2024-07-24T{hour}-sample-{sample:02d}.jpg"
        for hour in ("06", "12")
        for sample in range(3)
    ]
    with Image.open(tmp_path / "out" / names[0]) as image:
        assert image.format == "JPEG" and image.size[0] == 450  # 15 in at 30 dpi
        assert 100 < image.size[1] < 165  # 5.5 in, less the blank bands


def test_default_outdir_is_beside_the_store(ensemble: Path) -> None:
    outdir = ensemble.parent / "gaemi-plots"
    assert plot(str(ensemble), "--sample", "1", "--time", "2024-07-24T12:00", *FAST) == 0
    assert sorted(p.name for p in drawn_files(outdir)) == ["corrdiff-2024-07-24T12-sample-01.jpg"]


def test_sample_numbers_pad_to_the_ensemble_size() -> None:
    assert render.sample_label(3, 4) == "03"
    assert render.sample_label(7, 120) == "007"
    names = [f"x-{render.sample_label(i, 12)}" for i in range(12)]
    assert sorted(names) == names  # so the blog's `convert ...-sample-*.jpg` keeps the order


@pytest.mark.slow  # GIF frames, quickly: test_generic_run's plot test
def test_gif_frames_follow_sample_order(ensemble: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = plot(
        str(ensemble),
        "--time",
        "1",
        "--format",
        "png",
        "--gif",
        "--fps",
        "2",
        "--outdir",
        str(out),
        *FAST,
    )
    assert code == 0
    gif = out / "corrdiff-2024-07-24T12.gif"
    # Each still through the same 256-colour palette reduction as the GIF's frames, so
    # that quantisation (not the content) does not dominate the distances.
    stills = [
        np.asarray(
            Image.open(out / f"corrdiff-2024-07-24T12-sample-{s:02d}.png")
            .convert("RGB")
            .convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
            .convert("RGB"),
            dtype=float,
        )
        for s in range(3)
    ]
    with Image.open(gif) as animation:
        frames = [
            np.asarray(f.convert("RGB"), dtype=float) for f in ImageSequence.Iterator(animation)
        ]
        assert animation.info["duration"] == 500
    assert len(frames) == 3
    for index, frame in enumerate(frames):
        distances = [np.abs(frame - still).mean() for still in stills]
        assert int(np.argmin(distances)) == index, distances


@pytest.mark.slow
def test_gif_path_for_several_times(ensemble: Path, tmp_path: Path) -> None:
    code = plot(
        str(ensemble),
        "--sample",
        "0-1",
        "--gif",
        str(tmp_path / "anim.gif"),
        "--outdir",
        str(tmp_path / "o"),
        *FAST,
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("anim-*.gif")) == [
        "anim-2024-07-24T06.gif",
        "anim-2024-07-24T12.gif",
    ]


@pytest.mark.slow
def test_parallel_rendering_gives_the_same_files(ensemble: Path, tmp_path: Path) -> None:
    args = (str(ensemble), "--time", "0", "--format", "png", "--stats", "--dpi", "30", "-q")
    assert plot(*args, "--jobs", "1", "--outdir", str(tmp_path / "serial")) == 0
    assert plot(*args, "--jobs", "2", "--outdir", str(tmp_path / "parallel")) == 0
    serial = {p.name: p.read_bytes() for p in drawn_files(tmp_path / "serial")}
    parallel = {p.name: p.read_bytes() for p in drawn_files(tmp_path / "parallel")}
    assert len(serial) == 4 and sorted(serial) == sorted(parallel)
    assert [name for name in serial if serial[name] != parallel[name]] == []


def test_colour_scales_span_the_whole_run(ensemble: Path) -> None:
    ds = store.open_store(ensemble).load()
    samples_only = ds.drop_vars([name for name in ds.data_vars if name.startswith("lr_")])
    scales = render.colour_scales(samples_only)
    assert (scales["mrr"].vmin, scales["mrr"].vmax) == pytest.approx(
        (float(ds.mrr.min()), float(ds.mrr.max())), rel=1e-6
    )
    assert scales["t2m"].vmin == pytest.approx(float(ds.t2m.min()) - KELVIN, rel=1e-6)
    assert scales["wind"].vmin == 0.0
    assert scales["wind"].vmax == pytest.approx(float(np.hypot(ds.u10m, ds.v10m).max()), rel=1e-6)
    with_inputs = render.colour_scales(ds, colormap="cividis")  # the store holds inputs
    expected = min(scales["t2m"].vmin, float(ds.lr_t2m.min()) - KELVIN)
    assert with_inputs["t2m"].vmin == pytest.approx(expected, abs=1e-4)
    assert {s.cmap for s in with_inputs.values()} == {"cividis"}


@pytest.mark.slow
def test_a_sample_image_does_not_depend_on_other_options(ensemble: Path, tmp_path: Path) -> None:
    # Colour scales come from the store's content, so --plot-lowres (or --stats) in one run
    # and not in another gives the same sample image, and images from both runs compare.
    common = (str(ensemble), "--time", "0", "--sample", "0", "--format", "png", *FAST)
    assert plot(*common, "--outdir", str(tmp_path / "a")) == 0
    assert plot(*common, "--plot-lowres", "--stats", "--outdir", str(tmp_path / "b")) == 0
    (name,) = [p.name for p in drawn_files(tmp_path / "a")]
    assert name == "corrdiff-2024-07-24T06-sample-00.png"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_stats_figure_matches_numpy_on_the_store(ensemble: Path) -> None:
    ds = store.open_store(ensemble).load()
    context = render.RenderContext(
        store_path=ensemble, scales=render.colour_scales(ds), coastlines=[], thresholds={"mrr": 0.0, "wind": 1.0},
        fmt="png", dpi=30,
    )  # fmt: skip
    fig = render.build_figure(render.Task("stats", 1, None, None, Path("x.png")), context)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_label() != "<colorbar>"}
    t2m_mean = np.asarray(panels["Mean: 2 m temperature"].collections[0].get_array())
    np.testing.assert_allclose(
        t2m_mean.ravel(), (ds.t2m[1].values - KELVIN).mean(axis=0).ravel(), rtol=1e-5
    )
    wind = np.hypot(ds.u10m[1].values, ds.v10m[1].values)
    prob = np.asarray(panels["P(wind ≥ 1 m/s)"].collections[0].get_array())
    np.testing.assert_allclose(prob.ravel(), (wind >= 1.0).mean(axis=0).ravel())
    assert "3 members" in fig.get_suptitle() and "valid 2024-07-24 12:00 UTC" in fig.get_suptitle()


def test_lowres_and_sample_titles(ensemble: Path) -> None:
    ds = store.open_store(ensemble)
    context = render.RenderContext(
        store_path=ensemble,
        scales=render.colour_scales(ds),
        coastlines=[],
        thresholds={},
        fmt="png",
        dpi=30,
    )
    sample = render.build_figure(render.Task("sample", 0, None, 2, Path("x.png")), context)
    assert sample.get_suptitle() == "CorrDiff sample 2 of 3 · valid 2024-07-24 06:00 UTC"
    low = render.build_figure(render.Task("lowres", 0, None, None, Path("x.png")), context)
    titles = [ax.get_title() for ax in low.axes if ax.get_label() != "<colorbar>"]
    assert titles == ["Composite reflectivity (input)", "2 m temperature", "10 m wind speed"]
    shown = np.asarray(low.axes[2].collections[0].get_array()).reshape(36, 40)
    np.testing.assert_allclose(shown, ds.lr_t2m[0].values - KELVIN, rtol=1e-6)


def blog_store(path: Path, samples: int = 2, written: int | None = None) -> Path:
    """Write a store exactly as the blog's script does, with earth2studio's ZarrBackend.

    ``written``: only the first this many samples are written (a run that stopped early);
    the rest read as the backend's fill value, 0.0.
    """
    from earth2studio.io import ZarrBackend
    from earth2studio.utils.coords import split_coords

    from corrdiff_tools.synthetic import curvilinear_grid

    lat, lon = (a[1:-1, 1:-1] for a in curvilinear_grid())
    rng = np.random.default_rng(0)
    import torch

    x = torch.as_tensor(
        np.stack([rng.normal(m, 3, (samples, 448, 448)) for m in (10, 300, 2, 1)], axis=1)[None]
    )
    coords = OrderedDict(
        time=np.array(["2024-07-24T12:00"], dtype="datetime64[ns]"),
        sample=np.arange(samples),
        variable=np.array(store.OUTPUT_VARIABLES),
        lat=lat,
        lon=lon,
    )
    io = ZarrBackend(str(path))
    total = OrderedDict(time=coords["time"], sample=coords["sample"], lat=lat, lon=lon)
    io.add_array(total, list(store.OUTPUT_VARIABLES))
    if written is not None:
        x, coords = x[:, :written], OrderedDict(coords, sample=np.arange(written))
    io.write(*split_coords(x.float(), coords))
    return path


@pytest.mark.slow
def test_blog_layout_store_still_plots(tmp_path: Path) -> None:
    path = blog_store(tmp_path / "corrdiff-2024-07-24.zarr")
    raw = xr.open_zarr(path, consolidated=False)
    assert "ilat" in raw.dims and "lat" in raw.data_vars  # really the blog's layout
    opened = store.open_store(path)
    assert opened["t2m"].dims == ("time", "sample", "y", "x") and "lat" in opened.coords
    assert opened["t2m"].attrs["units"] == "K"
    assert plot(str(path), "--stats", "--jobs", "1", *FAST) == 0
    names = sorted(p.name for p in drawn_files(tmp_path / "corrdiff-2024-07-24-plots"))
    assert names == [
        "corrdiff-2024-07-24T12-sample-00.jpg",
        "corrdiff-2024-07-24T12-sample-01.jpg",
        "corrdiff-2024-07-24T12-stats.jpg",
    ]


@pytest.mark.slow  # the blog's layouts are the slow run's
def test_blog_store_plots_without_library_warnings_and_says_what_it_lacks(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = blog_store(tmp_path / "corrdiff-2024-07-24.zarr")
    capfd.readouterr()
    # Worker processes too (--jobs 2, --gif): no warning reaches the terminal without --debug.
    assert plot(str(path), "--gif", "--jobs", "2", "--spectra", "--dpi", "30") == 0
    err = capfd.readouterr().err
    assert "Warning" not in err, err
    assert (
        "this store has no regression mean (the blog's run-corrdiff.py does not store it; "
        "run_corrdiff.py does): that baseline is left out"
    ) in err


@pytest.mark.slow
def test_incomplete_samples_are_skipped_with_a_warning(
    ensemble: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    import zarr

    partial = tmp_path / "partial.zarr"
    shutil.copytree(ensemble, partial)
    zarr.open_group(str(partial), mode="r+")["completed"][1, 2] = 0
    assert plot(str(partial), "--time", "1", "--outdir", str(tmp_path / "o"), "--dpi", "30") == 0
    assert sorted(p.name for p in drawn_files(tmp_path / "o")) == [
        "corrdiff-2024-07-24T12-sample-00.jpg",
        "corrdiff-2024-07-24T12-sample-01.jpg",
    ]
    assert (
        "skipping corrdiff-2024-07-24T12-sample-02.jpg: that sample is not complete"
        in capsys.readouterr().err
    )


@pytest.mark.slow  # eight plot runs; stale files, quickly: test_images_of_a_store_that_changed_since_are_stale
def test_rerunning_a_plot_keeps_up_to_date_files_and_refuses_to_replace_others(
    ensemble: Path, tmp_path: Path, capsys
) -> None:
    outdir = tmp_path / "o"
    base = (str(ensemble), "--sample", "0", "--time", "0", "--outdir", str(outdir))
    args = (*base, "--dpi", "30")
    assert plot(*args, "--gif") == 0
    image = outdir / "corrdiff-2024-07-24T06-sample-00.jpg"
    gif = outdir / "corrdiff-2024-07-24T06.gif"
    drawn = {p: p.stat().st_mtime_ns for p in (image, gif)}
    capsys.readouterr()

    # The same command again: nothing is drawn, nothing is touched, and it says so.
    assert plot(*args, "--gif") == 0
    err = capsys.readouterr().err
    assert "2 file(s) already drawn from this store with these settings are up to date" in err
    assert "nothing to draw: everything asked for is up to date" in err
    assert {p: p.stat().st_mtime_ns for p in drawn} == drawn
    # A subset, or the same images with something new beside them: only the new is drawn.
    assert plot(*args, "--stats") == 0
    assert (outdir / "corrdiff-2024-07-24T06-stats.jpg").exists()
    assert {p: p.stat().st_mtime_ns for p in drawn} == drawn

    # Other settings for an existing file: refused, nothing written.
    for other in (
        ["--dpi", "31"],
        ["--dpi", "30", "--gif", "--fps", "3"],
        ["--dpi", "30", "--colormap", "gray"],
    ):
        assert plot(*base, *other) == 2, other
        err = capsys.readouterr().err
        assert "already exist and were drawn from other data or with other settings" in err
        assert "pass --overwrite" in err
        assert {p: p.stat().st_mtime_ns for p in drawn} == drawn

    # A file edited since (or not ours): refused, kept, replaced only with --overwrite.
    image.write_bytes(b"my annotated copy")
    assert plot(*args) == 2
    assert f"e.g. {image}" in capsys.readouterr().err
    assert image.read_bytes() == b"my annotated copy"
    assert plot(*args, "--overwrite") == 0 and image.read_bytes() != b"my annotated copy"
    assert plot(*args) == 0  # and up to date again


def test_images_of_a_store_that_changed_since_are_stale(
    ensemble: Path, tmp_path: Path, capsys
) -> None:
    import zarr

    store = tmp_path / "s.zarr"
    shutil.copytree(ensemble, store)
    args = (str(store), "--sample", "0", "--time", "0", "--outdir", str(tmp_path / "o"), *FAST)
    assert plot(*args) == 0
    capsys.readouterr()
    zarr.open_group(str(store), mode="r+")["completed"][1, 2] = 0  # as before a --resume
    assert plot(*args) == 2
    assert "drawn from other data" in capsys.readouterr().err


def test_coastlines_fall_back_offline_and_prefer_natural_earth(tmp_path: Path, monkeypatch) -> None:
    import cartopy
    import shapefile

    from corrdiff_tools import coastlines

    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", str(tmp_path / "none"))
    monkeypatch.setitem(cartopy.config, "data_dir", str(tmp_path / "none"))
    fallback = coastlines.load_coastlines()
    assert fallback.origin == "global-land-mask"
    taiwan = [
        s for s in fallback.segments if 120 < s[:, 0].mean() < 122.2 and 22 < s[:, 1].mean() < 25.5
    ]
    assert taiwan and max(len(s) for s in taiwan) > 100  # the island's outline

    folder = tmp_path / "ne" / "shapefiles" / "natural_earth" / "physical"
    folder.mkdir(parents=True)
    with shapefile.Writer(str(folder / "ne_10m_coastline"), shapeType=shapefile.POLYLINE) as writer:
        writer.field("name", "C")
        writer.line([[[120.0, 22.0], [121.0, 25.0]], [[140.0, 40.0], [141.0, 41.0]]])
        writer.record("test")
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", str(tmp_path / "ne"))
    natural = coastlines.load_coastlines()
    assert natural.origin == "Natural Earth 10m"
    assert len(natural.segments) == 1  # cut to the domain
    np.testing.assert_allclose(natural.segments[0], [[120.0, 22.0], [121.0, 25.0]])


@pytest.mark.slow
def test_plot_tool_never_imports_torch_or_earth2studio(ensemble: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from corrdiff_tools.cli import plot_main\n"
        f"rc = plot_main([{str(ensemble)!r}, '--sample', '0', '--time', '0', '--outdir', {str(tmp_path)!r}, '--dpi', '20', '-q'])\n"
        "print(rc, [m for m in ('torch', 'earth2studio', 'physicsnemo') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "corrdiff-2024-07-24T06-sample-00.jpg").is_file()


def make_not_corrdiff(path: Path) -> Path:
    xr.Dataset({"temperature": ("x", [1.0, 2.0])}).to_zarr(path)
    return path


def make_bare_zarr(path: Path) -> Path:
    """A Zarr group whose array has no dimension names (like the package's grid dataset)."""
    import zarr

    zarr.open_group(str(path), mode="w").create_array("XLAT", shape=(4, 4), dtype="float32")
    return path


BAD = [
    (lambda s, t: [str(t / "missing.zarr")], "does not exist"),
    (
        lambda s, t: [str(make_not_corrdiff(t / "other.zarr"))],
        "is not CorrDiff output: it lacks mrr, t2m, u10m, v10m",
    ),
    (lambda s, t: [str(t)], "is not a readable Zarr store"),
    (
        lambda s, t: [str(make_bare_zarr(t / "bare.zarr"))],
        "bare.zarr is a Zarr store but not CorrDiff output: xarray cannot read it as a dataset",
    ),
    (lambda s, t: [str(s), "--sample", "3"], "--sample '3': the store has 3, numbered 0 to 2"),
    (lambda s, t: [str(s), "--sample", "2-1"], "runs backwards"),
    (lambda s, t: [str(s), "--sample", "first"], "use all, N, N,M or A-B"),
    (
        lambda s, t: [str(s), "--time", "2025-01-01T00"],
        "not in the store, which holds 2024-07-24T06:00, 2024-07-24T12:00",
    ),
    (lambda s, t: [str(s), "--time", "5"], "--time '5': the store has 2"),
    (lambda s, t: [str(s), "--time", "yesterday"], "is not an ISO 8601 UTC time"),
    (lambda s, t: [str(s), "--lead-time", "6"], "this store has no lead times"),
    (lambda s, t: [str(s), "--threshold", "rain=3"], "VAR one of mrr, t2m, wind"),
    (lambda s, t: [str(s), "--threshold", "mrr=lots"], "'lots' is not a number"),
    (lambda s, t: [str(s), "--threshold", "mrr=nan"], "must be finite"),
    (lambda s, t: [str(s), "--colormap", "rainbowz"], "is not a matplotlib colormap"),
    (lambda s, t: [str(s), "--gif", str(t / "a.png")], "must end in .gif"),
    (lambda s, t: [str(s), "--fps", "0"], "--fps 0: a GIF frame lasts 0.02 s to 655 s"),
    (lambda s, t: [str(s), "--gif", "--fps", "0.001"], "so use 0.002 to 50 frames per second"),
    (lambda s, t: [str(s), "--fps", "nan"], "--fps nan: a GIF frame lasts"),
    (lambda s, t: [str(s), "--format", "bmp"], "invalid choice: 'bmp'"),
    (lambda s, t: [str(s), "--jobs", "0"], "--jobs must be at least 1"),
    (lambda s, t: [str(s), "--outdir", "/proc/plots"], "cannot write in /proc"),
    # No abbreviations, no silent "last one wins".
    (lambda s, t: [str(s), "--samp", "1"], "unrecognized arguments: --samp 1"),
    (lambda s, t: [str(s), "--dpi", "50", "--dpi", "60"], "--dpi given twice (50, then 60)"),
    (
        lambda s, t: [str(s), "--threshold", "mrr=30", "--threshold", "mrr=40"],
        "--threshold mrr given twice ('mrr=30', then 'mrr=40'): give it once",
    ),
    (
        lambda s, t: [str(s), "--outdir", str(t / ("p" * 300))],
        " (3",  # "--outdir /tmp/...ppp (3xx characters): the system cannot look this path up"
    ),
    (
        lambda s, t: [str(s), "--outdir", str(t / ("p" * 300) / "plots")],
        "the system cannot look this path up (File name too long); choose a shorter",
    ),
    (lambda s, t: [str(t / ("s" * 300))], "STORE /tmp/"),
    (lambda s, t: [str(s), "--gif", "--gif", "b.gif"], "--gif given twice (given alone, then"),
    (
        lambda s, t: [str(s), "--outdir", str(_a_file(t / "afile"))],
        "afile is a file, not a directory: choose another",
    ),
    (lambda s, t: [str(s), "--gif", str(_a_dir(t / "d.gif"))], "d.gif is a directory"),
]


def _a_file(path: Path) -> Path:
    path.write_text("mine")
    return path


def _a_dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize(("make_args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    make_args, message: str, ensemble: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = make_args(ensemble, tmp_path)
    before = sorted(tmp_path.rglob("*"))  # after the case's own set-up
    siblings = sorted(ensemble.parent.iterdir())
    code = plot_main(
        [*argv, "--outdir", str(tmp_path / "plots")] if "--outdir" not in argv else argv
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plot_corrdiff.py: error: ")
    assert message in lines[0]
    assert sorted(tmp_path.rglob("*")) == before
    assert sorted(ensemble.parent.iterdir()) == siblings


def test_plot_lowres_needs_stored_inputs(tmp_path: Path, capsys) -> None:
    path = blog_store(tmp_path / "blog.zarr")
    assert plot_main([str(path), "--plot-lowres"]) == 2
    assert "holds no low-resolution inputs" in capsys.readouterr().err
    assert not (tmp_path / "blog-plots").exists()


def test_plot_lowres_needs_every_input_it_draws(ensemble: Path, tmp_path: Path, capsys) -> None:
    import shutil

    import zarr

    partial = tmp_path / "partial.zarr"
    shutil.copytree(ensemble, partial)
    shutil.rmtree(partial / "lr_u10m")  # t2m is there, one wind component is not
    zarr.consolidate_metadata(str(partial))
    assert plot_main([str(partial), "--plot-lowres"]) == 2
    assert "holds no low-resolution inputs" in capsys.readouterr().err
    assert not (tmp_path / "partial-plots").exists()


def forecast_store(path: Path) -> Path:
    """A small forecast store (2 lead times x 2 samples) written through the store module."""
    from datetime import datetime

    from corrdiff_tools.synthetic import curvilinear_grid

    lat, lon = (a[1:-1, 1:-1] for a in curvilinear_grid())
    layout = store.StoreLayout([datetime(2024, 7, 24, 0)], 2, lat, lon, lead_times=[6, 12])
    store.create_store(path, layout, {}, {})
    writer = store.StoreWriter(path)
    rng = np.random.default_rng(1)
    for lead in range(2):
        fields = {
            name: rng.normal(m, 2, (2, 448, 448))
            for name, m in zip(store.OUTPUT_VARIABLES, (10, 300, 1, 1), strict=True)
        }
        writer.write_samples((0, lead), [0, 1], fields)
    return path


def test_forecast_store_names_files_by_lead_time(tmp_path: Path) -> None:
    path = forecast_store(tmp_path / "fc.zarr")
    assert plot(str(path), "--lead-time", "12", "--sample", "1", "--gif", "--jobs", "1", *FAST) == 0
    names = sorted(p.name for p in drawn_files(tmp_path / "fc-plots"))
    assert names == ["corrdiff-2024-07-24T00-f012-sample-01.jpg", "corrdiff-2024-07-24T00-f012.gif"]
    ds = store.open_store(path)
    context = render.RenderContext(path, render.colour_scales(ds), [], {}, "png", 30)
    fig = render.build_figure(render.Task("sample", 0, 1, 1, Path("x.png")), context)
    assert fig.get_suptitle() == "CorrDiff sample 1 of 2 · valid 2024-07-24 12:00 UTC (+12 h)"
    assert plot(str(path), "--lead-time", "3", *FAST) == 2


def _session_processes(session: int) -> list[int]:
    """Pids of live processes in a session (orphans keep their session id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # field 6 of stat: session id
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    ("signame", "code"),
    # Both slow (workers spawned and stopped); the run tool's signals are in the default run.
    [
        pytest.param("SIGTERM", 143, marks=pytest.mark.slow),
        pytest.param("SIGINT", 130, marks=pytest.mark.slow),
    ],
)
def test_stopping_the_plot_tool_stops_its_workers(
    signame: str, code: int, ensemble: Path, tmp_path: Path
) -> None:
    import signal
    import time

    root = Path(__file__).resolve().parents[1]
    outdir = tmp_path / "plots"
    process = subprocess.Popen(
        [sys.executable, str(root / "plot_corrdiff.py"), str(ensemble), "--jobs", "2",
         "--plot-lowres", "--dpi", "40", "--outdir", str(outdir)],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # A shell's background job starts with SIGINT ignored, and Python then keeps it so:
        # give the tool Ctrl-C as a terminal would, wherever the tests were started from.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(_session_processes(process.pid)) < 3:  # the tool and its two workers
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    started = time.monotonic()
    if signame == "SIGTERM":
        process.send_signal(signal.SIGTERM)  # what kill, SLURM and Kubernetes send
    else:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    assert process.wait(timeout=60) == code
    assert time.monotonic() - started < 20
    # Queued figures were cancelled, not drawn: at most the two in flight got written
    # (the store's 2 times give 6 sample maps and 2 low-res maps).
    assert len([p for p in outdir.rglob("*") if p.is_file()]) <= 2
    _, err = process.communicate()
    assert err.strip().splitlines()[-1] == (
        f"plot_corrdiff.py: {'terminated' if code == 143 else 'interrupted'}"
    )
    for _ in range(50):  # workers and the resource tracker go within a few seconds
        if not _session_processes(process.pid):
            break
        time.sleep(0.1)
    assert _session_processes(process.pid) == []


@pytest.mark.slow
def test_damaged_pieces_are_skipped_with_a_warning_naming_the_file(
    ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(ensemble, damaged)
    (damaged / "t2m" / "c" / "0" / "1" / "0" / "0").unlink()  # time 0, sample 1: lost
    chunk = damaged / "u10m" / "c" / "1" / "2" / "0" / "0"  # time 1, sample 2: cut short
    chunk.write_bytes(chunk.read_bytes()[:100])
    outdir = tmp_path / "plots"
    code = plot_main([str(damaged), "--dpi", "30", "--jobs", "1", "--outdir", str(outdir)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (
        "skipping sample 1 of 2024-07-24T06:00: it is marked complete but its t2m is missing "
        "(a lost chunk reads as NaN); run_corrdiff.py --resume recomputes it"
    ) in err
    assert f"skipping sample 2 of 2024-07-24T12:00: it is marked complete but {chunk} " in err
    assert "cannot be read (" in err
    assert sorted(p.name for p in drawn_files(outdir)) == [
        "corrdiff-2024-07-24T06-sample-00.jpg",
        "corrdiff-2024-07-24T06-sample-02.jpg",
        "corrdiff-2024-07-24T12-sample-00.jpg",
        "corrdiff-2024-07-24T12-sample-01.jpg",
    ]


def test_render_workers_take_the_parents_warning_filters() -> None:
    import signal
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the tools set without --debug
        warnings.filterwarnings("error", message="keep me", category=UserWarning)
        parent = list(warnings.filters)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a fresh process shows everything
            render._start_worker(parent)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            warnings.warn("library chatter", RuntimeWarning, stacklevel=1)
            with pytest.raises(UserWarning, match="keep me"):
                warnings.warn("keep me", UserWarning, stacklevel=1)
        assert caught == []
    finally:
        signal.signal(signal.SIGINT, handler)


# ------------------------------------------------------------------ round three: messier stores


@pytest.mark.slow
def test_an_unwritten_sample_of_a_blog_store_is_missing_not_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """earth2studio's ZarrBackend fills with 0.0: sample 1 was drawn at -273 deg C."""
    path = blog_store(tmp_path / "blog.zarr", samples=2, written=1)
    assert np.asarray(xr.open_zarr(path, consolidated=False)["t2m"][0, 1]).max() == 0.0
    opened = store.open_store(path)
    assert np.isnan(opened["t2m"].values[0, 1]).all()
    assert np.isfinite(opened["t2m"].values[0, 0]).all()
    capsys.readouterr()
    assert (
        plot(str(path), "--stats", "--outdir", str(tmp_path / "o"), "--jobs", "1", "--dpi", "30")
        == 0
    )
    assert sorted(p.name for p in drawn_files(tmp_path / "o")) == [
        "corrdiff-2024-07-24T12-sample-00.jpg"
    ]
    err = capsys.readouterr().err
    assert "skipping corrdiff-2024-07-24T12-sample-01.jpg: that sample is not complete" in err
    assert "skipping corrdiff-2024-07-24T12-stats.jpg: the ensemble is not complete" in err


@pytest.mark.slow
def test_unphysical_fields_of_a_store_are_not_drawn(
    ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every field drawn is checked: linear refc, a sample in deg C, a mean of 1e15 K."""
    import zarr

    tampered = tmp_path / "tampered.zarr"
    shutil.copytree(ensemble, tampered)
    group = zarr.open_group(str(tampered), mode="r+")
    group["lr_refc"][:] = 10 ** (np.asarray(group["lr_refc"][:]) / 10)  # linear Z, not dBZ
    group["t2m"][0, 1] = np.asarray(group["t2m"][0, 1]) - KELVIN
    group["t2m_regression"][0] = np.full((448, 448), 1e15, dtype="float32")
    capsys.readouterr()
    args = ("--time", "0", "--plot-lowres", "--spectra", "--outdir", str(tmp_path / "o"), *FAST[:2])
    assert plot(str(tampered), *args, "--jobs", "1") == 0
    err = capsys.readouterr().err
    assert "lr_refc in " in err and "outside its physical range -100 to 100 dBZ: left out" in err
    assert "t2m_regression in " in err and "outside its physical range 100 to 450 K" in err
    assert "skipping sample 1 of 2024-07-24T06:00: it is marked complete but its t2m spans" in err
    names = sorted(p.name for p in drawn_files(tmp_path / "o"))
    assert names == [
        "corrdiff-2024-07-24T06-lowres.jpg",
        "corrdiff-2024-07-24T06-sample-00.jpg",
        "corrdiff-2024-07-24T06-sample-02.jpg",
        "corrdiff-2024-07-24T06-spectra.jpg",
    ]
    # The low-resolution figure lost its reflectivity panel rather than a blank scale.
    figure = render.build_figure(
        render.Task("lowres", 0, None, None, tmp_path / "x.jpg"),
        render.RenderContext(
            store_path=tampered,
            scales=render.colour_scales(store.open_store(tampered).drop_vars("lr_refc")),
            coastlines=[],
            thresholds={},
            fmt="jpg",
            dpi=30,
            left_out=("lr_refc",),
        ),
    )
    titles = [ax.get_title() for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert titles == ["2 m temperature", "10 m wind speed"]


def test_plot_lowres_of_unphysical_inputs_is_refused(
    ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zarr

    tampered = tmp_path / "celsius.zarr"
    shutil.copytree(ensemble, tampered)
    group = zarr.open_group(str(tampered), mode="r+")
    group["lr_t2m"][:] = np.asarray(group["lr_t2m"][:]) - KELVIN
    capsys.readouterr()
    assert plot(str(tampered), "--plot-lowres", "--outdir", str(tmp_path / "o")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"plot_corrdiff.py: error: --plot-lowres: lr_t2m in {tampered} spans ")
    assert line.endswith(
        "outside its physical range 180 to 340 K: the low-resolution input cannot be drawn; "
        "drop --plot-lowres"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("options", "completed", "fragment"),
    [
        (
            ["--sample", "none", "--spectra"],
            [[0, 0, 0], [1, 1, 1]],
            "nothing to draw: --spectra asked for, and the store's selected samples are not "
            "complete (2024-07-24T06:00: 0 of 3 complete; each needs at least one complete "
            "sample): run_corrdiff.py --resume completes the store",
        ),
        (
            ["--sample", "none", "--stats"],
            [[1, 1, 0], [1, 1, 1]],
            "nothing to draw: --stats asked for, and the store's selected samples are not "
            "complete (2024-07-24T06:00: 2 of 3 complete; --stats needs every sample of a "
            "time, the rest at least one)",
        ),
        (
            ["--sample", "2"],
            [[1, 1, 0], [1, 1, 1]],
            "(2024-07-24T06:00: 2 of 3 complete, none of --sample 2;",
        ),
    ],
)
def test_nothing_to_draw_says_what_was_asked_and_what_the_store_lacks(
    options: list[str],
    completed: list[list[int]],
    fragment: str,
    ensemble: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: "everything is up to date" (and exit 0), or "no ... --stats" with --stats."""
    import zarr

    partial = tmp_path / "partial.zarr"
    shutil.copytree(ensemble, partial)
    zarr.open_group(str(partial), mode="r+")["completed"][:] = np.array(completed, dtype="int8")
    capsys.readouterr()
    code = plot(str(partial), "--time", "0", *options, "--outdir", str(tmp_path / "o"), *FAST)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and fragment in lines[-1], lines
    assert all(
        line.startswith(("skipping ", "no complete sample at 2024-07-24T06:00"))
        for line in lines[:-1]
    )
    assert not (tmp_path / "o").exists()


def test_a_failed_plot_run_leaves_no_empty_outdir(
    ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corrdiff_tools import evaluate

    def broken(*args: object) -> list[Path]:
        raise RuntimeError("the evaluation broke")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    outdir = tmp_path / "new" / "plots"
    assert plot(str(ensemble), "--sample", "none", "--pdf", "--outdir", str(outdir), *FAST) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("duplicate-time", "is a damaged store: its time holds 2024-07-24T06:00 twice"),
        ("nat-time", "is a damaged store: its time has 1 missing value(s) (NaT)"),
        ("nan-lat", "is a damaged store: its 2-D lat has 1 non-finite value(s)"),
    ],
)
def test_a_store_with_damaged_coordinates_is_refused(
    damage: str, message: str, ensemble: Path, tmp_path: Path, capsys
) -> None:
    """Two times drew into one file name; NaT and NaN ended in "unexpected" errors."""
    import zarr

    copy = tmp_path / "c.zarr"
    shutil.copytree(ensemble, copy)
    group = zarr.open_group(str(copy), mode="r+", use_consolidated=False)
    if damage == "duplicate-time":
        times = np.asarray(group["time"][:])
        group["time"][1] = times[0]
    elif damage == "nat-time":
        group["time"][1] = np.datetime64("NaT", "ns")
    else:
        lat = np.asarray(group["lat"][:])
        lat[200, 200] = np.nan
        group["lat"][:] = lat
    zarr.consolidate_metadata(str(copy))
    capsys.readouterr()
    assert plot(str(copy), "--outdir", str(tmp_path / "o"), *FAST) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_gif_path_in_new_folders_is_written(ensemble: Path, tmp_path: Path) -> None:
    """It drew every figure, then failed: "unexpected FileNotFoundError"."""
    gif = tmp_path / "new" / "folders" / "a.gif"
    args = ("--time", "0", "--sample", "0-1", "--outdir", str(tmp_path / "o"))
    assert plot(str(ensemble), *args, "--gif", str(gif), *FAST) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 2
