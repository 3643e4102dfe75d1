"""Canonical hash, YAML/JSON round trips, the sampler interface and the free-form rule."""

from pathlib import Path

import optuna
import pytest
import yaml

from nas_neck.dsl import (
    FixedSampler,
    OptunaSampler,
    RandomSampler,
    SearchSpace,
    load_architecture,
    load_space,
)
from nas_neck.errors import SpaceError

SPACES = Path(__file__).parents[1] / "search_spaces"

PAFPN = {
    "name": "a",
    "inputs": ["P3", "P4", "P5"],
    "defaults": {"fuse": "sum", "block": "conv"},
    "nodes": {
        "T4": {"level": 4, "inputs": ["P5", "P4"]},
        "N3": {"level": 3, "inputs": ["T4", "P3"], "output": True},
        "N4": {"level": 4, "inputs": ["N3", "T4"], "output": True},
        "N5": {"level": 5, "inputs": ["N4", "P5"], "output": True},
    },
}


def _arch(raw):
    return SearchSpace.from_dict(raw).sample()


def test_hash_ignores_spelling():
    base = _arch(PAFPN).hash
    respelled = {
        "name": "another name",
        "inputs": ["P5", "P3", "P4"],
        "width": {"choice": [64]},  # a one-option domain is still width 64
        "nodes": {  # other names, other order, inputs swapped (sum is symmetric), fields spelled out
            "out5": {
                "level": 5,
                "inputs": ["P5", "out4"],
                "output": True,
                "fuse": "sum",
                "block": "conv",
            },
            "mid": {"level": 4, "inputs": ["P4", "P5"], "fuse": "sum", "block": "conv", "depth": 1},
            "out3": {
                "level": 3,
                "inputs": ["P3", "mid"],
                "output": True,
                "fuse": "sum",
                "block": "conv",
            },
            "out4": {
                "level": 4,
                "inputs": ["out3", "mid"],
                "output": True,
                "fuse": "sum",
                "block": "conv",
            },
            "dead": {
                "level": 3,
                "inputs": ["P3"],
                "fuse": "sum",
                "block": "conv",
            },  # feeds no output
        },
    }
    arch = SearchSpace(SearchSpace.from_dict(respelled).spec).sample(RandomSampler(0))
    assert arch.hash == base
    assert arch.canonical() == _arch(PAFPN).canonical().__class__(
        **{**_arch(PAFPN).canonical().__dict__, "name": "another name"}
    )


def test_hash_ignores_resample_modes_without_such_edge():
    a = {
        **PAFPN,
        "nodes": {
            **PAFPN["nodes"],
            "T4": {"level": 4, "inputs": ["P5", "P4"], "downsample": "maxpool"},
        },
    }
    assert _arch(a).hash == _arch(PAFPN).hash  # T4 has no downsampled input


@pytest.mark.parametrize(
    "change",
    [
        ("T4", "fuse", "concat"),
        ("N3", "block", "dwconv"),
        ("N4", "width", 32),
        ("N4", "downsample", "maxpool"),
        ("T4", "upsample", "bilinear"),
    ],
)
def test_hash_sees_real_changes(change):
    node, key, value = change
    raw = yaml.safe_load(yaml.safe_dump(PAFPN))
    raw["nodes"][node][key] = value
    assert _arch(raw).hash != _arch(PAFPN).hash


def test_gp_attention_input_order_matters_but_sum_does_not():
    def with_inputs(fuse, inputs):
        raw = yaml.safe_load(yaml.safe_dump(PAFPN))
        raw["nodes"]["T4"].update(fuse=fuse, inputs=inputs)
        return _arch(raw).hash

    assert with_inputs("sum", ["P5", "P4"]) == with_inputs("sum", ["P4", "P5"])
    assert with_inputs("gp_attention", ["P5", "P4"]) != with_inputs("gp_attention", ["P4", "P5"])


def test_input_order_is_a_property_of_the_fusion_registry_entry(monkeypatch):
    """A fusion registered as ordered keeps its inputs' order in the hash; a plain factory (or an
    entry without the flag) is order-free. Nothing in the DSL names the op."""
    from nas_neck.ops import FUSE_OPS, Fusion

    def with_inputs(fuse, inputs):
        raw = yaml.safe_load(yaml.safe_dump(PAFPN))
        raw["nodes"]["T4"].update(fuse=fuse, inputs=inputs)
        return _arch(raw).hash

    monkeypatch.setitem(FUSE_OPS, "gated", Fusion(FUSE_OPS["gp_attention"], ordered=True))
    monkeypatch.setitem(FUSE_OPS, "plain", FUSE_OPS["sum"].make)
    assert with_inputs("gated", ["P5", "P4"]) != with_inputs("gated", ["P4", "P5"])
    assert with_inputs("plain", ["P5", "P4"]) == with_inputs("plain", ["P4", "P5"])
    monkeypatch.setitem(FUSE_OPS, "gp_attention", Fusion(FUSE_OPS["gp_attention"].make))
    assert with_inputs("gp_attention", ["P5", "P4"]) == with_inputs("gp_attention", ["P4", "P5"])


@pytest.mark.parametrize(
    "name", ["fpn", "pafpn", "bifpn", "nasfpn", "light", "pafpn-family", "nasfpn-free"]
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, name, suffix):
    arch = load_space(SPACES / f"{name}.yaml").sample(RandomSampler(3))
    back = load_architecture(arch.save(tmp_path / f"arch{suffix}"))
    assert back == arch
    assert back.hash == arch.hash


def test_samplers_share_one_interface():
    space = load_space(SPACES / "nasfpn-free.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(10):
        trial = study.ask()
        arch = space.sample(OptunaSampler(trial))
        assert trial.params == arch.params
        # The trial's params alone rebuild the same architecture.
        assert space.sample(FixedSampler(trial.params)) == arch
        seen.append(arch.hash)
        study.tell(trial, 0.0)
    assert len(set(seen)) > 5


def test_random_sampler_is_deterministic():
    space = load_space(SPACES / "pafpn-family.yaml")
    assert space.random(7) == space.random(7)
    assert {space.random(s).hash for s in range(20)} != {space.random(7).hash}


def test_fixed_sampler_rejects_out_of_domain_values():
    space = load_space(SPACES / "pafpn-family.yaml")
    params = space.random(0).params
    with pytest.raises(SpaceError, match="T4.width: expected one of"):
        space.sample(FixedSampler({**params, "T4.width": 50}))
    with pytest.raises(SpaceError, match="no value given for parameter 'T4.block'"):
        space.sample(FixedSampler({k: v for k, v in params.items() if k != "T4.block"}))


def test_free_form_rule_gives_valid_dags_with_conditional_params():
    space = load_space(SPACES / "nasfpn-free.yaml")
    for seed in range(300):
        arch = space.random(seed)
        n = arch.params["nodes"]
        assert arch.out_levels == (3, 4, 5)
        names = ["P3", "P4", "P5"]
        for node in arch.nodes:
            assert node.inputs and set(node.inputs) <= set(names)  # inputs only point backwards
            names.append(node.name)
        # Conditional parameters: only the hidden nodes that exist have parameters.
        hidden = {k.split(".")[0] for k in arch.params if k.startswith("h")}
        assert hidden == {f"h{i}" for i in range(n)}


def test_summary_fits_one_screen():
    arch = load_space(SPACES / "bifpn.yaml").sample()
    lines = arch.summary().splitlines()
    assert len(lines) == 1 + len(arch.nodes) and max(map(len, lines)) < 100
    assert arch.hash in lines[0] and "x3 repeats" in lines[0]
