"""Every shipped space builds into a GraphNeck that runs, at square and odd input sizes."""

import math
from pathlib import Path

import pytest
import torch

from nas_neck.dsl import RandomSampler, load_space
from nas_neck.neck import GraphNeck

SPACES = Path(__file__).parents[1] / "search_spaces"
CLASSICS = ["fpn", "pafpn", "bifpn", "nasfpn", "light"]
FAMILIES = ["pafpn-family", "bifpn-family", "fpn-family", "nasfpn-free"]
CHANNELS = {2: 24, 3: 40, 4: 112, 5: 320}  # tf_efficientnet_lite0


def _features(levels, h, w, batch=1):
    return [
        torch.randn(batch, CHANNELS[lv], math.ceil(h / 2**lv), math.ceil(w / 2**lv))
        for lv in levels
    ]


def _check(neck, arch, h, w):
    outs = neck(_features(arch.inputs, h, w, batch=2))
    assert len(outs) == len(arch.out_levels) == len(neck.out_levels)
    for out, lvl, ch in zip(outs, neck.out_levels, neck.out_channels, strict=True):
        assert out.shape == (2, ch, math.ceil(h / 2**lvl), math.ceil(w / 2**lvl)), (arch.name, lvl)
        assert torch.isfinite(out).all()


def test_every_shipped_file_is_listed():
    assert sorted(p.stem for p in SPACES.glob("*.yaml")) == sorted(CLASSICS + FAMILIES)


@pytest.mark.parametrize("name", CLASSICS)
@pytest.mark.parametrize("size", [(512, 512), (333, 250)])
def test_classic_builds_and_runs(name, size):
    space = load_space(SPACES / f"{name}.yaml")
    assert space.is_fixed
    arch = space.sample()
    neck = GraphNeck(arch, [CHANNELS[lv] for lv in arch.inputs]).eval()
    _check(neck, arch, *size)


def test_classics_have_their_published_shape():
    bifpn = load_space(SPACES / "bifpn.yaml").sample()
    assert (bifpn.width, bifpn.repeat, bifpn.out_levels) == (64, 3, (3, 4, 5, 6, 7))
    assert {n.fuse for n in bifpn.nodes} == {"weighted"}
    pafpn = load_space(SPACES / "pafpn.yaml").sample()
    assert {n.block for n in pafpn.nodes} == {"c2f"} and {n.fuse for n in pafpn.nodes} == {"concat"}
    nasfpn = load_space(SPACES / "nasfpn.yaml").sample()
    assert {n.fuse for n in nasfpn.nodes} == {"sum", "gp_attention"}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_200_random_samples_build_and_run(name):
    space = load_space(SPACES / f"{name}.yaml")
    hashes = set()
    for seed in range(200):
        arch = space.sample(RandomSampler(seed))
        neck = GraphNeck(arch, [CHANNELS[lv] for lv in arch.inputs]).eval()
        h, w = (96, 72) if seed % 2 else (64, 64)
        with torch.no_grad():
            _check(neck, arch, h, w)
        hashes.add(arch.hash)
    assert len(hashes) > 150  # the space really varies


def test_odd_size_with_p2_and_extra_levels():
    space = load_space(SPACES / "fpn.yaml")
    raw = space.sample().to_dict()
    raw["inputs"] = ["P2", "P3", "P4", "P5"]
    raw["nodes"]["N2"] = {"level": 2, "inputs": ["L3", "P2"], "output": True}
    from nas_neck.dsl import SearchSpace

    arch = SearchSpace.from_dict(raw).sample()
    neck = GraphNeck(arch, [CHANNELS[lv] for lv in arch.inputs]).eval()
    assert neck.out_levels == [2, 3, 4, 5, 6, 7]
    _check(neck, arch, 333, 250)


def test_neck_traces_and_follows_input_size():
    arch = load_space(SPACES / "bifpn.yaml").sample()
    neck = GraphNeck(arch, [CHANNELS[lv] for lv in arch.inputs]).eval()
    traced = torch.jit.trace(
        neck, (_features(arch.inputs, 256, 256),), check_trace=False, strict=False
    )
    feats = _features(arch.inputs, 333, 250)
    for a, b in zip(traced(feats), neck(feats), strict=True):
        torch.testing.assert_close(a, b)
