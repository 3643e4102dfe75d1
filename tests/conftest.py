"""Shared pytest set-up: deterministic, CPU-bound, quiet."""

import logging
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
