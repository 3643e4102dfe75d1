"""`nas-neck show ... --latency`: predicted beside measured latency, as a table or JSON lines,
and its option mistakes as one line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.data.synth import generate_synthetic
from nas_neck.dsl import load_space

runner = CliRunner()
SIZE = 128


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The proxy options of a tiny task, sharing one cache (so one latency table) per module."""
    root = tmp_path_factory.mktemp("show-latency")
    data = generate_synthetic(root / "data", n_train=8, n_val=4, size=SIZE, seed=0)
    return [
        "--data",
        str(data.root),
        "--input-size",
        str(SIZE),
        "--cache-dir",
        str(root / "cache"),
        "--threads",
        "1",
    ]


def _run(*argv: str):
    return runner.invoke(app, list(argv), catch_exceptions=False)


@pytest.mark.slow
def test_json_lines_have_hash_predicted_and_measured(args: list[str], monkeypatch) -> None:
    from nas_neck import measure

    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))  # busy: a warning comes
    monkeypatch.setattr(measure, "_busy_warned", False)
    result = _run(
        "show", "pafpn-family", "--sample", "2", "--seed", "4", "--latency", "--json", *args
    )
    assert result.exit_code == 0, result.output
    assert "busy machine" in result.stderr  # the warning is there, beside the JSON, not in it
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    space = load_space("pafpn-family")
    assert [r["hash"] for r in rows] == [space.random(4).hash, space.random(5).hash]
    assert [r["seed"] for r in rows] == [4, 5]
    for r in rows:
        assert r["predicted_ms"] > 0 and r["measured_ms"] > 0
        assert math.isfinite(r["error_pct"]) and r["input_size"] == SIZE and r["threads"] == 1
        assert r["error_pct"] == pytest.approx(100 * (r["predicted_ms"] / r["measured_ms"] - 1))
    (table,) = (Path(args[args.index("--cache-dir") + 1]) / "latency").glob("table-*.json")
    assert json.loads(table.read_text())["fit"] is not None


@pytest.mark.slow
def test_table_of_a_fixed_architecture(args: list[str]) -> None:
    result = _run("show", "light", "--latency", *args)
    assert result.exit_code == 0, result.output
    assert "predicted" in result.output and "measured" in result.output
    assert load_space("light").sample().hash in result.output


def test_show_without_latency_is_unchanged() -> None:
    result = _run("show", "fpn", "--input-size", "128")
    assert result.exit_code == 0 and "hash" in result.output and "predicted" not in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "fpn", "--json"], "--json goes with --latency"),
        (["show", "pafpn-family", "--latency"], "give --sample K with --latency"),
        (["show", "fpn", "--latency", "--threads", "0"], "--threads: expected an integer >= 1"),
        (["show", "fpn", "--latency", "--latency-target", "tvm"], "--latency-target: expected"),
        (["show", "--latency", "--study", "s", "--trial", "0"], "--latency needs a space"),
        (["show", "fpn", "--latency", "--data", "/no/such"], "--data"),
    ],
)
def test_mistakes_are_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    result = _run(*argv, "--cache-dir", str(tmp_path))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "latency").exists()  # refused before any measurement
