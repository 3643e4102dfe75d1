"""Pareto analysis of a search: fronts, hypervolume, picks, and the report (plots, CSV, MLflow).

Layers, bottom up: `front` (maths on plain points), `trials` (a study's trials on the axes, and
the picks), `plots` (PNG and HTML), `report` (the typed `ParetoReport`, its files and MLflow).
"""

from nas_neck.pareto.front import REF_MARGIN, front, hypervolume, knee, reference_point
from nas_neck.pareto.report import ParetoReport, log_to_mlflow, write_report
from nas_neck.pareto.trials import axes_of, best_under, front_trials, knee_trial

__all__ = [
    "REF_MARGIN",
    "ParetoReport",
    "axes_of",
    "best_under",
    "front",
    "front_trials",
    "hypervolume",
    "knee",
    "knee_trial",
    "log_to_mlflow",
    "reference_point",
    "write_report",
]
