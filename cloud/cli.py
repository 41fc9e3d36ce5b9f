"""`gridtokenx cloud ...`."""

from __future__ import annotations

import click


@click.group(help="Cloud: migrations, meter registry, ingest consumer, minter, reconciliation and status.")
def cloud() -> None:
    pass
