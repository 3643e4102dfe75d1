"""A mistake typer finds itself (a value it cannot parse, an unknown option or command, a missing
option or argument) is one red `error:` line and exit 2, like click's exit code: no usage box, no
"Usage:" lines, no "Try --help" (`nas_neck/cli/usage.py`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.cli.usage import closest

runner = CliRunner()
BOILERPLATE = ("Usage:", "Try ", "--help", "╭", "│", "Traceback", "Error ")


def _one_line(args: list[str]) -> str:
    result = runner.invoke(app, args, terminal_width=300)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    for text in BOILERPLATE:
        assert text not in result.output, result.output
    assert lines[0].startswith("error: "), result.output
    return lines[0]


CASES = [
    # a value typer cannot parse
    (["search", "--trials", "abc"], "error: --trials: expected an integer, got 'abc'"),
    (
        ["search", "--max-latency-ms", "fast"],
        "error: --max-latency-ms: expected a number, got 'fast'",
    ),
    (["show", "fpn", "--input-size", "5x"], "error: --input-size: expected an integer, got '5x'"),
    (["data", "synth", "--size", "big"], "error: --size: expected an integer, got 'big'"),
    # an unknown option, with the closest real one
    (["search", "--trails", "3"], "error: no such option --trails (did you mean --trials?)"),
    (
        ["search", "--input-sise", "3"],
        "error: no such option --input-sise (did you mean --input-size?)",
    ),
    (["show", "fpn", "--lat"], "error: no such option --lat (did you mean --latency?)"),
    (["--verbos", "spaces"], "error: no such option --verbos (did you mean --verbose?)"),
    (["search", "--zzzz"], "error: no such option --zzzz"),
    # a missing required option or argument
    (["train"], "error: missing option --arch"),
    (["confirm"], "error: missing option --study"),
    (["predict"], "error: missing argument SOURCE"),
    (["data", "check"], "error: missing argument PATH"),
    # an unknown command
    (["serch"], "error: no such command 'serch' (did you mean search?)"),
    (["data", "synt"], "error: no such command 'synt' (did you mean synth?)"),
    (["frobnicate"], "error: no such command 'frobnicate'"),
    # an option without its value, an argument too many
    (["search", "--trials"], "error: option '--trials' requires an argument"),
    (["spaces", "extra"], "error: got unexpected extra argument(s) (extra)"),
]


@pytest.mark.parametrize(("args", "line"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_usage_mistake_is_one_line_and_exit_2(args, line):
    assert _one_line(args) == line


def test_the_closest_option_or_command():
    assert closest("--trails", ["--trials", "--threads", "--eta"]) == "--trials"
    assert closest("--bogus", ["--verbose", "--help"]) is None  # the dashes alone do not match
    assert closest("serch", ["search", "show", "spaces"]) == "search"
    assert closest("x", []) is None


def test_help_and_a_bare_group_still_show_help():
    assert runner.invoke(app, ["--help"]).exit_code == 0
    assert runner.invoke(app, ["search", "--help"]).exit_code == 0
    for args in ([], ["data"]):
        result = runner.invoke(app, args)
        assert "Usage" in result.output and "error:" not in result.output, result.output


def test_an_option_the_command_checks_still_exits_1():
    """Values that parse but are not allowed are the command's own one line (exit 1)."""
    result = runner.invoke(app, ["search", "--trials", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --trials: expected an integer >= 1, got 0"


def _script() -> list[str]:
    found = Path(sys.executable).with_name("nas-neck")
    if found.exists():
        return [str(found)]
    path = shutil.which("nas-neck")
    if path is None:
        pytest.skip("the nas-neck console script is not installed")
    return [path]


@pytest.mark.parametrize(
    "command",
    [_script, lambda: [sys.executable, "-m", "nas_neck"]],
    ids=["console-script", "python-m"],
)
def test_the_console_script_prints_the_same_red_line_to_stderr(command, tmp_path):
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "200"}
    bad = subprocess.run(
        [*command(), "search", "--trails", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert len(lines) == 1, bad.stderr
    assert "no such option --trails (did you mean --trials?)" in lines[0]
    # the same red `error:` as `fail` prints (a value the command refuses)
    refused = subprocess.run(
        [*command(), "search", "--trials", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert refused.returncode == 1
    red = refused.stdout.split("error:")[0] + "error:"
    assert "\x1b[" in red and lines[0].startswith(red), (red, lines[0])
