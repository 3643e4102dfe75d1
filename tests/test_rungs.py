"""Successive halving with Pareto-aware promotion, fidelities on fronts, and confirmation
summaries, on hand-made trials (no training)."""

import warnings

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from nas_neck.errors import NasNeckError
from nas_neck.fidelity import Fidelity
from nas_neck.pareto.front import crowding_distance, nondominated_ranks, rank_for_promotion
from nas_neck.pareto.trials import front_trials, gather, report_fidelity
from nas_neck.search.confirm import choose, confirmed, enqueue_confirmations
from nas_neck.search.rungs import Budget, Costs, Rungs, enqueue, next_promotion
from nas_neck.search.study import CandidateSampler, claimed_count, finished_count

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["map", "latency_ms"])
    return study


def _add(study, acc, ms, **attrs) -> int:
    """A complete trial with values (acc, ms) and user attrs; returns its number."""
    number = len(study.trials)
    study.add_trial(
        create_trial(
            values=[acc, ms],
            user_attrs={"map": acc, "latency_ms": ms, "arch_hash": f"h{number}", **attrs},
        )
    )
    return number


# ---- Pareto maths ------------------------------------------------------------------------------
def test_nondominated_sorting_and_crowding():
    pts = np.array([[1, 0.5], [2, 0.6], [3, 0.55], [1.5, 0.4], [3, 0.7], [0.5, 0.1]])
    assert nondominated_ranks(pts).tolist() == [0, 0, 1, 1, 0, 0]
    front = pts[[5, 0, 1, 4]]  # x ascending
    d = crowding_distance(front)
    assert np.isinf(d[0]) and np.isinf(d[3])  # extremes first
    assert d[1] > d[2] > 0  # (1, .5) sits in a sparser stretch than (2, .6)
    assert rank_for_promotion(pts).tolist()[:4] == [4, 5, 0, 1]  # the front, extremes first


# ---- promotion ---------------------------------------------------------------------------------
def test_promotion_picks_the_non_dominated_candidates_of_a_rung():
    study = _study()
    rungs = Rungs((1, 3, 9), eta=3)
    # Six rung-0 results: (0.50, 1 ms) and (0.70, 3 ms) are the front; the rest are dominated.
    values = [(0.30, 2.0), (0.50, 1.0), (0.40, 2.5), (0.70, 3.0), (0.45, 3.5), (0.20, 1.5)]
    for acc, ms in values:
        _add(study, acc, ms, rung=0, epochs=1)
    first = next_promotion(study, rungs)
    assert first is not None and first.rung == 1 and first.epochs == 3
    enqueue(study, first)
    second = next_promotion(study, rungs)
    assert second is not None
    enqueue(study, second)
    assert {first.candidate, second.candidate} == {1, 3}  # 6 // 3 = 2 promoted: the front
    assert next_promotion(study, rungs) is None  # both claimed, nothing else in the top third
    # What the queue holds: two promotions, each continuing its candidate's rung-0 trial.
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted((t.user_attrs["promotes"], t.user_attrs["resumes"]) for t in waiting) == [
        (1, 1),
        (3, 3),
    ]
    assert all(t.user_attrs["rung"] == 1 and t.user_attrs["epochs"] == 3 for t in waiting)


def test_a_rung_needs_eta_results_before_it_promotes_and_higher_rungs_go_first():
    study = _study()
    rungs = Rungs((1, 3, 9), eta=3)
    _add(study, 0.5, 1.0, rung=0, epochs=1)
    _add(study, 0.6, 2.0, rung=0, epochs=1)
    assert next_promotion(study, rungs) is None  # 2 // 3 = 0
    _add(study, 0.4, 3.0, rung=0, epochs=1)
    p = next_promotion(study, rungs)
    assert p is not None and p.rung == 1
    # Three rung-1 results (promotions of candidates 0..2): rung 1 -> 2 comes before rung 0 -> 1.
    for cand, (acc, ms) in enumerate([(0.6, 1.0), (0.7, 2.0), (0.5, 3.0)]):
        _add(study, acc, ms, rung=1, epochs=3, promotes=cand, resumes=cand)
    for acc, ms in [(0.1, 5.0), (0.15, 6.0), (0.12, 7.0)]:
        _add(study, acc, ms, rung=0, epochs=1)
    top = next_promotion(study, rungs)
    assert top is not None and top.rung == 2 and top.epochs == 9
    assert top.candidate in (0, 1) and top.resumes in (3, 4)  # continues the rung-1 trial


def test_infeasible_failed_and_repeated_results_are_never_promoted():
    study = _study()
    rungs = Rungs((1, 2), eta=2)
    _add(study, 0.0, 0.5, rung=0, epochs=1, infeasible=True)
    _add(study, 0.9, 0.6, rung=0, epochs=1, duplicate_of=3)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"rung": 0, "epochs": 1}))
    _add(study, 0.5, 1.0, rung=0, epochs=1)
    assert next_promotion(study, rungs) is None  # one trained result: 1 // 2 = 0
    _add(study, 0.3, 2.0, rung=0, epochs=1)
    p = next_promotion(study, rungs)
    assert p is not None and p.candidate == 3


def test_rungs_refuse_bad_schedules_in_one_line():
    for text, expected in [
        ("3,1", "strictly increasing"),
        ("0,2", "epochs >= 1"),
        ("a,b", "comma-separated"),
    ]:
        with pytest.raises(NasNeckError, match=expected) as e:
            Rungs.parse(text)
        assert str(e.value).startswith("--rungs") and "\n" not in str(e.value)
    with pytest.raises(NasNeckError, match="--eta"):
        Rungs((1, 3), eta=1)


def test_candidates_count_toward_n_and_promotions_do_not():
    study = _study()
    _add(study, 0.5, 1.0, rung=0, epochs=1)
    _add(study, 0.6, 2.0, rung=0, epochs=1)
    _add(study, 0.7, 2.0, rung=1, epochs=3, promotes=1, resumes=1)
    _add(study, 0.7, 2.0, role="confirm", confirm_of=2, seed=0, epochs=9)
    assert finished_count(study) == 2 and claimed_count(study) == 2


def test_the_sampler_learns_from_candidates_only():
    seen: list[list[int]] = []

    class Recording(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):
            seen.append([t.number for t in study.get_trials(states=(TrialState.COMPLETE,))])
            return super().sample_independent(study, trial, name, dist)

    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=CandidateSampler(Recording(seed=0))
    )
    dist = {"x": FloatDistribution(0, 1)}
    study.add_trial(create_trial(values=[0.5, 1.0], params={"x": 0.1}, distributions=dist))
    study.add_trial(
        create_trial(values=[0.9, 1.0], user_attrs={"promotes": 0, "rung": 1, "epochs": 3})
    )
    study.add_trial(create_trial(values=[0.9, 1.0], user_attrs={"role": "confirm", "seed": 1}))
    study.ask().suggest_float("x", 0, 1)
    assert seen == [[0]]


# ---- budget ------------------------------------------------------------------------------------
def test_budget_and_costs_estimate_from_the_study():
    study = _study()
    for n, train_s in enumerate([10.0, 12.0]):
        attrs = {"epochs": 2, "rung": 0, "train_s": train_s, "arch_hash": f"h{n}"}
        study.add_trial(create_trial(values=[0.5, 1.0], user_attrs=attrs))
    promotion_attrs = {"epochs": 4, "rung": 1, "promotes": 0, "resumes": 0, "train_s": 16.0}
    study.add_trial(create_trial(values=[0.6, 1.0], user_attrs=promotion_attrs))
    costs = Costs.of(study)
    assert costs.epoch_s == pytest.approx(6.0)  # the median of 10 / 2, 12 / 2 and 16 / (4 - 2)
    assert Budget(None).fits(1e9)
    b = Budget(1.0)
    assert b.fits(30.0) and not b.fits(61.0)


# ---- fronts and fidelities ---------------------------------------------------------------------
def test_a_front_never_mixes_fidelities():
    study = _study()
    for acc, ms in [(0.30, 1.0), (0.35, 2.0), (0.40, 3.0), (0.20, 0.5)]:
        _add(study, acc, ms, rung=0, epochs=1)
    # Promotions are better only because they trained longer: never beside rung-0 results.
    _add(study, 0.60, 1.0, rung=1, epochs=3, promotes=0, resumes=0)
    _add(study, 0.65, 2.0, rung=1, epochs=3, promotes=1, resumes=1)
    assert report_fidelity(study) == Fidelity(False, 1)  # rung 1 has 2 < 3 results
    low = gather(study, "latency", "map")
    assert {t.user_attrs["epochs"] for t in low.trials} == {1}
    high = front_trials(study, fidelity=Fidelity(False, 3))
    assert {t.number for t in high} == {4, 5}
    _add(study, 0.62, 3.0, rung=1, epochs=3, promotes=2, resumes=2)
    assert report_fidelity(study) == Fidelity(False, 3)  # now rung 1 holds 3
    assert {t.user_attrs["epochs"] for t in front_trials(study)} == {3}
    with pytest.raises(NasNeckError, match="no results at e9"):
        gather(study, "latency", "map", Fidelity(False, 9))


def test_confirmed_results_are_one_point_per_architecture_with_mean_and_sd():
    study = _study()
    a = _add(study, 0.40, 1.0, rung=0, epochs=1)
    b = _add(study, 0.50, 2.0, rung=0, epochs=1, baseline="fpn")
    for seed, acc in [(0, 0.60), (1, 0.64)]:
        _add(study, acc, 1.0, role="confirm", confirm_of=a, seed=seed, epochs=9, arch_hash="ha")
    for seed, acc in [(0, 0.55), (1, 0.55)]:
        _add(
            study,
            acc,
            2.0,
            role="confirm",
            confirm_of=b,
            seed=seed,
            epochs=9,
            arch_hash="hb",
            baseline="fpn",
        )
    assert report_fidelity(study) == Fidelity(True, 9)
    data = gather(study, "latency", "map")
    assert len(data.trials) == 2 and data.seeds.tolist() == [2, 2]
    assert data.xy[:, 1].tolist() == pytest.approx([0.62, 0.55])
    assert data.sd.tolist() == pytest.approx([np.std([0.60, 0.64], ddof=1), 0.0])
    rows = confirmed(study)
    assert [(r.source, r.baseline) for r in rows] == [(a, ""), (b, "fpn")]
    assert rows[0].mean == pytest.approx(0.62) and rows[0].sd == pytest.approx(0.0283, abs=1e-4)
    # The confirmed front puts the searched architecture (1 ms, 0.62) over fpn (2 ms, 0.55).
    assert data.baselines()[0] == ["fpn"]


def test_choose_prefers_the_most_trained_candidates_and_enqueue_resumes():
    study = _study()
    for acc, ms in [(0.30, 1.0), (0.35, 2.0), (0.40, 3.0), (0.20, 0.5)]:
        _add(study, acc, ms, rung=0, epochs=1)
    _add(study, 0.45, 2.0, rung=1, epochs=3, promotes=1, resumes=1)
    _add(study, 0.9, 0.1, rung=0, epochs=1, baseline="fpn")  # baselines are confirmed apart
    picked = choose(study, 3)
    assert picked[0].number == 4  # candidate 1 at 3 epochs first
    assert {t.number for t in picked[1:]} <= {0, 2, 3} and len(picked) == 3
    assert enqueue_confirmations(study, picked[:1], epochs=9, seeds=[0, 1]) == 2
    assert enqueue_confirmations(study, picked[:1], epochs=9, seeds=[0, 1]) == 0  # queued already
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["seed"] for t in waiting) == [0, 1]
    assert all(t.user_attrs["confirm_of"] == 4 for t in waiting)
