"""`gridtokenx edge ...`: the group; `edge.agent_cli` holds `run`, `edge.inspect.cli` holds `inspect`."""

from __future__ import annotations

import click

from gridtokenx._registry import attach


@click.group(help="Edge agent: durable SQLite store-and-forward from the meter broker to the cloud broker, "
             "and the inspection tools for field technicians.")
def edge() -> None:
    pass


attach(edge, ("edge.agent_cli", "edge.inspect.cli"))
