"""A full disk stops a search (local runner, `nas-neck worker`) at the first trial that cannot
write: the trial is FAILED with its reason and queued again, nothing more is trained, the CLI
prints one `error:` line saying what to free, and a rerun after freeing space resumes."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_fixtures import SIZE, tiny_config, tiny_proxy
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.errors import WriteError, check_room, is_out_of_space
from nas_neck.search.objective import Hooks
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import counted, make_storage

SPACES = Path(__file__).parents[1] / "search_spaces"
runner = CliRunner()
Usage = namedtuple("Usage", "total used free")


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Trained:
    """Hooks that record which trials trained (an epoch ran)."""

    def __init__(self) -> None:
        self.current: int | None = None
        self.trials: list[int] = []

    def hooks(self) -> Hooks:
        def start(number: int, arch: object) -> None:
            self.current = number

        def epoch(e: int, n: int, loss: float) -> None:
            if self.current not in self.trials:
                self.trials.append(self.current)

        return Hooks(trial_start=start, epoch=epoch)


def _settings(root: Path, name: str, **kw: object) -> SearchSettings:
    base = dict(
        space=SPACES / "pafpn-family.yaml",
        study=name,
        storage=f"sqlite:///{root}/nas.db",
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        trials=2,
        sampler="random",
        baselines=[],
        out_dir=root / "runs",
    )
    return SearchSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("disk")


@pytest.fixture(scope="module")
def proxy(root: Path):
    return tiny_proxy(root)


# ---- the room check before training -------------------------------------------------------------
def test_check_room_reserves_and_says_what_to_free(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "runs" / "s" / "trial-0003.pt"
    check_room(path, 5_000_000, "trial 3's checkpoint")  # room: nothing is left behind
    assert list(path.parent.iterdir()) == []

    def full(fd: int, offset: int, length: int) -> None:
        raise _enospc()

    monkeypatch.setattr(os, "posix_fallocate", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1_200_000))
    with pytest.raises(WriteError) as e:
        check_room(path, 6_100_000, "trial 3's checkpoint")
    assert str(e.value) == (
        f"{path.parent}: no room for trial 3's checkpoint: no space left on device (ENOSPC); "
        "it needs about 6.1 MB there, 1.2 MB free: free at least 4.9 MB"
    )
    assert list(path.parent.iterdir()) == []  # the probe is removed
    assert is_out_of_space(_enospc()) and not is_out_of_space(ValueError("no"))
    assert is_out_of_space(RuntimeError("(sqlite3.OperationalError) database or disk is full"))


def test_checkpoint_estimate_covers_the_checkpoint(root: Path, proxy) -> None:
    from nas_neck.detect.trainer import Detector
    from nas_neck.dsl import load_architecture
    from nas_neck.proxy import Outcome

    for name in ("light", "pafpn", "bifpn"):
        arch = load_architecture(name)
        model = Detector(arch, proxy.channels(arch.inputs), proxy.num_classes, proxy.config.train)
        path = proxy.save(
            Outcome(model, arch, {"map": 0.1}, [1.0], {}), root / "est" / f"{name}.pt"
        )
        size = path.stat().st_size
        assert size <= proxy.checkpoint_bytes(arch) <= 2 * size + 1_000_000


# ---- a real full disk ---------------------------------------------------------------------------
_FULL_DISK_SEARCH = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from search_fixtures import tiny_proxy
from test_faults_search_disk import Trained, _settings
from nas_neck.errors import WriteError
from nas_neck.search.runner import run_search

def main():
    disk, root = Path(sys.argv[1]), Path(sys.argv[3])
    proxy = tiny_proxy(root)
    settings = _settings(root, "full", out_dir=disk / "runs")
    filler = disk / "filler"

    def fill(study, trial):  # after the first trial, something else fills the disk
        if trial.number == 0:
            with open(filler, "wb", buffering=0) as fh:
                try:
                    while True:
                        fh.write(b"x" * 65536)
                        fh.flush()
                except OSError:
                    pass

    trained, error = Trained(), None
    try:
        run_search(settings, proxy, trained.hooks(), fill)
    except WriteError as e:
        error = str(e)
    first = {"error": error, "trained": trained.trials}
    filler.unlink()  # space freed: the same search again
    again = Trained()
    run_search(settings, proxy, again.hooks())
    print(json.dumps({"first": first, "rerun": again.trials}))

if __name__ == "__main__":
    main()
"""


def _private_tmpfs(mountpoint: Path, kib: int) -> list[str] | None:
    if shutil.which("unshare") is None:
        return None
    mount = f"mount -t tmpfs -o size={kib}k tmpfs {mountpoint}"
    if subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True).returncode:
        return None
    return ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh"]


@pytest.mark.slow
def test_a_full_disk_stops_the_search_before_training_and_a_rerun_resumes(tmp_path: Path) -> None:
    """Checkpoints on a real 32 MiB tmpfs that fills up after the first trial: the second trial
    fails before it trains, the search stops, the first trial is intact, a rerun resumes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = _private_tmpfs(disk, 32 * 1024)
    if prefix is None:
        pytest.skip("no private mount namespaces here (unshare -rm)")
    root = tmp_path / "root"
    script = tmp_path / "full_disk_search.py"
    script.write_text(_FULL_DISK_SEARCH)
    tests = str(Path(__file__).parent)
    run = subprocess.run(
        [*prefix, sys.executable, str(script), str(disk), tests, str(root)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    first = result["first"]
    folder = disk / "runs" / "full"
    assert first["error"].startswith(
        f"{folder}: no room for trial 1's checkpoint: no space left on device (ENOSPC); "
        "it needs about "
    ), first["error"]
    assert "free at least" in first["error"]
    assert (
        "The search stopped at trial 1 (failed, and queued again; the 1 finished trial(s) are kept)"
        in first["error"]
    )
    assert first["trained"] == [0]  # trial 1 never trained, no trial after it was started
    assert result["rerun"] == [2]  # the rerun trains the retry of trial 1, and the search is done

    study = optuna.load_study(study_name="full", storage=f"sqlite:///{root}/nas.db")
    done, failed, retry = study.trials
    assert done.state == TrialState.COMPLETE and counted(done)
    assert failed.state == TrialState.FAIL and not counted(failed)  # its retry counts instead
    assert failed.user_attrs["fail_reason"].startswith(f"WriteError: {folder}: no room for")
    assert "train_s" not in failed.user_attrs and "checkpoint" not in failed.user_attrs
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 1
    assert retry.params == failed.params  # the same architecture
    assert retry.user_attrs["arch_hash"] == failed.user_attrs["arch_hash"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert client.get_run(failed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"  # FAILED when it stopped, FINISHED after the rerun


# ---- a full disk met while saving, after training -----------------------------------------------
@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_saved_stops_the_search(root: Path, proxy, monkeypatch) -> None:
    """The disk fills while trial 1 trains: its save fails (`save_checkpoint`'s WriteError), the
    search stops there; nothing after it is trained."""
    save = proxy.save

    def full_once(outcome, path):
        if path.name == "trial-0001.pt":
            raise WriteError(
                f"{path}: cannot save the checkpoint: no space left on device (ENOSPC); free some space and run again"
            )
        return save(outcome, path)

    monkeypatch.setattr(proxy, "save", full_once)
    settings = _settings(root, "save-fails", trials=4)
    trained = Trained()
    with pytest.raises(
        WriteError, match=r"trial-0001.pt: cannot save the checkpoint: no space"
    ) as e:
        run_search(settings, proxy, trained.hooks())
    assert (
        "The search stopped at trial 1 (failed, and queued again; the 1 finished trial(s) are kept)"
        in str(e.value)
    )
    assert trained.trials == [0, 1]
    study = optuna.load_study(study_name="save-fails", storage=settings.storage)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.WAITING,
    ]
    assert study.trials[2].user_attrs["retry_of"] == 1


# ---- the command line: search and worker --------------------------------------------------------
def _full_after(monkeypatch, probes_that_pass: int) -> None:
    """Checkpoint folders are full after `probes_that_pass` room checks (the feature cache and
    everything else still write)."""
    real = os.posix_fallocate
    seen = {"n": 0}

    def fallocate(fd: int, offset: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-room.tmp"):
            seen["n"] += 1
            if seen["n"] > probes_that_pass:
                raise _enospc()
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)


def _search_args(root: Path, study: str, storage: str, trials: int) -> list[str]:
    cfg = tiny_config(root)
    return [
        "search",
        "--space", str(SPACES / "pafpn-family.yaml"),
        "--study", study,
        "--storage", storage,
        "--tracking-uri", f"sqlite:///{root}/mlflow.db",
        "--trials", str(trials),
        "--sampler", "random",
        "--baselines", "",
        "--data", str(cfg.data),
        "--input-size", str(SIZE),
        "--cache-dir", str(cfg.cache_root),
        "--batch-size", "4",
        "--epochs", "1",
        "--threads", "1",
        "--out", str(root / "runs"),
    ]  # fmt: skip


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


@pytest.mark.slow
def test_cli_search_stops_with_one_line_and_resumes(root: Path, proxy, monkeypatch) -> None:
    monkeypatch.chdir(root)
    storage = f"sqlite:///{root}/cli.db"
    args = _search_args(root, "cli-full", storage, trials=2)
    _full_after(monkeypatch, probes_that_pass=1)
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 1, result.output
    line = _one_error_line(result.output)
    folder = root / "runs" / "cli-full"
    assert line.startswith(f"error: {folder}: no room for trial 1's checkpoint: no space left")
    assert "it needs about" in line and "rerun the same command when there is room" in line
    study = optuna.load_study(study_name="cli-full", storage=storage)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.WAITING,
    ]
    kept = study.trials[0]
    checkpoint = Path(kept.user_attrs["checkpoint"])
    stamp = checkpoint.stat().st_mtime_ns
    assert sorted(p.name for p in folder.glob("*.pt")) == ["trial-0000.pt"]

    monkeypatch.undo()  # space freed
    monkeypatch.chdir(root)
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="cli-full", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[2].user_attrs["retry_of"] == 1
    assert study.trials[0].values == kept.values and checkpoint.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_cli_worker_stops_at_the_first_full_disk(root: Path, proxy, monkeypatch) -> None:
    from nas_neck.search.session import prepare_study

    monkeypatch.chdir(root)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the worker's SIGTERM handler
    storage = f"journal:{root}/worker.journal"
    settings = _settings(root, "worker-full", storage=storage, trials=3)
    prepare_study(settings, proxy.config)  # what `nas-neck search` stores for workers
    _full_after(monkeypatch, probes_that_pass=0)
    result = runner.invoke(
        app, ["worker", "--study", "worker-full", "--storage", storage], terminal_width=300
    )
    assert result.exit_code == 1, result.output
    line = _one_error_line(result.output)
    assert line.startswith(
        f"error: {root / 'runs' / 'worker-full'}: no room for trial 0's checkpoint"
    )
    study = optuna.load_study(study_name="worker-full", storage=make_storage(storage))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # one tried
    assert study.trials[1].user_attrs["retry_of"] == 0


@pytest.mark.slow
@pytest.mark.integration
def test_a_ray_search_stops_at_the_first_trial_that_cannot_write(root: Path, proxy) -> None:
    """A file where the study's checkpoint folder goes: the trials Tune started fail before they
    train, the driver starts no more, and each is queued again for the rerun."""
    pytest.importorskip("ray")
    from nas_neck.search.ray_backend import run_ray_search

    settings = _settings(root, "ray-cannot-write", trials=4)
    blocker = root / "runs" / "ray-cannot-write"
    blocker.parent.mkdir(exist_ok=True)
    blocker.write_text("a file where the checkpoints go")
    with pytest.raises(WriteError) as e:
        run_ray_search(settings, proxy.config)
    message = str(e.value)
    assert message.startswith(f"{blocker}: cannot write trial "), message
    assert "checkpoint there: file exists (EEXIST). The search stopped at trial" in message
    study = optuna.load_study(study_name="ray-cannot-write", storage=settings.storage)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert 1 <= len(failed) <= 2  # at most the trials running at once (2 CPUs, 1 each)
    assert len(study.trials) == 2 * len(failed)  # nothing else started
    assert all(t.user_attrs["fail_reason"].startswith("WriteError: ") for t in failed)
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in failed)
    assert not any("train_s" in t.user_attrs for t in study.trials)


def test_ray_results_of_trials_that_cannot_write_stop_the_driver() -> None:
    pytest.importorskip("ray")
    from nas_neck.search.ray_backend import write_failure

    assert write_failure({"fail_reason": "WriteError: /x: no room for trial 1's checkpoint"})
    assert write_failure(
        {"fail_reason": "OperationalError: database or disk is full", "write_failed": True}
    )
    assert not write_failure({"fail_reason": "diverged: loss became nan"})
    assert not write_failure({"map": 0.1})
