"""Comparable latency: interleaved timing beside a reference, its calibration shared by processes
through a file, the onnxruntime target and the detector scope, and what a trial records."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from search_fixtures import tiny_proxy
from torch import Tensor, nn

from nas_neck.dsl import load_architecture
from nas_neck.export.onnx import OPSET
from nas_neck.measure import (
    ONNX_OPSET,
    NeckWithHead,
    calibrated_ms,
    count_params,
    feature_inputs,
    measure_latencies,
    measure_latency,
    measure_relative,
)
from nas_neck.neck import GraphNeck
from nas_neck.proxy import ProxyTask

CLASSICS = ("fpn", "pafpn", "bifpn", "nasfpn", "light")
CHANNELS, STRIDES = [40, 112, 320], [8, 16, 32]  # EfficientNet-Lite0 at P3-P5
SIZE = 128
RECORDED = {
    "latency_ms",
    "latency_ratio",
    "latency_reference_ms",
    "latency_p10_ms",
    "latency_p90_ms",
    "latency_head_ms",
    "latency_threads",
    "latency_target",
    "latency_scope",
    "gflops",
    "mparams",
    "measure_s",
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> ProxyTask:
    return tiny_proxy(tmp_path_factory.mktemp("latency"))


def _with(proxy: ProxyTask, **settings: object) -> ProxyTask:
    """The same proxy task (data, caches) with other latency settings."""
    other = copy.copy(proxy)
    other.config = proxy.config.model_copy(update=settings)
    return other


def _neck(name: str) -> tuple[nn.Module, list[Tensor]]:
    return GraphNeck(load_architecture(name), CHANNELS), feature_inputs(CHANNELS, STRIDES, SIZE)


def test_onnx_timing_exports_with_the_exporters_opset() -> None:
    assert ONNX_OPSET == OPSET


@pytest.mark.parametrize("name", CLASSICS)
def test_onnxruntime_latency_of_every_shipped_classic(name: str) -> None:
    neck, inputs = _neck(name)
    result = measure_latency(
        neck, inputs, threads=1, warmup=1, runs=3, rounds=2, device="cpu", target="onnxruntime"
    )
    assert result.target == "onnxruntime" and result.threads == 1 and result.runs == 3
    assert math.isfinite(result.p10_ms) and 0 < result.p10_ms <= result.p90_ms


def test_onnxruntime_sessions_use_the_thread_count_sequentially(monkeypatch) -> None:
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession

    def spy(model, options, **kwargs):
        seen.append((options.intra_op_num_threads, options.inter_op_num_threads))
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        return real(model, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    neck, inputs = _neck("light")
    measure_latency(neck, inputs, threads=2, warmup=1, runs=3, rounds=3, target="onnxruntime")
    assert seen == [(2, 1)] * 3  # a fresh session per round


_TURNS: list[str] = []  # module-level, so deep copies of the probes log here too


class _Probe(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        _TURNS.append(self.name)
        return self.conv(x)


def test_modules_take_turns_in_shuffled_orders() -> None:
    _TURNS.clear()
    x = torch.randn(1, 3, 8, 8)
    a, b = measure_latencies(
        [(_Probe("a"), x), (_Probe("b"), x)], threads=1, warmup=1, runs=8, rounds=2, device="cpu"
    )
    assert a.runs == b.runs == 8 and a.rounds == 2
    turns = [tuple(_TURNS[i : i + 2]) for i in range(0, len(_TURNS), 2)]
    assert len(turns) == 2 * (1 + 4)  # per round: a warm-up turn, then 4 timed turns
    assert set(turns) == {("a", "b"), ("b", "a")}  # each turn runs both, in either order


@pytest.mark.parametrize("target", ["torch", "onnxruntime"])
def test_ratio_of_an_architecture_to_itself_is_about_one(target: str) -> None:
    neck, inputs = _neck("fpn")
    same = {"same": (copy.deepcopy(neck), [x.clone() for x in inputs])}
    result = measure_relative(
        same, (neck, inputs), 2.0, threads=1, warmup=2, runs=30, rounds=3, target=target
    )["same"]
    assert 0.8 < result.ratio < 1.25
    assert result.ms == pytest.approx(2.0 * result.ratio)
    assert result.latency.target == result.reference.target == target


_CALIBRATE = """
import sys
from pathlib import Path

import torch

from nas_neck.measure import calibrate, calibrated_ms, machine_key

root, counter = Path(sys.argv[1]), Path(sys.argv[4])
threads, size = int(sys.argv[2]), int(sys.argv[3])


def measure():
    import time

    with counter.open("a") as fh:  # one line per calibration actually run
        fh.write("x")
    time.sleep(0.5)  # long enough for a concurrent process to find the lock taken
    return calibrate(torch.nn.Conv2d(3, 8, 3), torch.randn(1, 3, size, size), threads=threads)


key = machine_key(threads, "torch", "cpu") | {"input_size": size}
print(calibrated_ms(root, key, measure))
"""


def _calibrate(root: Path, threads: int, size: int, counter: Path) -> subprocess.Popen:
    args = [str(root), str(threads), str(size), str(counter)]
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CALIBRATE), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def _ms(process: subprocess.Popen) -> float:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return float(out.strip().splitlines()[-1])


def test_calibration_is_measured_once_and_read_by_later_processes(tmp_path: Path) -> None:
    root, counter = tmp_path / "cache", tmp_path / "calibrations"
    first = _ms(_calibrate(root, 1, 32, counter))
    (path,) = (root / "latency").glob("reference-*.json")
    written = path.stat().st_mtime_ns, path.read_text()
    assert _ms(_calibrate(root, 1, 32, counter)) == first
    assert counter.read_text() == "x"  # the second process read the file
    assert (path.stat().st_mtime_ns, path.read_text()) == written
    assert json.loads(path.read_text())["reference_ms"] == first
    # other settings are another key, so another file, calibrated afresh
    for other in [_calibrate(root, 2, 32, counter), _calibrate(root, 1, 48, counter)]:
        _ms(other)
    assert counter.read_text() == "xxx"
    assert len(list((root / "latency").glob("reference-*.json"))) == 3


def test_concurrent_processes_calibrate_once(tmp_path: Path) -> None:
    root, counter = tmp_path / "cache", tmp_path / "calibrations"
    processes = [_calibrate(root, 1, 32, counter) for _ in range(2)]
    values = [_ms(p) for p in processes]
    assert values[0] == values[1] and counter.read_text() == "x"


def test_unreadable_or_foreign_calibration_is_measured_again(tmp_path: Path) -> None:
    key = {"input_size": 64}
    assert calibrated_ms(tmp_path, key, lambda: 1.5) == 1.5
    (path,) = (tmp_path / "latency").glob("reference-*.json")
    assert calibrated_ms(tmp_path, key, lambda: 9.0) == 1.5  # read, not measured
    path.write_text("{not json")
    assert calibrated_ms(tmp_path, key, lambda: 2.5) == 2.5
    path.write_text(json.dumps({"reference_ms": 3.0, "key": {"input_size": 32}}))
    assert calibrated_ms(tmp_path, key, lambda: 3.5) == 3.5
    assert json.loads(path.read_text())["key"] == key


def test_cost_records_comparable_latency_and_how_it_was_measured(proxy: ProxyTask) -> None:
    cost = proxy.cost(load_architecture("pafpn"))
    assert set(cost) >= RECORDED
    assert cost["latency_target"] == "torch" and cost["latency_scope"] == "neck"
    assert cost["latency_threads"] == 1
    assert cost["latency_ms"] == pytest.approx(cost["latency_ratio"] * cost["latency_reference_ms"])
    assert 0 < cost["latency_p10_ms"] <= cost["latency_p90_ms"]
    assert cost["latency_head_ms"] > cost["latency_ms"] > 0
    assert cost["measure_s"] > 0
    numbers = {k: v for k, v in cost.items() if k not in ("latency_target", "latency_scope")}
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in numbers.values())


def test_calibration_key_follows_the_latency_settings(proxy: ProxyTask) -> None:
    _, key = proxy.latency_reference()
    assert key["threads"] == 1 and key["input_size"] == proxy.config.input_size
    assert key["target"] == "torch" and key["scope"] == "neck" and key["torch"] == torch.__version__
    assert key["processor"]
    others = [
        {"latency_threads": 2},
        {"input_size": 160},
        {"latency_target": "onnxruntime"},
        {"latency_scope": "detector"},
    ]
    for settings in others:
        assert _with(proxy, **settings).latency_reference()[1] != key, settings


def test_one_calibration_per_setting_in_the_cache_root(proxy: ProxyTask) -> None:
    folder = proxy.config.cache_root / "latency"
    proxy.cost(load_architecture("light"))
    before = sorted(folder.glob("reference-*.json"))
    proxy.cost(load_architecture("fpn"))
    assert sorted(folder.glob("reference-*.json")) == before  # reused
    _with(proxy, input_size=96).cost(load_architecture("light"))
    assert len(list(folder.glob("reference-*.json"))) == len(before) + 1


def test_detector_scope_times_neck_and_head(proxy: ProxyTask, monkeypatch) -> None:
    import nas_neck.proxy as proxy_module

    timed = {}
    real = proxy_module.measure_relative

    def spy(modules, reference, reference_ms, **timing):
        timed.update(modules=modules, reference=reference[0])
        return real(modules, reference, reference_ms, **timing)

    monkeypatch.setattr(proxy_module, "measure_relative", spy)
    arch = load_architecture("light")
    detector = _with(proxy, latency_scope="detector").cost(arch)
    assert detector["latency_scope"] == "detector"
    assert detector["latency_head_ms"] == detector["latency_ms"]
    assert list(timed["modules"]) == ["neck+head"]
    module = timed["modules"]["neck+head"][0]
    assert isinstance(module, NeckWithHead) and isinstance(timed["reference"], NeckWithHead)
    assert count_params(module) == count_params(module.neck) + count_params(module.head)
    assert count_params(module.head) > 0
    neck = proxy.cost(arch)
    assert list(timed["modules"]) == ["neck", "neck+head"]
    assert isinstance(timed["reference"], GraphNeck)
    assert detector["latency_ms"] > neck["latency_ms"]


def test_cost_in_onnxruntime(proxy: ProxyTask) -> None:
    cost = _with(proxy, latency_target="onnxruntime").cost(load_architecture("bifpn"))
    assert cost["latency_target"] == "onnxruntime"
    assert math.isfinite(cost["latency_ms"]) and cost["latency_ms"] > 0
    assert cost["latency_head_ms"] > cost["latency_ms"]
