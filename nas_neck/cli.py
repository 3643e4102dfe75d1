"""The `nas-neck` command line: data, show, train, search, worker, pareto, export."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="nas-neck",
    help="Search detection-neck architectures (FPN / PAN / BiFPN / NAS-FPN) for small, dense objects.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """nas-neck command line."""
