"""CLI plumbing: one rich console, and user errors printed as one red line (no traceback):
every option checked first (`cli/checks.py`), a `NasNeckError` or a pydantic `ValidationError`
(its fields named as the options behind them) printed as `error: --OPTION: expected ..., got ...`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from nas_neck.cli.checks import Declared, declared, from_validation_error, run_checks
from nas_neck.errors import NasNeckError

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Check the command's options (the checks declared in their types), then run it; bad input
    the user can fix (`NasNeckError`, a pydantic `ValidationError`) becomes one line and exit 1."""
    params: dict[str, Declared] | None = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal params
        if params is None:  # read at the first call, when every name in the annotations exists
            params = declared(fn)
        try:
            run_checks(params, kwargs)
            return fn(*args, **kwargs)
        except NasNeckError as e:
            fail(str(e))
        except ValidationError as e:
            fail(from_validation_error(e, {p.option for p in params.values()}))

    return wrapper  # type: ignore[return-value]


def fail(message: str) -> NoReturn:
    """Print `error: message` as one red line and exit with code 1."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


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
