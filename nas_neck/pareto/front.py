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


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting (x minimized, y maximized): rank 0 is the front, rank 1 the front of
    what remains, and so on. Non-finite rows get the last rank + 1."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    ranks = np.full(len(p), -1, dtype=int)
    left = np.flatnonzero(np.isfinite(p).all(axis=1))
    rank = 0
    while left.size:
        on = left[front(p[left])]
        ranks[on] = rank
        left = np.setdiff1d(left, on)
        rank += 1
    ranks[ranks < 0] = rank
    return ranks


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row among `points` (one front): the sum over both axes
    of the normalised gap between its neighbours; the extremes of either axis get infinity, so a
    tie-break by it keeps the front spread out."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    n = len(p)
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for axis in range(2):
        order = np.argsort(p[:, axis], kind="stable")
        span = p[order[-1], axis] - p[order[0], axis]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            gaps = (p[order[2:], axis] - p[order[:-2], axis]) / span
            dist[order[1:-1]] += gaps
    return dist


def rank_for_promotion(points: np.ndarray) -> np.ndarray:
    """Row indices of `points` best first, as MO-ASHA promotes: by non-dominated rank, ties within
    a rank by crowding distance (largest first, so the front's extremes and sparse parts go
    first), then by row order."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    ranks = nondominated_ranks(p)
    crowd = np.zeros(len(p))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(p[members])
    return np.lexsort((np.arange(len(p)), -crowd, ranks))
