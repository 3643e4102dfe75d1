"""ONNX and TorchScript files of a neck, and how far their outputs are from PyTorch's.

A neck's `forward` takes a list of maps; both formats want positional tensors, so the neck is
wrapped to take one tensor per level and return a tuple. ONNX export tries the torch.export-based
exporter first (`dynamo=True`, dynamic batch and sides), which needs `onnxscript`; when that is
missing or the graph does not export, it falls back to the TorchScript-based exporter with
`dynamic_axes`. Both are checked against PyTorch at other input sizes, so a file that silently
fixed a shape fails the parity check instead of shipping.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["export_onnx", "export_torchscript", "onnx_max_diffs", "torchscript_max_diffs"]

log = logging.getLogger(__name__)

OPSET = 17


class _Positional(nn.Module):
    """`neck(list) -> list` as `forward(*maps) -> tuple`, the signature exporters trace."""

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, *maps: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.neck(list(maps)))


def export_onnx(
    neck: nn.Module,
    inputs: Sequence[Tensor],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> str:
    """Write `neck` as ONNX with dynamic batch and sides; returns the exporter that worked
    (`"dynamo"` or `"torchscript"`)."""
    wrapper = _Positional(neck).eval()  # eval first: exporters restore the mode they found
    args = tuple(inputs)
    try:
        dim = torch.export.Dim.DYNAMIC
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=True,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=tuple({0: dim, 2: dim, 3: dim} for _ in args),
            )
        return "dynamo"
    except Exception as e:  # exporters fail in many ways; the fallback is checked as strictly
        log.info(
            "torch.export-based ONNX export failed (%s: %s); using the TorchScript-based one",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
    axes = {
        n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in [*input_names, *output_names]
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
        )
    return "torchscript"


def onnx_max_diffs(
    path: str | Path, neck: nn.Module, checks: Sequence[Sequence[Tensor]]
) -> list[float]:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs, per input set."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    diffs = []
    for inputs in checks:
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
        diffs.append(_max_diff([torch.from_numpy(g) for g in got], _reference(neck, inputs)))
    return diffs


def export_torchscript(neck: nn.Module, inputs: Sequence[Tensor], path: str | Path) -> None:
    """Write a traced TorchScript file of `neck` taking one tensor per level."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Positional(neck).eval(), tuple(inputs), check_trace=False)
    traced.save(str(path))


def torchscript_max_diffs(
    path: str | Path, neck: nn.Module, checks: Sequence[Sequence[Tensor]]
) -> list[float]:
    """Largest absolute difference between the TorchScript file's and PyTorch's outputs, per
    input set."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.load(str(path), map_location="cpu")
        return [_max_diff(list(traced(*inputs)), _reference(neck, inputs)) for inputs in checks]


@torch.no_grad()
def _reference(neck: nn.Module, inputs: Sequence[Tensor]) -> list[Tensor]:
    return list(neck.eval()(list(inputs)))


def _max_diff(got: list[Tensor], want: list[Tensor]) -> float:
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want, strict=True)):
        return float("inf")
    return max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True))
