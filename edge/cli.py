"""`gridtokenx edge ...`."""

from __future__ import annotations

import click


@click.group(help="Edge agent: durable SQLite store-and-forward from the meter broker to the cloud broker.")
def edge() -> None:
    pass
