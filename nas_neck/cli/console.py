"""CLI plumbing: one rich console, and user errors printed as one red line (no traceback)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from nas_neck.errors import NasNeckError

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn `NasNeckError` (bad input the user can fix) into a clean message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NasNeckError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False) -> None:
    """Route library logs through rich; INFO for nas_neck (DEBUG with --verbose), WARNING for others."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("nas_neck").setLevel(logging.DEBUG if verbose else logging.INFO)
    import optuna

    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
