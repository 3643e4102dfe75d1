"""`python -m nas_neck` runs the command line."""

from nas_neck.cli import app

app()
