"""``python -m msjoe`` (and ``accelerate launch -m msjoe train ...``) run the command line."""

from msjoe.cli import app

app()
