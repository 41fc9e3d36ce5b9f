"""`gridtokenx cloud {mint,why,reconcile,status}`: the minter's admin commands."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from cloud.chain.base import ChainError
from cloud.cli_common import config_option, dsn_option, json_option, load_settings
from cloud.settings import CloudSettings
from runtime.progress import working
from runtime.redact import redact_text, redact_url

T = TypeVar("T")



def _run(factory: Callable[[], Awaitable[T]], settings: CloudSettings) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except (OSError, asyncpg.InvalidCatalogNameError, asyncpg.InvalidPasswordError) as exc:
        raise click.ClickException(f"cannot reach the database at {redact_url(settings.database_url)} "
                                   f"({redact_text(str(exc))}); start "
                                   "PostgreSQL or set DATABASE_URL") from exc
    except asyncpg.UndefinedTableError as exc:
        raise click.ClickException(f"the database is not migrated ({exc}); run `gridtokenx cloud migrate`") from exc
    except ChainError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        from cloud.minter.economics import SettingsError

        if isinstance(exc, SettingsError):
            raise click.ClickException(str(exc)) from exc
        raise


def _emit(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


# -- mint ------------------------------------------------------------------------------------
@click.command(help="Mint now: the given readings, or every unminted reading of one meter. Works with "
               "auto-mint off (the Phase 2 guide's phases 1-2) and for dead-lettered readings. If a minter is "
               "running it serves the request; otherwise this command talks to the chain itself.")
@click.option("--reading", "reading_ids", type=int, multiple=True, help="meter_readings.id (repeatable)")
@click.option("--meter", "meter_id", help="mint all unminted readings of this meter")
@click.option("--timeout", default=60.0, show_default=True, help="seconds to wait for confirmation")
@config_option('config_path')
@dsn_option
@json_option
def mint(reading_ids: tuple[int, ...], meter_id: str | None, timeout: float, config_path: Path | None,
         database_url: str | None, as_json: bool) -> None:
    if bool(reading_ids) == bool(meter_id):
        raise click.UsageError("give --reading ID (one or more) or --meter METER_ID, not both")
    settings = load_settings(config_path, database_url=database_url)
    from cloud.minter.admin import manual_mint

    with working("minting: planning, sending and confirming batches"):
        result = _run(lambda: manual_mint(settings, reading_ids=reading_ids or None, meter_id=meter_id,
                                          wait_secs=timeout), settings)
    if as_json:
        _emit(result.to_json())
    else:
        click.echo(result.describe())
    if not result.complete:
        sys.exit(1)


# -- why -------------------------------------------------------------------------------------
@click.command(help="Say where a reading is: rejected (reason), waiting, in batch X, minted in tx S at "
               "slot N, in the retry queue (next attempt at T) or dead-lettered. READING is a "
               "meter_readings id or METER_ID:SEQ.")
@click.argument("reading")
@config_option('config_path')
@dsn_option
@json_option
def why(reading: str, config_path: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config_path, database_url=database_url)
    from cloud.minter.admin import explain

    answer = _run(lambda: explain(settings, reading), settings)
    if as_json:
        _emit(answer.to_json())
    else:
        click.echo(answer.text)
    if answer.state == "unknown":
        sys.exit(1)


# -- reconcile -------------------------------------------------------------------------------
@click.command(help="Compare per-wallet on-chain balances and the mint's supply with the database, and "
               "scan the mint authority's transactions for batches that landed but are not recorded. "
               "Exit code 1 on any drift.")
@click.option("--fix", is_flag=True, help="record landed-but-unrecorded batches as confirmed")
@config_option('config_path')
@dsn_option
@json_option
def reconcile(fix: bool, config_path: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config_path, database_url=database_url)
    from cloud.minter.admin import run_reconcile

    with working("reconciling: the authority's transactions, wallet balances, entitlements"):
        first, final = _run(lambda: run_reconcile(settings, fix=fix), settings)
    if as_json:
        _emit({"report": first.to_json(), "after_fix": final.to_json() if final is not first else None})
    else:
        from cloud.minter.admin import describe_report

        click.echo(describe_report(first))
        if final is not first:
            click.echo("\nafter --fix:\n" + describe_report(final))
    if not final.clean:
        sys.exit(1)


# -- status ----------------------------------------------------------------------------------
@click.command(help="The GridTokenX Phase 2 guide's four key minting metrics with its alert thresholds (backlog > 100, "
               "success < 95 %, average latency > 120 s, retry queue > 50). Exit code 2 when an alert fires.")
@config_option('config_path')
@dsn_option
@json_option
def status(config_path: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config_path, database_url=database_url)
    from cloud.minter import economics
    from cloud.minter.status import read_status

    async def read() -> Any:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await read_status(conn), await economics.load(conn)
        finally:
            await conn.close()

    st, records = _run(read, settings)
    in_force = records[-1] if records else None
    if as_json:
        _emit(st.to_json() | {"settings_in_force": _settings_json(in_force)})
    else:
        from cloud.minter.admin import describe_status

        click.echo(describe_status(st))
        click.echo(_settings_line(in_force))
    if any(st.alerts.values()):
        sys.exit(2)


def _settings_json(rec: Any) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {"id": rec.id, "ratio": rec.ratio_text, "decimals": rec.decimals, "mint": rec.mint_address,
            "token_program": rec.token_program, "from_reading_id": rec.from_reading_id, "reason": rec.reason,
            "recorded_at": rec.recorded_at}


def _settings_line(rec: Any) -> str:
    if rec is None:
        return "settings in force     none recorded yet (the minter records them when it first starts)"
    return (f"settings in force     ratio {rec.ratio_text} kWh->token, {rec.decimals} decimals, mint {rec.mint_address}"
            f" ({rec.token_program}), for readings from id {rec.from_reading_id}; recorded "
            f"{rec.recorded_at:%Y-%m-%d %H:%M:%SZ} ({rec.reason})")


# -- settings --------------------------------------------------------------------------------
@click.group("settings", help="The economic settings in force, as recorded in the database (not this shell's "
             "environment): ratio, decimals, mint, token program. The minter records them on first start and "
             "refuses to start when its configuration disagrees.")
def settings_group() -> None:
    pass


@settings_group.command("show", help="Every settings record, oldest first, with the readings it applies to.")
@config_option('config_path')
@dsn_option
@json_option
def settings_show(config_path: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config_path, database_url=database_url)
    from cloud.minter import economics

    async def read() -> Any:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await economics.load(conn)
        finally:
            await conn.close()

    records = _run(read, settings)
    if as_json:
        click.echo(json.dumps([_settings_json(r) for r in records], indent=2, default=str))
        return
    for r in records:
        click.echo(f"#{r.id}: {_settings_line(r).split('     ', 1)[1]}")
    if not records:
        click.echo(_settings_line(None))


@settings_group.command("set-ratio", help="Change TOKENIZATION_KWH_TO_TOKEN_RATIO from now on: a new record that "
                        "applies to readings accepted after this command (higher ids), never to readings accepted "
                        "before it, minted or not. Set the same value in the minter's configuration before its next "
                        "start (it refuses to start otherwise).")
@click.argument("ratio")
@click.option("--note", help="why (kept with the record)")
@config_option('config_path')
@dsn_option
def set_ratio(ratio: str, note: str | None, config_path: Path | None, database_url: str | None) -> None:
    settings = load_settings(config_path, database_url=database_url)
    from cloud.minter import economics

    async def change() -> Any:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await economics.set_ratio(conn, ratio, note=note)
        finally:
            await conn.close()

    try:
        rec = _run(change, settings)
    except (economics.SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ratio {rec.ratio_text} applies to readings from id {rec.from_reading_id} on (record #{rec.id}); "
               f"set TOKENIZATION_KWH_TO_TOKEN_RATIO={rec.ratio_text} for the minter's next start")


COMMANDS: list[click.Command] = [mint, why, reconcile, status, settings_group]
