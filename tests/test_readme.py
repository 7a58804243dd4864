"""Every run_corrdiff.py / plot_corrdiff.py command in the README parses with today's options."""

from __future__ import annotations

import re
import shlex
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FileForecast

from corrdiff_tools import sampling, synthetic, times
from corrdiff_tools.cli import build_plot_parser, build_run_parser
from corrdiff_tools.models import cmip6

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    commands = []
    for language, block in blocks:
        if language not in ("", "bash", "text"):
            continue
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                for index, word in enumerate(words):
                    if word.endswith(("run_corrdiff.py", "plot_corrdiff.py")) and "[" not in part:
                        commands.append(words[index:])
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_both_tools() -> None:
    tools = {Path(c[0]).name for c in COMMANDS}
    assert tools == {"run_corrdiff.py", "plot_corrdiff.py"}
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("build", [build_run_parser, build_plot_parser], ids=["run", "plot"])
def test_every_option_has_help_and_is_in_the_readme_with_its_choices(build: Any) -> None:
    text = README.read_text()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    for action in build()._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = max(action.option_strings, key=len)
        assert action.help, f"{name} has no --help text"

        def named(line: str, action: Any = action) -> bool:  # as a whole option, not a prefix
            return any(
                re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", line)
                for option in action.option_strings
            )

        assert named(text), f"{name} is not in the README"
        if action.choices:
            row = " ".join(line for line in rows if named(line))
            missing = [c for c in action.choices if str(c) not in row]
            assert not missing, f"{name}: the README's option table lacks {missing}"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_parses(command: list[str]) -> None:
    tool, args = Path(command[0]).name, command[1:]
    if tool == "run_corrdiff.py":
        parsed = build_run_parser().parse_args(args)
        assert parsed.benchmark or times.parse_times(parsed.times)
        if parsed.lead_time and parsed.model == "cmip6":
            times.parse_window_leads(parsed.lead_time, cmip6.OUTPUT_LEADS, "CorrDiffCMIP6")
        elif parsed.lead_time:
            times.parse_lead_times(parsed.lead_time)
    else:
        build_plot_parser().parse_args(args)


# --------------------------------------------------------------------------- run them all

#: What the README commands are allowed to change when run here (tiny model, 2 CPU cores):
#: at most 4 samples and 2 steps (4 from sigma 800, which 2 cannot bring to a physical
#: field, as the tool's per-batch check rightly says), ranges cut to their first 3 times,
#: the offline package and inputs (an input file a command names is made if no earlier
#: command made it), outputs outside the working directory brought into it, CPU, and
#: --resume where an earlier command already wrote the same store (--overwrite where its
#: settings differ).
MAX_TIMES = 3
MAX_SAMPLES = 4
RUN_LIMITS = ["--device", "cpu"]
STEPS = "2"
#: Steps for commands that start at the paper's sigma_max 800 (2 steps end at mrr +-22000 dBZ).
WIDE_SIGMA_STEPS = "4"
SOURCE_NAMES = ("gfs", "gfs-forecast", "era5")
PLOT_LIMITS = ["--dpi", "30", "--jobs", "1"]


def _cut_range(text: str) -> str:
    """START/END[/STEP] -> START/<START + (MAX_TIMES - 1) steps>[/STEP], if longer."""
    parsed = times.parse_times([text])
    if len(parsed) <= MAX_TIMES:
        return text
    step = parsed[1] - parsed[0]
    end = parsed[0] + (MAX_TIMES - 1) * step
    parts = text.split("/")
    parts[1] = f"{end:%Y-%m-%dT%H}"
    return "/".join(parts)


def _adapt_run(
    args: list[str],
    package: Path,
    inputs: Path | None = None,
    generic: Path | None = None,
    climate: tuple[Path, Path] | None = None,
) -> list[str]:
    """A README run command, made to run here (see the limits above).

    A command's ``--model FOLDER`` (a relative path, kept as typed) is made a link to
    ``generic``, a tiny generic package that reads some of Taiwan's inputs on part of its
    grid, so the same input file serves both. ``--model cmip6`` gets ``climate``: a tiny
    CorrDiffCMIP6 package and a file of the daily fields its times read, which stands in
    for the CMIP6 archive (``--source cmip6:...``) as Taiwan's file stands in for GFS.
    """
    from corrdiff_tools import store

    given = build_run_parser().parse_args(args)
    out = []
    words = iter(args)
    for word in words:
        if word in ("--model-package", "--samples", "--steps", "--device"):
            next(words)  # replaced by the offline package and the limits below
            continue
        if word == "--model":
            model = next(words)
            if (
                model not in ("taiwan", "cmip6")
                and generic is not None
                and not Path(model).exists()
            ):
                Path(model).symlink_to(generic)  # the README's relative path, as typed
            out += [word, model]
            continue
        if word == "--source" and given.model == "cmip6" and climate is not None:
            next(words)
            out += [word, str(climate[1])]
            continue
        if word == "--output":
            out += [word, Path(next(words)).name]  # /scratch/... -> the working directory
            continue
        out.append(_cut_range(word) if word in given.times else word)
    source = Path(given.source)
    if inputs is not None and given.source not in SOURCE_NAMES and not source.exists():
        shutil.copy(inputs, source)  # e.g. the SLURM example's season.nc
    samples = ["--samples", str(min(given.samples, MAX_SAMPLES))]
    settings = sampling.resolve(given.preset, given.sampler, {"sigma_max": given.sigma_max})
    steps = ["--steps", WIDE_SIGMA_STEPS if settings.sigma_max > 100 else STEPS]
    if given.model == "taiwan" and not given.benchmark:  # --benchmark: random weights
        out += ["--model-package", str(package)]
    if given.model == "cmip6":
        out += ["--model-package", str(climate[0] if climate is not None else package)]
    out += [*samples, *steps, *RUN_LIMITS]
    parsed = build_run_parser().parse_args(out)
    if parsed.benchmark:
        return [*out, "--benchmark-size", "tiny"]
    if parsed.prefetch is None and not (parsed.resume or parsed.overwrite):
        forecast = parsed.source == "gfs-forecast"
        named = "cmip6" if parsed.model == "cmip6" else ""
        target = parsed.output or store.default_output(
            times.parse_times(parsed.times), forecast, named
        )
        if target.exists():
            out.append("--resume")  # as a user would; --overwrite if the settings differ
    return out


def prepare_plot_inputs(args: list[str], directory: Path) -> None:
    """Make the reference file a README ``--truth`` command names, from its store."""
    if "--truth" not in args:
        return
    truth = directory / args[args.index("--truth") + 1]
    if truth.exists():
        return
    from corrdiff_tools.store import OUTPUT_VARIABLES, open_store

    dataset = open_store(directory / args[0])
    rng = np.random.default_rng(0)
    fields = {
        name: (
            ("time", "y", "x"),
            dataset[name].isel(sample=0).values
            + rng.normal(0, 0.5, dataset[name].shape[:1] + dataset[name].shape[2:]),
            {"units": dataset[name].attrs["units"]},
        )
        for name in OUTPUT_VARIABLES
    }
    import xarray as xr

    xr.Dataset(fields, coords={"time": dataset["time"].values}).to_netcdf(truth)


def _readme_times() -> list[datetime]:
    """Every valid time the (cut) README run commands can ask a source for."""
    wanted: set[datetime] = set()
    for command in COMMANDS:
        if Path(command[0]).name != "run_corrdiff.py":
            continue
        parsed = build_run_parser().parse_args(_adapt_run(command[1:], Path("pkg")))
        if parsed.model == "cmip6":
            continue  # reads a file of daily fields of its own (_daily_fields)
        leads = times.parse_lead_times(parsed.lead_time) if parsed.lead_time else [0]
        for time in times.parse_times(parsed.times) if parsed.times else []:
            wanted.update(time + timedelta(hours=lead) for lead in leads)
    return sorted(wanted)


def _climate(directory: Path) -> tuple[Path, Path]:
    """A tiny CorrDiffCMIP6 package, and the daily fields the README's times read."""
    import xarray as xr

    from corrdiff_tools import sources

    variables = ("t2m", "u10m", "siconc", "snc")
    out_grid = (np.linspace(-90.0, 90.0, 25), np.arange(64) * 5.625)
    in_grid = (np.linspace(-90.0, 90.0, 9), np.arange(16) * 22.5)
    package = synthetic.build_cmip6_package(
        directory / "cmip6-package", variables, ("t2m", "u10m"), out_grid, in_grid,
        synthetic.cmip6_invariants(out_grid[0], out_grid[1].size),
        metadata={"number_of_steps": 2, "sigma_max": 80.0},
    )  # fmt: skip
    days: set[datetime] = set()
    for command in COMMANDS:
        if Path(command[0]).name == "run_corrdiff.py":
            parsed = build_run_parser().parse_args(command[1:])
            if parsed.model == "cmip6":
                for time in times.parse_times(parsed.times):
                    days.update(time + timedelta(hours=h) for h in cmip6.INPUT_LEADS)
    order = sorted(days)
    rng = np.random.default_rng(2)
    shape = (len(order), 1, in_grid[0].size, in_grid[1].size)
    data = np.concatenate(
        [280.0 + 5.0 * rng.standard_normal(shape), 3.0 * rng.standard_normal(shape),
         np.full(shape, 20.0), np.full(shape, 10.0)], axis=1,
    ).astype("float32")  # fmt: skip
    array: xr.DataArray = sources.input_dataarray(data, order, list(variables), *in_grid)
    array.to_netcdf(directory / "cmip6-daily.nc")
    return package, directory / "cmip6-daily.nc"


def test_the_readme_runs_corrdiffcmip6() -> None:
    """The contract reaches the CorrDiffCMIP6 section (its run is in the next test)."""
    models = [
        build_run_parser().parse_args(c[1:]).model
        for c in COMMANDS
        if Path(c[0]).name == "run_corrdiff.py"
    ]
    assert "cmip6" in models


@pytest.mark.slow
def test_every_readme_command_runs_offline(
    package_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each README command, in README order, against the tiny package and local inputs."""

    from corrdiff_tools import sources
    from corrdiff_tools.cli import plot_main, run_main
    from corrdiff_tools.synthetic import synthetic_inputs

    inputs = tmp_path / "readme-inputs.nc"
    synthetic_inputs(_readme_times(), seed=1).to_netcdf(inputs)
    # A generic package reading 4 of Taiwan's inputs on a box inside Taiwan's input grid.
    generic = synthetic.build_generic_package(
        tmp_path / "generic-package",
        ("t2m", "u10m", "v10m", "tcwv"),
        ("t2m", "u10m", "v10m"),
        synthetic.regular_grid(22.0, 119.0, (16, 24), 0.0625),
        synthetic.regular_grid(21.0, 118.0, (10, 12), 0.25),
        metadata={"sampler_type": "deterministic", "number_of_steps": 2, "sigma_max": 80.0},
    )
    climate = _climate(tmp_path)
    real_build_source = sources.build_source

    def offline(spec: Any, wanted: Any) -> Any:
        if spec.kind == "file":
            return real_build_source(spec, wanted)
        if spec.is_forecast:
            return FileForecast(inputs)
        return real_build_source(sources.SourceSpec("file", inputs), wanted)

    monkeypatch.chdir(tmp_path)
    ran = {"run_corrdiff.py": 0, "plot_corrdiff.py": 0}
    for command in COMMANDS:
        tool = Path(command[0]).name
        capsys.readouterr()
        if tool == "run_corrdiff.py":
            args = _adapt_run(command[1:], package_dir, inputs, generic, climate)
            # CorrDiffCMIP6 reads its daily file through the real file source.
            cmip6_run = build_run_parser().parse_args(args).model == "cmip6"
            injected = None if cmip6_run else offline
            code = run_main(args, build_source=injected)
            if (
                code == 2
                and "--resume" in args
                and "was made with other settings" in capsys.readouterr().err
            ):
                args = [word if word != "--resume" else "--overwrite" for word in args]
                code = run_main(args, build_source=injected)
        else:
            prepare_plot_inputs(command[1:], tmp_path)
            limited = {PLOT_LIMITS[i] for i in range(0, len(PLOT_LIMITS), 2)}
            kept, words = [], iter(command[1:])
            for word in words:
                if word in limited:
                    next(words)  # replaced by the limits
                    continue
                kept.append(word)
            args = [*kept, *PLOT_LIMITS]
            code = plot_main(args)
        err = capsys.readouterr().err
        assert code == 0, f"{' '.join(command)}\n(ran as {args})\n{err}"
        ran[tool] += 1
    assert min(ran.values()) >= 3


def test_the_offline_hint_names_a_readme_section_that_exists() -> None:
    from corrdiff_tools.sources import OFFLINE_HINT

    section = re.search(r"README's '([^']+)'", OFFLINE_HINT)
    assert section is not None and f"\n## {section[1]}\n" in README.read_text()
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "(#offline-and-hpc-use)" in quick_start
