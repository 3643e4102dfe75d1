"""A study database locked by another writer: short locks are waited out, long ones end in one
line naming `--storage` (what SQLite users hit when two searches share one file)."""

import sqlite3
import threading
import time

import pytest
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.errors import NasNeckError
from nas_neck.search.study import Objectives, open_study


def _lock(path, seconds: float) -> threading.Thread:
    """Hold an exclusive lock on the SQLite file `path` for `seconds`, from another connection."""
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "nas.db"
    open_study("s", f"sqlite:///{path}", Objectives())  # the tables exist, as after a search
    return path


def test_a_short_lock_is_waited_out(db):
    holder = _lock(db, 1.5)
    start = time.monotonic()
    study = open_study("s", f"sqlite:///{db}", Objectives())
    assert time.monotonic() - start >= 1.0  # it waited for the other writer ...
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)
    assert len(study.trials) == 1  # ... and then worked
    holder.join()


def test_a_long_lock_is_one_line_naming_storage(db, monkeypatch):
    monkeypatch.setenv("NAS_NECK_DB_TIMEOUT_S", "1")
    holder = _lock(db, 6)
    with pytest.raises(
        NasNeckError, match=r"--storage sqlite:///.*nas\.db: the database is locked"
    ):
        open_study("s", f"sqlite:///{db}", Objectives())
    result = CliRunner().invoke(app, ["pareto", "--study", "s", "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 1, result.output
    assert "error: --storage" in result.output and "locked by another process" in result.output
    assert "Traceback" not in result.output and "sqlalche.me" not in result.output
    holder.join()
