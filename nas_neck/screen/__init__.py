"""Screening before training: a latency predictor and zero-cost accuracy proxies (issue 16).

The search calls three things (all deterministic given a seed; none trains anything):

``Screener(signal, proxy_task, *, seed=0, min_trials=8, fallback="params", latency=None,
zero_cost=None)``
    ``signal`` is one of ``signals()``: a zero-cost proxy (``params``, ``flops``, ``grad_norm``,
    ``snip``, ``synflow``, ``naswot``, ``zico``) or ``surrogate``.

    ``.choose(archs, finished=(), *, max_latency_ms=None) -> int``: the index in ``archs`` of the
    candidate to train. ``finished`` holds ``(Architecture, quick-budget mAP)`` of the study's
    finished trials; the surrogate is refit on them whenever they changed, and until
    ``min_trials`` of them exist the surrogate signal ranks by ``fallback``. With
    ``max_latency_ms`` only candidates the latency table predicts within it compete (when none
    is, the fastest predicted is chosen, for the search to measure and mark infeasible).

    ``.screen(...) -> Screening``: the same choice with every candidate's ``scores``, the
    ``signal`` they are (the fallback until the surrogate is fitted) and predicted
    ``latency_ms``: what a search records about the candidates it screened out.

    ``.proxies(arch) -> dict[str, float]``: every proxy of one architecture (cached by hash).

``signals() -> tuple[str, ...]``
    What ``--screen-signal`` may take.

``LatencyTable(proxy_task, *, runs=40, rounds=4, fit=None)``
    ``.predict(arch) -> float`` and ``.predict_many(archs) -> list[float]``: latency in ms in the
    units of ``ProxyTask.cost(arch)["latency_ms"]``, from a per-machine table of steps cached in
    ``<cache root>/latency/`` (the first prediction on a machine and settings times the steps it
    lacks, and the overhead fit times a handful of whole necks once).

Below them: `ZeroCost` (the proxies), `Surrogate` and `cross_validated_tau` (the mAP model and
its check). See docs/screening.md.
"""

from nas_neck.screen.latency_table import LatencyTable
from nas_neck.screen.screener import Finished, Screener, Screening, signals
from nas_neck.screen.surrogate import Surrogate, cross_validated_tau
from nas_neck.screen.zero_cost import PROXIES, ZeroCost

__all__ = [
    "PROXIES",
    "Finished",
    "LatencyTable",
    "Screener",
    "Screening",
    "Surrogate",
    "ZeroCost",
    "cross_validated_tau",
    "signals",
]
