"""`gridtokenx sim ...`."""

from __future__ import annotations

import click


@click.group(help="Simulated smart meters: keys, fleets publishing signed readings over MQTT, load tests.")
def sim() -> None:
    pass
