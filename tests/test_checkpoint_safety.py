"""Checkpoints cannot run code: every torch file nas-neck reads is loaded weights-only.

A crafted file (a pickle whose unpickling touches a marker file or calls `os.system`, alone or
inside an otherwise valid-looking checkpoint) is refused in one line naming it and the globals
it holds, through the Python loaders, `nas-neck predict --checkpoint` and `nas-neck export
--checkpoint`, and the marker never appears. What nas-neck itself writes (`nas-neck train`,
`save_checkpoint` with any metadata) loads back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from predict_fixtures import make_checkpoint, one_thread, plate, save  # noqa: F401 (autouse)
from search_fixtures import SIZE
from typer.testing import CliRunner

from nas_neck.backbone import FrozenBackbone
from nas_neck.cli import app
from nas_neck.config import TrainConfig
from nas_neck.data.synth import generate_synthetic
from nas_neck.detect.trainer import load_checkpoint, save_checkpoint
from nas_neck.errors import CheckpointError
from nas_neck.predict.sources import from_checkpoint
from nas_neck.safeload import REFUSED, load_torch_file, plain

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


class _Touch:
    """Unpickled, touches `marker` (pickled as getattr(PosixPath, "touch")(PosixPath(marker)))."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _System:
    """Unpickled, runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


class _Exec:
    """Unpickled, runs Python source that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


# (payload class, how the file is written) -> the globals the refusal names
CRAFTED = {
    "touch_in_meta": (_Touch, "checkpoint", ["builtins.getattr", "pathlib.Path"]),
    "system_in_meta": (_System, "checkpoint", [f"{os.system.__module__}.system"]),
    "exec_in_meta": (_Exec, "checkpoint", ["builtins.exec"]),
    "touch_bare": (_Touch, "bare", ["builtins.getattr", "pathlib.Path"]),
    "system_raw_pickle": (_System, "raw_pickle", [f"{os.system.__module__}.system"]),
    "touch_legacy_format": (_Touch, "legacy", ["builtins.getattr", "pathlib.Path"]),
}


def _crafted(path: Path, marker: Path, case: str) -> Path:
    """A file that runs code (creating `marker`) when unpickled without weights_only."""
    kind, form, _ = CRAFTED[case]
    payload = kind(marker)
    if form == "checkpoint":  # a valid nas-neck checkpoint with one poisoned meta entry
        good = torch.load(make_checkpoint(path.with_name("good.pt")), weights_only=True)
        good["meta"]["note"] = payload
        torch.save(good, path)
    elif form == "bare":
        torch.save(payload, path)
    elif form == "legacy":  # torch's pre-1.6 format: a few pickles, no zip archive
        torch.save({"state_dict": {}, "meta": payload}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"state_dict": {}, "meta": payload}, protocol=5))
    return path


def _assert_refused(message: str, path: Path, case: str) -> None:
    assert message.startswith(f"{path}: {REFUSED} (it holds "), message
    for name in CRAFTED[case][2]:
        assert name in message
    assert message.endswith("nas-neck checkpoints hold only weights and plain metadata")
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize("case", ["touch_in_meta", "system_in_meta"])
def test_the_crafted_files_do_run_code_when_loaded_unsafely(tmp_path: Path, case: str) -> None:
    """The test's own check: without weights_only each crafted file creates its marker."""
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "bad.pt", marker, case)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("case", list(CRAFTED))
def test_python_loaders_refuse_a_file_that_would_run_code(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "bad.pt", marker, case)
    for load in (load_checkpoint, from_checkpoint, load_torch_file):
        with pytest.raises(CheckpointError) as failure:
            load(path)
        _assert_refused(str(failure.value), path, case)
    assert not marker.exists()


def test_the_refusal_holds_when_the_environment_asks_for_unsafe_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "bad.pt", marker, "exec_in_meta")
    with pytest.raises(CheckpointError, match="refused: loading it would run code"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["touch_in_meta", "system_raw_pickle"])
def test_predict_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "bad.pt", marker, case)
    photo = save(plate(), tmp_path / "plate.jpg")
    args = ["predict", str(photo), "--checkpoint", str(path), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(1), not an escaped error
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    _assert_refused(lines[0].removeprefix("error: "), path, case)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["exec_in_meta", "touch_legacy_format"])
def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "bad.pt", marker, case)
    out = tmp_path / "x"
    args = ["export", "--checkpoint", str(path), "--out", str(out)]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    _assert_refused(lines[0].removeprefix("error: "), path, case)
    assert not marker.exists() and not out.exists()


def test_backbone_weights_that_would_run_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"conv_stem.weight": torch.zeros(1)}, "x": _System(marker)}, path)
    with pytest.raises(CheckpointError) as failure:
        FrozenBackbone(weights=path)
    _assert_refused(str(failure.value), path, "system_in_meta")
    assert not marker.exists()


def test_an_older_checkpoint_with_objects_in_its_meta_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    """A checkpoint whose meta held numpy scalars and paths (what an older writer could store)
    cannot load weights-only: refused in the same form, saying to retrain or re-save it."""
    good = torch.load(make_checkpoint(tmp_path / "good.pt"), weights_only=True)
    good["meta"]["metrics"] = {"map": np.float64(0.25)}
    good["meta"]["data"] = Path("data/plates")
    path = tmp_path / "old.pt"
    torch.save(good, path)
    with pytest.raises(CheckpointError) as failure:
        load_checkpoint(path)
    message = str(failure.value)
    assert message.startswith(f"{path}: {REFUSED} (it holds ")
    assert "numpy" in message and "pathlib" in message
    assert "retrain it" in message and "re-save it with plain metadata" in message
    assert "\n" not in message and len(message) < 400


@dataclasses.dataclass
class _Note:
    where: Path
    scores: tuple[float, ...]


def test_save_checkpoint_stores_any_meta_as_plain_data(tmp_path: Path) -> None:
    """Numpy scalars and arrays, paths, pydantic models, dataclasses and sets in the meta are
    written as plain values, so the file loads weights-only and the loaders rebuild from it."""
    model, arch, meta = load_checkpoint(make_checkpoint(tmp_path / "base.pt"))
    meta = {
        **meta,
        "metrics": {"map": np.float64(0.3), "count_mae": np.float32(1.5)},
        "epochs": np.int64(3),
        "config": TrainConfig(head_width=16, head_convs=1),
        "data": Path("data/plates"),
        "note": _Note(Path("a/b"), (np.float64(0.1), 0.2)),
        "levels": {5, 3, 4},
        "curve": np.arange(3, dtype=np.float32),
    }
    path = save_checkpoint(tmp_path / "rich.pt", model, arch, meta)
    raw = torch.load(path, weights_only=True)
    _assert_plain({k: v for k, v in raw.items() if k != "state_dict"})
    _, _, loaded = load_checkpoint(path)
    assert loaded["metrics"] == {"map": 0.3, "count_mae": 1.5}
    assert type(loaded["epochs"]) is int and loaded["epochs"] == 3
    assert loaded["config"] == TrainConfig(head_width=16, head_convs=1).model_dump()
    assert loaded["data"] == "data/plates"
    assert loaded["note"] == {"where": "a/b", "scores": (0.1, 0.2)}
    assert loaded["levels"] == [3, 4, 5]
    assert torch.equal(loaded["curve"], torch.arange(3, dtype=torch.float32))


def test_plain_names_what_it_cannot_store() -> None:
    with pytest.raises(TypeError, match=r"^meta\.extra: a builtins\.object is not plain data"):
        plain({"extra": object()}, "meta")


def _assert_plain(value: Any) -> None:
    """Only dicts, lists, tuples, str, int, float, bool, None and tensors, all the way down."""
    if isinstance(value, dict):
        assert type(value) is dict
        for k, v in value.items():
            _assert_plain(k), _assert_plain(v)
    elif isinstance(value, list | tuple):
        assert type(value) in (list, tuple)
        for v in value:
            _assert_plain(v)
    else:
        assert value is None or type(value) in (str, int, float, bool, torch.Tensor), type(value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint `nas-neck train` writes (one epoch on a tiny synthetic set)."""
    root = tmp_path_factory.mktemp("train")
    data = generate_synthetic(root / "data", n_train=8, n_val=4, size=SIZE, seed=0)
    args = [
        "train", "--arch", "light", "--data", str(data.root), "--input-size", "64",
        "--epochs", "1", "--batch-size", "4", "--cache-dir", str(root / "cache"),
        "--out", str(root / "out"),
    ]  # fmt: skip
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    return root / "out" / "checkpoint.pt"


def test_a_checkpoint_from_nas_neck_train_round_trips_weights_only(trained: Path) -> None:
    raw = torch.load(trained, map_location="cpu", weights_only=True)
    _assert_plain({k: v for k, v in raw.items() if k != "state_dict"})
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())
    model, arch, meta = load_checkpoint(trained)
    assert arch.name == "light" and meta["epochs"] == 1 and meta["input_size"] == 64
    assert meta["config"]["epochs"] == 1 and isinstance(meta["metrics"]["map"], float)
    state = model.state_dict()
    assert state.keys() == raw["state_dict"].keys()
    for k, v in raw["state_dict"].items():
        assert torch.equal(state[k], v)
