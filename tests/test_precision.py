"""Training precision (`TrainConfig.precision`): resolved per device, honoured in the training step
(evaluation stays fp32), recorded with the outcome, the checkpoint and the search trial."""

import logging
from pathlib import Path

import mlflow
import pytest
import torch
from pydantic import ValidationError
from search_fixtures import tiny_config, tiny_proxy

from nas_neck import device
from nas_neck.config import TrainConfig
from nas_neck.detect.trainer import Detector, load_checkpoint, train
from nas_neck.device import autocast_context, cpu_has_native_bf16, resolve_precision
from nas_neck.dsl import load_architecture
from nas_neck.proxy import ProxyTask
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings

SPACES = Path(__file__).parents[1] / "search_spaces"
CPU = torch.device("cpu")
pytestmark = pytest.mark.precision


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    return ProxyTask(tiny_config(tmp_path_factory.mktemp("precision")))


def test_auto_is_bf16_exactly_where_the_cpu_has_it_natively(monkeypatch):
    monkeypatch.delenv(device.CPU_BF16_ENV, raising=False)
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_the_environment_forces_either_path(monkeypatch):
    for forced, native in [("native", False), ("emulated", True)]:  # against what the CPU says
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        monkeypatch.setenv(device.CPU_BF16_ENV, forced)
        assert resolve_precision("auto", "cpu") == ("bf16" if forced == "native" else "fp32")
    monkeypatch.setenv(device.CPU_BF16_ENV, "sometimes")
    with pytest.raises(ValueError, match="NAS_NECK_CPU_BF16: expected native or emulated"):
        resolve_precision("auto", "cpu")


def test_capability_check_reads_torch_then_cpuinfo(monkeypatch, tmp_path):
    check = cpu_has_native_bf16.__wrapped__  # uncached
    for caps, native in [
        ({"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, False),
        ({"avx512_f": True, "avx512_bf16": True}, True),
        ({"amx_bf16": True}, True),
        ({"architecture": "aarch64", "bf16": True}, True),
    ]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps, raising=False)
        assert check() is native, caps
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # torch < 2.9
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device, "_CPUINFO", cpuinfo)
    for text, native in [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", False),
        ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),
    ]:
        cpuinfo.write_text(text)
        assert check() is native, text
    cpuinfo.unlink()  # no /proc/cpuinfo (not Linux): no native bf16 assumed
    assert check() is False


def test_explicit_bf16_without_native_support_warns_once(monkeypatch, caplog):
    monkeypatch.delenv(device.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    device._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="nas_neck.device"):
        assert [resolve_precision("bf16", CPU) for _ in range(3)] == ["bf16"] * 3
    assert len(caplog.records) == 1 and "no native bf16" in caplog.records[0].getMessage()


def test_invalid_precisions_are_rejected():
    with pytest.raises(ValidationError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="expected fp32, bf16 or auto, got 'int8'"):
        resolve_precision("int8", CPU)
    with pytest.raises(ValueError, match="CUDA only"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("fp32", torch.float32), ("bf16", torch.bfloat16)],
)
def test_autocast_context(precision, dtype):
    with autocast_context(CPU, precision):
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == dtype
    with autocast_context(CPU):  # the default is fp32
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.float32


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_training_step_runs_in_the_precision_evaluation_in_fp32(proxy, precision, dtype):
    arch = load_architecture(SPACES / "light.yaml")
    cfg = TrainConfig(epochs=1, batch_size=4, warmup_steps=1, precision=precision)
    train_cache, val_cache, backbone = proxy.caches(arch.inputs)
    model = Detector(arch, backbone.channels, proxy.num_classes, cfg)
    seen: list[torch.dtype] = []
    for conv in (model.head.cls_pred, model.head.box_pred):
        conv.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    result = train(model, train_cache, cfg, CPU)
    assert result.precision == precision
    assert seen and set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    seen.clear()
    proxy.config.train = cfg
    proxy.evaluate(model, val_cache)
    assert seen and set(seen) == {torch.float32}


def test_bf16_training_lowers_the_loss(proxy):
    arch = load_architecture(SPACES / "light.yaml")
    cfg = TrainConfig(epochs=8, batch_size=4, warmup_steps=2, lr=3e-3, precision="bf16")
    train_cache, _, backbone = proxy.caches(arch.inputs)
    model = Detector(arch, backbone.channels, proxy.num_classes, cfg)
    result = train(model, train_cache, cfg, CPU)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < 0.85 * result.losses[0]


def test_precision_is_recorded_on_outcome_checkpoint_trial_and_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proxy = tiny_proxy(tmp_path, precision="bf16", epochs=1)
    settings = SearchSettings(
        space=SPACES / "light.yaml",  # one architecture: trial 1 repeats trial 0
        study="precision",
        storage=f"sqlite:///{tmp_path}/nas.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        trials=2,
        sampler="random",
        baselines=[],
        out_dir=tmp_path / "runs",
    )
    trained, repeat = run_search(settings, proxy).trials
    assert "duplicate_of" in repeat.user_attrs
    assert trained.user_attrs["precision"] == repeat.user_attrs["precision"] == "bf16"
    _, _, meta = load_checkpoint(trained.user_attrs["checkpoint"])
    assert meta["precision"] == "bf16" and meta["config"]["precision"] == "bf16"
    client = mlflow.MlflowClient(settings.tracking_uri)
    for t in (trained, repeat):
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.params["precision"] == "bf16"
