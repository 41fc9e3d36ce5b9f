"""`gridtokenx cloud readings partitions | retention`: the readings' partitions (cloud/ingest/partitions.py)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import click

from cloud.cli_common import config_option, dsn_option, json_option, load_settings
from cloud.ingest import partitions
from runtime.redact import redact_url

_AGE = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '2w' ... as a timedelta."""
    m = _AGE.match(text.strip())
    if m is None:
        raise click.BadParameter(f"{text!r}: write a number and a unit, e.g. 30d, 12h, 2w (s m h d w)")
    return timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})


def _fail(exc: BaseException, dsn: str) -> click.ClickException:
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        return click.ClickException(f"the database is not migrated ({exc}); run `gridtokenx cloud migrate`")
    if isinstance(exc, partitions.RetentionError):
        return click.ClickException(str(exc))
    return click.ClickException(f"cannot use PostgreSQL at {redact_url(dsn)} ({exc}); start it or set DATABASE_URL")


@click.group(help="The readings' partitions (by id, so by arrival time): list them, archive and drop old ones.")
def readings() -> None:
    pass


@readings.command("partitions", help="Create the partitions due ahead of the id sequence, then list them "
                  "(id range, rows estimated by PostgreSQL's statistics).")
@config_option()
@dsn_option
@json_option
def partitions_(config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)

    async def go() -> tuple[int, list[tuple[partitions.Partition, int]]]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            created = await partitions.ensure(conn)
            out = []
            for p in await partitions.partitions(conn):
                est = await conn.fetchval("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE relname = $1",
                                          p.name)
                out.append((p, int(est)))
            return created, out
        finally:
            await conn.close()

    try:
        created, found = asyncio.run(go())
    except (OSError, asyncpg.PostgresError, partitions.RetentionError) as exc:
        raise _fail(exc, settings.database_url) from exc
    if as_json:
        click.echo(json.dumps({"created": created, "partitions": [
            {"name": p.name, "lower": p.lower, "upper": p.upper, "rows_estimate": n} for p, n in found]}))
        return
    click.echo(f"{created} partition(s) created ahead")
    for p, n in found:
        click.echo(f"  {p.name:32} ids {'MINVALUE' if p.lower is None else p.lower}..{p.upper - 1}  ~{n:,} rows")


@readings.command(help="Archive and drop partitions whose readings all arrived before the cutoff and have "
                  "nothing left to mint (minted or dead-lettered) and no open mint batch. Never the live "
                  "partition. Each archive is DIR/<partition>.csv.gz with a manifest DIR/<partition>.json "
                  "(id range, rows, SHA-256). Says why each partition is kept.")
@click.option("--older-than", "older_than", required=True, help="age of the newest reading, e.g. 30d, 12h, 2w")
@click.option("--archive-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="where the archive files go (required unless --dry-run)")
@click.option("--dry-run", is_flag=True, help="say what would be archived; change nothing")
@config_option()
@dsn_option
@json_option
def retention(older_than: str, archive_dir: Path | None, dry_run: bool, config: Path | None,
              database_url: str | None, as_json: bool) -> None:
    age = parse_age(older_than)
    if not dry_run and archive_dir is None:
        raise click.UsageError("--archive-dir DIR is required unless --dry-run")
    settings = load_settings(config, database_url=database_url)
    try:
        report = asyncio.run(partitions.retention(settings.database_url, older_than=age, archive_dir=archive_dir,
                                                  dry_run=dry_run, now=datetime.now(UTC)))
    except (OSError, asyncpg.PostgresError, partitions.RetentionError) as exc:
        raise _fail(exc, settings.database_url) from exc
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    click.echo(f"cutoff {report.cutoff:%Y-%m-%d %H:%M:%SZ}{' (dry run)' if dry_run else ''}; "
               f"{report.created_ahead} partition(s) created ahead")
    for p in report.partitions:
        rows = f", {p.rows:,} rows → {p.archive}" if p.rows is not None else ""
        click.echo(f"  {p.name}: {p.action} — {p.reason}{rows}")


COMMANDS: list[click.Command] = [readings]
