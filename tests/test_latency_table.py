"""The latency table: its steps are the modules GraphNeck builds, it is measured once per machine
and settings and reused by later processes, rebuilt when its settings change, and predicts a
shipped classic within a sane range of its measured latency."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from search_fixtures import tiny_config

from nas_neck.dsl import load_architecture, load_space
from nas_neck.errors import NasNeckError
from nas_neck.measure import count_flops, count_params, feature_inputs
from nas_neck.neck import GraphNeck
from nas_neck.proxy import ProxyTask
from nas_neck.screen import LatencyTable
from nas_neck.screen.latency_table import _steps

CLASSICS = ("fpn", "pafpn", "bifpn", "nasfpn", "light")
FAMILIES = ("pafpn-family", "bifpn-family", "nasfpn-free")
CHANNELS = {3: 40, 4: 112, 5: 320}
FIT = ("light", "fpn", "pafpn")  # the fewest whole necks the overhead fits on
QUICK = {"runs": 10, "rounds": 2, "fit": FIT}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> ProxyTask:
    return ProxyTask(tiny_config(tmp_path_factory.mktemp("table")))


def _with(proxy: ProxyTask, **settings: object) -> ProxyTask:
    other = copy.copy(proxy)
    other.config = proxy.config.model_copy(update=settings)
    return other


def test_steps_are_the_modules_graphneck_builds() -> None:
    size = 100  # sides that do not divide by the strides: ceil at every level
    archs = [load_architecture(n) for n in CLASSICS]
    archs += [load_space(f).random(s) for f in FAMILIES for s in range(2)]
    for arch in archs:
        channels = [CHANNELS[lvl] for lvl in arch.inputs]
        neck = GraphNeck(arch, channels)
        built = [s.build() for s in _steps(arch, channels, size, None)]
        inputs = feature_inputs(channels, [2**lvl for lvl in arch.inputs], size)
        assert sum(count_params(m) for m, _ in built) == count_params(neck), arch.name
        flops = sum(count_flops(m, x if isinstance(x, tuple) else (x,)) for m, x in built)
        assert flops == count_flops(neck, (inputs,)), arch.name  # same ops on the same shapes


_PREDICT = """
import json, sys
from nas_neck.config import ProxyConfig
from nas_neck.dsl import load_architecture
from nas_neck.proxy import ProxyTask
from nas_neck.screen import LatencyTable

config = ProxyConfig.model_validate_json(sys.argv[1])
table = LatencyTable(ProxyTask(config), runs=10, rounds=2, fit=["light", "fpn", "pafpn"])
ms = table.predict(load_architecture("bifpn"))
print(json.dumps({"ms": ms, "steps": table.measured_steps, "necks": table.measured_necks}))
"""


def _predict_in_a_process(proxy: ProxyTask) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PREDICT), proxy.config.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_reads_the_table_instead_of_measuring(proxy: ProxyTask) -> None:
    first = _predict_in_a_process(proxy)
    assert first["steps"] > 0 and first["necks"] == len(FIT)
    (path,) = (proxy.config.cache_root / "latency").glob("table-*.json")
    written = path.stat().st_mtime_ns
    second = _predict_in_a_process(proxy)
    assert second == {"ms": first["ms"], "steps": 0, "necks": 0}
    assert path.stat().st_mtime_ns == written


def test_table_is_grown_lazily_and_rebuilt_when_settings_change(proxy: ProxyTask) -> None:
    table = LatencyTable(proxy, **QUICK)
    ms = table.predict(load_architecture("light"))
    assert math.isfinite(ms) and ms > 0
    stored = json.loads(table.path.read_text())
    assert stored["key"]["threads"] == 1 and stored["key"]["input_size"] == 128
    assert len(stored["fit"]["archs"]) == len(FIT)
    again = LatencyTable(proxy, **QUICK)  # same settings: read, not measured
    assert again.predict(load_architecture("light")) == ms and again.measured_steps == 0
    sample = load_space("nasfpn-free").random(7)
    assert math.isfinite(again.predict(sample))
    assert 0 < again.measured_steps <= len({s.key for s in again.steps(sample)})  # only its own
    other = LatencyTable(_with(proxy, input_size=96), **QUICK)
    assert other.path != table.path
    other.predict(load_architecture("light"))
    assert other.measured_steps > 0 and other.measured_necks == len(FIT)
    table.path.write_text(json.dumps(stored | {"key": {"threads": 99}}))  # another table's file
    rebuilt = LatencyTable(proxy, **QUICK)
    rebuilt.predict(load_architecture("light"))
    assert rebuilt.measured_steps > 0 and json.loads(table.path.read_text())["key"] == table.key


def test_table_key_follows_every_latency_setting(proxy: ProxyTask) -> None:
    path = LatencyTable(proxy, **QUICK).path
    for settings in [
        {"latency_threads": 2},
        {"latency_target": "onnxruntime"},
        {"latency_scope": "detector"},
        {"input_size": 160},
    ]:
        assert LatencyTable(_with(proxy, **settings), **QUICK).path != path, settings
    assert LatencyTable(proxy, runs=20, rounds=2, fit=FIT).path != path


def test_prediction_of_a_classic_is_near_its_measurement(proxy: ProxyTask) -> None:
    table = LatencyTable(proxy, **QUICK)
    arch = load_architecture("bifpn")  # not one of the necks the overhead is fitted on
    predicted, measured = table.predict(arch), proxy.cost(arch)["latency_ms"]
    assert 0.5 < predicted / measured < 2.0, (predicted, measured)


@pytest.mark.slow
def test_detector_scope_and_onnxruntime_tables(proxy: ProxyTask) -> None:
    arch = load_architecture("light")
    neck = LatencyTable(proxy, **QUICK).predict(arch)
    detector = LatencyTable(_with(proxy, latency_scope="detector"), **QUICK)
    assert detector.steps(arch)[-1].kind == "head"
    assert detector.predict(arch) > neck
    onnx = LatencyTable(_with(proxy, latency_target="onnxruntime"), **QUICK).predict(arch)
    assert math.isfinite(onnx) and onnx > 0


def test_overhead_needs_three_whole_necks(proxy: ProxyTask) -> None:
    with pytest.raises(NasNeckError, match="at least 3"):
        LatencyTable(proxy, fit=["fpn", "light"])


def test_prediction_is_cheap_once_the_table_exists(proxy: ProxyTask) -> None:
    import time

    table = LatencyTable(proxy, **QUICK)
    archs = [load_space("bifpn-family").random(s) for s in range(3)]
    table.predict_many(archs)
    start = time.perf_counter()
    for _ in range(100):
        for arch in archs:
            table.predict(arch)
    assert (time.perf_counter() - start) / 300 < 1e-3  # well under a millisecond each


def test_unused_path_is_not_written(tmp_path: Path) -> None:
    """Building a table touches no file: only a prediction measures and writes."""
    config = tiny_config(tmp_path)
    LatencyTable(ProxyTask(config), **QUICK)
    assert not (config.cache_root / "latency").exists()
