"""Zero-cost proxies and the screener: every proxy is a finite number for every shipped classic and
for samples of every searchable family, the same seed gives the same numbers and the same choice,
and the surrogate is refit as finished trials arrive."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from search_fixtures import tiny_config

from nas_neck.dsl import load_architecture, load_space, shipped_names
from nas_neck.errors import NasNeckError
from nas_neck.proxy import ProxyTask
from nas_neck.screen import PROXIES, Screener, ZeroCost, cross_validated_tau, signals

FIXED = [n for n in shipped_names() if load_space(n).is_fixed]
FAMILIES = [n for n in shipped_names() if not load_space(n).is_fixed]
SMALL = {"batch_size": 4, "batches": 2}  # the tiny task caches 8 training images


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> ProxyTask:
    return ProxyTask(tiny_config(tmp_path_factory.mktemp("zero-cost")))


@pytest.fixture(scope="module")
def scorer(proxy: ProxyTask) -> ZeroCost:
    return ZeroCost(proxy, seed=0, **SMALL)


def _all_finite(scores: dict[str, float]) -> bool:
    return set(scores) == set(PROXIES) and all(math.isfinite(v) for v in scores.values())


def test_the_shipped_spaces_hold_classics_and_families() -> None:
    assert {"fpn", "pafpn", "bifpn", "nasfpn", "light"} <= set(FIXED)
    assert {"pafpn-family", "bifpn-family", "nasfpn-free"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FIXED)
def test_every_proxy_is_finite_for_every_shipped_classic(scorer: ZeroCost, name: str) -> None:
    scores = scorer.score(load_architecture(name))
    assert _all_finite(scores), scores
    assert scores["params"] > 0 and scores["flops"] > 0 and scores["grad_norm"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_proxy_is_finite_for_20_samples_of_each_family(scorer: ZeroCost, family: str) -> None:
    space = load_space(family)
    for seed in range(20):
        arch = space.random(seed)
        assert _all_finite(scorer.score(arch)), (family, seed, arch.summary())


def test_proxies_are_deterministic_given_a_seed(proxy: ProxyTask) -> None:
    arch = load_space("nasfpn-free").random(3)
    first = ZeroCost(proxy, seed=5, **SMALL).score(arch)
    assert ZeroCost(proxy, seed=5, **SMALL).score(arch) == first
    scorer = ZeroCost(proxy, seed=5, **SMALL)
    scorer.score(load_architecture("light"))  # what ran before does not matter
    assert scorer.score(arch) == first
    other = ZeroCost(proxy, seed=6, **SMALL).score(arch)
    assert other["params"] == first["params"] and other["zico"] != first["zico"]


def test_proxies_tell_necks_apart(scorer: ZeroCost) -> None:
    some = ["params", "flops", "synflow"]
    light, pafpn = (scorer.score(load_architecture(n), some) for n in ("light", "pafpn"))
    assert pafpn["params"] > 10 * light["params"] and pafpn["flops"] > light["flops"]
    assert pafpn["synflow"] > light["synflow"]


def test_each_proxy_is_quick(scorer: ZeroCost) -> None:
    """Under 2 s each on an idle machine; the bound stretches with the load others put on it."""
    timed = scorer.timed(load_architecture("pafpn"))
    limit = 2.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert all(seconds < limit for _, seconds in timed.values()), (limit, timed)


def test_unknown_proxy_and_too_few_images_are_one_line_errors(proxy: ProxyTask) -> None:
    with pytest.raises(NasNeckError, match="unknown zero-cost proxy 'nope'"):
        ZeroCost(proxy, **SMALL).score(load_architecture("fpn"), ["nope"])
    with pytest.raises(NasNeckError, match="cached training images"):
        ZeroCost(proxy, batch_size=8, batches=4).score(load_architecture("fpn"))
    with pytest.raises(NasNeckError, match="screening signal"):
        Screener("accuracy", proxy)


def _finished(family: str, n: int) -> list:
    """Fake finished trials with an mAP that grows with the neck's width."""
    space = load_space(family)
    archs = [space.random(100 + i) for i in range(n)]
    return [(a, max(n.width for n in a.nodes) / 100 + 0.01 * i) for i, a in enumerate(archs)]


def test_screening_is_deterministic_given_a_seed(proxy: ProxyTask) -> None:
    candidates = [load_space("pafpn-family").random(s) for s in range(4)]
    finished = _finished("pafpn-family", 8)
    for signal in ("zico", "surrogate"):
        a = Screener(signal, proxy, min_trials=4, zero_cost=ZeroCost(proxy, seed=1, **SMALL))
        b = Screener(signal, proxy, min_trials=4, zero_cost=ZeroCost(proxy, seed=1, **SMALL))
        first = a.screen(candidates, finished)
        assert b.screen(candidates, finished) == first
        assert first.index == max(range(4), key=lambda i: (first.scores[i], -i))
    by_params = Screener("params", proxy, zero_cost=ZeroCost(proxy, **SMALL)).screen(candidates)
    params = [ZeroCost(proxy, **SMALL).score(c, ["params"])["params"] for c in candidates]
    assert by_params.index == params.index(max(params)) and by_params.signal == "params"


def test_surrogate_falls_back_then_refits_as_trials_arrive(proxy: ProxyTask) -> None:
    screener = Screener(
        "surrogate", proxy, min_trials=4, fallback="params", zero_cost=ZeroCost(proxy, **SMALL)
    )
    candidates = [load_space("bifpn-family").random(s) for s in range(3)]
    finished = _finished("bifpn-family", 6)
    assert screener.screen(candidates, finished[:3]).signal == "params"
    assert screener.screen(candidates, finished[:4]).signal == "surrogate"
    fitted = screener._surrogate
    screener.screen(candidates, finished[:4])
    assert screener._surrogate is fitted  # the same trials: no refit
    screener.screen(candidates, finished)
    assert screener._surrogate is not fitted
    nan = [(finished[0][0], math.nan), *finished[1:4]]
    assert screener.screen(candidates, nan).signal == "params"  # a NaN mAP does not count


class _Latency:
    def __init__(self, ms: list[float]) -> None:
        self.ms = ms

    def predict_many(self, archs: list) -> list[float]:
        return self.ms[: len(archs)]


def test_latency_budget_screens_out_slow_candidates(proxy: ProxyTask) -> None:
    candidates = [load_architecture(n) for n in ("light", "pafpn", "bifpn")]
    screener = Screener(
        "params", proxy, latency=_Latency([1.0, 9.0, 3.0]), zero_cost=ZeroCost(proxy, **SMALL)
    )
    assert screener.choose(candidates) == 1  # pafpn has the most parameters
    result = screener.screen(candidates, max_latency_ms=5.0)
    assert result.index == 2 and result.latency_ms == [
        1.0,
        9.0,
        3.0,
    ]  # bifpn: the largest in budget
    assert screener.choose(candidates, max_latency_ms=0.5) == 0  # none fits: the fastest


def test_pareto_aware_screening_picks_the_largest_hypervolume_gain(proxy: ProxyTask) -> None:
    """With the study's front, each candidate's accuracy is the signal fitted to the finished
    trials (here mAP = params exactly, so the fit is exact) and the one adding the most
    hypervolume wins, even if another has more parameters."""
    candidates = [load_architecture(n) for n in ("light", "pafpn", "bifpn")]
    zc = ZeroCost(proxy, **SMALL)
    params = [zc.score(c, ["params"])["params"] for c in candidates]
    finished = [(c, 1e-8 * p) for c, p in zip(candidates, params, strict=True)]
    acc = [1e-8 * p for p in params]
    # pafpn (most parameters) and light are predicted behind the front's first point; bifpn,
    # predicted faster than the whole front, adds hypervolume.
    front = [(2.0, acc[1] + 0.01), (6.0, max(acc) + 0.02)]
    screener = Screener("params", proxy, latency=_Latency([4.0, 3.0, 1.0]), zero_cost=zc)
    result = screener.screen(candidates, finished, front=front)
    assert result.predicted == pytest.approx(acc, rel=1e-6)
    assert result.latency_ms == [4.0, 3.0, 1.0]
    assert result.gains[1] == pytest.approx(0.0, abs=1e-12)  # dominated by (2.0, ...)
    assert result.index == int(np.argmax(result.gains)) == 2
    # No fit yet (2 finished): the first proposal no other beats on predicted latency and params
    # (light is slower than pafpn and smaller).
    assert screener.screen(candidates, finished[:2], front=front).index == 1
    assert (
        Screener("params", proxy, latency=_Latency([1.0, 3.0, 4.0]), zero_cost=zc)
        .screen(candidates, finished[:2], front=front)
        .index
        == 0
    )  # light is the fastest now: nobody beats it
    # No candidate adds hypervolume: the one closest above the front at its latency.
    high = [(0.5, 1.0)]
    assert screener.screen(candidates, finished, front=high).index == int(np.argmax(acc))


def test_hypervolume_gains_by_hand() -> None:
    from nas_neck.screen.screener import _gains

    gains, gaps = _gains([(2.0, 0.4), (4.0, 0.5)], [1.0, 3.0, 5.0], [0.3, 0.45, 0.45])
    # ref = (1.1 x 5.0, 0): (1, 0.3) adds 1 x 0.3; (3, .45) adds 1 x 0.05; (5, .45) nothing.
    assert gains == pytest.approx([0.3, 0.05, 0.0])
    assert gaps == pytest.approx([0.3, 0.05, -0.05])


def test_cross_validated_tau_of_a_learnable_target() -> None:
    """mAP that one proxy determines: the out-of-fold ranking follows it (given enough trials
    for ridge to find that column among ~40)."""
    archs = [load_space("pafpn-family").random(s) for s in range(30)]
    rng = np.random.default_rng(0)
    proxies = [{p: float(rng.uniform(1, 10)) for p in PROXIES} for _ in archs]
    maps = [0.1 + 0.02 * p["zico"] for p in proxies]
    result = cross_validated_tau(archs, proxies, maps, folds=3)
    assert result["n"] == 30 and result["folds"] == 3 and result["kendall_tau"] > 0.9
    with pytest.raises(NasNeckError, match="needs 10 trials"):
        cross_validated_tau(archs[:5], proxies[:5], maps[:5], folds=5)


def test_signals_name_every_proxy_and_the_surrogate() -> None:
    assert signals() == (*PROXIES, "surrogate")


def test_layers_screen_is_above_proxy() -> None:
    """`screen` may import proxy; nothing it imports imports `screen` back (tests/test_layers.py
    checks cycles; this names the intended direction)."""
    import ast

    root = Path(__file__).parents[1] / "nas_neck"
    for path in root.rglob("*.py"):
        if "screen" in path.parts or "cli" in path.parts or "search" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(m.startswith("nas_neck.screen") for m in names), path
