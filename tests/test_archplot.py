"""Architecture diagrams: every shipped neck draws, and the layout keeps edges out of boxes."""

from pathlib import Path

import numpy as np
import pytest

from nas_neck.archplot import _columns, _direction, _Layout, plot_architecture
from nas_neck.dsl import load_space

SPACES = Path(__file__).parents[1] / "search_spaces"


@pytest.mark.parametrize("name", ["fpn", "bifpn", "nasfpn"])
def test_shipped_necks_draw(name: str, tmp_path: Path) -> None:
    import matplotlib.image

    arch = load_space(SPACES / f"{name}.yaml").sample()
    path = plot_architecture(arch, tmp_path / f"{name}.png")
    img = matplotlib.image.imread(path)
    live = len(arch.pruned().nodes)
    assert img.shape[1] > 150 * (live // 2), "one column per dependency step"
    assert img[..., :3].std() > 0.05


def test_free_form_sample_draws(tmp_path: Path) -> None:
    arch = load_space(SPACES / "nasfpn-free.yaml").random(3)
    assert plot_architecture(arch, tmp_path / "free.png").stat().st_size > 20_000


@pytest.mark.parametrize("seed", range(5))
def test_columns_follow_dependencies_and_never_share_a_cell(seed: int) -> None:
    arch = load_space(SPACES / "nasfpn-free.yaml").random(seed).pruned()
    cols = _columns(arch)
    cells = [(cols[n.name], n.level) for n in arch.nodes]
    assert len(cells) == len(set(cells))
    for n in arch.nodes:
        assert all(cols[n.name] > cols.get(r, 0) for r in n.inputs), "edges point right"


def test_direction_names() -> None:
    assert _direction(5, 4) == "top-down"  # to a finer level
    assert _direction(3, 4) == "bottom-up"
    assert _direction(4, 4) == "lateral"


def test_routing_goes_around_boxes() -> None:
    layout = _Layout()
    for key, col, level in (("P4", 0, 4), ("T4", 1, 4), ("N4", 2, 4), ("P5", 0, 5), ("N5", 3, 5)):
        layout.boxes[key] = (col, level, 0.7)
    assert len(layout.route("T4", "N4")) == 2, "adjacent and clear: a straight line"
    assert len(layout.route("P5", "N5")) == 2, "nothing on the row in between: straight"
    path = layout.route("P4", "N4")  # T4 is in the way
    assert len(path) == 6
    for a, b in zip(path[:-1], path[1:], strict=True):
        assert layout._clear(a, b, {"P4", "N4"}), f"segment {a} -> {b} crosses a box"
    second = layout.route("P4", "N4")
    assert not np.allclose(np.array(path)[2:4], np.array(second)[2:4]), (
        "parallel routes are spread apart"
    )
