"""Pareto maths on plain points: the front, its hypervolume, the reference point and the knee.

Convention everywhere: x is a cost (minimized), y an accuracy (maximized). A point dominates
another when it is at least as good on both axes and strictly better on one, so identical points
never dominate each other. Rows with a non-finite coordinate never count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas_neck.errors import NasNeckError

REF_MARGIN = 0.1


def front(points: np.ndarray, maximize_y: bool = True) -> np.ndarray:
    """Indices of the non-dominated rows of `points` (n, 2), x minimized, y maximized (or
    minimized with `maximize_y=False`), ordered by increasing x. Non-finite rows never count."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    x, y = p[:, 0], (p[:, 1] if maximize_y else -p[:, 1])
    idx = np.flatnonzero(np.isfinite(p).all(axis=1))
    order = idx[np.lexsort((-y[idx], x[idx]))]  # x ascending, then y descending
    keep: list[int] = []
    best = -np.inf  # best y among points with a strictly smaller x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and x[order[j]] == x[order[i]]:
            j += 1
        top = y[order[i]]  # the group's best y (sorted first)
        if top > best:
            keep.extend(int(k) for k in order[i:j] if y[k] == top)
        best = max(best, top)
        i = j
    return np.asarray(keep, dtype=int)


def hypervolume(points: np.ndarray, ref: Sequence[float]) -> float:
    """Area dominated by `points` (x minimized, y maximized) and bounded by `ref = (x_ref, y_ref)`;
    points not strictly better than `ref` on both axes add nothing."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1) & (p[:, 0] < ref[0]) & (p[:, 1] > ref[1])]
    if not len(p):
        return 0.0
    f = p[front(p)]  # x ascending, so y ascending too
    xs = np.append(f[:, 0], ref[0])
    return float(np.sum(np.diff(xs) * (f[:, 1] - ref[1])))


def reference_point(
    points: np.ndarray, margin: float = REF_MARGIN, y_ref: float = 0.0
) -> tuple[float, float]:
    """The hypervolume reference: `(1 + margin) x` the largest cost among `points` (the feasible
    points of every study compared), and accuracy `y_ref`. It depends only on the points, so an
    unchanged study always gets the same hypervolume."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    x = p[np.isfinite(p).all(axis=1), 0]
    if not len(x):
        raise NasNeckError("no feasible trial to place the hypervolume reference point")
    return float((1.0 + margin) * x.max()), float(y_ref)


def knee(points: np.ndarray) -> int:
    """Index of the knee of a front (x minimized, y maximized): min-max normalise the front to the
    unit square; the knee is the point farthest above the line joining the cheapest and the most
    accurate points (largest `v - u`); ties, and fronts of one or two points, give the cheapest."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if not len(p):
        raise ValueError("knee of an empty front")
    lo, span = p.min(axis=0), np.ptp(p, axis=0)
    u, v = ((p - lo) / np.where(span > 0, span, 1.0)).T
    score = v - u
    ties = np.flatnonzero(score >= score.max() - 1e-12)
    return int(ties[np.argmin(p[ties, 0])])
