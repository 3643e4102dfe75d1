"""The `nas-neck` command line: one module per command group, each a thin layer over the library
(commands print; the library logs). Heavy imports wait inside the commands that need them: no
module here imports torch, optuna, mlflow or ray at its top (`tests/test_startup.py`), so
`nas-neck --help` starts in a fraction of a second."""

from __future__ import annotations

import typer

from nas_neck.cli import confirm, data, export, pareto, predict, search, show, spaces, train, worker
from nas_neck.cli import supernet as supernet_cli
from nas_neck.cli.console import setup_logging
from nas_neck.cli.usage import Group

app = typer.Typer(
    name="nas-neck",
    cls=Group,  # a usage mistake (--trials abc, --trails, no --arch) is one line, exit 2
    help="Search detection-neck architectures (FPN / PAN / BiFPN / NAS-FPN) for small, dense objects.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """nas-neck command line."""
    setup_logging(verbose)


app.add_typer(data.app, name="data", help="Synthetic plates, dataset checks, AGAR conversion.")
app.command()(spaces.spaces)
app.command()(show.show)
app.command()(train.train)
app.command()(search.search)
app.command()(confirm.confirm)
app.command()(worker.worker)
app.command()(pareto.pareto)
app.command()(export.export)
app.command()(predict.predict)
app.add_typer(
    supernet_cli.app, name="supernet", help="Weight-sharing supernet: train, score paths."
)

__all__ = ["app"]
