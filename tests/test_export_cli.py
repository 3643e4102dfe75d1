"""`nas-neck export` from a checkpoint or a study trial, and the usage example on its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.config import TrainConfig
from nas_neck.detect.trainer import Detector, save_checkpoint
from nas_neck.dsl import load_architecture
from nas_neck.export import load_standalone

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny convs are far slower with two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint(path: Path, name: str = "light", map_: float = 0.25) -> Path:
    """A checkpoint as `nas-neck train` / the search write it, with non-trivial BatchNorms."""
    arch = load_architecture(ROOT / "search_spaces" / f"{name}.yaml")
    config = TrainConfig(head_width=32, head_convs=1)
    model = Detector(arch, [40, 112, 320], num_classes=2, config=config)
    with torch.no_grad():
        for m in model.neck.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    meta = {
        "metrics": {"map": map_, "ap50": 0.5},
        "config": config.model_dump(),
        "input_size": 96,
        "backbone": "tf_efficientnet_lite0",
        "category_ids": [1, 2],
        "category_names": ["E.coli", "S.aureus"],
    }
    return save_checkpoint(path, model, arch, meta)


def _study(tmp_path: Path) -> str:
    """A finished study: two trained trials (0 slow and good, 1 fast) and one over budget."""
    storage = f"sqlite:///{tmp_path / 'nas.db'}"
    study = optuna.create_study(
        study_name="s", storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["map", "latency_ms"])
    for number, (name, map_, latency) in enumerate([("pafpn", 0.4, 9.0), ("light", 0.3, 2.0)]):
        ckpt = _checkpoint(tmp_path / f"trial-{number}.pt", name, map_)
        attrs = {"checkpoint": str(ckpt), "map": map_, "latency_ms": latency, "latency_threads": 2}
        study.add_trial(optuna.trial.create_trial(values=[map_, latency], user_attrs=attrs))
    over = {"infeasible": True, "latency_ms": 30.0}
    study.add_trial(optuna.trial.create_trial(values=[0.0, 30.0], user_attrs=over))
    return storage


def test_export_checkpoint_writes_a_checked_folder(tmp_path):
    ckpt = _checkpoint(tmp_path / "run" / "checkpoint.pt")
    (tmp_path / "run" / "metrics.json").write_text(
        json.dumps({"latency_ms": 1.25, "latency_threads": 4})
    )
    out = tmp_path / "export"
    arch = ROOT / "search_spaces" / "light.yaml"
    args = [
        "export",
        "--checkpoint",
        str(ckpt),
        "--arch",
        str(arch),
        "--out",
        str(out),
        "--fuse",
        "--onnx",
    ]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "exported light [b1156bd26627] from checkpoint" in " ".join(result.output.split())
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["checks"]["fused_diff"] < 1e-4 and len(manifest["checks"]["onnx_diffs"]) == 2
    assert manifest["fused"] and manifest["head"]["num_classes"] == 2
    assert manifest["search"]["latency_ms"] == 1.25 and manifest["search"]["map"] == 0.25
    assert manifest["categories"] == ["E.coli", "S.aureus"]
    code = (out / "neck.py").read_text()
    assert "mAP 0.2500" in code and "neck latency 1.25 ms (batch 1, 4 threads)" in code
    assert (out / "neck.onnx").exists()


def test_export_study_trial_knee_and_budget(tmp_path):
    storage = _study(tmp_path)
    picks = {"--trial 0": "pafpn", "--knee": None, "--max-latency-ms 5": "light"}
    for flag, expected in picks.items():
        out = tmp_path / flag.replace(" ", "").strip("-")
        args = ["export", "--study", "s", "--storage", storage, *flag.split(), "--out", str(out)]
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 0, result.output
        name = json.loads((out / "export.json").read_text())["name"]
        assert expected is None or name == expected, flag
        assert "of study s" in (out / "neck.py").read_text()
    neck = load_standalone(tmp_path / "trial0" / "neck.py").Neck.from_pretrained()
    assert list(neck.out_channels) == [64, 128, 256]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to export"),
        (["--study", "s"], "exactly one of --trial N, --knee or --max-latency-ms"),
        (
            ["--study", "s", "--trial", "2"],
            "trial 2 has no checkpoint: it was over the latency budget",
        ),
        (["--study", "s", "--trial", "7"], "has no trial 7"),
        (["--study", "nope", "--trial", "0"], "no study 'nope'"),
        (["--study", "s", "--max-latency-ms", "1"], "at most 1.0 ms"),
        (["--trial", "0"], "pass --study too"),
        (["--checkpoint", "missing.pt"], "no such checkpoint file"),
        (["--checkpoint", "c.pt", "--data", "d"], "--data only matter with --retrain-epochs"),
        (["--checkpoint", "c.pt", "--unfreeze-after", "1"], "--unfreeze-after only matter"),
    ],
)
def test_export_errors_are_one_clear_line(tmp_path, args, message):
    storage = _study(tmp_path) if "--study" in args else "sqlite:///unused.db"
    full = ["export", *args, "--out", str(tmp_path / "out")]
    if "--study" in args:
        full += ["--storage", storage]
    result = runner.invoke(app, full, terminal_width=300)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_export_refuses_a_mismatched_arch(tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    args = [
        "export",
        "--checkpoint",
        str(ckpt),
        "--arch",
        str(ROOT / "search_spaces" / "fpn.yaml"),
        "--out",
        str(tmp_path / "out"),
    ]
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 1 and "pass the matching --arch" in result.output


def test_usage_example_runs_backbone_neck_and_head(tmp_path):
    """examples/export_usage.py: timm features_only backbone -> exported neck -> our head."""
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    example = ROOT / "examples" / "export_usage.py"
    run = subprocess.run(
        [sys.executable, str(example), str(out), "--random-backbone", "--size", "128"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "P3: (1, 48, 16, 16)" in run.stdout and "P5: (1, 48, 4, 4)" in run.stdout
    assert "head: cls (1, 336, 2), boxes (1, 336, 4)" in run.stdout


@pytest.mark.slow
def test_retrain_then_export(tmp_path):
    """--retrain-epochs trains the architecture again on the given data and exports that."""
    from nas_neck.data.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "data", n_train=8, n_val=4, size=96, seed=0)
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "export"
    args = [
        "export",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--retrain-epochs",
        "2",
        "--data",
        str(data.root),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint.pt").exists()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["search"]["origin"].endswith("retrained for 2 epochs")
    assert manifest["search"]["map"] != 0.25  # the retrained model's own score
    assert manifest["head"]["num_classes"] == len(manifest["categories"]) == 4  # synthetic plates


@pytest.mark.slow
def test_unfreeze_after_tunes_and_exports_the_backbone(tmp_path):
    """--unfreeze-after K: K epochs on the frozen cache, then the backbone trains too; its tuned
    weights are exported and the usage example loads them."""
    from safetensors.torch import load_file

    from nas_neck.backbone import FrozenBackbone
    from nas_neck.data.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "data", n_train=8, n_val=4, size=96, seed=0)
    ckpt = _checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "export"
    args = [
        "export",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--retrain-epochs",
        "3",
        "--unfreeze-after",
        "1",
        "--data",
        str(data.root),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    tuned = load_file(out / "backbone.safetensors")
    original = FrozenBackbone("tf_efficientnet_lite0", (3, 4, 5)).body.state_dict()
    assert set(tuned) == set(original)
    changed = [k for k in tuned if not torch.equal(tuned[k], original[k])]
    assert any(k.startswith("blocks.") for k in changed)  # the deepest stages trained
    stats = [k for k in tuned if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(tuned[k], original[k]) for k in stats)  # BatchNorm statistics kept
    assert "backbone.safetensors" in (out / "README.md").read_text()
    assert (
        "backbone tuned after epoch 1"
        in json.loads((out / "export.json").read_text())["search"]["origin"]
    )
    example = ROOT / "examples" / "export_usage.py"
    run = subprocess.run(
        [sys.executable, str(example), str(out), "--random-backbone"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert run.returncode == 0, run.stderr[-3000:]
