"""CLI plumbing: one rich console, and user errors printed as one red line (no traceback):
every option checked first (`cli/checks.py`), a `NasNeckError` or a pydantic `ValidationError`
(its fields named as the options behind them) printed as `error: --OPTION: expected ..., got ...`."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType
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
    error_line(message)
    raise typer.Exit(1) from None


def error_line(message: str, where: Console = console) -> None:
    """`error: message` as one red line (on `where`: the console, or one on stderr)."""
    where.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def setup_logging(verbose: bool = False) -> None:
    """Route library logs through rich; INFO for nas_neck (DEBUG with --verbose), WARNING for others."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("nas_neck").setLevel(logging.DEBUG if verbose else logging.INFO)
    level = logging.INFO if verbose else logging.WARNING
    # Optuna sets its own logger to INFO when it is first imported, which most commands never
    # do (importing it here would cost every command its start-up): set it now if it is loaded,
    # else right after it is.
    when_imported("optuna", lambda optuna: optuna.logging.set_verbosity(level))


def when_imported(name: str, then: Callable[[ModuleType], object]) -> None:
    """Call `then(module)` once top-level module `name` is imported: now if it is, else right
    after its import finishes (a one-shot finder on `sys.meta_path`; nothing is imported here)."""
    module = sys.modules.get(name)
    if module is not None:
        then(module)
        return
    for finder in sys.meta_path:  # one hook per name: a later call replaces what to do
        if isinstance(finder, _AfterImport) and finder.name == name:
            finder.then = then
            return
    sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `name` is about to be imported, it leaves `sys.meta_path`, lets
    the other finders find the module, and wraps its loader so that `then` runs after it."""

    def __init__(self, name: str, then: Callable[[ModuleType], object]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):  # another thread's import took it out first
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, then = loader.exec_module, self.then

        def exec_module(module: ModuleType) -> None:
            run(module)
            then(module)

        loader.exec_module = exec_module  # this spec's own loader: nothing shared is changed
        return spec
