"""I/O faults (docs/faults-io.md): a full disk while caching features or saving a checkpoint, and
corrupt checkpoints and caches. Each is one clear `NasNeckError`, never a half-written file."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import nas_neck.safeload as safeload_module
from nas_neck.cli import app
from nas_neck.config import TrainConfig
from nas_neck.data.cache import FeatureCache
from nas_neck.data.coco import CocoDetection
from nas_neck.detect.trainer import Detector, load_checkpoint, save_checkpoint
from nas_neck.dsl import load_architecture
from nas_neck.errors import CheckpointError, WriteError
from nas_neck.search.objective import _reason

SIZE = 64
runner = CliRunner()


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# ---- feature cache ----------------------------------------------------------------------------


class TinyBackbone(nn.Module):
    """A deterministic two-level stand-in for FrozenBackbone that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.levels, self.strides, self.channels = [3, 4], [8, 16], [4, 6]
        self.p3 = nn.Conv2d(3, 4, 8, stride=8)
        self.p4 = nn.Conv2d(4, 6, 2, stride=2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        p3 = self.p3(x)
        return [p3, self.p4(p3)]

    def fingerprint(self) -> str:
        return "tiny"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> CocoDetection:
    from nas_neck.data.synth import generate_synthetic

    root = generate_synthetic(
        tmp_path_factory.mktemp("data") / "synth", n_train=5, n_val=1, size=SIZE, seed=0
    ).root
    return CocoDetection(root / "train.json", size=SIZE)


def _build(dataset: CocoDetection, backbone: nn.Module, root: Path) -> FeatureCache:
    return FeatureCache.build(dataset, backbone, root=root, batch_size=2, progress=False)


def _features(cache: FeatureCache) -> list[torch.Tensor]:
    return cache.features(range(len(cache)))


def _fail_second_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while the second level file is being allocated (the first is written)."""
    real, calls = os.posix_fallocate, []

    def allocate(fd: int, offset: int, length: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise _enospc()
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", allocate)


def _fail_targets_halfway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up halfway through targets.npz, after every level file is written."""

    def savez(file: Path, **arrays: np.ndarray) -> None:
        Path(file).write_bytes(b"PK\x03\x04 half a zip")
        raise _enospc()

    monkeypatch.setattr(np, "savez", savez)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
@pytest.mark.parametrize("where", ["level_file", "targets"])
def test_full_disk_while_caching_is_one_error_and_a_rerun_rebuilds(
    dataset: CocoDetection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    expected = _features(_build(dataset, TinyBackbone(), tmp_path / "reference"))
    root = tmp_path / "cache"
    (_fail_second_reserve if where == "level_file" else _fail_targets_halfway)(monkeypatch)
    with pytest.raises(WriteError) as failure:
        _build(dataset, TinyBackbone(), root)
    message = str(failure.value)
    assert message.startswith(f"feature cache in {root}: no space left on device (ENOSPC)")
    assert "this view of the cache needs about " in message and " free;" in message
    assert "--cache-dir" in message and "\n" not in message
    # nothing half-written: no temporary folder, no cache folder; only the (unlocked) lock file
    (lock,) = root.iterdir()
    assert lock.suffix == ".lock"
    with open(lock) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if the lock were still held
        fcntl.flock(fh, fcntl.LOCK_UN)

    monkeypatch.undo()  # space freed
    backbone = TinyBackbone()
    cache = _build(dataset, backbone, root)
    assert backbone.calls > 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [cache.paths[0].name]
    for got, want in zip(_features(cache), expected, strict=True):
        assert torch.equal(got, want)


def test_unwritable_cache_folder_is_one_error(dataset: CocoDetection, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.write_text("a file where the cache folder should be")
    with pytest.raises(WriteError, match=rf"^feature cache in {root}: .*--cache-dir"):
        _build(dataset, TinyBackbone(), root)


def _damage_cache(path: Path, damage: str) -> None:
    if damage == "truncated_level":
        level = path / "level3.npy"
        os.truncate(level, level.stat().st_size // 2)
    elif damage == "garbage_level_header":
        level = path / "level3.npy"
        data = bytearray(level.read_bytes())
        data[:16] = os.urandom(16)
        level.write_bytes(bytes(data))
    elif damage == "truncated_targets":
        targets = path / "targets.npz"
        os.truncate(targets, targets.stat().st_size // 2)
    else:
        (path / "meta.json").write_text('{"key": ')


@pytest.mark.parametrize(
    "damage", ["truncated_level", "garbage_level_header", "truncated_targets", "garbage_meta"]
)
def test_corrupt_cache_is_rebuilt_with_a_warning(
    dataset: CocoDetection, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cache = _build(dataset, TinyBackbone(), tmp_path)
    expected = _features(cache)
    _damage_cache(cache.paths[0], damage)
    backbone = TinyBackbone()
    with caplog.at_level("WARNING", logger="nas_neck.data.cache"):
        rebuilt = _build(dataset, backbone, tmp_path)
    assert backbone.calls > 0
    (record,) = [r for r in caplog.records if "incomplete or corrupt" in r.getMessage()]
    assert record.getMessage().startswith(f"feature cache {cache.paths[0]} is incomplete")
    assert record.getMessage().endswith(": rebuilding it")
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [cache.paths[0].name]
    for got, want in zip(_features(rebuilt), expected, strict=True):
        assert torch.equal(got, want)


_REAL_FULL_DISK = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_faults_io import TinyBackbone, _model
from nas_neck.data.cache import FeatureCache
from nas_neck.data.coco import CocoDetection
from nas_neck.data.synth import generate_synthetic
from nas_neck.detect.trainer import save_checkpoint
from nas_neck.errors import WriteError

disk, data = Path(sys.argv[1]), Path(sys.argv[3])
errors = []
try:
    save_checkpoint(disk / "runs" / "trial-0001.pt", *_model())
except WriteError as e:
    errors.append(str(e))
root = generate_synthetic(data, n_train=20, n_val=1, size=128).root
dataset = CocoDetection(root / "train.json", size=128)
try:
    FeatureCache.build(dataset, TinyBackbone(), root=disk / "cache", progress=False)
except WriteError as e:
    errors.append(str(e))
left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))
print(json.dumps({"errors": errors, "left": left}))
"""


def _private_tmpfs(mountpoint: Path, kib: int) -> list[str] | None:
    """`unshare` arguments that run a command with a `kib` KiB tmpfs at `mountpoint`, visible to
    that command only (a user + mount namespace: no root needed where the kernel allows them)."""
    if shutil.which("unshare") is None:
        return None
    mount = f"mount -t tmpfs -o size={kib}k tmpfs {mountpoint}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True)
    if probe.returncode:
        return None
    return ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh"]


def test_a_real_full_disk_gives_clean_errors_not_a_crash(tmp_path: Path) -> None:
    """A 24 KiB tmpfs: the checkpoint and the cache both end in a `WriteError` naming the disk
    full, with nothing half-written left (without preallocation, writing the memory-mapped
    level file into a full tmpfs kills the process with SIGBUS)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = _private_tmpfs(disk, 24)
    if prefix is None:
        pytest.skip("no private mount namespaces here (unshare -rm)")
    tests = str(Path(__file__).parent)
    run = subprocess.run(
        [*prefix, sys.executable, "-c", _REAL_FULL_DISK, str(disk), tests, str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    checkpoint, cache = result["errors"]
    assert checkpoint.startswith(f"{disk}/runs/trial-0001.pt: cannot save the checkpoint: no space")
    assert cache.startswith(f"feature cache in {disk}/cache: no space left on device (ENOSPC)")
    assert "needs about" in cache
    folder, lock, runs = result["left"]  # no temporary folder, no partial file
    assert (folder, runs) == ("cache", "runs")
    assert lock.startswith("cache/train-128-v0-") and lock.endswith(".lock")


# ---- checkpoints ------------------------------------------------------------------------------


def _model(name: str = "light") -> tuple[Detector, object, dict]:
    arch = load_architecture(name)
    config = TrainConfig(head_width=16, head_convs=1)
    model = Detector(arch, [40, 112, 320], num_classes=2, config=config)
    meta = {
        "metrics": {"map": 0.25},
        "config": config.model_dump(),
        "input_size": 96,
        "backbone": "tf_efficientnet_lite0",
        "category_ids": [1, 2],
        "category_names": ["a", "b"],
    }
    return model, arch, meta


class _FillingFile(io.RawIOBase):
    """A real file that runs out of space after `room` bytes (the rest of the write fails)."""

    def __init__(self, fh: io.BufferedWriter, room: int) -> None:
        self.fh, self.room = fh, room

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[: self.room]))
            self.room = 0
            raise _enospc()
        self.room -= len(data)
        return self.fh.write(data)

    def fileno(self) -> int:
        return self.fh.fileno()

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
        super().close()


@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_while_saving_a_checkpoint_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    model, arch, meta = _model()
    path = tmp_path / "runs" / "trial-0003.pt"
    if existing:  # an earlier checkpoint there must survive intact
        save_checkpoint(path, model, arch, meta)
        before = path.read_bytes()

    def filling_open(file: Path, mode: str) -> _FillingFile:
        return _FillingFile(open(file, mode), room=20_000)  # noqa: SIM115 (it closes the file)

    monkeypatch.setattr(safeload_module, "open", filling_open, raising=False)  # the writer
    with pytest.raises(WriteError) as failure:
        save_checkpoint(path, model, arch, meta)
    message = str(failure.value)
    assert message == (
        f"{path}: cannot save the checkpoint: no space left on device (ENOSPC); "
        "free some space and run again"
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ([path.name] if existing else [])
    if existing:
        assert path.read_bytes() == before
        load_checkpoint(path)
    # inside a search, this is the trial's fail_reason (one readable line)
    assert _reason(failure.value) == f"WriteError: {message}"

    monkeypatch.undo()
    save_checkpoint(path, model, arch, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    load_checkpoint(path)


def _bad_checkpoint(path: Path, damage: str) -> Path:
    """A checkpoint file damaged in one way (see the parametrization below)."""
    model, arch, meta = _model()
    good = save_checkpoint(path.with_name("good.pt"), model, arch, meta)
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bare_state_dict":
        torch.save(model.state_dict(), path)
    elif damage == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        ckpt = torch.load(good, weights_only=True)
        if damage == "missing_keys":
            del ckpt["state_dict"], ckpt["num_classes"]
        elif damage == "missing_weights":
            for key in list(ckpt["state_dict"])[:2]:
                del ckpt["state_dict"][key]
        elif damage == "other_arch_weights":
            ckpt["state_dict"] = _model("fpn")[0].state_dict()
        elif damage == "wrong_shapes":  # weights for another number of classes
            ckpt["num_classes"] = 3
        else:  # bad_config
            ckpt["config"] = {"head_width": "wide"}
        torch.save(ckpt, path)
    return path


DAMAGES = {
    "truncated": "not a readable checkpoint, the file is truncated, damaged or not a torch file (",
    "random_bytes": "not a readable checkpoint, the file is truncated, damaged or not a torch file",
    "empty": "not a readable checkpoint, the file is truncated, damaged or not a torch file",
    "bare_state_dict": "not a nas-neck checkpoint (no arch, in_channels, num_classes, config, "
    "state_dict, meta in it",
    "tensor": "not a nas-neck checkpoint (it holds a Tensor",
    "missing_keys": "not a nas-neck checkpoint (no num_classes, state_dict in it",
    "missing_weights": "its weights do not fit its architecture (2 missing, 0 unexpected, e.g. ",
    "other_arch_weights": "cannot rebuild the model from the checkpoint (RuntimeError: size "
    "mismatch for neck.",
    "wrong_shapes": "cannot rebuild the model from the checkpoint (RuntimeError: size mismatch "
    "for head.cls_pred.weight",
    "bad_config": "cannot rebuild the model from the checkpoint (ValidationError: head_width: ",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_corrupt_checkpoint_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    path = _bad_checkpoint(tmp_path / "bad.pt", damage)
    with pytest.raises(CheckpointError) as failure:
        load_checkpoint(path)
    message = str(failure.value)
    assert message.startswith(f"{path}: {DAMAGES[damage]}")
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(
    "damage", ["truncated", "random_bytes", "bare_state_dict", "other_arch_weights"]
)
def test_export_of_a_corrupt_checkpoint_prints_one_error_line(tmp_path: Path, damage: str) -> None:
    path = _bad_checkpoint(tmp_path / "bad.pt", damage)
    out = tmp_path / "x"
    result = runner.invoke(
        app, ["export", "--checkpoint", str(path), "--out", str(out)], terminal_width=300
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(1), not an escaped error
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {DAMAGES[damage][:20]}")
    assert "Traceback" not in result.output
    assert not out.exists()
