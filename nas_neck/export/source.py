"""Standalone source generation: a `GraphNeck` as readable, torch-only PyTorch code.

The generated `neck.py` holds one `Neck(nn.Module)` whose `__init__` creates a named submodule
per graph step (`p5_to_t4` resamples P5 for node T4, `t4_fuse` its weighted fusion, `t4` its
block) and whose `forward` lists the graph's steps in order. Repeated cells (BiFPN, NAS-FPN)
become a `Cell` class stacked `repeat` times. `StandaloneSource.state_dict` renames a
`GraphNeck`'s weights to the generated module's names, so `Neck().load_state_dict(...)` just
works.

Nothing here knows the ops: each submodule is written from the constructor call that
`nas_neck.ops.registry.build` recorded on it (`Bottleneck(64, 32)`, `nn.MaxPool2d(3, 2, 1)`),
and the source of every class it names, with the module-level classes and functions that
source reads (`ConvBnAct`, `_fold_bn`), is copied verbatim, dependencies first. Torch's own
modules are written as `nn.<Name>`. Stateless fusions that define `inline` become expressions
(`a + b`). A fused neck (`fuse_neck`) is written through `nas_neck.ops.registry.DEPLOYED`:
`ConvAct` wherever a `ConvBnAct` was built, a 3x3 `ConvAct` for a RepConv.

The module tree is read from the `GraphNeck` itself, the graph from its cells' slot plan: one
source of truth, checked by the parity tests.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import keyword
import re
import sys
import textwrap
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nas_neck.errors import NasNeckError
from nas_neck.neck import GraphNeck
from nas_neck.ops.registry import DEPLOYED, Call, call_of, deployed

__all__ = ["SearchInfo", "StandaloneSource", "neck_source"]

_WIDTH = 88  # ruff's default line length: the generated file is formatted as written
_RESERVED = {"self", "features", "feats", "outs", "cell", "x", "torch", "nn", "F", "Tensor", "Path"}
_TAKEN = {"Neck", "Cell", "FirstCell", "torch", "nn", "F", "Tensor", "Path", "importlib"}
_PREAMBLE = {  # imports every file has (F when it is used): copied code may rely on them
    "import torch",
    "import torch.nn.functional as F",
    "from torch import nn",
    "from torch import Tensor",
}


@dataclass(frozen=True)
class SearchInfo:
    """What the search measured for a neck (all optional): goes into the docstring and README."""

    map: float | None = None
    ap50: float | None = None
    latency_ms: float | None = None
    latency_threads: int | None = None
    gflops: float | None = None
    mparams: float | None = None
    input_size: int | None = None
    backbone: str | None = None
    origin: str | None = None  # e.g. "trial 12 of study pafpn-family"

    def lines(self) -> list[str]:
        """Human lines describing the measurements, empty when nothing is known."""
        out = []
        if self.origin:
            out.append(f"From {self.origin}.")
        scores = []
        if self.map is not None:
            scores.append(f"mAP {self.map:.4f}")
        if self.ap50 is not None:
            scores.append(f"AP50 {self.ap50:.4f}")
        if self.latency_ms is not None:
            threads = f", {self.latency_threads} threads" if self.latency_threads else ""
            scores.append(f"neck latency {self.latency_ms:.2f} ms (batch 1{threads})")
        if self.gflops is not None:
            scores.append(f"{self.gflops:.3f} GFLOPs (2 per multiply-add)")
        if self.mparams is not None:
            scores.append(f"{self.mparams:.3f} M params")
        if scores:
            where = []
            if self.input_size:
                where.append(f"{self.input_size}x{self.input_size} input")
            if self.backbone:
                where.append(f"{self.backbone} backbone")
            tail = f" at {', '.join(where)}" if where else ""
            out.append("Search: " + ", ".join(scores) + tail + ".")
        return out


@dataclass(frozen=True)
class StandaloneSource:
    """Generated `neck.py` text and how a `GraphNeck`'s state-dict keys map onto it."""

    code: str
    key_map: tuple[tuple[str, str], ...]  # (GraphNeck prefix, generated prefix), longest wins

    def state_dict(self, neck: nn.Module) -> dict[str, torch.Tensor]:
        """`neck`'s weights under the generated module's names (contiguous, detached)."""
        out = {}
        for key, value in neck.state_dict().items():
            out[self._rename(key)] = value.detach().contiguous()
        return out

    def _rename(self, key: str) -> str:
        best: tuple[str, str] | None = None
        for src, dst in self.key_map:
            if (key == src or key.startswith(src + ".")) and (
                best is None or len(src) > len(best[0])
            ):
                best = (src, dst)
        if best is None:
            raise NasNeckError(f"no exported module holds weight {key!r} (an exporter bug)")
        rest = key[len(best[0]) :]
        return (best[1] + rest) if best[1] else rest.lstrip(".")


def neck_source(neck: GraphNeck, info: SearchInfo | None = None) -> StandaloneSource:
    """Readable torch-only source of one `Neck` class computing `neck` (fused or not)."""
    return _Generator(neck, info or SearchInfo()).run()


# ---- generation ---------------------------------------------------------------------------------
@dataclass
class _Scope:
    """One generated class body: names in use, `__init__` and `forward` lines, key prefixes."""

    prefix: str  # GraphNeck prefix of this scope's modules ("" for the neck, "cells.1" ...)
    target: str  # generated prefix ("" for Neck, "cells.1" for a cell)
    used: set[str] = field(default_factory=lambda: set(_RESERVED))
    init: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)

    def name(self, wanted: str) -> str:
        """A fresh identifier close to `wanted` (lower case, `_` for other characters)."""
        base = re.sub(r"\W", "_", wanted.lower()).strip("_") or "node"
        if base[0].isdigit() or keyword.iskeyword(base):
            base = f"n_{base}"
        name, i = base, 2
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def say(self, line: str) -> None:
        """A `forward` line (wrapped like ruff when it is an assignment)."""
        if " = " in line and not line.startswith(("#", "return", "for ")):
            target, _, expr = line.partition(" = ")
            self.body += _assign_expr(target, expr, indent=8)
        else:
            self.body.append(" " * 8 + line)

    def attr(
        self, name: str, expr: tuple[str, list[str]], source: str, keys: list[tuple[str, str]]
    ) -> None:
        """`self.name = expr` in `__init__`, and where `source`'s weights go."""
        self.init += _assign(f"self.{name}", *expr, indent=8)
        dst = _join(self.target, name)
        self.keys.append((_join(self.prefix, source), dst))
        self.keys += [(_join(self.prefix, source, s), _join(dst, d)) for s, d in keys]


class _Generator:
    def __init__(self, neck: GraphNeck, info: SearchInfo) -> None:
        self.neck = neck
        self.info = info
        self.arch = neck.arch
        self.fused = _fused_state(neck)
        self.classes: dict[type, None] = {}  # the classes the generated code builds, in order
        self.cell_classes: list[str] = []

    def run(self) -> StandaloneSource:
        neck, arch = self.neck, self.arch
        top = _Scope("", "")
        names = {lvl: top.name(f"p{lvl}") for lvl in arch.cell_levels}
        ins = [names[lvl] for lvl in arch.inputs]
        top.say(f"{', '.join(ins)} = features" if len(ins) > 1 else f"{ins[0]} = features[0]")
        src = ins[-1]
        for i, (extra, lvl) in enumerate(zip(neck.extras, arch.extra_levels, strict=True)):
            top.init.append(
                f"        # P{lvl}: extra level, {arch.extra_downsample} from P{lvl - 1}"
            )
            top.attr(names[lvl], self._module(extra.ops), f"extras.{i}.ops", self._keys(extra.ops))
            top.say(f"{names[lvl]} = self.{names[lvl]}({src})")
            src = names[lvl]
        inputs = [names[lvl] for lvl in arch.cell_levels]
        if len(neck.cells) == 1:
            outs = self._cell(top, neck.cells[0], "cells.0", inputs)
            top.say(f"return [{', '.join(outs)}]")
        else:
            self._cells(top, inputs)
        return StandaloneSource(code=self._file(top), key_map=tuple(top.keys))

    # ---- one cell: the graph's steps ------------------------------------------------------
    def _cell(self, scope: _Scope, cell: Any, prefix: str, inputs: list[str]) -> list[str]:
        """Emit `cell`'s nodes into `scope`; returns the output variables (ordered by level)."""
        nodes = {n.name: n for n in self.arch.nodes}
        slots = list(inputs)
        steps = zip(cell.nodes, cell.names, cell.in_slots, cell.ref_slots, strict=True)
        for k, (module, name, ins, ref) in enumerate(steps):
            var = scope.name(name)
            base = _join(prefix, f"nodes.{k}")
            srcs = [slots[i] for i in ins]
            scope.init.append(f"        # {name} (P{nodes[name].level})")
            scope.say(f"# {_describe(nodes[name], srcs)}")
            terms = []
            for j, (edge, src) in enumerate(zip(module.edges, srcs, strict=True)):
                expr, step = src, None
                made = self._module(edge.ops)
                if made is not None:
                    step = scope.name(f"{src}_to_{var}")
                    scope.attr(step, made, f"{base}.edges.{j}.ops", self._keys(edge.ops))
                    expr = f"self.{step}({src})"
                if edge.up:
                    size = (
                        f"size={slots[ref]}.shape[-2:]"
                        if ref >= 0
                        else f"scale_factor={float(edge.scale)}"
                    )
                    how = ", ".join(f"{k}={_literal(v)}" for k, v in edge.interpolation.items())
                    expr = f"F.interpolate({expr}, {size}, {how})"
                if expr != src:
                    step = step or scope.name(f"{src}_to_{var}")
                    scope.say(f"{step} = {expr}")
                    expr = step
                terms.append(expr)
            fused = self._fusion(scope, module.fuse, terms, var, f"{base}.fuse")
            block = self._module(module.block)
            if block is None:
                scope.say(f"{var} = {fused}")
            else:
                scope.attr(var, block, f"{base}.block", self._keys(module.block))
                scope.say(f"{var} = self.{var}({fused})")
            slots.append(var)
        return [slots[i] for i in cell.out_slots]

    def _cells(self, top: _Scope, inputs: list[str]) -> None:
        """Repeated cells: one class per distinct cell body (the first cell reads the backbone's
        widths, the others the neck's), stacked in `self.cells`."""
        bodies: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        for c, cell in enumerate(self.neck.cells):
            scope = _Scope(f"cells.{c}", f"cells.{c}")
            scope.used |= set(inputs)
            scope.say(f"{', '.join(inputs)} = features")
            outs = self._cell(scope, cell, "", list(inputs))
            scope.say(f"return [{', '.join(outs)}]")
            bodies.append((tuple(scope.init), tuple(scope.body)))
            top.keys += scope.keys
        distinct = list(dict.fromkeys(bodies))
        if len(distinct) > 2:
            raise NasNeckError("repeated cells differ beyond the first one (an exporter bug)")
        names = ["Cell"] if len(distinct) == 1 else ["FirstCell", "Cell"]
        of = [names[distinct.index(b)] for b in bodies]
        for name, (init, body) in zip(names, distinct, strict=True):
            self.cell_classes.append(self._cell_class(name, of, list(init), list(body)))
        repeat = len(bodies)
        stack = f"[Cell() for _ in range({repeat})]"
        if len(names) == 2:
            more = "Cell()" if repeat == 2 else f"*(Cell() for _ in range({repeat - 1}))"
            stack = f"[FirstCell(), {more}]"
        top.init += _assign("self.cells", "nn.ModuleList", [stack], indent=8)
        top.say(f"feats = [{', '.join(inputs)}]")
        cell = self.neck.cells[-1]
        carry = [cell.out_levels.index(lvl) for lvl in self.arch.cell_levels]
        if carry == list(range(len(cell.out_levels))):
            top.body += _indent(
                ["for cell in self.cells:", "    feats = cell(feats)", "return feats"], 8
            )
        else:
            picked = ", ".join(f"outs[{j}]" for j in carry)
            top.body += _indent(
                [
                    "for cell in self.cells[:-1]:  # the next cell reads the outputs at its levels",
                    "    outs = cell(feats)",
                    f"    feats = [{picked}]",
                    "return self.cells[-1](feats)",
                ],
                8,
            )

    def _cell_class(self, name: str, of: list[str], init: list[str], body: list[str]) -> str:
        cells = [str(i) for i, n in enumerate(of) if n == name]
        which = f"cell {cells[0]}" if len(cells) == 1 else f"cells {cells[0]}-{cells[-1]}"
        reads = ", reading the backbone's widths" if name == "FirstCell" else ""
        return "\n".join(
            [
                f"class {name}(nn.Module):",
                f'    """One pass over the {self.arch.name} graph ({which} of the neck{reads})."""',
                "",
                "    def __init__(self) -> None:",
                "        super().__init__()",
                *init,
                "",
                "    def forward(self, features: list[Tensor]) -> list[Tensor]:",
                *body,
            ]
        )

    # ---- expressions ----------------------------------------------------------------------
    def _fusion(
        self, scope: _Scope, module: nn.Module, terms: list[str], var: str, source: str
    ) -> str:
        """The expression fusing `terms`: the fusion's `inline` code, else a module call."""
        inline = getattr(module, "inline", None)
        if inline is not None:
            if module.state_dict():
                raise NasNeckError(f"{type(module).__name__} has weights: it cannot be inline")
            return inline(terms, lambda name, expr: self._let(scope, f"{var}_{name}", expr))
        attr = scope.name(f"{var}_fuse")
        made = self._module(module)
        if made is None:
            raise NasNeckError(f"fusion {type(module).__name__} writes no module (an ops bug)")
        scope.attr(attr, made, source, self._keys(module))
        return f"self.{attr}([{', '.join(terms)}])"

    def _let(self, scope: _Scope, name: str, expr: str) -> str:
        """Bind `expr` to a fresh variable named after `name` in `forward`; returns it."""
        var = scope.name(name)
        scope.say(f"{var} = {expr}")
        return var

    def _module(self, m: nn.Module) -> tuple[str, list[str]] | None:
        """(callable, args) constructing `m`; None for a module that does nothing."""
        if isinstance(m, nn.Sequential):
            parts = [p for p in (self._module(c) for c in m) if p is not None]
            if len(parts) <= 1:
                return parts[0] if parts else None
            return "nn.Sequential", [_call(*p) for p in parts]
        if isinstance(m, nn.Identity):
            return None
        call = self._written(m)
        args = [_literal(a) for a in call.args]
        args += [f"{key}={_literal(value)}" for key, value in call.kwargs.items()]
        return self._use(call.cls), args

    def _keys(self, m: nn.Module) -> list[tuple[str, str]]:
        """Key renames inside `m` (relative): collapsed one-module Sequentials, and the
        renames of the call it is written as (a fused RepConv's `fused` -> `conv`)."""
        if isinstance(m, nn.Sequential):
            live = [(str(i), c) for i, c in enumerate(m) if self._module(c) is not None]
            if len(live) == 1:
                i, child = live[0]
                return [(i, "")] + [(_join(i, s), d) for s, d in self._keys(child)]
            return [(_join(i, s), _join(i, d)) for i, c in live for s, d in self._keys(c)]
        if isinstance(m, nn.Identity):
            return []
        return list(self._written(m).renames.items())

    def _written(self, m: nn.Module) -> Call:
        """The call the generated code makes for `m`: the recorded one, fused if the neck is."""
        call = call_of(m)
        if call is None:
            raise NasNeckError(
                f"cannot export a {type(m).__name__} module built without nas_neck.ops.build: "
                "its factory must build it through build(cls, *args) to record the call"
            )
        return deployed(call) if self.fused else call

    def _use(self, cls: type) -> str:
        """The name the generated code calls `cls` by: `nn.<Name>` for torch's own modules,
        else the class's own name, its source copied into the file."""
        if cls.__module__.split(".")[0] == "torch":
            if getattr(nn, cls.__name__, None) is not cls:
                raise NasNeckError(f"cannot export {cls.__module__}.{cls.__name__}: not in nn")
            return f"nn.{cls.__name__}"
        self.classes[cls] = None
        return cls.__name__

    # ---- the file -------------------------------------------------------------------------
    def _file(self, top: _Scope) -> str:
        arch = self.arch
        copied, extra = _copies(list(self.classes), self.fused)
        code = "\n".join([*copied, *self.cell_classes, *top.init, *top.body])
        stdlib = sorted(line for line in extra if not line.split()[1].startswith("torch"))
        imports = ["import importlib.util", "from pathlib import Path", *stdlib, "", "import torch"]
        if re.search(r"\bF\.", code):
            imports.append("import torch.nn.functional as F")
        imports += sorted(set(extra) - set(stdlib))
        imports.append("from torch import Tensor, nn")
        call = f"neck([{', '.join(f'p{lvl}' for lvl in arch.inputs)}])  # backbone maps"
        head = "\n".join(
            [
                f'"""{arch.name} neck [{arch.hash}] exported by nas-neck: standalone, PyTorch only.',
                "",
                "Usage (the weights beside this file):",
                "",
                "    neck = Neck.from_pretrained()",
                f"    outputs = {call}",
                '"""',
            ]
        )
        preamble = "\n\n".join([head, "from __future__ import annotations", "\n".join(imports)])
        classes = [*copied, *self.cell_classes, self._neck_class(top)]
        return "\n\n\n".join(c.rstrip("\n") for c in [preamble, *classes]) + "\n"

    def _neck_class(self, top: _Scope) -> str:
        neck, arch = self.neck, self.arch
        strides = [2**lvl for lvl in arch.inputs]
        doc = [
            f"The {arch.name} neck [{arch.hash}] found by nas-neck.",
            "",
            f"Graph: {arch.short()}.",
            f"Input: a list of {len(arch.inputs)} backbone maps {_levels(arch.inputs)} (strides "
            f"{_nums(strides)}) with {_channels(neck.in_channels)}, any spatial size "
            "(sides ceil(S / stride) for an S-pixel image).",
            f"Output: a list of maps {_levels(neck.out_levels)} (strides "
            f"{_nums(neck.out_strides)}) with {_channels(neck.out_channels)}.",
        ]
        if arch.extra_levels:
            extra = "Extra level" if len(arch.extra_levels) == 1 else "Extra levels"
            doc.append(
                f"{extra} {_levels(arch.extra_levels)}: {arch.extra_downsample} downsampling, "
                "each from the level below."
            )
        if arch.repeat > 1:
            doc.append(f"The cell is stacked {arch.repeat} times.")
        if self.fused:
            doc.append("BatchNorm is folded into the convs, RepConv blocks are re-parameterized.")
        if info := self.info.lines():
            doc += ["", *info]
        attrs = [
            f"in_channels = {_tuple(neck.in_channels)}",
            f"in_strides = {_tuple(strides)}",
            f"out_levels = {_tuple(neck.out_levels)}",
            f"out_channels = {_tuple(neck.out_channels)}",
            f"out_strides = {_tuple(neck.out_strides)}",
        ]
        return "\n".join(
            [
                "class Neck(nn.Module):",
                *_docstring(doc, indent=4),
                "",
                *_indent(attrs, 4),
                "",
                "    def __init__(self) -> None:",
                "        super().__init__()",
                *top.init,
                "",
                "    def forward(self, features: list[Tensor]) -> list[Tensor]:",
                *top.body,
                "",
                *_indent(_FROM_PRETRAINED.strip("\n").split("\n"), 4),
            ]
        )


_FROM_PRETRAINED = '''
@classmethod
def from_pretrained(cls, path: str | Path | None = None) -> Neck:
    """The neck with its trained weights, in eval mode.

    `path`: a `.safetensors` file (needs the `safetensors` package) or a state dict saved
    with `torch.save`; default: neck.safetensors beside this file when `safetensors` is
    installed, else neck.pt.
    """
    if path is None:
        found = importlib.util.find_spec("safetensors") is not None
        path = Path(__file__).with_name("neck.safetensors" if found else "neck.pt")
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    neck = cls()
    neck.load_state_dict(state)
    return neck.eval()
'''


# ---- helpers --------------------------------------------------------------------------------------
def _fused_state(neck: nn.Module) -> bool:
    """Whether `neck` is fused (`fuse_neck`): its re-parameterizable modules (those with a
    `reparameterize` method) hold no BatchNorm. A mix of fused and unfused ones is refused."""
    states = {
        not any(isinstance(s, _BatchNorm) for s in m.modules())
        for m in neck.modules()
        if callable(getattr(m, "reparameterize", None))
    }
    if len(states) > 1:
        raise NasNeckError("the neck is partly fused; export it unfused or through fuse_neck")
    return states == {True}


# ---- copied source ------------------------------------------------------------------------
def _copies(classes: list[type], fused: bool) -> tuple[list[str], list[str]]:
    """The source of `classes` and of the module-level classes and functions they read,
    dependencies first, and the imports that code needs beyond the file's own.

    In a fused file, a class with a bare `DEPLOYED` entry is replaced by its entry's class
    (`ConvBnAct` -> `ConvAct`), in the copied code too."""
    twins = {}
    if fused:
        twins = {c: f.cls for c, f in DEPLOYED.items() if f == Call(f.cls)}
    sources: dict[Any, str] = {}
    imports: set[str] = set()
    visiting: set[Any] = set()

    def visit(obj: Any) -> None:
        if obj in sources or obj in visiting:
            return
        visiting.add(obj)
        code, deps = _copy(obj, twins, fused, imports)
        for dep in deps:
            visit(dep)
        sources[obj] = code

    for cls in classes:
        visit(cls)
    names = [obj.__name__ for obj in sources]
    if clash := sorted({n for n in names if names.count(n) > 1 or n in _TAKEN}):
        raise NasNeckError(f"cannot export: the copied names {clash} clash")
    return list(sources.values()), sorted(imports - _PREAMBLE)


def _copy(
    obj: Any, twins: dict[type, type], fused: bool, imports: set[str]
) -> tuple[str, list[Any]]:
    """`obj`'s source (with fused twins renamed) and the classes and functions it reads
    from its module; adds the imports it needs to `imports`."""
    code = textwrap.dedent(inspect.getsource(obj))
    scope = vars(sys.modules[obj.__module__])
    deps = []
    for name in _free_names(code):
        if name not in scope:
            if hasattr(builtins, name):
                continue
            raise NasNeckError(f"cannot export {obj.__name__}: it reads an unknown name {name!r}")
        value = scope[name]
        if isinstance(value, ModuleType):
            imports.add(_import_module(name, value))
            continue
        if inspect.isclass(value) and value in twins:
            value = twins[value]
            code = re.sub(rf"\b{name}\b", value.__name__, code)
        elif fused and inspect.isclass(value) and value in DEPLOYED:
            raise NasNeckError(
                f"cannot export a fused {name} built inside {obj.__name__}: only a bare "
                "DEPLOYED entry (same arguments and weights) can stand in for it there"
            )
        top = getattr(value, "__module__", "").split(".")[0]
        if top == "torch" or top in sys.stdlib_module_names:
            alias = "" if value.__name__ == name else f" as {name}"
            imports.add(f"from {value.__module__} import {value.__name__}{alias}")
        elif inspect.isclass(value) or inspect.isfunction(value):
            deps.append(value)
        else:
            raise NasNeckError(f"cannot export {obj.__name__}: cannot copy {name!r}")
    return code, deps


def _free_names(code: str) -> list[str]:
    """The names `code` (a class or function definition) reads without binding them, in
    order of appearance."""
    nodes = list(ast.walk(ast.parse(code)))
    bound = {n.arg for n in nodes if isinstance(n, ast.arg)}
    bound |= {n.name for n in nodes if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    bound |= {
        (a.asname or a.name).split(".")[0]
        for n in nodes
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    bound |= {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    loads = [n for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    loads.sort(key=lambda n: (n.lineno, n.col_offset))
    return list(dict.fromkeys(n.id for n in loads if n.id not in bound))


def _import_module(name: str, module: ModuleType) -> str:
    """The import binding `module` to `name`; only torch and the standard library."""
    path = module.__name__
    if path.split(".")[0] != "torch" and path.split(".")[0] not in sys.stdlib_module_names:
        raise NasNeckError(f"cannot export code that imports {path}: only torch is allowed")
    parent, _, last = path.rpartition(".")
    if path == name:
        return f"import {name}"
    return f"from {parent} import {name}" if last == name else f"import {path} as {name}"


def _literal(value: Any) -> str:
    """`value` as Python source, strings double-quoted like ruff writes them."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _call(func: str, args: list[str]) -> str:
    return f"{func}({', '.join(args)})"


def _assign(target: str, func: str, args: list[str], indent: int) -> list[str]:
    """`target = func(args)` wrapped like ruff: one line, else the arguments on one indented
    line, else one argument per line with a trailing comma."""
    pad = " " * indent
    line = f"{pad}{target} = {_call(func, args)}"
    if len(line) <= _WIDTH:
        return [line]
    inner = f"{pad}    {', '.join(args)}"
    if len(inner) <= _WIDTH:
        return [f"{pad}{target} = {func}(", inner, f"{pad})"]
    return [f"{pad}{target} = {func}(", *(f"{pad}    {a}," for a in args), f"{pad})"]


def _assign_expr(target: str, expr: str, indent: int) -> list[str]:
    """`target = expr` wrapped like ruff: a call splits at its arguments, anything else is
    parenthesized."""
    pad = " " * indent
    if len(pad) + len(target) + len(expr) + 3 <= _WIDTH:
        return [f"{pad}{target} = {expr}"]
    call = re.fullmatch(r"([\w.]+)\((.*)\)", expr)
    if call and _balanced(call.group(2)):
        return _assign(target, call.group(1), _top_level_args(call.group(2)), indent)
    return [f"{pad}{target} = (", f"{pad}    {expr}", f"{pad})"]


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch in "([{") - (ch in ")]}")
        if depth < 0:
            return False
    return depth == 0


def _top_level_args(text: str) -> list[str]:
    args, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    return [*args, text[start:].strip()]


def _docstring(lines: list[str], indent: int) -> list[str]:
    """A docstring, paragraphs re-flowed to the line width."""
    pad = " " * indent
    lines = [f'"""{lines[0]}', *lines[1:], '"""']
    out: list[str] = []
    for line in lines:
        cur = ""
        for word in line.split(" "):
            if cur and len(pad) + len(cur) + 1 + len(word) > _WIDTH:
                out.append(pad + cur)
                cur = word
            else:
                cur = f"{cur} {word}" if cur else word
        out.append(pad + cur if cur else "")
    return out


def _describe(node: Any, srcs: list[str]) -> str:
    """`N4 (P4, 64 ch): weighted fusion of n3, t4, then c2f x2` (`x2` for depth 2)."""
    fused = srcs[0] if len(srcs) == 1 else f"{node.fuse} fusion of {', '.join(srcs)}"
    depth = f" x{node.depth}" if node.depth > 1 else ""
    block = "" if node.block == "none" else f", then {node.block}{depth}"
    return f"{node.name} (P{node.level}, {node.width} ch): {fused}{block}"


def _indent(lines: list[str], n: int) -> list[str]:
    return [(" " * n + line) if line else "" for line in lines]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _levels(levels: Any) -> str:
    return ", ".join(f"P{lvl}" for lvl in levels)


def _nums(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _channels(values: Any) -> str:
    values = list(values)
    return f"{values[0]} channels each" if len(set(values)) == 1 else f"{_nums(values)} channels"


def _tuple(values: Any) -> str:
    values = list(values)
    return f"({values[0]},)" if len(values) == 1 else f"({', '.join(str(v) for v in values)})"
