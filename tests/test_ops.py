"""Neck ops do what their docstrings say."""

import ast
import sys
from pathlib import Path

import pytest
import torch

import nas_neck.ops
from nas_neck.ops import ConvAct, ConvBnAct, build, make_fusion
from nas_neck.ops.blocks import Bottleneck, RepConv, make_block
from nas_neck.ops.fusion import GpAttentionFusion, SpatialFusion, WeightedFusion
from nas_neck.ops.registry import DEPLOYED, Call, call_of
from nas_neck.ops.resample import Resample

OPS = Path(nas_neck.ops.__file__).parent


def test_weighted_fusion_matches_bifpn_formula():
    fusion = WeightedFusion(3)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))  # relu drops the negative weight
    xs = [torch.randn(2, 4, 5, 5) for _ in range(3)]
    w = torch.relu(fusion.weight.detach())
    expected = sum(w[i] * xs[i] for i in range(3)) / (w.sum() + 1e-4)
    torch.testing.assert_close(fusion(xs), expected)


def test_gp_attention_matches_nasfpn_cell():
    x1, x2 = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    expected = x2 + torch.sigmoid(x2.mean(dim=(2, 3), keepdim=True)) * x1
    torch.testing.assert_close(GpAttentionFusion()([x1, x2]), expected)


def test_repconv_reparameterizes_exactly():
    block = make_block("repconv", 16, 16, depth=2)
    for m in block.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    block.eval()
    x = torch.randn(2, 16, 9, 7)
    before = block(x)
    for m in block.modules():
        if isinstance(m, RepConv):
            m.reparameterize()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules())
    torch.testing.assert_close(block(x), before, atol=1e-4, rtol=1e-4)


def test_resample_reaches_exact_sizes_for_odd_maps():
    x = torch.randn(1, 8, 21, 17)  # a P4 map of an odd-sized image
    for mode in ("conv", "maxpool", "avgpool", "space_to_depth"):
        down = Resample(8, 16, 4, 6, downsample=mode)
        assert down(x).shape == (1, 16, 6, 5), mode
    up = Resample(8, 16, 4, 3, upsample="bilinear")
    ref = torch.empty(1, 16, 42, 33)
    assert up(x, ref).shape == (1, 16, 42, 33)


def test_ops_import_only_torch_and_the_standard_library():
    """Exported `neck.py` files copy ops' source verbatim: it must need nothing but torch."""
    for path in sorted(OPS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = top in ("torch", "__future__") or top in sys.stdlib_module_names
                assert allowed or name.startswith("nas_neck.ops"), f"{path.name} imports {name}"


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown block 'nope'; expected one of none, conv, "):
        make_block("nope", 8, 8)
    with pytest.raises(ValueError, match=r"unknown fusion op 'nope'; expected one of sum, "):
        make_fusion("nope", 2, 8)
    with pytest.raises(ValueError, match=r"unknown downsample mode 'nope'; expected one of conv"):
        Resample(8, 8, 3, 4, downsample="nope")
    with pytest.raises(ValueError, match=r"unknown upsample mode 'nope'; expected one of near"):
        Resample(8, 8, 4, 3, upsample="nope")


def test_factories_record_their_constructor_calls():
    assert call_of(build(ConvBnAct, 8, 16, 3, stride=2)) == Call(
        ConvBnAct, (8, 16, 3), {"stride": 2}
    )
    assert call_of(ConvBnAct(8, 16)) is None
    assert call_of(make_block("bottleneck", 8, 16, depth=2)[1]) == Call(Bottleneck, (16, 16))
    assert call_of(make_fusion("spatial", 3, 16)) == Call(SpatialFusion, (3, 16))


def _randomize_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("act", [True, False])
def test_a_reparameterized_conv_bn_act_is_the_conv_act_deployed_says(act):
    """`DEPLOYED[ConvBnAct]` is a bare `ConvAct`: same arguments, same weight names."""
    unit = ConvBnAct(8, 16, 3, stride=2, groups=2, dilation=2, act=act)
    _randomize_bn(unit)
    unit.eval()
    x = torch.randn(2, 8, 11, 9)
    before = unit(x)
    unit.reparameterize()
    assert DEPLOYED[ConvBnAct] == Call(ConvAct)
    twin = ConvAct(8, 16, 3, stride=2, groups=2, dilation=2, act=act)
    twin.load_state_dict(unit.state_dict())  # strict
    torch.testing.assert_close(unit(x), before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(twin(x), before, atol=1e-5, rtol=1e-5)


def test_a_reparameterized_repconv_is_a_3x3_conv_act():
    block = RepConv(8, 8)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, 8, 9, 7)
    before = block(x)
    block.reparameterize()
    block.reparameterize()  # a second call changes nothing
    form = DEPLOYED[RepConv]
    twin = form.cls(8, 8, *form.args, **form.kwargs)
    state = {}
    for key, value in block.state_dict().items():
        for src, dst in form.renames.items():
            key = dst + key[len(src) :] if key.startswith(src + ".") else key
        state[key] = value
    twin.load_state_dict(state)  # strict
    torch.testing.assert_close(twin(x), before, atol=1e-4, rtol=1e-4)
