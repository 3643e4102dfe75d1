"""A tiny real proxy task (synthetic plates, frozen backbone, feature cache) for search tests."""

from pathlib import Path

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.data.synth import generate_synthetic
from nas_neck.proxy import ProxyTask

SIZE = 128


def tiny_config(root: Path, **train) -> ProxyConfig:
    data = generate_synthetic(root / "data", n_train=8, n_val=4, size=SIZE, seed=0)
    return ProxyConfig(
        data=data.root,
        input_size=SIZE,
        views=(0,),
        cache_root=root / "cache",
        latency_runs=10,
        latency_warmup=1,
        latency_threads=1,
        train=TrainConfig(**{"epochs": 2, "batch_size": 4, "warmup_steps": 1, **train}),
    )


def tiny_proxy(root: Path, **train) -> ProxyTask:
    return ProxyTask(tiny_config(root, **train))
