"""Every run_corrdiff.py / plot_corrdiff.py command in the README parses with today's options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from corrdiff_tools import times
from corrdiff_tools.cli import build_plot_parser, build_run_parser

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


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_parses(command: list[str]) -> None:
    tool, args = Path(command[0]).name, command[1:]
    if tool == "run_corrdiff.py":
        parsed = build_run_parser().parse_args(args)
        assert times.parse_times(parsed.times)
        if parsed.lead_time:
            times.parse_lead_times(parsed.lead_time)
    else:
        build_plot_parser().parse_args(args)
