"""`gridtokenx cloud ...`: the group; commands live next to the code they drive.

`cloud.ingest_cli` holds migrate, meters, run (ingest consumer); `cloud.mint_cli` holds mint, why,
reconcile, status; `cloud.readings_cli` holds readings (partitions, retention). Each exposes
COMMANDS, a list of click commands.
"""

from __future__ import annotations

import click

from cloud import doctor, ingest_cli, mint_cli, readings_cli
from cloud.api import cli as api_cli


@click.group(help="Cloud: migrations, meter registry, ingest consumer, minter, reconciliation and status.")
def cloud() -> None:
    pass


for command in (*ingest_cli.COMMANDS, *mint_cli.COMMANDS, *readings_cli.COMMANDS, doctor.doctor, *api_cli.COMMANDS):
    cloud.add_command(command)
