"""Shared pytest set-up: deterministic, CPU-bound, quiet.

Precision: `--precision auto` (the default) trains in bf16 on a CPU with native bf16 and in fp32
elsewhere. ``NAS_NECK_CPU_BF16=native`` or ``=emulated`` forces either path for the whole run,
subprocesses included; `make test` reruns the tests marked ``precision`` with the path this
machine does not take by itself, so both run on every machine.
"""

import logging
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_report_header(config: pytest.Config) -> str:
    from nas_neck.device import CPU_BF16_ENV, resolve_precision

    forced = os.environ.get(CPU_BF16_ENV)
    why = f"${CPU_BF16_ENV}={forced}" if forced else "this CPU's own"
    return f"precision auto trains in {resolve_precision('auto', 'cpu')} ({why})"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cli_logging_undone():
    """A CLI command run in-process (CliRunner) routes logging through rich for the process, as
    the command line should; undo that after each test so later tests see plain logging."""
    yield
    from rich.logging import RichHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, RichHandler)]:
        root.removeHandler(handler)
    logging.getLogger("nas_neck").setLevel(logging.NOTSET)
