"""The search's defaults and names that the command line reads when it starts: standard library
only, so `nas-neck --help` (and every command's option defaults) load no optuna or mlflow.
`study` and `settings` use them from here."""

from __future__ import annotations

DEFAULT_STORAGE = "sqlite:///nas.db"  # Optuna storage (`nas_neck.search.study`)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow (`nas_neck.search.tracking`)
SAMPLERS = ("tpe", "nsga2", "random", "gp")  # `nas_neck.search.study.make_sampler` builds each


def is_journal(url: str) -> bool:
    """Whether `url` names a journal file rather than a database URL."""
    return url.startswith("journal:") or url.endswith((".journal", ".log"))
