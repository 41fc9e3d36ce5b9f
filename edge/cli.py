"""`gridtokenx edge ...`: the group; `edge.agent_cli` holds `run`, `edge.inspect.cli` holds `inspect`."""

from __future__ import annotations

import click

from edge import agent_cli
from edge.inspect import cli as inspect_cli


@click.group(help="Edge agent: durable SQLite store-and-forward from the meter broker to the cloud broker, "
             "and the inspection tools for field technicians.")
def edge() -> None:
    pass


for command in (*agent_cli.COMMANDS, *inspect_cli.COMMANDS):
    edge.add_command(command)
