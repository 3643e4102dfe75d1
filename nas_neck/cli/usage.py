"""Usage mistakes that typer finds itself, before a command runs, as one red line and exit 2.

A value that does not parse (`--trials abc`), an unknown option (`--trails`) or command, a missing
option or argument, an extra argument: click raises a `UsageError` and typer would draw a box
with the usage and "Try --help" around it. `Group` (the class of the app and of its sub-apps)
prints one line instead, in the same form as `fail` (`cli/console.py`) and the option checks
(`cli/checks.py`), to stderr, with the exit code click gives (2):

    error: --trials: expected an integer, got 'abc'
    error: no such option --trails (did you mean --trials?)
    error: missing option --arch
    error: no such command 'serch' (did you mean search?)

It works wherever the app runs (the console script, `python -m nas_neck`, typer's `CliRunner`):
the group's own `make_context` and `invoke` catch the error, print the line and raise
`typer.Exit(2)`, so typer's `main` only exits.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup

from nas_neck.cli.checks import expectation
from nas_neck.cli.console import error_line

# click's exceptions, from wherever this typer takes click (a copy inside typer since 0.22)
_exceptions = sys.modules[typer.BadParameter.__module__]
UsageError = _exceptions.UsageError
BadParameter = _exceptions.BadParameter
MissingParameter = _exceptions.MissingParameter
NoSuchOption = _exceptions.NoSuchOption

stderr = Console(stderr=True)


class Group(TyperGroup):
    """A typer group whose usage errors are one line (module docstring)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as e:
            _exit_with(e)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            _exit_with(e)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as e:
            name = args[0] if args else ""
            if not name or name.startswith("-") or self.get_command(ctx, name) is not None:
                raise
            hint = closest(name, self.list_commands(ctx))
            message = f"no such command {name!r}" + (f" (did you mean {hint}?)" if hint else "")
            raise UsageError(message, ctx) from e


def _exit_with(e: Any) -> None:
    """Print `e` as one line and exit with its code; a bare group's help (no arguments) is not a
    mistake: typer has printed it, and exits as it would."""
    if type(e).__name__ == "NoArgsIsHelpError":
        raise e
    error_line(usage_message(e), stderr)
    raise typer.Exit(e.exit_code) from None


def usage_message(e: Any) -> str:
    """One line for a click usage error, in the project's words."""
    if isinstance(e, NoSuchOption):
        hint = closest(e.option_name, e.possibilities or ())
        return f"no such option {e.option_name}" + (f" (did you mean {hint}?)" if hint else "")
    if isinstance(e, MissingParameter):
        kind = e.param_type or getattr(e.param, "param_type_name", None) or "option"
        name = _param_name(e.param) if e.param is not None else _hint(e.param_hint)
        return f"missing {kind} {name}" if name else _sentence(e.format_message())
    if isinstance(e, BadParameter):
        name = _param_name(e.param) if e.param is not None else _hint(e.param_hint)
        cause = e.__cause__
        if isinstance(cause, ValidationError) and cause.errors():
            what = expectation(cause.errors()[0])  # "expected an integer, got 'abc'"
        else:
            what = _sentence(e.message)
        return f"{name}: {what}" if name else what
    return _sentence(e.format_message())


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like `word` (a mistyped option or command), if one is close enough;
    options are compared without their dashes, which every one of them shares."""
    by_name = {c.lstrip("-"): c for c in choices}
    found = difflib.get_close_matches(word.lstrip("-"), list(by_name), n=1, cutoff=0.6)
    return by_name[found[0]] if found else None


def _param_name(param: Any) -> str:
    """An option as the user names it (its first --long name), an argument in capitals (as
    `cli/checks.py` names them)."""
    if getattr(param, "param_type_name", "") == "argument":
        return str(param.name).upper()
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    long = [n for n in names if n.startswith("--")]
    return (long or names or [param.name])[0]


def _hint(hint: str | Sequence[str] | None) -> str:
    if hint is None:
        return ""
    return " / ".join(hint) if not isinstance(hint, str) else hint


def _sentence(message: str) -> str:
    """click's message as a clause of one line: no capital, no full stop, no line breaks."""
    text = " ".join(message.split())
    text = text[:1].lower() + text[1:]
    return text.removesuffix(".")


__all__ = ["Group", "closest", "usage_message"]
