"""Pareto fronts, hypervolume, reference point and knee on plain points, against brute force."""

import itertools

import numpy as np
import pytest

from nas_neck.errors import NasNeckError
from nas_neck.pareto import front, hypervolume, knee, reference_point


def brute_front(p: np.ndarray) -> set[int]:
    """Rows no other row dominates (x minimized, y maximized; non-finite rows never count)."""
    ok = [i for i in range(len(p)) if np.isfinite(p[i]).all()]
    return {
        i
        for i in ok
        if not any(
            p[j, 0] <= p[i, 0] and p[j, 1] >= p[i, 1] and (p[j, 0] < p[i, 0] or p[j, 1] > p[i, 1])
            for j in ok
        )
    }


def brute_hypervolume(p: np.ndarray, ref: tuple[float, float]) -> float:
    """Exact area of the union of boxes [x, x_ref] x [y_ref, y], summed over the grid of all
    coordinates: a cell counts when some point's box covers it."""
    p = p[np.isfinite(p).all(axis=1)]
    xs = np.unique(np.clip(np.append(p[:, 0], ref[0]), None, ref[0]))
    ys = np.unique(np.clip(np.append(p[:, 1], ref[1]), ref[1], None))
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(
        zip(xs[:-1], xs[1:], strict=True), zip(ys[:-1], ys[1:], strict=True)
    ):
        if np.any((p[:, 0] <= x0) & (p[:, 1] >= y1)):
            area += (x1 - x0) * (y1 - y0)
    return area


def random_points(seed: int, n: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if ties:  # a small integer grid: repeated x, repeated y, identical points
        p = rng.integers(0, 6, size=(n, 2)).astype(float)
    else:
        p = np.column_stack([rng.uniform(1, 10, n), rng.uniform(0, 0.5, n)])
    p[rng.random(n) < 0.1] = np.nan  # unusable rows (e.g. a metric not recorded)
    return p


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_front_matches_brute_force(seed: int, ties: bool) -> None:
    p = random_points(seed, 40, ties)
    idx = front(p)
    assert set(idx.tolist()) == brute_front(p)
    assert len(idx) == len(set(idx.tolist()))
    assert np.all(np.diff(p[idx, 0]) >= 0), "ordered by increasing cost"


def test_front_keeps_identical_points_and_drops_dominated_ties() -> None:
    p = np.array([[1, 0.5], [1, 0.5], [1, 0.4], [2, 0.5], [0.5, 0.1]])
    assert sorted(front(p).tolist()) == [0, 1, 4]


def test_front_minimizing_y() -> None:
    p = np.array([[1.0, 3.0], [2.0, 1.0], [3.0, 2.0]])
    assert front(p, maximize_y=False).tolist() == [0, 1]
    assert front(np.zeros((0, 2))).tolist() == []


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_hypervolume_matches_brute_force(seed: int, ties: bool) -> None:
    p = random_points(seed, 30, ties)
    finite = p[np.isfinite(p).all(axis=1)]
    ref = reference_point(finite)
    assert hypervolume(p, ref) == pytest.approx(brute_hypervolume(p, ref), rel=1e-12, abs=1e-12)
    tight = (
        float(np.median(finite[:, 0])),
        float(np.median(finite[:, 1])),
    )  # points beyond the reference
    assert hypervolume(p, tight) == pytest.approx(brute_hypervolume(p, tight), rel=1e-12, abs=1e-12)


def test_hypervolume_by_hand() -> None:
    p = np.array([[1.0, 0.2], [2.0, 0.3], [3.0, 0.1]])  # the last one is dominated
    assert hypervolume(p, (4.0, 0.0)) == pytest.approx(3 * 0.2 + 2 * 0.1)
    assert hypervolume(p, (1.0, 0.0)) == 0.0  # nothing strictly better than the reference
    assert hypervolume(np.zeros((0, 2)), (1.0, 0.0)) == 0.0


def test_reference_point_rule() -> None:
    p = np.array([[2.0, 0.3], [5.0, 0.1], [np.nan, 0.4]])
    assert reference_point(p) == (pytest.approx(5.5), 0.0)
    assert reference_point(p[::-1]) == reference_point(p), "depends on the points, not their order"
    with pytest.raises(NasNeckError):
        reference_point(np.zeros((0, 2)))


def test_knee_is_farthest_above_the_extremes_line() -> None:
    # normalised: u = (0, .2, .4, 1), v = (0, .75, .9, 1) -> v - u = (0, .55, .5, 0)
    f = np.array([[1.0, 0.10], [2.0, 0.25], [3.0, 0.28], [6.0, 0.30]])
    assert knee(f) == 1
    assert knee(f[::-1]) == 2, "an index into the given order"
    assert knee(f[:1]) == 0
    assert knee(f[[0, 3]]) == 0, "two points: both on the line, the cheaper wins"
    with pytest.raises(ValueError):
        knee(np.zeros((0, 2)))
