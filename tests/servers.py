"""Real servers for integration tests: PostgreSQL (Debian's binaries, a throwaway cluster) and
`mlflow server` processes on loopback.

`initdb` and `postgres` refuse to run as root, so as root the cluster belongs to the `postgres`
system user (Debian's package creates it); otherwise to the current user. The server listens on a
free loopback port with `trust` authentication and lives in a temporary folder removed after the
session. `.ci/run` installs the package on a fresh machine; without it the tests are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _tool(name: str) -> str | None:
    for folder in _BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    run = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120, **kw)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}")
    return run


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Base URL `postgresql://postgres@127.0.0.1:PORT` of a running server; databases come from
    `postgres_db`."""
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the cluster extra (psycopg) is not installed")
    root = Path(tempfile.mkdtemp(prefix="nas-neck-pg-"))  # pytest's tmp is root-only (0700)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        for path in (root, sock):
            shutil.chown(path, "postgres")
    port = _free_port()
    _run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    _run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """URL of a fresh, empty database on the session's server."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:50]
    name = f"{name}_{int(time.time() * 1000) % 10**8}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, cwd: Path) -> Iterator[str]:
    """A running `mlflow server` on a free loopback port; yields its URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)]
    log = open(cwd / f"mlflow-server-{port}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*cmd, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(cwd / log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
