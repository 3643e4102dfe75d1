"""Which space holds which architecture exactly: the shipped families hold the classics (so a
search over them can only improve on them), samples are held by their own space, and the
parameters found draw the same architecture."""

import pytest
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.dsl import FixedSampler, load_architecture, load_space
from nas_neck.dsl.membership import holds, params_for

HELD = {"pafpn-family": {"pafpn", "light"}, "bifpn-family": {"bifpn"}, "fpn-family": {"fpn"}}
CLASSICS = ("fpn", "pafpn", "bifpn", "nasfpn", "light")


@pytest.mark.parametrize("family", sorted(HELD))
def test_each_family_holds_exactly_the_classics_it_claims(family):
    space = load_space(family)
    for name in CLASSICS:
        arch = load_architecture(name)
        params = params_for(space, arch)
        assert (params is not None) == (name in HELD[family]), name
        if params is not None:  # the parameters draw that very graph
            assert space.sample(FixedSampler(params)).hash == arch.hash


@pytest.mark.parametrize("family", [*sorted(HELD), "light"])
def test_a_space_holds_its_own_samples(family):
    space = load_space(family)
    for seed in range(12):
        arch = space.random(seed)
        assert holds(space, arch), seed
        assert space.sample(FixedSampler(params_for(space, arch))).hash == arch.hash


def test_a_free_form_space_or_another_graph_is_not_matched():
    assert params_for(load_space("nasfpn-free"), load_architecture("nasfpn")) is None
    pafpn = load_space("pafpn-family").random(0)
    assert not holds(load_space("bifpn-family"), pafpn)


def test_spaces_says_which_family_holds_which_classic():
    out = CliRunner().invoke(app, ["spaces"]).output
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for family, classics in HELD.items():
        assert all(name in rows[family] for name in classics), rows[family]
