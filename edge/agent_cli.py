"""`gridtokenx edge run`: the edge agent process (flags > env > YAML)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from edge.settings import POLICIES, EdgeSettings
from protocol.meters_csv import MetersCsvError
from runtime import logs
from runtime.config import ConfigError, load
from runtime.errors import RuntimeFailure
from runtime.runner import run_component


@click.command("run", help=(
    "Run the edge agent: subscribe to meters/+/readings on the edge broker (persistent session, "
    "ack only after the SQLite commit), buffer in SQLite, forward batches to the cloud broker "
    "until the cloud acks them. Every flag has a GRIDTOKENX_EDGE_* variable (docs/edge-agent.md); "
    "flags beat env, env beats --config. Stops cleanly on SIGTERM."))
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="YAML file with settings (field names of edge.settings.EdgeSettings).")
@click.option("--edge-broker-url", help="mqtt[s]://edge-agent:PASS@host:port of the meters' broker.")
@click.option("--cloud-broker-url", help="mqtt[s]://GATEWAY:PASS@host:port of the cloud broker.")
@click.option("--gateway-id", help="This gateway's id (cloud username, topic edge/{id}/...).")
@click.option("--buffer", type=click.Path(path_type=Path, dir_okay=False), help="SQLite buffer file.")
@click.option("--edge-broker-ca", type=click.Path(path_type=Path, dir_okay=False),
              help="CA certificate for an mqtts:// edge broker (default: the system CAs).")
@click.option("--cloud-broker-ca", type=click.Path(path_type=Path, dir_okay=False),
              help="CA certificate for an mqtts:// cloud broker (default: the system CAs).")
@click.option("--metrics-host", help="Address for /metrics and /healthz (default 0.0.0.0, for Prometheus; "
              "127.0.0.1 keeps them local).")
@click.option("--metrics-port", type=int, help="Port for /metrics and /healthz (default 9101, 0 = any).")
@click.option("--meter-keys", type=click.Path(path_type=Path, dir_okay=False),
              help="meters.csv (meter_id, public_key): enable the signature pre-check.")
@click.option("--max-rows", type=int, help="Quota: rows waiting to be forwarded (default 2,000,000).")
@click.option("--max-bytes", type=int, help="Quota: payload bytes waiting to be forwarded (default 1 GiB).")
@click.option("--max-evidence-bytes", type=int,
              help="Quota: quarantined payloads + rejected readings kept as evidence (default 64 MiB).")
@click.option("--meter-rate", type=float, help="Messages/s one meter may sustain before it is cut off (default 100; "
              "0 = no per-meter limits).")
@click.option("--meter-burst", type=float, help="Messages one meter may send at once (default 10,000).")
@click.option("--quota-policy", type=click.Choice(POLICIES), help="What a full buffer does (default drop_oldest).")
@click.option("--ttl-seconds", type=float, help="Drop readings pending longer than this (0 = never; default 7 days).")
@click.option("--synchronous", type=click.Choice(["NORMAL", "FULL"], case_sensitive=False),
              help="SQLite synchronous: NORMAL (default, fast) or FULL (survives power loss of the last commit).")
@click.option("--batch-size", type=int, help="Readings per batch (default 500).")
@click.option("--batch-interval-ms", type=float, help="Send a partial batch after this long (default 200).")
@click.option("--window", type=int, help="Batches in flight at most (default 8).")
@click.option("--ack-timeout", "ack_timeout_s", type=float, help="Re-send a batch unacked this long (s, default 10).")
@click.option("--client-id", help="MQTT client id (persistent session name); default edge-agent-{gateway_id}.")
@click.option("--init-session", is_flag=True,
              help="Create the agent's persistent session on the edge broker and exit (install step: run it "
                   "before any meter publishes, so no reading is routed to no one).")
@click.option("--log-format", type=click.Choice(["plain", "json"]), help="Log format (LOG_FORMAT).")
@click.option("--log-level", help="Log level (LOG_LEVEL, default INFO).")
def run(config_path: Path | None, init_session: bool, **flags: Any) -> None:
    try:
        settings = load(EdgeSettings, config_path, overrides=flags).validate()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logs.setup(level=settings.log_level, json_format=settings.log_format == "json", log_file=settings.log_file,
               component="edge")
    if init_session:
        _init_session(settings)
        return
    from edge.agent import run_agent
    from edge.buffer import BufferDamaged

    try:
        # The drain bound: batches in flight get drain_timeout_s, the SQLite barrier and close a little more.
        code = asyncio.run(run_component(lambda stop: run_agent(settings, stop), name="edge agent",
                                         drain_seconds=settings.drain_timeout_s + 20.0))
    except BufferDamaged as exc:
        click.echo(f"error: {exc}.", err=True)
        sys.exit(2)
    except (RuntimeFailure, MetersCsvError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # e.g. the metrics port is taken or the buffer directory is read-only
        click.echo(f"error: {exc}. Pick another --metrics-port or --buffer path.", err=True)
        sys.exit(2)
    sys.exit(code)


def _init_session(settings: EdgeSettings) -> None:
    from edge.receiver import init_session

    try:
        init_session(settings.edge_url, client_id=settings.mqtt_client_id,
                     ca_file=str(settings.edge_broker_ca) if settings.edge_broker_ca else None)
    except ConnectionError as exc:
        click.echo(f"error: {exc}. Check --edge-broker-url and the edge-agent credentials.", err=True)
        sys.exit(2)
    click.echo(f"the agent's persistent session exists on {settings.edge_url}: the broker now keeps every "
               "meter's reading for the agent")


COMMANDS = [run]
