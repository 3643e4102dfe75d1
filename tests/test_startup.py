"""The command line starts without the heavy libraries: `nas-neck --help` (every command's help)
imports none of torch, mlflow, ray, optuna, timm, pandas or matplotlib, and `nas-neck spaces`
none but what the DSL needs. What makes that possible is checked here too: the DSL reads the op
registries' names from the ops source until torch is loaded (`nas_neck.dsl.opnames`), `show`
knows the default backbone's channels, and optuna's log level is set when optuna loads.

Not timed (a loaded machine would make it flaky): what is asserted is what gets imported."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "mlflow", "ray", "optuna", "timm", "pandas", "matplotlib")


def _run(*code: str) -> dict:
    """Run the `code` parts in a fresh interpreter; they print one JSON object as the last line."""
    source = "\n".join(textwrap.dedent(part) for part in code)
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_LOADED = f"""
import json, sys
heavy = {HEAVY!r}
print(json.dumps({{
    "codes": codes,
    "loaded": sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy)),
}}))
"""


def test_help_imports_no_heavy_library():
    out = _run(
        """
        from typer.testing import CliRunner
        from nas_neck.cli import app
        runner = CliRunner()
        commands = [[], ["show"], ["train"], ["search"], ["confirm"], ["worker"], ["pareto"],
                    ["export"], ["predict"], ["spaces"], ["data"], ["data", "synth"],
                    ["data", "check"], ["data", "convert-agar"]]
        codes = [runner.invoke(app, [*c, "--help"]).exit_code for c in commands]
        """,
        _LOADED,
    )
    assert set(out["codes"]) == {0}, out
    assert out["loaded"] == [], f"--help imported {out['loaded']}"


def test_usage_errors_and_refused_sizes_import_no_heavy_library():
    out = _run(
        """
        from typer.testing import CliRunner
        from nas_neck.cli import app
        runner = CliRunner()
        codes = [runner.invoke(app, args).exit_code for args in (
            ["search", "--trials", "abc"], ["search", "--trails", "3"], ["train"],
            ["show", "fpn", "--input-size", "100000"], ["predict", "p.jpg", "--tile", "100000"],
            ["data", "synth", "--size", "100000"],
        )]
        """,
        _LOADED,
    )
    assert out["codes"] == [2, 2, 2, 1, 1, 1], out
    assert out["loaded"] == [], out


def test_spaces_imports_no_search_or_tracking_library():
    out = _run(
        """
        from typer.testing import CliRunner
        from nas_neck.cli import app
        result = CliRunner().invoke(app, ["spaces"])
        assert "pafpn" in result.output, result.output
        codes = [result.exit_code]
        """,
        _LOADED,
    )
    assert out["codes"] == [0]
    assert out["loaded"] == [], out


def test_the_dsl_checks_and_hashes_spaces_without_torch():
    out = _run(
        """
        from nas_neck.dsl import load_space, shipped_names
        codes = [len(load_space(n).sample().hash) for n in shipped_names() if load_space(n).is_fixed]
        """,
        _LOADED,
    )
    assert out["codes"], out
    assert "torch" not in out["loaded"], out


def test_the_op_names_read_from_source_are_the_registries():
    """What `nas_neck.dsl.opnames` reads from the ops source is what the registries hold once
    imported (a fresh interpreter: no test has registered anything there)."""
    out = _run(
        """
        import json
        from nas_neck.dsl.opnames import REGISTRIES, declared_ops
        declared = declared_ops()
        import nas_neck.ops as ops
        from nas_neck.ops.fusion import fusion_is_ordered
        print(json.dumps({
            "declared": None if declared is None else {k: list(v) for k, v in declared.names.items()},
            "live": {r: list(getattr(ops, r)) for r in REGISTRIES},
            "declared_ordered": None if declared is None else sorted(declared.ordered),
            "live_ordered": sorted(op for op in ops.FUSE_OPS if fusion_is_ordered(op)),
        }))
        """
    )
    assert out["declared"] is not None, "the ops source declares a registry in a form not read"
    assert out["declared"] == out["live"]
    assert out["declared_ordered"] == out["live_ordered"]


def test_ops_registered_at_runtime_are_accepted(monkeypatch):
    import nas_neck.ops as ops
    from nas_neck.dsl.opnames import fusion_is_ordered, op_names

    monkeypatch.setitem(ops.BLOCKS, "test_only_block", ops.BLOCKS["conv"])
    monkeypatch.setitem(ops.FUSE_OPS, "test_only_gate", ops.Fusion(lambda n, c: None, ordered=True))
    assert op_names("BLOCKS")[-1] == "test_only_block"
    assert fusion_is_ordered("test_only_gate") and not fusion_is_ordered("sum")


def test_the_reader_takes_literals_and_added_keys_and_leaves_the_rest():
    from nas_neck.dsl.opnames import _read

    tree = ast.parse(
        textwrap.dedent(
            """
            BLOCKS: dict = {"a": f, "b": g}
            BLOCKS["c"] = h
            FUSE_OPS = {"sum": Fusion(s), "gate": Fusion(t, ordered=True)}
            FUSE_OPS["late"] = Fusion(u, ordered=True)
            UPSAMPLE_MODES = dict(nearest=1)
            DOWNSAMPLE_MODES = {**other}
            """
        )
    )
    found: dict[str, list[str]] = {}
    ordered: set[str] = set()
    for node in tree.body:
        _read(node, found, ordered)
    assert found == {"BLOCKS": ["a", "b", "c"], "FUSE_OPS": ["sum", "gate", "late"]}
    assert ordered == {"gate", "late"}  # the registries not read: imported instead


def test_the_default_backbone_is_known_without_timm():
    import timm

    from nas_neck.config import DEFAULT_BACKBONE, DEFAULT_BACKBONE_CHANNELS

    assert timm.is_model(DEFAULT_BACKBONE)
    body = timm.create_model(DEFAULT_BACKBONE, pretrained=False, features_only=True)
    by_stride = dict(zip(body.feature_info.reduction(), body.feature_info.channels(), strict=True))
    assert {lv: by_stride[2**lv] for lv in DEFAULT_BACKBONE_CHANNELS} == DEFAULT_BACKBONE_CHANNELS


def test_optuna_log_level_is_set_when_optuna_loads_later():
    out = _run(
        """
        import json, logging, sys
        from nas_neck.cli.console import setup_logging
        setup_logging(verbose=False)
        before = "optuna" in sys.modules
        import optuna
        quiet = optuna.logging.get_verbosity()
        setup_logging(verbose=True)
        print(json.dumps({"before": before, "quiet": quiet,
                          "verbose": optuna.logging.get_verbosity()}))
        """
    )
    assert out == {"before": False, "quiet": 30, "verbose": 20}
