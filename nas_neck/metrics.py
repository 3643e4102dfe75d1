"""The metric vocabulary of a search: accuracy metrics, costs, their stored names, units and labels.

The bottom layer of the package (standard library only), so the study, the Pareto analysis,
MLflow tracking and the command line all name, label and check metrics the same way.

A cost is chosen by its short name (`latency`, `flops`, `params`) and stored, on trials and in
MLflow, under its attribute name with the unit (`latency_ms`, `gflops`, `mparams`). An objective
pair is always (accuracy, maximized; cost, minimized).
"""

from __future__ import annotations

import math

ACCURACY_METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
COST_METRICS = ("latency", "flops", "params")
COST_ATTRS = {"latency": "latency_ms", "flops": "gflops", "params": "mparams"}
COST_UNITS = {"latency": "ms", "flops": "GFLOPs", "params": "M params"}
DIRECTIONS = ("maximize", "minimize")  # (accuracy, cost)

ACCURACY_LABELS = {
    "map": "mAP@[.5:.95]",
    "ap50": "AP@.5",
    "ap75": "AP@.75",
    "ap_small": "AP small (mAP@[.5:.95], area < 32² px)",
    "ap_medium": "AP medium (mAP@[.5:.95], 32²-96² px)",
    "ap_large": "AP large (mAP@[.5:.95], area > 96² px)",
}
ACCURACY_SHORT = {
    "map": "mAP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "AP_S",
    "ap_medium": "AP_M",
    "ap_large": "AP_L",
}
# Stored cost attributes as table columns: (attribute, column title, format).
COST_COLUMNS = (
    ("latency_ms", "latency (ms)", ".2f"),
    ("gflops", "GFLOPs", ".3f"),
    ("mparams", "params (M)", ".3f"),
)


def cost_attr(cost: str) -> str:
    """The stored attribute of a cost: `latency` -> `latency_ms`."""
    return COST_ATTRS[cost]


def cost_of(name: str) -> str | None:
    """The cost a stored attribute or short name stands for (`latency_ms` or `latency` ->
    `latency`), or None."""
    if name in COST_ATTRS:
        return name
    return next((cost for cost, attr in COST_ATTRS.items() if attr == name), None)


def finite(value: object) -> float | None:
    """`value` as a float when it is a finite real number (an int or float, numpy scalars
    included), else None: bools, strings, None, NaN and infinities are not metric values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:  # numpy and torch scalars
            value = value.item()  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
    number = float(value)
    return number if math.isfinite(number) else None
