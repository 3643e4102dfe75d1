"""Shared bits of the experiment scripts: where results go, what machine made them, the plot."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).parents[1]
OUT = ROOT / "experiments" / "out"


def machine() -> dict[str, Any]:
    """What the figures were measured on: enough to compare two runs of a study."""
    return {
        "date": str(date.today()),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_avg_1m": os.getloadavg()[0],
    }


def write_result(path: Path, result: dict[str, Any], fig: plt.Figure | None = None) -> None:
    """Write the JSON result (with the machine) and, when given, its plot as a PNG beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "machine": machine()}, indent=2))
    print(f"wrote {path}")
    if fig is not None:
        png = path.with_suffix(".png")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
        print(f"wrote {png}")


def nas_neck(*args: str, threads: int, log: Path) -> subprocess.Popen:
    """Start `nas-neck ARGS` training on `threads` CPU threads (latency stays measured on one),
    its output going to `log`."""
    cmd = [sys.executable, "-m", "nas_neck", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = open(log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def sqlite_urls(folder: Path, name: str) -> tuple[str, str]:
    """The Optuna storage and MLflow tracking URLs of study `name` under `folder`."""
    return f"sqlite:///{folder / name}.db", f"sqlite:///{folder / name}-mlflow.db"


def searches_side_by_side(
    folder: Path, seed: int, methods: dict[str, list[str]], common: list[str], threads: int
) -> dict[str, float]:
    """Run one `nas-neck search` per method at once (study `METHOD-sSEED` in `folder`, `common`
    then the method's own options), so that both get the same machine and the same load; the
    wall-clock and the load average at the end."""
    procs = {}
    for method, extra in methods.items():
        name = f"{method}-s{seed}"
        storage, tracking = sqlite_urls(folder, name)
        procs[method] = nas_neck(
            "search", "--study", name, "--storage", storage, "--tracking-uri", tracking,
            "--seed", str(seed), "--out", str(folder / "runs"), *common, *extra,
            threads=threads, log=folder / f"{name}.log",
        )  # fmt: skip
    start = time.time()
    codes = {m: p.wait() for m, p in procs.items()}
    if any(codes.values()):
        raise SystemExit(f"seed {seed}: a search failed ({codes}); see the logs in {folder}")
    return {"wall_s": time.time() - start, "load_avg_1m_end": os.getloadavg()[0]}


def run_seeds(
    state: dict[str, Any],
    state_file: Path,
    n: int,
    methods: list[str],
    run_pair: Callable[[int], dict],
    minutes: float,
) -> dict[str, dict]:
    """Run `run_pair(seed)` for each of seeds 0..n-1 not yet in ``state["seeds"]``, saving the
    state after each. A seed interrupted mid-search starts again from scratch: its studies and
    runs are removed first, since a resumed search would get a second budget."""
    folder = state_file.parent
    seeds = state.setdefault("seeds", {})
    for seed in range(n):
        if str(seed) in seeds:
            continue
        for method in methods:
            for f in folder.glob(f"{method}-s{seed}*"):
                f.unlink()
            shutil.rmtree(folder / "runs" / f"{method}-s{seed}", ignore_errors=True)
        print(f"seed {seed}: both searches side by side, {minutes:g} min each ...", flush=True)
        seeds[str(seed)] = run_pair(seed)
        state_file.write_text(json.dumps(state, indent=2))
    return seeds
