"""`gridtokenx cloud ...`: the group; commands live next to the code they drive.

`cloud.ingest_cli` holds migrate, meters, run (ingest consumer); `cloud.mint_cli` holds mint, why,
reconcile, status. Each exposes COMMANDS, a list of click commands.
"""

from __future__ import annotations

import importlib

import click


@click.group(help="Cloud: migrations, meter registry, ingest consumer, minter, reconciliation and status.")
def cloud() -> None:
    pass


for _module in ("cloud.ingest_cli", "cloud.mint_cli"):
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise
        continue
    for _command in _mod.COMMANDS:
        cloud.add_command(_command)
