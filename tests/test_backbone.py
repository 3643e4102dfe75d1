"""FrozenBackbone: strides and shapes, truly frozen, offline pretrained weights really loaded."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import nas_neck.backbone as backbone_module
from nas_neck.backbone import FrozenBackbone
from nas_neck.errors import BackboneError

MILITARY_UNIFORM = 652  # ImageNet class of the classic grace_hopper.jpg test picture


@pytest.fixture(scope="module")
def lite0() -> FrozenBackbone:
    return FrozenBackbone()


def test_levels_strides_channels_and_any_input_size(lite0: FrozenBackbone) -> None:
    assert lite0.levels == [3, 4, 5]
    assert lite0.strides == [8, 16, 32]
    assert lite0.channels == [40, 112, 320]
    feats = lite0(torch.rand(2, 3, 100, 77))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, -(-100 // s), -(-77 // s))
        for c, s in zip(lite0.channels, lite0.strides, strict=True)
    ]


def test_other_timm_model_and_levels() -> None:
    bb = FrozenBackbone("resnet18", levels=(2, 3, 4, 5), weights="random")
    assert bb.strides == [4, 8, 16, 32]
    assert bb.channels == [64, 128, 256, 512]
    assert [f.shape[1:] for f in bb(torch.rand(1, 3, 64, 64))] == [
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
    ]


@pytest.mark.parametrize("levels", [(), (1, 3), (3, 6)])
def test_invalid_levels(levels: tuple[int, ...]) -> None:
    with pytest.raises(BackboneError, match="subset"):
        FrozenBackbone(levels=levels, weights="random")


def test_frozen_under_training(lite0: FrozenBackbone) -> None:
    """An optimizer step on a head trained on the features, in train mode, changes nothing in the backbone."""
    head = nn.Conv2d(lite0.channels[0], 4, 3, padding=1)
    model = nn.ModuleDict({"backbone": lite0, "head": head})
    model.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())

    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    head_before = head.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        loss = head(lite0(torch.rand(2, 3, 64, 64))[0]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = lite0.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "backbone weights or BN stats moved"
    )
    assert not torch.equal(head_before, head.weight), "the head should have trained"


def test_pretrained_weights_are_the_packaged_ones(lite0: FrozenBackbone) -> None:
    packaged = backbone_module._read_state_dict(
        backbone_module._packaged_weights_file("tf_efficientnet_lite0")
    )
    assert torch.equal(lite0.body.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(
        lite0.body.blocks[6][0].conv_pwl.weight, packaged["_blocks.15._project_conv.weight"]
    )
    random = FrozenBackbone(weights="random")
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(lite0(x), random(x), strict=True):
        assert not torch.allclose(a, b, atol=1e-2)
    assert lite0.fingerprint() != random.fingerprint()
    assert lite0.fingerprint() == FrozenBackbone().fingerprint()
    assert lite0.fingerprint() != FrozenBackbone(levels=(3, 4)).fingerprint()


def test_packaged_weights_classify_a_photo() -> None:
    """The by-order mapping gives a working ImageNet classifier: grace_hopper.jpg -> military uniform."""
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib sample data not installed")
    name = "tf_efficientnet_lite0"
    state = backbone_module._read_state_dict(backbone_module._packaged_weights_file(name))
    model = timm.create_model(name, pretrained=False).eval()
    model.load_state_dict(backbone_module._rename_by_order(name, state))
    cfg = model.pretrained_cfg
    image = (
        np.asarray(Image.open(photo).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32)
        / 255
    )
    x = (
        torch.from_numpy(image).permute(2, 0, 1)[None] - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    ) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.3


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(full.state_dict(), str(path))
    else:
        torch.save({"state_dict": full.state_dict()}, path)
    bb = FrozenBackbone(weights=path)
    assert torch.equal(bb.body.conv_stem.weight, full.conv_stem.weight)
    assert torch.equal(bb.body.blocks[3][1].bn2.running_var, full.blocks[3][1].bn2.running_var)
    assert bb.weights_source == str(path)


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        FrozenBackbone(weights=tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), wrong)
    with pytest.raises(BackboneError, match="do not fit"):
        FrozenBackbone(weights=wrong)


def test_auto_without_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No packaged weights and no hub: an error that says what to pass, never silent random weights."""
    monkeypatch.setattr(backbone_module, "_hub_cached_file", lambda repo: None)
    monkeypatch.setattr(backbone_module, "_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(BackboneError, match=r"weights=PATH.*random"):
        FrozenBackbone("resnet18")


def test_images_are_normalized_internally(lite0: FrozenBackbone) -> None:
    x = torch.rand(1, 3, 32, 32)
    expected = lite0.body((x - 0.5) / 0.5)  # tf_efficientnet_lite0's pretrained mean/std
    for a, b in zip(lite0(x), expected, strict=True):
        torch.testing.assert_close(a, b)
