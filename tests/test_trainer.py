"""Brief training on the real feature cache: learns, stops on NaN, round-trips checkpoints."""

from pathlib import Path

import pytest
import torch
from search_fixtures import tiny_config

from nas_neck.config import NESTED_OVERLAP, TrainConfig
from nas_neck.detect.nested import nested_keep
from nas_neck.detect.trainer import Detector, TrainingDiverged, load_checkpoint, predict, train
from nas_neck.dsl import SearchSpace, load_architecture
from nas_neck.proxy import ProxyTask

SPACES = Path(__file__).parents[1] / "search_spaces"
CPU = torch.device("cpu")
pytestmark = pytest.mark.precision  # trained outcomes: rerun on the other bf16 path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    return ProxyTask(tiny_config(tmp_path_factory.mktemp("trainer")))


def test_loss_decreases_and_metrics_are_sane(proxy):
    arch = load_architecture(SPACES / "light.yaml")
    cfg = TrainConfig(epochs=8, batch_size=4, warmup_steps=2, lr=3e-3)
    train_cache, val_cache, backbone = proxy.caches(arch.inputs)
    model = Detector(arch, backbone.channels, proxy.num_classes, cfg)
    result = train(model, train_cache, cfg, CPU)
    assert len(result.losses) == 8 and result.steps == 8 * (len(train_cache) // 4)
    assert result.losses[-1] < 0.85 * result.losses[0]
    metrics = proxy.evaluate(model, val_cache)
    assert set(metrics) >= {"map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "count_mae"}
    assert 0.0 <= metrics["map"] <= metrics["ap50"] <= 1.0


def test_non_finite_loss_stops_at_once(proxy):
    arch = load_architecture(SPACES / "light.yaml")
    train_cache, _, backbone = proxy.caches(arch.inputs)
    cfg = TrainConfig(epochs=50, batch_size=4)
    model = Detector(arch, backbone.channels, proxy.num_classes, cfg)
    with torch.no_grad():  # poison the weights: the very first loss is NaN
        model.head.cls_pred.weight.fill_(float("nan"))
    epochs_run = []
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1"):
        train(model, train_cache, cfg, CPU, on_epoch=lambda e, loss: epochs_run.append(e))
    assert epochs_run == []  # no budget wasted after the NaN


def test_checkpoint_round_trip_gives_identical_outputs(proxy, tmp_path):
    arch = load_architecture(SPACES / "bifpn.yaml")
    proxy.config.train = TrainConfig(epochs=1, batch_size=4, warmup_steps=1)
    outcome = proxy.run(arch)
    path = proxy.save(outcome, tmp_path / "ckpt.pt")
    model, arch2, meta = load_checkpoint(path)
    assert arch2 == arch
    assert meta["metrics"].keys() == outcome.metrics.keys()
    for k, v in outcome.metrics.items():  # NaN (no GT of a size) != NaN, hence approx
        assert meta["metrics"][k] == pytest.approx(v, nan_ok=True)
    _, val_cache, _ = proxy.caches(arch.inputs)
    feats = val_cache.features([0, 1])
    outcome.model.eval()
    a, b = outcome.model(feats), model(feats)
    torch.testing.assert_close(a.cls_logits, b.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.box_ltrb, b.box_ltrb, rtol=0, atol=0)


@pytest.mark.parametrize("extra", ["p2", "p3p7"])
def test_training_works_with_p2_and_p3_to_p7_outputs(proxy, extra):
    raw = load_architecture(SPACES / "fpn.yaml").to_dict()
    if extra == "p2":
        raw.pop("extra_levels"), raw.pop("extra_downsample")
        raw["inputs"] = ["P2", "P3", "P4", "P5"]
        for n in ("N6", "N7"):
            raw["nodes"].pop(n)
        raw["nodes"]["N2"] = {"level": 2, "inputs": ["L3", "P2"], "output": True}
    arch = SearchSpace.from_dict(raw).sample()
    expected = [2, 3, 4, 5] if extra == "p2" else [3, 4, 5, 6, 7]
    assert list(arch.out_levels) == expected
    proxy.config.train = TrainConfig(epochs=2, batch_size=4, warmup_steps=1)
    outcome = proxy.run(arch)
    assert outcome.model.neck.out_levels == expected
    assert all(loss == loss for loss in outcome.losses) and outcome.losses[-1] < outcome.losses[0]
    assert 0.0 <= outcome.metrics["map"] <= 1.0


def test_the_count_is_predicts_without_nested_duplicates(proxy):
    """The search's count MAE counts as `nas-neck predict` does: scores >= count_thresh, nested
    duplicates dropped per class."""
    arch = load_architecture(SPACES / "light.yaml")
    _, val_cache, backbone = proxy.caches(arch.inputs)
    cfg = proxy.config.train
    torch.manual_seed(0)
    model = Detector(arch, backbone.channels, proxy.num_classes, cfg)
    with torch.no_grad():  # an eager head: many boxes, some inside others
        model.head.cls_pred.weight.normal_(0, 0.5)
        model.head.cls_pred.bias.fill_(1.0)
        model.head.box_pred.weight.normal_(0, 0.3)
    metrics = proxy.evaluate(model, val_cache)
    coco = proxy.val_set.coco
    truth = [len(coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in proxy.val_set.image_ids]
    counted, raw = [], []
    for p in predict(model, val_cache, cfg, CPU):
        above = p["scores"] >= cfg.count_thresh
        boxes, scores, labels = p["boxes"][above], p["scores"][above], p["labels"][above]
        counted.append(int(nested_keep(boxes, scores, labels, NESTED_OVERLAP, False).sum()))
        raw.append(int(above.sum()))
    assert sum(counted) < sum(raw)  # there were nested duplicates to drop
    want = sum(abs(c - t) for c, t in zip(counted, truth, strict=True)) / len(truth)
    assert metrics["count_mae"] == pytest.approx(want)
