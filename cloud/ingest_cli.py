"""`gridtokenx cloud migrate | meters ... | run`: the ingest side's commands (COMMANDS below)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
from prometheus_client import REGISTRY

from cloud import db
from cloud.cli_common import config_option, dsn_option, json_option, load_settings
from cloud.ingest import admin
from cloud.ingest.consumer import CapabilityError, IngestConsumer
from cloud.ingest.metrics import IngestMetrics
from cloud.minter import MinterRefused
from cloud.minter.health import MinterHealth
from cloud.settings import CloudSettings
from protocol import meters_csv
from runtime import logs
from runtime.config import ConfigError
from runtime.errors import RuntimeFailure
from runtime.observability import ListenError, ObservabilityServer
from runtime.progress import working
from runtime.redact import redact_text, redact_url
from runtime.runner import run_component

T = TypeVar("T")
log = logging.getLogger("cloud.ingest")



def _run(coro: Coroutine[Any, Any, T], dsn: str) -> T:
    """Run `coro`, turning database trouble into one sentence with the fix."""
    try:
        return asyncio.run(coro)
    except ListenError as exc:
        raise click.ClickException(str(exc.strerror)) from None
    except BaseExceptionGroup as group:  # from the service's TaskGroup: one sentence when the cause is known
        known = _operator_error(group)
        if known is None:
            raise
        raise click.ClickException(known) from None
    except asyncpg.UndefinedTableError as exc:
        raise click.ClickException(f"the database is not migrated ({exc}); run `gridtokenx cloud migrate`") from exc
    except (OSError, asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise click.ClickException(
            f"cannot connect to PostgreSQL at {_redact(dsn)} ({exc}); start it or set DATABASE_URL") from exc
    except (admin.AdminError, db.MigrationError, RuntimeFailure, CapabilityError) as exc:
        raise click.ClickException(str(exc)) from exc


def _operator_error(group: BaseExceptionGroup[Any]) -> str | None:
    """The message of the first error an operator can act on (chain identity, migrations, config,
    a busy port) inside a TaskGroup's ExceptionGroup, else None (a bug: keep the traceback)."""
    from cloud.chain.base import ChainError

    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _operator_error(exc)
            if found:
                return found
        elif isinstance(exc, ListenError):
            return str(exc.strerror)
        elif isinstance(exc, (ChainError, admin.AdminError, db.MigrationError, ConfigError)):
            return redact_text(str(exc))
    return None


def _redact(dsn: str) -> str:
    return redact_url(dsn)


async def _with_conn(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    conn = await asyncpg.connect(dsn)
    try:
        return await work(conn)
    finally:
        await conn.close()


@click.command(help="Apply pending SQL migrations (migrations/NNN_*.sql) under an advisory lock; idempotent.")
@config_option()
@dsn_option
@json_option
def migrate(config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    applied = _run(db.migrate(settings.database_url), settings.database_url)
    if as_json:
        click.echo(json.dumps({"applied": applied}))
    elif applied:
        click.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        click.echo("database is up to date")


@click.group(help="The meter registry: import from meters.csv, add, list, suspend, revoke, reinstate, rotate keys.")
def meters() -> None:
    pass


@meters.command("import", help="Upsert meters from a CSV with header "
                "meter_id,public_key,wallet_address,meter_type,capacity_w (as `gridtokenx sim keygen` "
                "writes it). Idempotent; bad rows are reported with their line numbers and skipped.")
@click.argument("csv_path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@config_option()
@dsn_option
@json_option
def import_(csv_path: Path, config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    rows, errors = meters_csv.parse(csv_path.read_text())
    with working(f"importing {len(rows):,} meter(s)"):
        result = _run(_with_conn(settings.database_url, lambda c: admin.upsert_meters(c, rows)),
                      settings.database_url)
    # Conflicts are reported against the CSV line of the row.
    line_of = _csv_lines(csv_path.read_text())
    problems = [(e.line, e.message) for e in errors] + [
        (line_of.get(m, 0), f"meter {m!r}: {why}") for m, why in result.conflicts.items()]
    problems.sort()
    if as_json:
        click.echo(json.dumps({"inserted": len(result.inserted), "updated": len(result.updated),
                               "unchanged": len(result.unchanged),
                               "errors": [{"line": n, "error": msg} for n, msg in problems]}))
    else:
        click.echo(f"{len(result.inserted)} added, {len(result.updated)} updated, "
                   f"{len(result.unchanged)} unchanged, {len(problems)} bad row(s)")
        for n, msg in problems:
            click.echo(f"  line {n}: {msg}", err=True)
    if problems:
        sys.exit(1)


def _csv_lines(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        out.setdefault(line.split(",", 1)[0].strip(), n)
    return out


@meters.command(help="Register one meter (or update its wallet, type and capacity).")
@click.argument("meter_id")
@click.option("--public-key", required=True, help="base58 Ed25519 public key.")
@click.option("--wallet", "wallet_address", required=True, help="base58 Solana wallet that is minted to.")
@click.option("--type", "meter_type", default="solar", show_default=True, help="solar, consumer, hybrid, battery …")
@click.option("--capacity-w", type=int, required=True, help="Registered export capacity in watts.")
@config_option()
@dsn_option
@json_option
def add(meter_id: str, public_key: str, wallet_address: str, meter_type: str, capacity_w: int,
        config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    row = meters_csv.check_row(meter_id, public_key, wallet_address, meter_type, capacity_w)
    if isinstance(row, str):
        raise click.ClickException(row)
    result = _run(_with_conn(settings.database_url, lambda c: admin.upsert_meters(c, [row])), settings.database_url)
    if result.conflicts:
        raise click.ClickException(f"meter {meter_id!r}: {result.conflicts[meter_id]}")
    outcome = "added" if result.inserted else "updated" if result.updated else "unchanged"
    click.echo(json.dumps({"meter_id": meter_id, "result": outcome}) if as_json else f"meter {meter_id} {outcome}")


@meters.command("list", help="List registered meters.")
@click.option("--status", type=click.Choice(["active", "suspended", "revoked", "quarantined"]),
              help="Only meters with this status.")
@config_option()
@dsn_option
@json_option
def list_(status: str | None, config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    found = _run(_with_conn(settings.database_url, lambda c: admin.list_meters(c, status=status)),
                 settings.database_url)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(m) for m in found], default=str))
        return
    for m in found:
        why = f"  ({m.status_reason})" if m.status_reason else ""
        click.echo(f"{m.meter_id:<20} {m.status:<11} {m.meter_type:<9} {m.capacity_w:>8} W  "
                   f"keys={m.keys}  wallet={m.wallet_address}{why}")
    click.echo(f"{len(found)} meter(s)", err=True)


def _status_command(name: str, status: admin.Status, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("meter_id")
    @click.option("--reason", help="Why (kept in meters.status_reason).")
    @config_option()
    @dsn_option
    @json_option
    def command(meter_id: str, reason: str | None, config: Path | None, database_url: str | None,
                as_json: bool) -> None:
        settings = load_settings(config, database_url=database_url)
        _run(_with_conn(settings.database_url, lambda c: admin.set_status(c, meter_id, status, reason)),
             settings.database_url)
        click.echo(json.dumps({"meter_id": meter_id, "status": status, "reason": reason}) if as_json
                   else f"meter {meter_id} is now {status}")
    return command


meters.add_command(_status_command("suspend", "suspended", "Stop accepting readings of a meter (reversible)."))
meters.add_command(_status_command("revoke", "revoked", "Permanently stop accepting readings of a meter."))
meters.add_command(_status_command("reinstate", "active",
                                   "Accept readings of a suspended or quarantined meter again."))


@meters.command("rotate-key", help="""Give a meter a new public key. The new key verifies every reading a
consumer processes after this command returns. The old key stays in meter_keys as history and:

\b
- routine rotation (default): keeps verifying readings whose seq is below its
  watermark, exclusive: --old-key-below-seq N, default = the highest seq stored
  for the meter + 1 (only gaps behind it). Raise it to let readings the meter
  signed before the rotation and the edge still buffers in; see and move it with
  `meters keys` / `meters key-watermark`.
- --compromised: verifies nothing from now on, whatever a reading's seq or
  timestamp claims (readings already accepted stay accepted).""")
@click.argument("meter_id")
@click.argument("public_key")
@click.option("--compromised", is_flag=True, help="The old key leaked: accept nothing signed by it any more.")
@click.option("--old-key-below-seq", "below_seq", type=click.IntRange(min=0),
              help="Routine rotation: the old key verifies readings with seq < N only.")
@config_option()
@dsn_option
@json_option
def rotate_key(meter_id: str, public_key: str, compromised: bool, below_seq: int | None, config: Path | None,
               database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    problem = meters_csv.check_base58_32(public_key, "public_key")
    if problem:
        raise click.ClickException(problem)
    watermark = _run(_with_conn(settings.database_url, lambda c: admin.rotate_key(
        c, meter_id, public_key, compromised=compromised, below_seq=below_seq)), settings.database_url)
    if as_json:
        click.echo(json.dumps({"meter_id": meter_id, "public_key": public_key, "compromised": watermark is None,
                               "old_key_below_seq": watermark}))
        return
    old = ("the old key verifies nothing any more (compromised)" if watermark is None
           else f"the old key verifies readings with seq < {watermark} only")
    click.echo(f"meter {meter_id} now verifies with {public_key}; {old}")


@meters.command("keys", help="Every key a meter has had: current, retired with its seq watermark, or compromised.")
@click.argument("meter_id")
@config_option()
@dsn_option
@json_option
def keys(meter_id: str, config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    rows = _run(_with_conn(settings.database_url, lambda c: admin.list_keys(c, meter_id)), settings.database_url)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(k) | {"state": k.state} for k in rows], default=str, indent=2))
        return
    for k in rows:
        until = f" until {k.valid_until:%Y-%m-%d %H:%M:%SZ}" if k.valid_until else ""
        click.echo(f"{k.public_key}  from {k.valid_from:%Y-%m-%d %H:%M:%SZ}{until}  {k.state}")


@meters.command("key-watermark", help="Set the seq watermark of a routinely retired key: it verifies readings "
                "with seq < SEQ only. A compromised key cannot be given one.")
@click.argument("meter_id")
@click.argument("public_key")
@click.argument("seq", type=click.IntRange(min=0))
@config_option()
@dsn_option
def key_watermark(meter_id: str, public_key: str, seq: int, config: Path | None, database_url: str | None) -> None:
    settings = load_settings(config, database_url=database_url)
    _run(_with_conn(settings.database_url, lambda c: admin.set_key_watermark(c, meter_id, public_key, seq)),
         settings.database_url)
    click.echo(f"meter {meter_id}: retired key {public_key} now verifies readings with seq < {seq}")


@click.command(help="Run the cloud service: the ingest consumer (verify, validate, persist, ack) and/or "
               "the minter. Serves /metrics and /healthz on --port; SIGTERM drains the batch in hand.")
@click.option("--role", type=click.Choice(["ingest", "mint", "all"]), default="all", show_default=True)
@config_option()
@dsn_option
@click.option("--broker-url", help="Cloud broker, mqtt://cloud-consumer:PASS@host:port "
              "[env GRIDTOKENX_CLOUD_BROKER_URL].")
@click.option("--client-id", help="MQTT client id; distinct per consumer process "
              "[env GRIDTOKENX_CLOUD_CLIENT_ID].")
@click.option("--port", type=int, help="HTTP port for /metrics and /healthz; 0 = any free port [env PORT].")
@click.option("--host", help="HTTP bind address [env HOST].")
@click.option("--log-format", type=click.Choice(["plain", "json"]), help="[env LOG_FORMAT]")
@click.option("--log-level", help="[env LOG_LEVEL]")
@click.option("--migrate/--no-migrate", "run_migrations", default=True, show_default=True,
              help="Apply pending migrations before starting.")
def run(role: str, config: Path | None, database_url: str | None, broker_url: str | None,
        client_id: str | None, port: int | None, host: str | None, log_format: str | None,
        log_level: str | None, run_migrations: bool) -> None:
    settings = load_settings(config, database_url=database_url, broker_url=broker_url, client_id=client_id,
                         port=port, host=host, log_format=log_format, log_level=log_level)
    logs.setup(level=settings.log_level, json_format=settings.log_format == "json", log_file=settings.log_file,
               component="cloud")
    run_minter = _minter(role)
    try:
        _run(run_component(lambda stop: _serve(settings, role, run_minter, run_migrations, stop),
                           name=f"cloud {role}", drain_seconds=30.0), settings.database_url)
    except* MinterRefused:  # its one sentence is on stderr already
        sys.exit(MinterRefused.code)


MinterFn = Callable[[CloudSettings, asyncio.Event, MinterHealth | None], Awaitable[None]]



def _minter(role: str) -> MinterFn | None:
    if role == "ingest":
        return None
    try:
        from cloud.minter.service import run_minter  # the minter engineer's module, loaded only if needed
    except ModuleNotFoundError as exc:
        if exc.name not in ("cloud.minter", "cloud.minter.service"):
            raise
        raise click.ClickException(
            f"--role {role} needs the minter (cloud/minter/service.py), which is not installed in this "
            "build; run `gridtokenx cloud run --role ingest`") from exc
    fn: MinterFn = run_minter
    return fn


async def _serve(settings: CloudSettings, role: str, run_minter: MinterFn | None, run_migrations: bool,
                 stop: asyncio.Event) -> None:
    if run_migrations:
        applied = await db.migrate(settings.database_url)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    consumer = IngestConsumer(settings, metrics=IngestMetrics(REGISTRY)) if role in ("ingest", "all") else None
    minter_health = MinterHealth() if run_minter is not None else None

    def health() -> dict[str, Any]:
        # Each role reports its dependencies' real state; the process is healthy when every role is.
        parts = ([consumer.health()] if consumer else []) + ([minter_health.report()] if minter_health else [])
        if len(parts) == 1:
            return parts[0]
        return {"healthy": all(p["healthy"] for p in parts), "ingest": parts[0], "mint": parts[1]}

    server = ObservabilityServer(host=settings.host, port=settings.port, health=health)
    await server.start()
    log.info("metrics and health on http://%s:%d (/metrics, /healthz); role %s", settings.host, server.port, role)
    try:
        async with asyncio.TaskGroup() as tasks:
            if consumer is not None:
                tasks.create_task(_until_done(consumer.run(stop), stop))
            if run_minter is not None:
                tasks.create_task(_until_done(run_minter(settings, stop, minter_health), stop))
    except* CapabilityError as group:
        raise group.exceptions[0] from None
    finally:
        await server.stop()
    log.info("stopped cleanly")


async def _until_done(work: Awaitable[None], stop: asyncio.Event) -> None:
    """When one role ends (or fails), the others drain and stop too."""
    try:
        await work
    finally:
        stop.set()



COMMANDS: list[click.Command] = [migrate, meters, run]
