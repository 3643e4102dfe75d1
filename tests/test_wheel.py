"""The package as a new user gets it: a wheel installed into a fresh virtualenv, run elsewhere.

The virtualenv sees the test environment's site-packages through a `.pth` line (so torch is not
installed again), but not the source tree: no editable install, and every command runs in an
empty folder. Shipped spaces (`fpn`, `pafpn-family`) must come from the installed package.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow

_TOP_LEVEL_SKIP = {".git", ".venv", "build", "dist", "runs", "data", ".nas-neck-cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    """Skip the checkout's environments and outputs (top level only) and build leftovers."""
    skip = _TOP_LEVEL_SKIP if Path(folder) == ROOT else set()
    return {n for n in names if n in skip or n == "__pycache__" or n.endswith(".egg-info")}


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin/` folder of a fresh virtualenv holding only the wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_ignore)  # builds leave no trace in ROOT
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _sh(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(src), "-w", str(tmp / "dist")],
        tmp,
        env,
    )
    (wheel,) = (tmp / "dist").glob("nas_neck-*.whl")
    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    purelib = _sh(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env
    )
    (Path(purelib.strip()) / "_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps"]
    _sh([*pip, str(wheel)], tmp, env)
    return venv / "bin"


def test_wheel_installs_and_runs_from_another_folder(installed: Path, tmp_path: Path) -> None:
    env = {
        "PATH": f"{installed}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "NAS_NECK_CACHE": str(tmp_path / "cache"),
    }
    work = tmp_path / "work"
    work.mkdir()
    where = _sh(
        [str(installed / "python"), "-c", "import nas_neck; print(nas_neck.__file__)"], work, env
    )
    assert str(ROOT) not in where and str(installed.parent) in where, where

    shown = _sh(["nas-neck", "show", "fpn", "--input-size", "128"], work, env)
    assert "hash" in shown and "FLOPs" in shown

    _sh(
        ["nas-neck", "data", "synth", "--out", "plates", "--train", "8", "--val", "4"]
        + ["--size", "128", "--seed", "0"],
        work,
        env,
    )
    _sh(
        ["nas-neck", "search", "--trials", "2", "--baselines", "fpn", "--epochs", "1"]
        + ["--data", "plates", "--input-size", "128", "--batch-size", "4", "--threads", "1"],
        work,
        env,
    )
    assert (work / "nas.db").exists() and (work / "runs" / "pafpn-family").is_dir()

    _sh(["nas-neck", "export", "--study", "pafpn-family", "--knee", "--out", "exported"], work, env)
    neck_py = work / "exported" / "neck.py"
    assert neck_py.exists()

    # The exported neck in a Python that cannot import nas_neck (only torch's site folder).
    site = str(Path(torch.__file__).resolve().parents[1])
    check = (
        "import sys, importlib.util; sys.path[:0] = [sys.argv[1], 'exported']\n"
        "assert importlib.util.find_spec('nas_neck') is None\n"
        "import torch, neck\n"
        "m = neck.Neck.from_pretrained()\n"
        "s = 128\n"
        "xs = [torch.randn(1, c, -(-s // t), -(-s // t)) for c, t in zip(m.in_channels, m.in_strides)]\n"
        "outs = m(xs)\n"
        "print('outputs', len(outs), tuple(outs[0].shape))\n"
    )
    out = _sh([sys.executable, "-I", "-S", "-c", check, site], work, {"OMP_NUM_THREADS": "1"})
    assert "outputs" in out
