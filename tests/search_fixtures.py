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


def unfitted_choice(record: dict) -> int:
    """Which proposal a screener with no accuracy fit yet trains, from a trial's `screened`
    record: the first that no other beats on both predicted latency and score."""
    lat, score = record["predicted_latency_ms"], record["scores"]
    return next(
        i
        for i in range(len(lat))
        if not any(
            lat[j] <= lat[i] and score[j] >= score[i] and (lat[j], score[j]) != (lat[i], score[i])
            for j in range(len(lat))
        )
    )
