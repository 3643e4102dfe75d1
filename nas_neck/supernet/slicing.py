"""Width slicing of modules built by the op registries, with no per-op code.

A *slot* of the supernet holds one module built by a registry factory at the widest
arguments any path needs (`Widest`). A path runs the same factory's module at its own
(narrower) arguments: that module is built once on the meta device (no memory, no init)
as a *template*, and `torch.func.functional_call` runs the template's own forward with
every parameter and buffer replaced by a slice of the widest tensor of the same name.
So the path computes exactly what the plain module at its width computes (the op's own
code decides splits, residuals, groups), and `extract` copies the same slices into a
plain module: equal outputs by construction.

How a tensor is sliced (`TensorSlice`): every dimension takes its leading entries
(slimmable / Once-for-All style: a path at width w uses the first w output and input
channels; a path at depth d the first d units), except the dimensions that index the
module's *input* channels when that input is a concatenation of several maps (concat
fusion, the spatial fusion's stacked inputs). There each input map keeps its own
channels: the first `s_k` channels of the k-th segment of the widest layout
(`segments`), so a path's channels of the second input use the weights the widest
module uses for the second input. Which dimensions index the input is found by building
the module at two input widths and comparing the shapes (`input_dims`).

A module's *signature* is its structure (submodule classes, parameter and buffer names
and ranks): paths whose modules differ in structure at the same slot (a RepConv with an
identity branch when input and output widths match, a `none` block that is an identity
or a projection, a resampling edge with or without its 1x1 projection) get separate
widest copies, one per signature; weights are shared only between modules of one
structure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Args = tuple[Any, ...]
Factory = Callable[..., nn.Module]


def on_meta(factory: Factory, args: Args) -> nn.Module:
    """`factory(*args)` built on the meta device: shapes and structure, no storage."""
    with torch.device("meta"):
        return factory(*args)


def signature(module: nn.Module) -> tuple:
    """The structure of `module`: submodule names and classes, tensor names and ranks."""
    mods = tuple((name, type(m).__qualname__) for name, m in module.named_modules())
    tensors = tuple(
        (name, t.dim())
        for name, t in itertools.chain(
            module.named_parameters(), module.named_buffers(remove_duplicate=False)
        )
    )
    return mods + tensors


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer (non-persistent ones too) of `module` by name: its shape."""
    return {
        name: tuple(t.shape)
        for name, t in itertools.chain(
            module.named_parameters(), module.named_buffers(remove_duplicate=False)
        )
    }


@dataclass
class Widest:
    """What a slot's widest module must cover: the elementwise maximum of the arguments
    of every path module with one signature, and of their input segments."""

    factory: Factory
    sig: tuple
    args: list[Any]
    width_positions: tuple[int, ...]  # which arguments are channel counts
    segments: list[int] | None = None  # channels of each concatenated input, widest

    def cover(self, args: Args, segments: Sequence[int] | None) -> None:
        for i in self.width_positions:
            if args[i] is not None:
                self.args[i] = max(self.args[i], args[i])
        for i, a in enumerate(args):
            if i not in self.width_positions and isinstance(a, int) and a != self.args[i]:
                self.args[i] = max(self.args[i], a)  # depth and the like: the deepest
        if segments is not None:
            if self.segments is None:  # the first concatenating path of this structure
                self.segments = list(segments)
            else:
                self.segments = [max(a, b) for a, b in zip(self.segments, segments, strict=True)]

    def build(self) -> tuple[nn.Module, Args]:
        """The widest module of this signature (real storage), and the arguments used.

        The elementwise maximum can change the structure (two paths (40, 32) and (32, 40)
        give (40, 40), where input and output widths match); then one width argument is
        bumped by one, or all are set to the largest, until the signature is the slot's.
        """
        base = tuple(self.args)
        top = max((base[i] for i in self.width_positions if base[i] is not None), default=0)
        candidates = [base]
        for i in self.width_positions:
            if base[i] is not None:
                candidates.append(base[:i] + (base[i] + 1,) + base[i + 1 :])
        candidates.append(
            tuple(
                top if i in self.width_positions and a is not None else a
                for i, a in enumerate(base)
            )
        )
        for args in candidates:
            if signature(on_meta(self.factory, args)) == self.sig:
                return self.factory(*args), args
        raise ValueError(f"no widest form of {self.factory} with the paths' structure")


def input_dims(
    factory: Factory, args: Args, position: int, sig: tuple
) -> frozenset[tuple[str, int]]:
    """(tensor name, dim) pairs whose size follows argument `position` (the input width)."""
    a = on_meta(factory, args)
    for delta in (-1, 1):
        changed = list(args)
        changed[position] = args[position] + delta
        if changed[position] < 1:
            continue
        b = on_meta(factory, tuple(changed))
        if signature(b) != sig:
            continue
        sa, sb = shapes(a), shapes(b)
        return frozenset(
            (name, d)
            for name, shape in sa.items()
            for d, (x, y) in enumerate(zip(shape, sb[name], strict=True))
            if x != y
        )
    return frozenset()


@dataclass
class TensorSlice:
    """One tensor of a path: the widest tensor `owner.<attr>`, narrowed per dimension.

    `cuts[d]` is the list of (start, length) ranges of dimension d, concatenated in order
    (one leading range for plain slicing, one per input segment for a concatenation).
    """

    owner: nn.Module
    attr: str
    cuts: list[list[tuple[int, int]]]
    is_buffer: bool
    gathered: bool = field(init=False)

    def __post_init__(self) -> None:
        self.gathered = any(len(c) > 1 for c in self.cuts)

    def widest(self) -> Tensor:
        return getattr(self.owner, self.attr)

    def take(self) -> Tensor:
        """The path's tensor: a view of the widest one (a copy where segments are gathered or
        a parameter's slice is not contiguous; gradients flow back either way)."""
        t = self.widest()
        for d, cut in enumerate(self.cuts):
            if len(cut) == 1:
                start, length = cut[0]
                if start or length != t.shape[d]:
                    t = t.narrow(d, start, length)
            else:
                t = torch.cat([t.narrow(d, s, n) for s, n in cut], dim=d)
        if self.is_buffer or t.is_contiguous():
            return t  # a buffer stays a view: BatchNorm updates the widest statistics in place
        return t.contiguous()  # convolutions on strided weights take a slow path

    @torch.no_grad()
    def put(self, value: Tensor) -> None:
        """Write a gathered buffer back (its running statistics were updated on a copy)."""
        target = self.widest()
        for d, cut in enumerate(self.cuts):
            if len(cut) > 1:
                offset = 0
                for s, n in cut:
                    target.narrow(d, s, n).copy_(value.narrow(d, offset, n))
                    offset += n
                return


def cuts_for(
    name: str,
    path_shape: tuple[int, ...],
    widest_shape: tuple[int, ...],
    marked: frozenset[tuple[str, int]],
    segments: Sequence[int] | None,
    widest_segments: Sequence[int] | None,
) -> list[list[tuple[int, int]]] | None:
    """The ranges of each dimension of `name`; None where the path's tensor is larger."""
    if len(path_shape) != len(widest_shape):
        return None
    cuts = []
    for d, (n, m) in enumerate(zip(path_shape, widest_shape, strict=True)):
        if n > m:
            return None
        if (
            segments is not None
            and len(segments) > 1
            and (name, d) in marked
            and n == sum(segments)
            and sum(widest_segments) <= m
        ):
            starts = itertools.accumulate([0, *widest_segments[:-1]])
            cuts.append([(s, k) for s, k in zip(starts, segments, strict=True) if k])
        else:
            cuts.append([(0, n)])
    return cuts
