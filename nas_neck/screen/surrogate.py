"""A surrogate of quick-budget mAP fit on a study's finished trials (proxies + architecture).

The surrogate is ridge regression (numpy) on standardised features: the zero-cost proxies
(heavy-tailed ones as log10) and a fixed-length encoding of the architecture that any space
yields (node, edge and level counts, widths, depths, and the share of each registered fusion,
block and resampling mode, read from the `nas_neck.ops` registries so a new op gets a column). The
ridge strength is chosen by exact leave-one-out error over a fixed grid, so the fit is a closed
form: deterministic, and cheap enough to refit at every screening as the study grows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

from nas_neck.dsl import Architecture
from nas_neck.errors import NasNeckError
from nas_neck.ops import BLOCKS, DOWNSAMPLE_MODES, FUSE_OPS, UPSAMPLE_MODES
from nas_neck.screen.zero_cost import PROXIES

__all__ = ["Surrogate", "cross_validated_tau", "encode"]

_LOG_PROXIES = frozenset({"params", "flops", "grad_norm", "snip"})  # heavy-tailed: log10
_ALPHAS = tuple(10.0**k for k in range(-3, 4))


def encode(arch: Architecture) -> np.ndarray:
    """A fixed-length description of `arch`'s graph (the same columns for every space)."""
    nodes = arch.pruned().nodes
    levels = {n.name: n.level for n in nodes}
    edges = [
        (levels.get(r, int(r[1:]) if r.startswith("P") else 0), n) for n in nodes for r in n.inputs
    ]
    up = [n.upsample or "nearest" for lvl, n in edges if lvl > n.level]
    down = [n.downsample or "conv" for lvl, n in edges if lvl < n.level]
    widths = [n.width for n in nodes]
    out_levels = arch.out_levels

    def shares(values: Sequence[str], names: Sequence[str]) -> list[float]:
        return [values.count(v) / max(1, len(values)) for v in names]

    return np.array(
        [
            len(nodes),
            arch.repeat,
            len(nodes) * arch.repeat,
            len(edges) / max(1, len(nodes)),
            len(up),
            len(down),
            math.log2(np.mean(widths)),
            math.log2(max(widths)),
            sum(n.depth for n in nodes if n.block != "none"),
            len(out_levels),
            min(out_levels),
            max(out_levels),
            len(arch.extra_levels),
            *shares([n.fuse for n in nodes], sorted(FUSE_OPS)),
            *shares([n.block for n in nodes], sorted(BLOCKS)),
            *shares(up, sorted(UPSAMPLE_MODES)),
            *shares(down, sorted(DOWNSAMPLE_MODES)),
        ],
        dtype=float,
    )


def _features(arch: Architecture, proxies: Mapping[str, float]) -> np.ndarray:
    values = [
        math.log10(max(proxies[p], 1e-30)) if p in _LOG_PROXIES else proxies[p] for p in PROXIES
    ]
    return np.concatenate([np.array(values, dtype=float), encode(arch)])


class Surrogate:
    """Ridge regression of mAP on proxies + architecture encoding (see the module docstring)."""

    def fit(
        self,
        archs: Sequence[Architecture],
        proxies: Sequence[Mapping[str, float]],
        maps: Sequence[float],
    ) -> Surrogate:
        """Fit on finished trials; the ridge strength is the grid value of least LOO error."""
        if len(archs) < 2:
            raise NasNeckError(f"the surrogate needs at least 2 finished trials, got {len(archs)}")
        x = np.stack([_features(a, p) for a, p in zip(archs, proxies, strict=True)])
        y = np.asarray(maps, dtype=float)
        self._mean, std = x.mean(axis=0), x.std(axis=0)
        self._scale = np.where(std > 0, std, 1.0)
        z = (x - self._mean) / self._scale
        self._offset = float(y.mean())
        best = None
        for alpha in _ALPHAS:
            coef, loo = _ridge(z, y - self._offset, alpha)
            if best is None or loo < best[0] - 1e-12:
                best = (loo, alpha, coef)
        self.loo_mse, self.alpha, self._coef = best
        return self

    def predict(
        self, archs: Sequence[Architecture], proxies: Sequence[Mapping[str, float]]
    ) -> np.ndarray:
        x = np.stack([_features(a, p) for a, p in zip(archs, proxies, strict=True)])
        return (x - self._mean) / self._scale @ self._coef + self._offset


def _ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge coefficients on centred `y`, and the exact leave-one-out mean squared error."""
    gram = z.T @ z + alpha * np.eye(z.shape[1])
    inverse = np.linalg.inv(gram)
    coef = inverse @ z.T @ y
    hat = np.einsum("ij,jk,ik->i", z, inverse, z)
    residual = (y - z @ coef) / np.clip(1 - hat, 1e-9, None)
    return coef, float(np.mean(residual**2))


def cross_validated_tau(
    archs: Sequence[Architecture],
    proxies: Sequence[Mapping[str, float]],
    maps: Sequence[float],
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Kendall tau and Spearman rho of the surrogate's out-of-fold predictions against mAP
    (k folds, shuffled by `seed`; predictions of all folds pooled)."""
    n = len(archs)
    if n < 2 * folds:
        raise NasNeckError(f"{folds}-fold cross-validation needs {2 * folds} trials, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    predicted = np.empty(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        model = Surrogate().fit(
            [archs[i] for i in train], [proxies[i] for i in train], [maps[i] for i in train]
        )
        predicted[test] = model.predict([archs[i] for i in test], [proxies[i] for i in test])
    return {
        "kendall_tau": float(kendalltau(predicted, maps).statistic),
        "spearman_rho": float(spearmanr(predicted, maps).statistic),
        "n": n,
        "folds": folds,
    }
