"""Pareto analysis of real Optuna studies: trial-level fronts and picks, the report's files, MLflow
artifacts, and the `nas-neck pareto` / `show_trial` commands."""

import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from nas_neck.dsl import load_space
from nas_neck.errors import NasNeckError
from nas_neck.pareto import (
    best_under,
    front_trials,
    hypervolume,
    knee_trial,
    log_to_mlflow,
    reference_point,
    write_report,
)
from nas_neck.pareto.report import Baselines, Counts

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACES = Path(__file__).parents[1] / "search_spaces"
BUDGET = 6.0


def new_study(storage: str | None, name: str) -> optuna.Study:
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["maximize", "minimize"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(["map", "latency_ms"])
    return study


def add(
    study: optuna.Study,
    latency: float,
    acc: float | None,
    *,
    baseline: str = "",
    duplicate_of: int | None = None,
    constraint: str = "kwarg",
) -> None:
    """One COMPLETE trial as the objective records it; over BUDGET it is infeasible (accuracy 0,
    no accuracy metrics). `constraint` says how the constraint is stored: the `constraints=` argument
    or the raw system attribute `Trial.set_constraint` writes."""
    infeasible = latency > BUDGET
    attrs = {
        "latency_ms": latency,
        "latency_threads": 2,
        "gflops": 1.5 * latency,
        "mparams": 0.3 * latency,
        "arch_hash": f"h{latency:.3f}",
        "summary": f"4 nodes, sum, conv, w{int(latency * 10)}, P3-P5",
    }
    if baseline:
        attrs["baseline"] = baseline
    if duplicate_of is not None:
        attrs["duplicate_of"] = duplicate_of
    if infeasible:
        attrs["infeasible"] = True
    else:
        attrs.update(map=acc, ap50=acc + 0.3, ap_small=acc / 2)
    excess = latency - BUDGET
    kwargs = (
        {"constraints": {"latency": excess}}
        if constraint == "kwarg"
        else {"system_attrs": {"constraints:latency": excess}}
    )
    study.add_trial(
        create_trial(values=[0.0 if infeasible else acc, latency], user_attrs=attrs, **kwargs)
    )


@pytest.fixture()
def picks_study(tmp_path: Path) -> optuna.Study:
    """A study whose front, knee and budget picks are known (trial numbers in comments)."""
    study = new_study(f"sqlite:///{tmp_path}/picks.db", "picks")
    add(study, 1.0, 0.10)  # 0 front, cheapest
    add(study, 2.0, 0.25, baseline="fpn")  # 1 front, the knee (v - u = .55)
    add(study, 3.0, 0.28)  # 2 front
    add(study, 5.0, 0.30)  # 3 front, most accurate
    add(study, 2.5, 0.20, baseline="pafpn")  # 4 dominated by the searched trial 5
    add(study, 2.4, 0.22)  # 5 dominated by trial 1 (a baseline)
    add(study, 7.0, None, baseline="bifpn", constraint="system_attrs")  # 6 over budget
    add(study, 8.0, None)  # 7 over budget
    add(study, 2.0, 0.25, duplicate_of=1)  # 8 repeats the knee
    study.add_trial(
        create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "diverged: loss nan"})
    )  # 9
    return study


def test_constraints_as_optuna_5_stores_them(tmp_path: Path) -> None:
    study = new_study(None, "c")

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_constraint(
            "latency", 1.5
        )  # the objective's path: system attr constraints:latency
        return 0.0, 7.5

    study.optimize(objective, n_trials=1)
    add(study, 9.0, None, constraint="system_attrs")
    add(study, 1.0, 0.2)
    t = study.trials
    assert t[0].system_attrs["constraints:latency"] == 1.5 and t[0].constraints == {"latency": 1.5}
    assert t[1].constraints == {"latency": 3.0} and t[2].constraints == {"latency": -5.0}
    assert [x.number for x in front_trials(study)] == [2], (
        "infeasible trials are never on the front"
    )


def test_front_picks_and_baselines(picks_study: optuna.Study, tmp_path: Path) -> None:
    assert [t.number for t in front_trials(picks_study)] == [0, 1, 2, 3]
    assert knee_trial(picks_study).number == 1
    assert best_under(picks_study, 2.9).number == 1, (
        "the duplicate (8) of trial 1 never stands in for it"
    )
    assert best_under(picks_study, 100.0).number == 3, "over-budget trials were never trained"
    assert best_under(picks_study, 0.5) is None
    assert [t.number for t in front_trials(picks_study, x="flops", y="ap_small")] == [0, 1, 2, 3]

    r = write_report(picks_study, tmp_path / "out", max_latency_ms=2.9)
    assert (r.x, r.y) == ("latency", "map"), "defaults: the study's own objectives"
    assert r.front == [0, 1, 2, 3] and r.picks.knee == 1 and r.picks.best_under == 1
    assert r.ref == (pytest.approx(5.5), 0.0), "1.1 x the slowest feasible trial, zero accuracy"
    assert r.hypervolume == pytest.approx(1 * 0.10 + 1 * 0.25 + 2 * 0.28 + 0.5 * 0.30)
    assert r.baselines == Baselines(
        dominated=["pafpn"],
        feasible=["fpn", "pafpn"],
        infeasible=["bifpn"],
    )
    assert r.baselines.dominated_share == 0.5
    assert r.counts == Counts(complete=9, feasible=7, infeasible=2, failed=1)
    again = write_report(picks_study, tmp_path / "again", max_latency_ms=2.9)
    assert (again.hypervolume, again.ref) == (r.hypervolume, r.ref), "stable across runs"


@pytest.mark.parametrize("seed", range(3))
def test_trial_front_matches_brute_force(tmp_path: Path, seed: int) -> None:
    """Random studies with ties, infeasible trials and duplicates."""
    rng = np.random.default_rng(seed)
    study = new_study(None, "r")  # in memory: quick
    for i in range(30):
        lat, acc = float(rng.integers(1, 9)), float(rng.integers(0, 5)) / 10
        dup = int(rng.integers(0, i)) if i and rng.random() < 0.15 else None
        if dup is not None:
            lat, acc = study.trials[dup].user_attrs["latency_ms"], study.trials[dup].values[0]
        add(study, lat, acc, duplicate_of=dup, baseline="fpn" if i == 0 else "")
    trials = study.trials
    usable = [
        t
        for t in trials
        if t.user_attrs["latency_ms"] <= BUDGET and "duplicate_of" not in t.user_attrs
    ]
    pts = {t.number: (t.user_attrs["latency_ms"], t.user_attrs["map"]) for t in usable}
    brute = {
        n
        for n, (x, y) in pts.items()
        if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in pts.values())
    }
    assert {t.number for t in front_trials(study)} == brute
    feasible = np.array(
        [
            [t.user_attrs["latency_ms"], t.values[0]]
            for t in trials
            if t.user_attrs["latency_ms"] <= BUDGET
        ]
    )
    ref = reference_point(feasible)
    r = write_report(study, tmp_path / "out")
    assert r.ref == ref and r.hypervolume == pytest.approx(
        hypervolume(np.array(list(pts.values())), ref)
    )


def test_errors_name_the_problem(picks_study: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(NasNeckError, match="records no value of ap75; its trials record .*ap50"):
        front_trials(picks_study, y="ap75")
    with pytest.raises(NasNeckError, match="--x: expected one of latency, flops, params"):
        front_trials(picks_study, x="energy")
    empty = new_study(None, "empty")
    empty.add_trial(create_trial(state=TrialState.FAIL))
    with pytest.raises(NasNeckError, match="no complete trials yet \\(1 fail\\)"):
        knee_trial(empty)
    with pytest.raises(NasNeckError, match="no MLflow parent run"):
        log_to_mlflow(
            picks_study, write_report(picks_study, tmp_path), f"sqlite:///{tmp_path}/m.db"
        )


def plotly_traces(html: str) -> list[dict]:
    start = html.index("Plotly.newPlot(")
    data, _ = json.JSONDecoder().raw_decode(html, html.index("[", start))
    return data


def test_report_files(picks_study: optuna.Study, tmp_path: Path) -> None:
    import matplotlib.image

    other = new_study(f"sqlite:///{tmp_path}/picks.db", "other")
    for lat, acc in ((1.5, 0.2), (3.0, 0.31), (9.0, None)):
        add(other, lat, acc)
    r = write_report(picks_study, tmp_path / "out", compare=[other], max_latency_ms=2.9)
    assert {p.name for p in (r.png, r.html, r.csv)} == {
        "pareto-map-latency.png",
        "pareto-map-latency.html",
        "pareto-map-latency.csv",
    }

    img = matplotlib.image.imread(r.png)
    assert img.shape[0] > 500 and img.shape[1] > 1000 and img[..., :3].std() > 0.05

    html = r.html.read_text()
    assert "<script src=" not in html and len(html) > 1_000_000, "plotly.js embedded: opens offline"
    traces = plotly_traces(html)
    for study in (picks_study, other):
        mine = [
            t
            for t in traces
            if t.get("meta", {}).get("kind") == "trials" and t["meta"]["study"] == study.study_name
        ]
        numbers = [n for t in mine for n in t["customdata"]]
        complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
        assert sorted(numbers) == complete, "one marker per complete trial"
        assert sum(len(t["x"]) for t in mine) == len(complete)
    hover = next(t for t in traces if t.get("name") == "baseline (picks)")["hovertext"]
    assert any(
        "trial 1" in h and "fpn" in h and "latency ms 2.00" in h and "4 nodes" in h for h in hover
    )
    picks = {
        t["meta"]["pick"]: t["customdata"]
        for t in traces
        if t.get("meta", {}).get("kind") == "pick"
    }
    assert picks == {"knee": [1], "best": [1]}
    fronts = {
        t["meta"]["study"]: t["x"] for t in traces if t.get("meta", {}).get("kind") == "front"
    }
    assert fronts == {"picks": [1.0, 2.0, 3.0, 5.0], "other": [1.5, 3.0]}

    rows = r.csv.read_text().splitlines()
    assert rows[0].startswith("trial,baseline,arch_hash,map,") and len(rows) == 1 + 4
    assert rows[2].startswith("1,fpn,") and ",knee/best," in rows[2]
    assert r.studies["other"].hypervolume == pytest.approx(1.5 * 0.2 + 2.5 * 0.31)


def test_artifacts_land_in_mlflow(
    picks_study: optuna.Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from nas_neck.search.tracking import Tracker

    monkeypatch.chdir(tmp_path)  # nothing is written outside tmp_path
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = Tracker(uri, picks_study.study_name).parent_run()
    picks_study.set_user_attr("mlflow_parent_run_id", parent)
    r = write_report(picks_study, tmp_path / "out")
    assert log_to_mlflow(picks_study, r, uri) == parent
    client = MlflowClient(uri)
    names = {Path(a.path).name for a in client.list_artifacts(parent, "pareto")}
    assert names == {"pareto-map-latency.png", "pareto-map-latency.html", "pareto-map-latency.csv"}
    run = client.get_run(parent)
    assert run.data.metrics["pareto.hypervolume.map-latency"] == pytest.approx(r.hypervolume)
    assert run.data.tags["pareto.knee.map-latency"] == "1"
    with pytest.raises(NasNeckError, match="is not in"):
        log_to_mlflow(picks_study, r, f"sqlite:///{tmp_path}/other.db")


def test_cli_pareto_and_show_trial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from typer.testing import CliRunner

    from nas_neck.cli import app
    from nas_neck.cli.show import _show_trial as show_trial

    storage = f"sqlite:///{tmp_path}/cli.db"
    study = new_study(storage, "cli")
    for lat, acc in ((1.0, 0.1), (2.0, 0.25), (4.0, 0.3), (7.0, None)):
        add(study, lat, acc)
    arch = load_space(SPACES / "bifpn.yaml").sample()
    study.add_trial(
        create_trial(
            values=[0.2, 3.0],
            user_attrs={
                "arch": arch.to_dict(),
                "arch_hash": arch.hash,
                "summary": arch.short(),
                "baseline": "bifpn",
                "latency_ms": 3.0,
                "map": 0.2,
            },
        )
    )
    runner = CliRunner()
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "pareto",
            "--study",
            "cli",
            "--storage",
            storage,
            "--out",
            str(out),
            "--max-latency-ms",
            "2.5",
            "--y",
            "map",
            "--x",
            "latency",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert (
        "hypervolume" in res.output
        and "knee: trial 1" in res.output
        and "best under 2.5 ms: trial 1" in res.output
    )
    assert "baselines dominated by the searched trials: 1/1" in res.output
    assert (out / "pareto-map-latency.png").stat().st_size > 20_000

    res = runner.invoke(
        app, ["pareto", "--study", "nope", "--storage", storage], env={"COLUMNS": "200"}
    )
    assert (
        res.exit_code == 1
        and "no study 'nope'" in res.output
        and "studies there: cli" in res.output
    )
    res = runner.invoke(
        app, ["pareto", "--study", "cli", "--storage", f"sqlite:///{tmp_path}/typo.db"]
    )
    assert (
        res.exit_code == 1 and "no such file" in res.output and not (tmp_path / "typo.db").exists()
    )

    show_trial("cli", storage, 4, tmp_path / "arch.png")
    printed = capsys.readouterr().out
    assert (
        "baseline bifpn" in printed
        and arch.hash in printed
        and (tmp_path / "arch.png").stat().st_size > 20_000
    )
    with pytest.raises(NasNeckError, match="no trial 9; its trials are 0..4"):
        show_trial("cli", storage, 9, None)
    with pytest.raises(NasNeckError, match="records no architecture"):
        show_trial("cli", storage, 0, None)
