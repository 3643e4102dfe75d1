"""What a search is asked to do (`SearchSettings`), and copies of it that other processes can use.

The settings travel: `nas-neck search` stores them in the study for workers, and the Ray backend
ships them to its trials, so `shared` makes every local path absolute (and the space a reference
any process resolves: an absolute file path, or a shipped space's name).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nas_neck.errors import NasNeckError
from nas_neck.search.defaults import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, is_journal

if TYPE_CHECKING:
    from nas_neck.config import ProxyConfig
    from nas_neck.search.rungs import Rungs
    from nas_neck.search.study import Objectives

# The command line reads these settings' defaults and bounds when it starts (`nas-neck --help`):
# the DSL, optuna (`study`, `rungs`) and mlflow are imported where they are used, not here.


DEFAULT_SPACE = "pafpn-family"


class SearchSettings(BaseModel):
    """Everything `nas-neck search` takes (the proxy's settings live in `nas_neck.proxy`).

    `space` is a YAML file or a shipped space's name (`nas-neck spaces` lists them); `baselines`
    name shipped fixed architectures evaluated first with the same budget.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    space: str | Path = DEFAULT_SPACE
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    tracking_uri: str = DEFAULT_TRACKING_URI
    # Where a new MLflow experiment keeps its artifacts: a folder or a URI; None: beside a local
    # SQLite database, or where the MLflow server says (`nas_neck.search.tracking.artifact_root`).
    artifacts: str | None = None
    trials: int = Field(8, ge=1)
    accuracy: str = "map"
    cost: str = "latency"
    max_latency_ms: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    baselines: list[str] = ["fpn", "pafpn", "bifpn"]
    out_dir: Path = Path("runs")
    # Multi-fidelity: epochs of each rung (None: every candidate trains the proxy's epochs once)
    # and the reduction factor; see `nas_neck.search.rungs`.
    rungs: list[int] | None = None
    eta: int = Field(3, ge=2)
    budget_minutes: float | None = Field(None, gt=0)  # stop launching work that would not fit
    # Confirmation at the end: the top `confirm` of the final front and the baselines retrained
    # from scratch for `confirm_epochs` with `confirm_seeds` seeds; see `nas_neck.search.confirm`.
    confirm: int = Field(0, ge=0)
    confirm_epochs: int = Field(9, ge=1)
    confirm_seeds: int = Field(2, ge=1)
    # Screening: of `screen` proposals of the sampler, train the best by `screen_signal` (a
    # zero-cost proxy or the surrogate; `nas_neck.screen.signals`); 1: no screening.
    screen: int = Field(1, ge=1)
    screen_signal: str = "surrogate"

    @property
    def objectives(self) -> Objectives:
        from nas_neck.search.study import Objectives

        return Objectives.parse(f"{self.accuracy},{self.cost}")

    @field_validator("rungs")
    @classmethod
    def _check_rungs(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            from nas_neck.search.rungs import Rungs

            Rungs(tuple(v))  # its error names --rungs
        return v

    @property
    def schedule(self) -> Rungs | None:
        """The successive-halving schedule, None for a plain search."""
        from nas_neck.search.rungs import Rungs

        return Rungs(tuple(self.rungs), self.eta) if self.rungs else None

    @property
    def study_name(self) -> str:
        """`study`, else the space's own name."""
        from nas_neck.dsl import load_space

        return self.study or load_space(self.space).name


def baseline_names() -> list[str]:
    """The shipped spaces that are fixed architectures: what `--baselines` may name."""
    from nas_neck.dsl import load_space, shipped_names

    return [name for name in shipped_names() if load_space(name).is_fixed]


def check_baselines(names: list[str]) -> None:
    """Refuse a baseline that is not a shipped fixed architecture, naming those that are."""
    known = baseline_names()
    for name in names:
        if name not in known:
            raise NasNeckError(
                f"--baselines: unknown baseline {name!r}; expected some of {', '.join(known)}"
            )


def parent_params(settings: SearchSettings, proxy_config: ProxyConfig) -> dict[str, object]:
    """The MLflow parent run's params: the search settings, the proxy's as `proxy.*`, and its
    training recipe as `train.*`."""
    p = proxy_config.model_dump(mode="json")
    train = p.pop("train")
    return {
        "space": str(settings.space),
        "trials": settings.trials,
        "sampler": settings.sampler,
        "seed": settings.seed,
        "objectives": ",".join(settings.objectives.names),
        "max_latency_ms": settings.max_latency_ms,
        "baselines": ",".join(settings.baselines),
        "rungs": ",".join(map(str, settings.rungs)) if settings.rungs else None,
        "eta": settings.eta if settings.rungs else None,
        "budget_minutes": settings.budget_minutes,
        "confirm": settings.confirm,
        "screen": settings.screen,
        "screen_signal": settings.screen_signal if settings.screen > 1 else None,
        **{f"proxy.{k}": v for k, v in p.items()},
        **{f"train.{k}": v for k, v in train.items()},
    }


def shared(
    settings: SearchSettings, proxy_config: ProxyConfig
) -> tuple[SearchSettings, ProxyConfig]:
    """Copies that other processes can use: every local path absolute (space file, outputs,
    SQLite/journal files, data, cache; the built-in synthetic data resolved to its folder), the
    study named, a shipped space left as its name."""
    from nas_neck.data.cache import default_cache_root
    from nas_neck.data.synth import ensure_default_dataset
    from nas_neck.dsl import space_ref

    data = proxy_config.data if proxy_config.data is not None else ensure_default_dataset().root
    proxy_config = proxy_config.model_copy(
        update={
            "data": _absolute(data),
            "val_data": _absolute(proxy_config.val_data),
            "images": _absolute(proxy_config.images),
            "cache_root": _absolute(proxy_config.cache_root or default_cache_root()),
        }
    )
    settings = settings.model_copy(
        update={
            "space": space_ref(settings.space),
            "out_dir": _absolute(settings.out_dir),
            "study": settings.study_name,
            "storage": _absolute_url(settings.storage),
            "tracking_uri": _absolute_url(settings.tracking_uri),
            "artifacts": _absolute_folder(settings.artifacts),
        }
    )
    return settings, proxy_config


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def _absolute_folder(place: str | None) -> str | None:
    """A folder made absolute; a URI (``s3://...``, ``file:///...``) and None unchanged."""
    if place is None or "://" in place or place.startswith(("file:", "mlflow-artifacts:")):
        return place
    return str(Path(place).expanduser().resolve())


def _absolute_url(url: str) -> str:
    """`sqlite:///rel.db` and `journal:rel` made absolute; other URLs unchanged."""
    if (
        url.startswith("sqlite:///")
        and not url.startswith("sqlite:////")
        and url != "sqlite:///:memory:"
    ):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    if is_journal(url):
        return f"journal:{Path(url.removeprefix('journal:')).resolve()}"
    return url
