"""Exported necks compute what the searched GraphNeck computes: standalone, fused, ONNX, TorchScript."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nas_neck.dsl import Architecture, SearchSpace, load_architecture, load_space
from nas_neck.export import SearchInfo, export_neck, fuse_neck, load_standalone, neck_source
from nas_neck.neck import GraphNeck
from nas_neck.ops import BLOCKS, DOWNSAMPLE_MODES, FUSE_OPS, UPSAMPLE_MODES
from nas_neck.ops.blocks import RepConv
from nas_neck.ops.registry import call_of

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
CLASSIC = ("fpn", "pafpn", "bifpn", "nasfpn", "light")
SAMPLED = (
    [("pafpn-family", s) for s in range(7)]
    + [("bifpn-family", s) for s in range(7)]
    + [("nasfpn-free", s) for s in range(6)]
)
CHANNELS = {2: 24, 3: 40, 4: 112, 5: 320}  # tf_efficientnet_lite0
IMAGE = (128, 96)  # H, W: P5 is 4x3, P7 1x1

# Every block, fusion, resampling mode and extra-level mode, a level reached with no map of its
# own to size against (U3: scale_factor upsampling), RepConv at equal and unequal widths, and a
# repeated cell whose outputs include a level it does not read (the carry picks P4, P5).
ZOO = {
    "name": "zoo",
    "inputs": ["P3", "P4", "P5"],
    "extra_levels": [6],
    "extra_downsample": "space_to_depth",
    "width": 32,
    "nodes": {
        "A": {
            "level": 4,
            "inputs": ["P5", "P4"],
            "fuse": "spatial",
            "block": "aspp",
            "upsample": "bilinear",
        },
        "B": {"level": 3, "inputs": ["A", "P3"], "fuse": "softmax", "block": "repconv", "depth": 2},
        "C": {
            "level": 4,
            "inputs": ["B", "A"],
            "fuse": "concat",
            "block": "bottleneck",
            "downsample": "avgpool",
        },
        "D": {
            "level": 5,
            "inputs": ["C", "P5", "P6"],
            "fuse": "gp_attention",
            "block": "csp",
            "depth": 2,
            "downsample": "space_to_depth",
        },
        "E": {
            "level": 6,
            "inputs": ["D", "P6"],
            "fuse": "weighted",
            "block": "none",
            "downsample": "maxpool",
        },
        "O3": {
            "level": 3,
            "inputs": ["B", "C"],
            "fuse": "concat",
            "block": "repconv",
            "output": True,
        },
        "O4": {"level": 4, "inputs": ["C", "D"], "block": "dwconv", "output": True},
        "O5": {"level": 5, "inputs": ["D"], "block": "bottleneck", "output": True},
        "O6": {
            "level": 6,
            "inputs": ["E"],
            "fuse": "gp_attention",
            "block": "c2f",
            "depth": 2,
            "output": True,
        },
    },
}
ZOO_REPEAT = {
    "name": "zoo-repeat",
    "inputs": ["P4", "P5"],
    "width": 24,
    "repeat": 2,
    "nodes": {
        "U3": {"level": 3, "inputs": ["P4"], "block": "repconv", "upsample": "bilinear"},
        "N3": {
            "level": 3,
            "inputs": ["U3", "P5"],
            "fuse": "concat",
            "block": "repconv",
            "output": True,
        },
        "N4": {"level": 4, "inputs": ["N3", "P4"], "block": "csp", "output": True},
        "N5": {
            "level": 5,
            "inputs": ["N4", "P5"],
            "fuse": "weighted",
            "block": "c2f",
            "output": True,
            "downsample": "avgpool",
        },
    },
}


# Every registered op, by the DSL key that selects it: each gets its own parity test.
REGISTERED = [
    *(("block", name) for name in BLOCKS),
    *(("fuse", name) for name in FUSE_OPS),
    *(("upsample", name) for name in UPSAMPLE_MODES),
    *(("downsample", name) for name in DOWNSAMPLE_MODES),
]


def op_spec(key: str, name: str) -> dict:
    """A small neck using op `name` for DSL key `key` wherever it can: fan-ins 1 to 3,
    upsampling to a map's size and by a scale factor (P2 has no map), downsampling by one
    and two levels (and to an extra level), blocks two deep at equal and unequal widths."""
    nodes = {
        "A": {"level": 4, "inputs": ["P5", "P4"]},
        "B": {"level": 3, "inputs": ["A", "P3"], "output": True},
        "U": {"level": 2, "inputs": ["P3"], "output": True},
        "C": {"level": 5, "inputs": ["B", "A", "P5"], "output": True},
    }
    spec = {
        "name": f"{key}-{name}",
        "inputs": ["P3", "P4", "P5"],
        "width": 32,
        "defaults": {"depth": 2 if key == "block" else 1, key: name},
        "nodes": nodes,
    }
    if key == "block":
        nodes["B"]["fuse"] = "concat"  # 32 + 40 channels into the block
    if key == "downsample":
        spec |= {"extra_levels": [6], "extra_downsample": name}
        nodes["E"] = {"level": 6, "inputs": ["C", "P6"], "output": True}
    return spec


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny convs are far slower with two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _arch(spec: str | dict, seed: int | None = None) -> Architecture:
    if isinstance(spec, dict):
        return SearchSpace.from_dict(spec, source=spec["name"]).sample()
    if seed is None:
        return load_architecture(SPACES / f"{spec}.yaml")
    return load_space(SPACES / f"{spec}.yaml").random(seed)


def _neck(arch: Architecture, seed: int = 0) -> GraphNeck:
    """A neck with random BatchNorm statistics and fusion weights: fresh ones are near identity
    and would hide folding or renaming mistakes."""
    torch.manual_seed(seed)
    neck = GraphNeck(arch, [CHANNELS[lvl] for lvl in arch.inputs])
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for name, p in neck.named_parameters():
            if name.endswith("fuse.weight"):
                p.uniform_(0.2, 1.5)
    return neck.eval()


def _features(
    arch: Architecture, size: tuple[int, int] = IMAGE, batch: int = 2
) -> list[torch.Tensor]:
    h, w = size
    return [
        torch.randn(batch, CHANNELS[lvl], math.ceil(h / 2**lvl), math.ceil(w / 2**lvl))
        for lvl in arch.inputs
    ]


def _cases() -> list[tuple[str, Architecture, tuple[bool, ...]]]:
    """(name, architecture, fuse options): classic, sampled, zoo and one per registered op."""
    both = (False, True)
    cases = [(name, _arch(name), both if name == "pafpn" else (False,)) for name in CLASSIC]
    cases += [
        (f"{space}-{seed}", _arch(space, seed), both if space != "nasfpn-free" else (False,))
        for space, seed in SAMPLED
    ]
    cases += [("zoo", _arch(ZOO), both), ("zoo-repeat", _arch(ZOO_REPEAT), both)]
    return cases + [(f"{k}-{n}", _arch(op_spec(k, n)), both) for k, n in REGISTERED]


_RUNNER = """
import importlib.util, sys
sys.path.append(sys.argv[1])  # the site-packages holding torch; no .pth files, no nas_neck
try:
    import nas_neck  # noqa: F401
except ImportError:
    print("nas_neck is not importable")
import torch

torch.set_num_threads(1)
for i, folder in enumerate(sys.argv[2:]):
    spec = importlib.util.spec_from_file_location(f"neck{i}", folder + "/neck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    neck = module.Neck.from_pretrained(folder + "/neck.pt")
    with torch.no_grad():
        torch.save(neck(torch.load(folder + "/inputs.pt")), folder + "/outputs.pt")
"""


def check_without_nas_neck(
    tmp_path: Path, cases: list[tuple[str, Architecture, tuple[bool, ...]]]
) -> None:
    """Export each case (plain and/or fused) and run every `neck.py` from its own folder in a
    Python that can import torch but not nas_neck: the outputs match the GraphNeck's."""
    expected, folders = {}, []
    for name, arch, fuses in cases:
        for fuse in fuses:
            folder = tmp_path / f"{name}{'-fused' if fuse else ''}"
            neck = _neck(arch)
            export_neck(neck, folder, fuse=fuse, check_size=64)
            inputs = _features(arch)
            torch.save(inputs, folder / "inputs.pt")
            with torch.no_grad():
                expected[folder] = (neck(inputs), 1e-4 if fuse else 1e-5)
            folders.append(folder)
    (tmp_path / "runner.py").write_text(_RUNNER)
    site = str(Path(torch.__file__).resolve().parents[1])
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-I", "-S", "runner.py", site, *map(str, folders)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "nas_neck is not importable" in run.stdout
    for folder, (want, atol) in expected.items():
        got = torch.load(folder / "outputs.pt")
        assert len(got) == len(want), folder.name
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(
                g, w, atol=atol, rtol=atol, msg=lambda m, f=folder: f"{f.name}: {m}"
            )


def test_exported_necks_match_graphneck_in_a_python_without_nas_neck(tmp_path):
    """Classic necks, 20 sampled ones, the zoo and one neck per registered op, plain and
    fused."""
    check_without_nas_neck(tmp_path, _cases())


@pytest.mark.parametrize(("key", "name"), REGISTERED, ids=[f"{k}-{n}" for k, n in REGISTERED])
def test_every_registered_op_exports_and_fuses_with_parity(tmp_path, key, name):
    """Each op of each registry, exported plain and fused and loaded on its own, computes what
    the GraphNeck computes."""
    arch = _arch(op_spec(key, name))
    neck = _neck(arch, seed=2)
    x = _features(arch, (100, 76))
    with torch.no_grad():
        want = neck(x)
    for fuse in (False, True):
        folder = tmp_path / ("fused" if fuse else "plain")
        export_neck(neck, folder, fuse=fuse, check_size=64)
        code = (folder / "neck.py").read_text()
        assert "nas_neck" not in code.replace("nas-neck", "")
        if not fuse:  # every recorded module but the inline fusions is built by name
            built = {
                call_of(m).cls.__name__
                for m in neck.modules()
                if call_of(m) is not None and not hasattr(m, "inline")
            }
            assert all(f"{cls}(" in code for cls in built), built
        standalone = load_standalone(folder / "neck.py").Neck.from_pretrained(folder / "neck.pt")
        with torch.no_grad():
            got = standalone(x)
        atol = 1e-4 if fuse else 1e-5
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=atol, rtol=atol)


@pytest.mark.parametrize(
    "spec", [ZOO, ZOO_REPEAT, "bifpn", "pafpn"], ids=["zoo", "zoo-repeat", "bifpn", "pafpn"]
)
def test_fused_neck_equals_unfused(spec):
    arch = _arch(spec)
    neck = _neck(arch, seed=1)
    fused = fuse_neck(neck)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert all(m.fused is not None for m in fused.modules() if isinstance(m, RepConv))
    assert any(isinstance(m, nn.BatchNorm2d) for m in neck.modules()), "the original is left alone"
    x = _features(arch, (100, 76))
    with torch.no_grad():
        for a, b in zip(fused(x), neck(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_state_dict_keys_match_the_generated_module(tmp_path):
    arch = _arch(ZOO)
    for model in (_neck(arch), fuse_neck(_neck(arch))):
        source = neck_source(model)
        path = tmp_path / "neck.py"
        path.write_text(source.code)
        generated = load_standalone(path).Neck()
        state = source.state_dict(model)
        assert set(state) == set(generated.state_dict())
        generated.load_state_dict(state)  # strict: shapes match too


def test_generated_source_is_readable_formatted_python(tmp_path):
    """One class per file, named steps in `forward`, no nas_neck import; ruff-clean as written."""
    ruff = Path(sys.executable).with_name("ruff")
    files = []
    for name, spec in [
        ("pafpn", "pafpn"),
        ("bifpn-fused", "bifpn"),
        ("zoo", ZOO),
        ("zoo-repeat", ZOO_REPEAT),
        *((f"{k}-{n}{f}", op_spec(k, n)) for k, n in REGISTERED for f in ("", "-fused")),
    ]:
        neck = _neck(_arch(spec))
        model = fuse_neck(neck) if name.endswith("fused") else neck
        info = SearchInfo(
            map=0.4321,
            latency_ms=1.5,
            latency_threads=2,
            input_size=384,
            origin="trial 7 of study s",
        )
        code = neck_source(model, info).code
        assert "nas_neck" not in code.replace("nas-neck", "")
        files.append(tmp_path / f"{name}.py")
        files[-1].write_text(code)
    pafpn = files[0].read_text()
    assert "self.n3_to_n4 = ConvBnAct(64, 64, 3, stride=2)" in pafpn
    assert "t4 = self.t4(torch.cat([p5_to_t4, p4], dim=1))" in pafpn
    assert (
        "mAP 0.4321" in pafpn and "neck latency 1.50 ms" in pafpn and "strides 8, 16, 32" in pafpn
    )
    bifpn = files[1].read_text()
    assert "class FirstCell(nn.Module)" in bifpn and "class Cell(nn.Module)" in bifpn
    assert "BatchNorm2d" not in bifpn and "class ConvAct" in bifpn
    assert "scale_factor=2.0" in files[3].read_text()  # U3 has no P3 map to size against
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python")
    fmt = subprocess.run(
        [ruff, "format", "--isolated", "--check", *files], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run([ruff, "check", "--isolated", *files], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_onnx_parity_at_dynamic_sizes_and_torchscript(tmp_path):
    """ONNX (exported at one size) matches PyTorch in onnxruntime at other batches and sides."""
    import onnxruntime as ort

    for name, spec in [("light", "light"), ("zoo", ZOO)]:
        arch = _arch(spec)
        neck = _neck(arch)
        report = export_neck(
            neck, tmp_path / name, fuse=True, onnx=True, torchscript=name == "light", check_size=96
        )
        assert report.onnx_exporter in ("dynamo", "torchscript")
        assert len(report.onnx_diffs) == 2 and max(report.onnx_diffs.values()) <= 1e-4
        session = ort.InferenceSession(
            str(tmp_path / name / "neck.onnx"), providers=["CPUExecutionProvider"]
        )
        assert [i.name for i in session.get_inputs()] == [f"p{lvl}" for lvl in arch.inputs]
        for size, batch in [((128, 96), 1), ((72, 136), 3)]:
            x = _features(arch, size, batch)
            got = session.run(
                None, {f"p{lvl}": t.numpy() for lvl, t in zip(arch.inputs, x, strict=True)}
            )
            with torch.no_grad():
                want = neck(x)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)
        if name == "light":
            traced = torch.jit.load(str(tmp_path / name / "neck.torchscript.pt"))
            x = _features(arch, (72, 136), 3)
            with torch.no_grad():
                for g, w in zip(traced(*x), neck(x), strict=True):
                    torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_export_folder_holds_weights_genotype_and_docs(tmp_path):
    from safetensors.torch import load_file

    from nas_neck.detect.head import DetectionHead

    arch = _arch("light")
    neck = _neck(arch)
    head = DetectionHead(neck.out_channels, neck.out_strides, num_classes=2, width=32, num_convs=1)
    info = SearchInfo(
        map=0.5, ap50=0.8, latency_ms=2.0, input_size=256, backbone="tf_efficientnet_lite0"
    )
    report = export_neck(
        neck, tmp_path, info=info, head=head, categories=["E.coli", "S.aureus"], check_size=64
    )
    names = {p.name for p in report.files}
    assert names == {
        "neck.py",
        "neck.safetensors",
        "neck.pt",
        "architecture.yaml",
        "head.safetensors",
        "export.json",
        "README.md",
    }
    assert load_architecture(tmp_path / "architecture.yaml").hash == arch.hash
    assert set(load_file(tmp_path / "neck.safetensors")) == set(torch.load(tmp_path / "neck.pt"))
    head2 = DetectionHead(neck.out_channels, neck.out_strides, num_classes=2, width=32, num_convs=1)
    head2.load_state_dict(load_file(tmp_path / "head.safetensors"))
    readme = (tmp_path / "README.md").read_text()
    assert "features_only=True" in readme and "out_indices=(2, 3, 4)" in readme
    assert "num_classes=2, width=32, num_convs=1" in readme and "E.coli, S.aureus" in readme
    assert report.standalone_diff == 0.0
