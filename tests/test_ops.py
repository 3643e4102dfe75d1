"""Neck ops do what their docstrings say."""

import torch

from nas_neck.ops.blocks import RepConv, make_block
from nas_neck.ops.fusion import GpAttentionFusion, WeightedFusion
from nas_neck.ops.resample import Resample


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
