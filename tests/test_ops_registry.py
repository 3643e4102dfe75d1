"""A new block is one class and one registry line: the DSL, `show`, export and fusing take it."""

from __future__ import annotations

import pytest
import torch
from test_export import _neck, check_without_nas_neck
from torch import nn
from typer.testing import CliRunner

from nas_neck.dsl import SearchSpace
from nas_neck.errors import SpaceError
from nas_neck.export import fuse_neck, neck_source
from nas_neck.ops import BLOCKS, ConvBnAct, repeated


class TinyBlock(nn.Module):
    """A 3x3 conv then a 1x1 conv, each with BatchNorm and SiLU: known only to this test."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.spatial = ConvBnAct(in_ch, out_ch, 3)
        self.mix = ConvBnAct(out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.spatial(x))


TINY = {
    "name": "tiny-pan",
    "inputs": ["P3", "P4", "P5"],
    "width": 24,
    "defaults": {"block": "tiny"},
    "nodes": {
        "T4": {"level": 4, "inputs": ["P5", "P4"], "fuse": "concat", "depth": 2},
        "N3": {"level": 3, "inputs": ["T4", "P3"], "output": True},
        "N4": {"level": 4, "inputs": ["N3", "T4"], "fuse": "weighted", "output": True},
        "N5": {"level": 5, "inputs": ["N4", "P5"], "output": True},
    },
}


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    """`tiny` registered as a block for the test, removed afterwards."""
    monkeypatch.setitem(BLOCKS, "tiny", repeated(TinyBlock))
    return "tiny"


def test_the_dsl_reads_the_block_registry_when_validating(monkeypatch):
    with pytest.raises(SpaceError, match=r"expected one of none, conv, .*got 'tiny'"):
        SearchSpace.from_dict(TINY, source="tiny.yaml")
    monkeypatch.setitem(BLOCKS, "tiny", repeated(TinyBlock))
    arch = SearchSpace.from_dict(TINY, source="tiny.yaml").sample()
    assert {n.block for n in arch.nodes} == {"tiny"}


def test_a_block_registered_by_a_test_exports_and_fuses_with_parity(tiny, tmp_path):
    arch = SearchSpace.from_dict(TINY, source="tiny.yaml").sample()
    neck = _neck(arch)
    plain, fused = neck_source(neck).code, neck_source(fuse_neck(neck)).code
    assert "class TinyBlock(nn.Module)" in plain and "self.t4 = nn.Sequential(" in plain
    assert "self.spatial = ConvBnAct(in_ch, out_ch, 3)" in plain
    assert "self.spatial = ConvAct(in_ch, out_ch, 3)" in fused and "BatchNorm2d" not in fused
    check_without_nas_neck(tmp_path, [("tiny", arch, (False, True))])


def test_show_describes_a_neck_with_a_registered_block(tiny, tmp_path):
    import yaml

    from nas_neck.cli import app

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["show", str(path), "--input-size", "64"])
    assert result.exit_code == 0, result.output
    assert result.output.count("tiny") == 1 + len(TINY["nodes"]), result.output  # title, rows
    assert "params" in result.output
