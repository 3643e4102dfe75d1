"""Measurement: explicit threads, FLOPs convention, params, neck + head conveniences."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nas_neck.detect import DetectionHead
from nas_neck.device import autocast_context, available_cpus, default_device, threads
from nas_neck.measure import (
    Latency,
    NeckWithHead,
    count_flops,
    count_params,
    feature_inputs,
    measure_latency,
    measure_neck,
)


class _ThreadProbe(nn.Module):
    """Records torch's thread count and grad mode at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((torch.get_num_threads(), torch.is_grad_enabled(), self.training))
        return self.conv(x)


class _TinyNeck(nn.Module):
    def __init__(self, channels: list[int], width: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.out_channels = [width] * len(channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [conv(f) for conv, f in zip(self.convs, features, strict=True)]


def test_latency_uses_and_records_the_requested_threads_and_restores_them() -> None:
    before = torch.get_num_threads()
    requested = before + 1
    probe = _ThreadProbe().train()
    result = measure_latency(
        probe, torch.randn(1, 3, 16, 16), threads=requested, warmup=2, runs=5, rounds=1
    )
    assert isinstance(result, Latency)
    assert result.threads == requested and result.runs == 5 and result.device == "cpu"
    assert probe.seen == [(requested, False, False)] * 7  # warm-up + runs, inference, eval mode
    assert torch.get_num_threads() == before
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.mean_ms > 0 and set(result.as_dict()) >= {"median_ms", "threads", "device"}


def test_latency_rounds_run_on_fresh_copies_of_module_and_inputs() -> None:
    probe = _ThreadProbe()
    x = torch.randn(1, 3, 8, 8)
    result = measure_latency(probe, x, threads=1, warmup=1, runs=9, rounds=3, device="cpu")
    assert result.rounds == 3 and result.runs == 9
    assert len(probe.seen) == 1 + 3  # the original serves round 1 only: warm-up + its 3 runs


def test_latency_defaults_to_available_cpus_not_the_inherited_setting() -> None:
    probe = _ThreadProbe()
    with threads(1):  # what Ray's OMP_NUM_THREADS=1 would leave behind
        result = measure_latency(probe, torch.randn(1, 3, 8, 8), warmup=0, runs=2, device="cpu")
        assert torch.get_num_threads() == 1
    assert result.threads == available_cpus()
    assert {seen[0] for seen in probe.seen} == {available_cpus()}


def test_threads_context_restores_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), threads(before + 2):
        assert torch.get_num_threads() == before + 2
        raise RuntimeError
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        threads(0).__enter__()


def test_flops_of_a_conv_are_two_per_multiply_add() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    macs = 16 * 20 * 24 * 8 * 3 * 3  # outputs x (inputs per output)
    assert count_flops(conv, torch.randn(1, 8, 20, 24)) == 2 * macs
    assert count_params(conv) == 16 * 8 * 9
    assert count_params(nn.Conv2d(8, 16, 3)) == 16 * 8 * 9 + 16


def test_feature_inputs_use_ceil_sizes() -> None:
    maps = feature_inputs([16, 24, 40], [8, 16, 32], 100)
    assert [tuple(m.shape) for m in maps] == [(1, 16, 13, 13), (1, 24, 7, 7), (1, 40, 4, 4)]
    assert feature_inputs([4], [8], (64, 40))[0].shape == (1, 4, 8, 5)


def test_measure_neck_alone_and_with_head() -> None:
    channels, strides = [16, 24], [8, 16]
    neck = _TinyNeck(channels)
    head = DetectionHead(neck.out_channels, strides, num_classes=2, width=8)
    result = measure_neck(neck, channels, strides, 64, head=head, threads=1, warmup=1, runs=3)
    assert set(result) == {"neck", "neck+head"}
    assert all(r.threads == 1 and r.runs == 3 for r in result.values())
    # FLOPs and params of neck + head are the sum of the parts
    inputs = feature_inputs(channels, strides, 64)
    both = NeckWithHead(neck, head)
    assert count_flops(both, inputs) == count_flops(neck, inputs) + count_flops(head, neck(inputs))
    assert count_params(both) == count_params(neck) + count_params(head)


def test_tuple_inputs_are_unpacked() -> None:
    class MatMul(nn.Module):
        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return a @ b

    flops = count_flops(MatMul(), (torch.randn(4, 5), torch.randn(5, 6)))
    assert flops == 2 * 4 * 5 * 6
    assert measure_latency(MatMul(), (torch.randn(4, 5), torch.randn(5, 6)), runs=1).runs == 1


def test_device_helpers_on_cpu() -> None:
    if not torch.cuda.is_available():
        assert default_device() == torch.device("cpu")
    with autocast_context("cpu"):
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.float32
    assert available_cpus() >= 1
