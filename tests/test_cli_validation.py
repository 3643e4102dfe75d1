"""Every command refuses a bad option value up front, before any slow work, with one line
`error: --OPTION: expected ..., got VALUE`: no traceback, no usage panel, no pydantic text."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import optuna
import pytest
import typer
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.cli.checks import from_validation_error, like
from nas_neck.cli.console import friendly
from nas_neck.config import ProxyConfig, SynthConfig, TrainConfig
from nas_neck.errors import NasNeckError
from nas_neck.search.probe import check_ray_address, ray_target
from nas_neck.search.tracking import check_reachable

runner = CliRunner()
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: refused at once
BOILERPLATE = ("Traceback", "pydantic", "errors.pydantic.dev", "For further information", "Usage:")


class SlowWork(AssertionError):
    """Raised by the tripwires: a command reached data set-up, a study or MLflow."""


@pytest.fixture(autouse=True)
def tripwires(monkeypatch, tmp_path):
    """Fail loudly if an error path gets as far as slow work (or writes anything)."""
    import nas_neck.data.synth
    import nas_neck.proxy
    import nas_neck.search.tracking

    def trip(*args, **kwargs):
        raise SlowWork("slow work reached before the option was refused")

    monkeypatch.setattr(nas_neck.data.synth, "ensure_default_dataset", trip)
    monkeypatch.setattr(nas_neck.proxy, "ensure_default_dataset", trip)
    monkeypatch.setattr(nas_neck.data.synth, "generate_synthetic", trip)  # `data synth` imports it
    monkeypatch.setattr(nas_neck.proxy.ProxyTask, "__init__", trip)
    monkeypatch.setattr(nas_neck.search.tracking.Tracker, "__init__", trip)
    monkeypatch.setattr(optuna, "create_study", trip)
    monkeypatch.chdir(tmp_path)


def _invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args], terminal_width=300)


def _assert_one_line(result, option: str, value: str | None = None) -> str:
    out = result.output
    assert result.exit_code not in (0, None), out
    assert not isinstance(result.exception, SlowWork), out
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, out
    assert option in errors[0], out
    if value is not None:
        assert f"got {value}" in errors[0], out
    for text in BOILERPLATE:
        assert text not in out, out
    return errors[0]


SHOW = ["show", "fpn"]
TRAIN = ["train", "--arch", "pafpn"]
SEARCH = ["search"]
RAY = ["search", "--backend", "ray"]
WORKER = ["worker", "--study", "s", "--storage", "journal:s.journal"]
PARETO = ["pareto", "--study", "s"]
EXPORT = ["export", "--out", "o"]

CASES = [
    # show
    (SHOW + ["--input-size", "30"], "--input-size", "30"),
    (SHOW + ["--input-size", "100000"], "--input-size", "100000"),  # ran for minutes before
    (SHOW + ["--sample", "-1"], "--sample", "-1"),
    (SHOW + ["--seed", "-1"], "--seed", "-1"),
    (SHOW + ["--backbone", "no_such_net"], "--backbone", "'no_such_net'"),
    (["show", "--study", "s", "--trial", "-1"], "--trial", "-1"),
    (["show", "--study", "s", "--trial", "0", "--storage", "nas.db"], "--storage", "'nas.db'"),
    # train
    (TRAIN + ["--epochs", "0"], "--epochs", "0"),
    (TRAIN + ["--batch-size", "0"], "--batch-size", "0"),
    (TRAIN + ["--threads", "0"], "--threads", "0"),
    (TRAIN + ["--input-size", "63"], "--input-size", "63"),
    (TRAIN + ["--input-size", "4097"], "--input-size", "4097"),
    (TRAIN + ["--seed", "-5"], "--seed", "-5"),
    (TRAIN + ["--data", "no-such-folder"], "--data", "'no-such-folder'"),
    (TRAIN + ["--data", ".", "--val-data", "no.json"], "--val-data", "'no.json'"),
    (TRAIN + ["--images", "no-images"], "--images", "'no-images'"),
    (TRAIN + ["--backbone-weights", "no.pt"], "--backbone-weights", "'no.pt'"),
    # search
    (SEARCH + ["--trials", "0"], "--trials", "0"),
    (SEARCH + ["--trials", "-3"], "--trials", "-3"),
    (SEARCH + ["--epochs", "0"], "--epochs", "0"),
    (SEARCH + ["--batch-size", "-1"], "--batch-size", "-1"),
    (SEARCH + ["--threads", "0"], "--threads", "0"),
    (SEARCH + ["--max-latency-ms", "-1"], "--max-latency-ms", "-1"),
    (SEARCH + ["--max-latency-ms", "0"], "--max-latency-ms", "0"),
    (SEARCH + ["--input-size", "30"], "--input-size", "30"),
    (SEARCH + ["--input-size", "100000"], "--input-size", "100000"),
    (SEARCH + ["--sampler", "annealing"], "--sampler", "'annealing'"),
    (SEARCH + ["--objectives", "map,speed"], "--objectives", "'map,speed'"),
    (SEARCH + ["--backend", "k8s"], "--backend", "'k8s'"),
    (SEARCH + ["--baselines", "fpn,nope"], "--baselines", "'nope'"),
    (SEARCH + ["--storage", "nas.db"], "--storage", "'nas.db'"),
    (SEARCH + ["--data", "no-such-folder"], "--data", "'no-such-folder'"),
    (SEARCH + ["--seed", "-1"], "--seed", "-1"),
    (SEARCH + ["--rungs", "3,1"], "--rungs", "3,1"),
    (SEARCH + ["--rungs", "a,b"], "--rungs", "'a,b'"),
    (SEARCH + ["--rungs", "1,3", "--eta", "1"], "--eta", "1"),
    (SEARCH + ["--budget-minutes", "0"], "--budget-minutes", "0"),
    (SEARCH + ["--confirm", "-1"], "--confirm", "-1"),
    (SEARCH + ["--confirm", "2", "--confirm-seeds", "0"], "--confirm-seeds", "0"),
    (SEARCH + ["--confirm", "2", "--confirm-epochs", "0"], "--confirm-epochs", "0"),
    (["confirm", "--study", "s", "--top", "-1"], "--top", "-1"),
    (["confirm", "--study", "s", "--seeds", "0"], "--seeds", "0"),
    (PARETO + ["--fidelity", "nine"], "--fidelity", "'nine'"),
    (RAY + ["--cpus-per-trial", "0"], "--cpus-per-trial", "0"),
    (RAY + ["--gpus-per-trial", "-0.5"], "--gpus-per-trial", "-0.5"),
    (RAY + ["--max-concurrent", "0"], "--max-concurrent", "0"),
    # worker
    (WORKER + ["--trials", "0"], "--trials", "0"),
    (["worker", "--study", "s", "--storage", "s.db"], "--storage", "'s.db'"),
    # pareto
    (PARETO + ["--x", "speed"], "--x", "'speed'"),
    (PARETO + ["--y", "accuracy"], "--y", "'accuracy'"),
    (PARETO + ["--max-latency-ms", "-1"], "--max-latency-ms", "-1"),
    (PARETO + ["--storage", "nas"], "--storage", "'nas'"),
    # export
    (EXPORT + ["--checkpoint", "c.pt", "--retrain-epochs", "0"], "--retrain-epochs", "0"),
    (EXPORT + ["--checkpoint", "c.pt", "--unfreeze-after", "-1"], "--unfreeze-after", "-1"),
    (EXPORT + ["--study", "s", "--trial", "-1"], "--trial", "-1"),
    (EXPORT + ["--study", "s", "--max-latency-ms", "0"], "--max-latency-ms", "0"),
    (
        EXPORT + ["--checkpoint", "c.pt", "--retrain-epochs", "2", "--unfreeze-after", "2"],
        "--unfreeze-after",
        "2",
    ),
    (
        EXPORT + ["--checkpoint", "c.pt", "--retrain-epochs", "2", "--data", "no-data"],
        "--data",
        "'no-data'",
    ),
    # data
    (["data", "synth", "--train", "0"], "--train", "0"),
    (["data", "synth", "--val", "-1"], "--val", "-1"),
    (["data", "synth", "--size", "30"], "--size", "30"),
    (["data", "synth", "--size", "100000"], "--size", "100000"),
    # predict (its other options: tests/test_predict.py)
    (["predict", "p.jpg", "--input-size", "100000"], "--input-size", "100000"),
    (["predict", "p.jpg", "--tile", "100000"], "--tile", "100000"),
    (["predict", "p.jpg", "--tile", "8"], "--tile", "8"),
    (["data", "synth", "--seed", "-1"], "--seed", "-1"),
    (["data", "check", "x.json", "--images", "no-images"], "--images", "'no-images'"),
    (["data", "convert-agar", "a", "b", "--val-fraction", "1"], "--val-fraction", "1"),
    (["data", "convert-agar", "a", "b", "--val-fraction", "-0.1"], "--val-fraction", "-0.1"),
]


@pytest.mark.parametrize(("args", "option", "value"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_option_is_one_line_naming_it(args, option, value):
    line = _assert_one_line(_invoke(args), option, value)
    assert line.startswith(f"error: {option}"), line


def test_messages_say_what_is_allowed():
    assert "expected an integer >= 1, got 0" in _invoke(SEARCH + ["--trials", "0"]).output
    assert "expected a number > 0, got -1" in _invoke(SEARCH + ["--max-latency-ms", "-1"]).output
    out = _invoke(TRAIN + ["--input-size", "30"]).output
    assert "expected an integer in [64, 4096], got 30" in out
    out = _invoke(SHOW + ["--input-size", "100000"]).output
    assert "error: --input-size: expected an integer in [64, 4096], got 100000" in out
    out = _invoke(["predict", "p.jpg", "--tile", "100000"]).output
    assert "error: --tile: expected an integer in [32, 8192], got 100000" in out
    out = _invoke(["data", "synth", "--size", "100000"]).output
    assert "error: --size: expected an integer in [64, 4096], got 100000" in out
    out = _invoke(SEARCH + ["--sampler", "x"]).output
    assert "expected one of tpe, nsga2, random, gp, got 'x'" in out


def test_bounds_come_from_the_models():
    assert like(ProxyConfig, "input_size").expected == "an integer in [64, 4096]"
    assert like(SynthConfig, "size").expected == "an integer in [64, 4096]"
    assert like(TrainConfig, "epochs").expected == "an integer >= 1"
    assert like(TrainConfig, "lr").expected == "a number > 0"


@pytest.mark.parametrize(
    "command",
    [["show"], ["train"], ["search"], ["confirm"], ["worker"], ["pareto"], ["export"], ["spaces"]]
    + [["data", c] for c in ("synth", "check", "convert-agar")],
)
def test_help_still_works(command):
    result = _invoke([*command, "--help"])
    assert result.exit_code == 0, result.output


def test_spaces_still_lists():
    result = _invoke(["spaces"])
    assert result.exit_code == 0 and "pafpn" in result.output


def test_ray_options_need_the_ray_backend():
    result = _invoke(SEARCH + ["--max-concurrent", "2"])
    _assert_one_line(result, "--max-concurrent")
    assert "only matter with --backend ray" in result.output


def test_multifidelity_options_that_do_not_combine():
    for args, words in [
        (["--rungs", "1,3", "--epochs", "2"], "first rung's epochs"),
    ]:
        result = _invoke(SEARCH + args)
        assert result.exit_code == 1 and words in result.output, result.output
        assert not any(b in result.output for b in BOILERPLATE)
        assert len(result.output.strip().splitlines()) == 1


# ---- the proxy options: one call builds the config ----------------------------------------------
class Built(Exception):
    def __init__(self, config):
        self.config = config


@pytest.mark.parametrize("command", [TRAIN, SEARCH + ["--tracking-uri", "sqlite:///m.db"]])
def test_proxy_options_reach_the_config(monkeypatch, tmp_path, command):
    import nas_neck.proxy

    def built(self, config, *args, **kwargs):
        raise Built(config)

    monkeypatch.setattr(nas_neck.proxy.ProxyTask, "__init__", built)
    (tmp_path / "d").mkdir()
    result = _invoke(
        command
        + ["--data", "d", "--input-size", "96", "--epochs", "2", "--batch-size", "4"]
        + ["--seed", "7", "--threads", "2", "--cache-dir", "c", "--backbone-weights", "random"]
    )
    assert isinstance(result.exception, Built), result.output
    c = result.exception.config
    assert (c.data, c.input_size, c.latency_threads, c.cache_root) == (Path("d"), 96, 2, Path("c"))
    assert (c.train.epochs, c.train.batch_size, c.train.seed) == (2, 4, 7)
    assert c.backbone_weights == "random"


# ---- pydantic errors --------------------------------------------------------------------------
def test_validation_error_names_the_option():
    with pytest.raises(Exception) as e:
        ProxyConfig(input_size=30, train={"epochs": 0})
    line = from_validation_error(e.value, {"--input-size", "--epochs"})
    assert line == (
        "--input-size: expected an integer >= 64, got 30; --epochs: expected an integer >= 1, got 0"
    )
    with pytest.raises(Exception) as e:
        ProxyConfig(latency_runs=1)
    assert from_validation_error(e.value, {"--input-size"}) == (
        "ProxyConfig.latency_runs: expected an integer >= 10, got 1"
    )


def test_an_escaping_validation_error_is_one_line():
    """A pydantic error no declared check caught still reaches the user as one line."""
    bare = typer.Typer()

    @bare.command()
    @friendly
    def build(input_size: int = typer.Option(256), epochs: int = typer.Option(3)) -> None:
        ProxyConfig(input_size=input_size, train=TrainConfig(epochs=epochs))

    result = runner.invoke(bare, ["--input-size", "30"], terminal_width=300)
    _assert_one_line(result, "--input-size", "30")
    result = runner.invoke(bare, ["--epochs", "-2"], terminal_width=300)
    _assert_one_line(result, "--epochs", "-2")


# ---- servers that do not answer ------------------------------------------------------------------
def _quick(args: list[str], option: str) -> str:
    start = time.monotonic()
    result = _invoke(args)
    took = time.monotonic() - start
    line = _assert_one_line(result, option)
    assert took < 40, f"took {took:.0f} s"
    return line


def test_search_refuses_an_unreachable_tracking_server():
    line = _quick(SEARCH + ["--tracking-uri", f"http://{UNREACHABLE}"], "--tracking-uri")
    assert f"cannot reach the MLflow server at http://{UNREACHABLE}" in line


def test_worker_refuses_an_unreachable_tracking_server(monkeypatch):
    """The study's own tracking URI, or --tracking-uri, is checked before the worker starts."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend("s.journal")
    )
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    storage.set_study_user_attr(study_id, "settings", {"tracking_uri": f"http://{UNREACHABLE}"})
    import nas_neck.search.worker

    def trip(*args, **kwargs):
        raise SlowWork("the worker started")

    monkeypatch.setattr(nas_neck.search.worker, "run_worker", trip)
    line = _quick(WORKER, "--tracking-uri")
    assert f"cannot reach the MLflow server at http://{UNREACHABLE}" in line
    uri = f"http://{UNREACHABLE}/prefix"
    assert uri in _quick(WORKER + ["--tracking-uri", uri], "--tracking-uri")


def test_pareto_refuses_an_unreachable_tracking_server():
    _quick(PARETO + ["--tracking-uri", f"http://{UNREACHABLE}"], "--tracking-uri")


def test_search_refuses_a_tracking_database_in_a_missing_folder():
    line = _quick(SEARCH + ["--tracking-uri", "sqlite:///no/such/m.db"], "--tracking-uri")
    assert "'sqlite:///no/such/m.db'" in line and "no folder" in line


def test_search_refuses_an_unreachable_ray_cluster():
    line = _quick(RAY + ["--ray-address", UNREACHABLE], "--ray-address")
    assert f"cannot reach a Ray cluster at {UNREACHABLE}" in line
    _quick(RAY + ["--ray-address", f"ray://{UNREACHABLE}"], "--ray-address")


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) but never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_check_reachable_times_out_on_a_silent_server(silent_port):
    start = time.monotonic()
    with pytest.raises(NasNeckError, match=r"--tracking-uri: .*no answer within 0.5 s"):
        check_reachable(f"http://127.0.0.1:{silent_port}", timeout=0.5)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("status", [200, 404])
def test_check_reachable_accepts_a_server_that_answers(status):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_port}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_check_reachable_local_stores(tmp_path):
    check_reachable(f"sqlite:///{tmp_path}/m.db")
    check_reachable(f"file://{tmp_path}/runs/deeper")
    check_reachable(str(tmp_path / "mlruns"))
    check_reachable("databricks")
    with pytest.raises(NasNeckError, match="no folder"):
        check_reachable(f"sqlite:///{tmp_path}/missing/m.db")
    (tmp_path / "afile").write_text("")
    with pytest.raises(NasNeckError, match="is not a folder"):
        check_reachable(f"file://{tmp_path}/afile/runs")


def test_ray_address_parsing_and_probe(silent_port):
    assert ray_target(None) is None
    assert ray_target("auto") is None
    assert ray_target("local") is None
    assert ray_target("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert ray_target("ray://head:10001") == ("head", 10001)
    assert ray_target("[::1]:6379") == ("::1", 6379)
    check_ray_address(f"127.0.0.1:{silent_port}", timeout=2)  # something listens
    with pytest.raises(NasNeckError, match="--ray-address: cannot reach"):
        check_ray_address(UNREACHABLE, timeout=2)


@pytest.mark.slow
def test_ray_connect_probes_before_ray_init():
    """The library path (`run_ray_search` -> `_connect`) does not hang in ray.init either."""
    from nas_neck.search.ray_backend import _connect

    start = time.monotonic()
    with pytest.raises(NasNeckError, match="--ray-address: cannot reach a Ray cluster"):
        _connect(UNREACHABLE)
    assert time.monotonic() - start < 15
