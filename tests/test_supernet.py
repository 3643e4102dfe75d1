"""The weight-sharing supernet: paths equal their extracted necks, widths slice the widest
weights, BatchNorm recalibration, fast COCO evaluation, training and resuming, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from search_fixtures import tiny_config
from torch import nn
from typer.testing import CliRunner

from nas_neck.config import TrainConfig
from nas_neck.dsl import SearchSpace, load_space
from nas_neck.ops import BLOCKS, ConvBnAct, repeated
from nas_neck.supernet import Supernet, SupernetDetector, SupernetError
from nas_neck.supernet.evaluate import recalibrate_bn
from nas_neck.supernet.slicing import TensorSlice, cuts_for
from nas_neck.supernet.train import CHECKPOINT, path_batch

CHANNELS = [40, 112, 320]  # tf_efficientnet_lite0 at P3-P5


def _features(size: int = 64, batch: int = 2) -> list[torch.Tensor]:
    return [
        torch.randn(batch, c, size // 2**lvl, size // 2**lvl)
        for lvl, c in zip((3, 4, 5), CHANNELS, strict=True)
    ]


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so slicing them shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)


@pytest.fixture(scope="module")
def supernets() -> dict[str, SupernetDetector]:
    torch.manual_seed(0)
    out = {}
    for name in ("pafpn-family", "bifpn-family"):
        model = SupernetDetector(Supernet(name, CHANNELS), 4, TrainConfig())
        _randomize_bn(model)
        out[name] = model.eval()
    return out


# ---- 1-2: every path, and its extracted neck ----------------------------------------------------
@pytest.mark.parametrize("space", ["pafpn-family", "bifpn-family"])
def test_paths_equal_their_extracted_necks(supernets, space: str) -> None:
    model = supernets[space]
    supernet = model.supernet
    feats = _features(batch=1)
    seen = set()
    for seed in range(32):
        arch = load_space(space).random(seed)
        seen |= {(n.fuse, n.block) for n in arch.nodes}
        with torch.no_grad():
            path = supernet(feats, arch)
            neck = supernet.extract(arch)
            plain = neck(feats)
        assert [o.shape[1] for o in path] == neck.out_channels
        for a, b in zip(path, plain, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        if seed % 8 == 0:  # neck + head: the head's projections sliced too
            with torch.no_grad():
                out = model(feats, arch, (64, 64))
                ref = model.extract(arch)(feats, (64, 64))
            torch.testing.assert_close(out.cls_logits, ref.cls_logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.box_ltrb, ref.box_ltrb, atol=1e-5, rtol=0)
    assert len(seen) > 8  # the draws covered many op combinations


def test_the_supernet_holds_every_choice_of_every_node(supernets) -> None:
    supernet = supernets["pafpn-family"].supernet
    held = supernet.describe()
    defaults = load_space("pafpn-family").spec.defaults
    widest = max(defaults.width.options)
    for block in defaults.block.options:
        assert block in held["c0_N3_block"]
        assert held["c0_N3_block"][block][1] == widest  # the widest width
        assert held["c0_N3_block"][block][2] == max(defaults.depth.low, defaults.depth.high)
    assert set(defaults.fuse.options) <= set(held["c0_N4_fuse"])
    for mode in defaults.downsample.options:  # N4 reads N3 from below, per mode and kind
        assert {f"proj_{mode}", f"keep_{mode}"} <= set(held["c0_N4_e0"])
    # RepConv has an identity branch only when input and output widths match: a copy of its own
    assert {"repconv", "repconv_v1"} <= set(held["c0_T4_block"])
    bifpn = supernets["bifpn-family"].supernet
    space = load_space("bifpn-family").spec
    last = f"c{max(space.repeat.low, space.repeat.high) - 1}_N5_block"
    assert last in bifpn.describe()
    if space.extra_levels:  # the extra levels' stride-2 steps, per mode
        assert set(space.extra_downsample.options) <= set(bifpn.describe()["x0"])


def _path(space: SearchSpace, seed: int, **values) -> object:
    """Architecture `seed` of `space` with some parameters set (`N3_fuse` for `N3.fuse`); every
    width parameter at `width` when given."""
    from nas_neck.dsl import FixedSampler

    params = dict(space.random(seed).params)
    width = values.pop("width", None)
    if width is not None:
        params |= {k: width for k in params if k == "width" or k.endswith(".width")}
    params |= {k.replace("_", "."): v for k, v in values.items()}
    return space.sample(FixedSampler(params))


def test_widths_slice_the_widest_weights(supernets) -> None:
    """A path at width w uses the first w channels of the widest convs and BatchNorms, a
    concatenation keeps each input's own channels, the head projects the first w."""
    model = supernets["pafpn-family"]
    supernet = model.supernet
    space = load_space("pafpn-family")
    widest = max(space.spec.defaults.width.options)
    arch = _path(
        space,
        0,
        width=32,
        N3_fuse="concat",
        N3_block="conv",
        N3_depth=1,
        N4_fuse="sum",
        N4_block="conv",
        N4_depth=2,
    )
    detector = model.extract(arch)
    neck = detector.neck
    names = neck.cells[0].names
    slots = supernet.slots
    # N4 (sum fusion): the block's convs are the widest ones' top-left 32 x 32
    n4 = neck.cells[0].nodes[names.index("N4")]
    w4 = slots["c0_N4_block"]["conv"]
    torch.testing.assert_close(n4.block[0].conv.weight, w4[0].conv.weight[:32, :32])
    torch.testing.assert_close(n4.block[1].conv.weight, w4[1].conv.weight[:32, :32])
    for attr in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(n4.block[0].bn, attr), getattr(w4[0].bn, attr)[:32])
    # N3 (concat of T4 at width 32 and P3 at 40): each input's channels from its own segment
    n3 = neck.cells[0].nodes[names.index("N3")]
    w3 = slots["c0_N3_block"]["conv"][0].conv.weight  # [widest, widest + 40, 3, 3]
    assert w3.shape[1] == widest + 40
    got = n3.block[0].conv.weight
    assert got.shape[:2] == (32, 32 + 40)
    torch.testing.assert_close(got[:, :32], w3[:32, :32])
    torch.testing.assert_close(got[:, 32:], w3[:32, widest : widest + 40])
    # the head's 1x1 projection of each level takes the first 32 of its widest input channels
    for i, proj in enumerate(detector.head.proj):
        assert model.head.proj[i][0].weight.shape[1] == widest
        torch.testing.assert_close(proj[0].weight, model.head.proj[i][0].weight[:, :32])
    # gradients of a path land in its slices of the widest weights only
    model.train()
    model.zero_grad()
    out = model(_features(), arch, (64, 64))
    (out.cls_logits.sum() + out.box_ltrb.sum()).backward()
    grad = slots["c0_N4_block"]["conv"][0].conv.weight.grad
    assert grad[:32, :32].abs().sum() > 0
    assert grad[32:].abs().sum() == 0 and grad[:, 32:].abs().sum() == 0
    model.zero_grad()
    model.eval()


def test_tensor_slices_unit() -> None:
    owner = nn.Module()
    owner.register_buffer("stat", torch.arange(10.0))
    owner.weight = nn.Parameter(torch.arange(60.0).reshape(6, 10))
    cuts = cuts_for("weight", (3, 5), (6, 10), frozenset({("weight", 1)}), [2, 3], [4, 6])
    assert cuts == [[(0, 3)], [(0, 2), (4, 3)]]
    s = TensorSlice(owner, "weight", cuts, is_buffer=False)
    torch.testing.assert_close(
        s.take(), torch.cat([owner.weight[:3, :2], owner.weight[:3, 4:7]], dim=1)
    )
    assert cuts_for("weight", (7, 5), (6, 10), frozenset(), None, None) is None  # too wide
    stat = TensorSlice(owner, "stat", [[(0, 2), (5, 3)]], is_buffer=True)
    stat.put(torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0]))
    assert owner.stat.tolist() == [-1, -2, 2, 3, 4, -3, -4, -5, 8, 9]


# ---- refusals -------------------------------------------------------------------------------
def test_a_space_whose_graph_is_sampled_is_refused_in_one_line() -> None:
    with pytest.raises(SupernetError) as e:
        Supernet("nasfpn-free", CHANNELS)
    message = str(e.value)
    assert "\n" not in message
    assert "'nasfpn-free'" in message and "graph is itself sampled" in message
    raw = {
        "name": "moving-node",
        "inputs": ["P3", "P4"],
        "nodes": {
            "A": {"level": {"choice": [3, 4]}, "inputs": ["P3", "P4"]},
            "N3": {"level": 3, "inputs": ["A", "P3"], "output": True},
        },
    }
    with pytest.raises(SupernetError, match=r"^space 'moving-node'.*node 'A' samples its level"):
        Supernet(SearchSpace.from_dict(raw), CHANNELS[:2])


def test_an_architecture_of_another_graph_is_not_a_path() -> None:
    supernet = Supernet("bifpn-family", CHANNELS)
    with pytest.raises(SupernetError, match="node 'L5' is not a node of space 'bifpn-family'"):
        supernet(_features(), load_space("fpn-family").random(0))
    with pytest.raises(SupernetError, match="its levels .* are not those of space 'bifpn-family'"):
        supernet(_features(), load_space("pafpn-family").random(0))


class _GatedBlock(nn.Module):
    """A block known only to this test: 3x3 conv, then a 1x1 gate."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_ch, out_ch, 3)
        self.gate = nn.Conv2d(out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.sigmoid(self.gate(y))


def test_a_block_registered_in_blocks_is_held_too(monkeypatch) -> None:
    monkeypatch.setitem(BLOCKS, "gated", repeated(_GatedBlock))
    raw = {
        "name": "gated-pan",
        "inputs": ["P3", "P4", "P5"],
        "width": {"choice": [16, 24]},
        "defaults": {"block": {"choice": ["gated", "conv"]}, "fuse": {"choice": ["concat", "sum"]}},
        "nodes": {
            "T4": {"level": 4, "inputs": ["P5", "P4"]},
            "N3": {"level": 3, "inputs": ["T4", "P3"], "output": True},
            "N4": {"level": 4, "inputs": ["N3", "T4"], "output": True},
        },
    }
    space = SearchSpace.from_dict(raw)
    supernet = Supernet(space, CHANNELS).eval()
    assert "gated" in supernet.describe()["c0_N3_block"]
    feats = _features()
    for seed in range(6):
        arch = space.random(seed)
        with torch.no_grad():
            for a, b in zip(supernet(feats, arch), supernet.extract(arch)(feats), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---- 3: BatchNorm recalibration --------------------------------------------------------------------
def test_bn_recalibration_sets_the_running_stats_to_the_paths_batch_statistics(supernets) -> None:
    model = supernets["pafpn-family"]
    arch = load_space("pafpn-family").random(3)
    neck = model.extract(arch).neck
    bn = next(m for m in neck.modules() if isinstance(m, nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    feats = _features(batch=4)
    inherited = bn.running_mean.clone()
    assert recalibrate_bn(neck, [feats]) == 1
    hook.remove()
    x = seen[0]
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=True)
    assert not torch.allclose(inherited, mean, atol=1e-3)  # without recalibration: the supernet's
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-4)
    assert not neck.training and bn.momentum == 0.1  # mode and momentum restored
    # two batches: the cumulative average of both (momentum None), not an exponential mix
    seen.clear()
    hook = bn.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    recalibrate_bn(neck, [feats, _features(batch=4)])
    hook.remove()
    both = (seen[0].mean(dim=(0, 2, 3)) + seen[1].mean(dim=(0, 2, 3))) / 2
    torch.testing.assert_close(bn.running_mean, both, atol=1e-5, rtol=1e-5)
    # the supernet's own statistics are untouched (the subnet holds copies)
    again = model.extract(arch).neck
    bn2 = next(m for m in again.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(bn2.running_mean, inherited)


# ---- 4: sampling -------------------------------------------------------------------------------
def test_fair_sampling_takes_every_choice_once_per_k_steps_and_sandwich_widths() -> None:
    space = load_space("pafpn-family")
    defaults = space.spec.defaults
    for name, options in (
        ("N3.block", defaults.block.options),
        ("T4.width", defaults.width.options),
    ):
        k = len(options)
        for start in (0, k, 3 * k):
            drawn = [path_batch(space, s, "fair")[0].params[name] for s in range(start, start + k)]
            assert sorted(drawn) == sorted(options), name
    big, small, drawn = path_batch(space, 5, "uniform", sandwich=True)
    assert {n.width for n in big.nodes} == {max(defaults.width.options)}
    assert {n.width for n in small.nodes} == {min(defaults.width.options)}
    assert [n.block for n in big.nodes] == [n.block for n in drawn.nodes]  # same ops drawn
    assert path_batch(space, 5)[0] == drawn


# ---- 3 and 4 on real data: training, resuming, evaluation ----------------------------------------
@pytest.fixture(scope="module")
def tiny_proxy(tmp_path_factory):
    from nas_neck.proxy import ProxyTask

    root = tmp_path_factory.mktemp("supernet")
    return ProxyTask(tiny_config(root, batch_size=4, warmup_steps=1, precision="fp32"))


def _fixed_path_loss(model: SupernetDetector, proxy, archs) -> float:
    from nas_neck.detect.loss import DetectionLoss

    cache = proxy.caches(model.space.inputs)[0]
    idx = list(range(len(cache)))
    feats, targets = cache.features(idx), cache.targets(idx)
    total = 0.0
    with torch.no_grad():
        for arch in archs:  # on extracted copies: the supernet's statistics stay as they are
            detector = model.extract(arch).train()
            total += float(DetectionLoss()(detector(feats), targets)["loss"])
    return total / len(archs)


def test_training_lowers_the_loss_resumes_and_saves_plain_checkpoints(tiny_proxy, tmp_path):
    from nas_neck.supernet.train import load_supernet, train_supernet

    space = load_space("pafpn-family")
    archs = [space.random(100 + s) for s in range(3)]
    torch.manual_seed(tiny_proxy.config.train.seed)
    fresh = SupernetDetector(Supernet(space, CHANNELS), tiny_proxy.num_classes, TrainConfig())
    before = _fixed_path_loss(fresh, tiny_proxy, archs)
    whole = train_supernet(space, proxy=tiny_proxy, epochs=3, out=tmp_path / "whole")
    assert whole.steps == 6 and len(whole.losses) == 3 and whole.precision == "fp32"
    after = _fixed_path_loss(whole.model, tiny_proxy, archs)
    assert after < before, (before, after)
    # the checkpoint is plain data: it loads with weights_only=True
    ckpt = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 6
    assert (tmp_path / "whole" / "losses.json").is_file()

    # interrupted after two of three epochs, then resumed: the same weights as in one go
    def interrupt(epoch: int, total: int, loss: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet(
            space, proxy=tiny_proxy, epochs=3, out=tmp_path / "split", on_epoch=interrupt
        )
    assert torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = train_supernet(space, proxy=tiny_proxy, epochs=3, out=tmp_path / "split")
    assert resumed.steps == 6 and resumed.losses[:2] == whole.losses[:2]
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    loaded, meta = load_supernet(tmp_path / "split")
    assert meta["epoch"] == 3 and loaded.space.name == "pafpn-family"
    # other settings in the same folder are refused, not mixed in
    from nas_neck.errors import CheckpointError

    with pytest.raises(CheckpointError, match="other settings .*sampler"):
        train_supernet(space, proxy=tiny_proxy, epochs=4, out=tmp_path / "split", sampler="fair")


def test_subnet_evaluation_with_fast_coco_equals_pycocotools(tiny_proxy, tmp_path) -> None:
    pytest.importorskip("faster_coco_eval")
    from nas_neck.supernet.evaluate import SubnetEvaluator
    from nas_neck.supernet.train import train_supernet

    run = train_supernet(
        "pafpn-family", proxy=tiny_proxy, epochs=2, out=tmp_path, sampler="fair", sandwich=True
    )
    assert run.steps == 4
    fast = SubnetEvaluator.from_proxy(
        run.model, tiny_proxy, coco="faster", calib_batches=2, calib_batch_size=4, count=True
    )
    slow = SubnetEvaluator.from_proxy(
        run.model, tiny_proxy, coco="pycocotools", calib_batches=2, calib_batch_size=4
    )
    space = load_space("pafpn-family")
    for seed in range(3):
        arch = space.random(seed)
        a, b = fast.evaluate(arch), slow.evaluate(arch)
        assert a["detections"] == b["detections"] > 0
        for key in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"):
            assert math.isnan(a[key]) == math.isnan(b[key]), key
            if not math.isnan(a[key]):
                assert a[key] == pytest.approx(b[key], abs=1e-4), key
        assert a["count_mae"] >= 0


def test_cli_trains_a_supernet_and_refuses_a_free_space(tiny_proxy, tmp_path) -> None:
    from nas_neck.cli import app

    runner = CliRunner()
    c = tiny_proxy.config
    common = [
        "--data",
        str(c.data),
        "--input-size",
        str(c.input_size),
        "--cache-dir",
        str(c.cache_root),
        "--batch-size",
        "4",
        "--precision",
        "fp32",
    ]
    out = tmp_path / "sn"
    result = runner.invoke(
        app,
        [
            "supernet",
            "train",
            "--space",
            "bifpn-family",
            "--epochs",
            "1",
            "--out",
            str(out),
            *common,
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert (out / CHECKPOINT).is_file() and "steps in fp32" in result.output
    result = runner.invoke(
        app,
        ["supernet", "train", "--space", "nasfpn-free", "--out", str(tmp_path / "x")],
        terminal_width=200,
    )
    assert result.exit_code == 1
    assert "nasfpn-free" in result.output and "graph is itself sampled" in result.output
    assert not (tmp_path / "x").exists()


def test_the_loss_curve_goes_to_an_mlflow_run(tiny_proxy, tmp_path) -> None:
    from mlflow import MlflowClient

    from nas_neck.supernet.train import train_supernet

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = train_supernet(
        "pafpn-family", proxy=tiny_proxy, epochs=1, out=tmp_path / "sn", tracking_uri=uri
    )
    client = MlflowClient(tracking_uri=uri)
    info = client.get_run(run.meta["mlflow_run_id"])
    assert info.info.status == "FINISHED" and info.data.params["sampler"] == "uniform"
    assert [m.value for m in client.get_metric_history(info.info.run_id, "loss")] == pytest.approx(
        run.losses
    )
    assert len(client.get_metric_history(info.info.run_id, "step_loss")) == run.steps
