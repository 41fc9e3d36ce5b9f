"""The readings partitioned by id (migration 060): idempotency across partitions and after archiving,
retention's choices and archive files, the upgrade of a database that has rows."""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from cloud import db
from cloud.ingest import partitions
from cloud.ingest.commit import decide_and_write
from cloud.ingest.pipeline import parse_items, verify_signatures
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.minter.admin import manual_mint
from cloud.settings import TokenizationSettings
from gridtokenx.cli import root as gridtokenx_main
from protocol.envelopes import Batch, BatchItem
from protocol.reasons import Reason
from tests.cloud.ingest.conftest import GATEWAY
from tests.cloud.ingest.support import Meter, query, register
from tests.cloud.minter.conftest import minter_settings

LIMITS = Limits.from_settings(TokenizationSettings())
FIRST_BOUNDARY = 10_000_000  # migration 060's default partition size: p0 ends here on a new database


async def ingest(dsn: str, batch_id: str, items: list[BatchItem]) -> list[tuple[str, Reason | None]]:
    """One batch through the ingest transaction every path uses (cloud.ingest.commit)."""
    batch = Batch(gateway_id=GATEWAY, batch_id=batch_id, sent_at=int(time.time()), items=items)
    conn = await asyncpg.connect(dsn)
    try:
        registry = Registry()
        await registry.load(conn)
        parsed = parse_items(batch)
        plan, _ = await decide_and_write(conn, batch, parsed, verify_signatures(parsed, registry.get), registry.get,
                                         limits=LIMITS, now=int(time.time()))
    finally:
        await conn.close()
    return [(r.status, r.reason) for r in plan.results()]


async def next_ids_from(dsn: str, first: int) -> None:
    """Move the id sequence, as hours of other meters' readings would."""
    await query(dsn, "SELECT setval('meter_readings_id_seq', $1)", first - 1)


async def where(dsn: str, meter_id: str, seq: int) -> str | None:
    rows = await query(dsn, "SELECT r.tableoid::regclass::text AS part FROM meter_reading_keys k"
                       " JOIN meter_readings r ON r.id = k.reading_id WHERE k.meter_id = $1 AND k.seq = $2",
                       meter_id, seq)
    return rows[0]["part"] if rows else None


async def count(dsn: str, sql: str, *args: object) -> int:
    return int((await query(dsn, sql, *args))[0][0])


def later(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def check_archive(archive_dir: Path, name: str, rows: int) -> list[dict[str, str]]:
    """The manifest describes its file: row count and SHA-256; the rows read back."""
    manifest = json.loads((archive_dir / f"{name}.json").read_text())
    data = (archive_dir / manifest["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
    assert manifest["rows"] == rows
    back = list(csv.DictReader(io.StringIO(gzip.decompress(data).decode())))
    assert len(back) == rows
    return back


async def test_a_resend_across_partitions_and_after_archiving_is_a_duplicate_never_minted_twice(
        migrated_db: str, tmp_path: Path) -> None:
    m, other = Meter.make("part-a"), Meter.make("part-b")
    await register(migrated_db, [m, other])
    first, first_b = m.item(1, 10, 10), other.item(1, 5, 5)
    assert await ingest(migrated_db, "b1", [first, first_b]) == [("accepted", None)] * 2
    await next_ids_from(migrated_db, FIRST_BOUNDARY)
    assert await ingest(migrated_db, "b2", [m.item(2, 20, 30)]) == [("accepted", None)]
    assert await where(migrated_db, "part-a", 1) == "meter_readings_p0"
    assert await where(migrated_db, "part-a", 2) == f"meter_readings_p{FIRST_BOUNDARY}"

    # Across the boundary: the same bytes are a duplicate, other signed bytes are equivocation.
    assert await ingest(migrated_db, "b3", [first]) == [("duplicate", None)]
    assert await ingest(migrated_db, "b4", [other.item(1, 6, 6)]) == [("rejected", Reason.EQUIVOCATION)]

    settings = minter_settings(migrated_db, tmp_path / "chain")
    minted = await manual_mint(settings, reading_ids=None, meter_id="part-a", wait_secs=30)
    assert minted.complete and minted.readings_total == 2
    # part-b's reading stays unminted (the meter is quarantined): its partition p0 must be kept ...
    report = await partitions.retention(migrated_db, older_than=timedelta(days=30), archive_dir=tmp_path / "arch",
                                        dry_run=False, now=later(31))
    kept = {p.name: p.reason for p in report.partitions if p.action == "kept"}
    assert "not minted" in kept["meter_readings_p0"]
    assert kept[f"meter_readings_p{FIRST_BOUNDARY}"].startswith("live")
    # ... until it is minted too (by hand, as an operator would for a quarantined meter's backlog).
    await query(migrated_db, "UPDATE meters SET status = 'active' WHERE meter_id = 'part-b'")
    assert (await manual_mint(settings, reading_ids=None, meter_id="part-b", wait_secs=30)).complete
    report = await partitions.retention(migrated_db, older_than=timedelta(days=30), archive_dir=tmp_path / "arch",
                                        dry_run=False, now=later(31))
    assert [(p.name, p.action, p.rows) for p in report.partitions if p.action != "kept"] == [
        ("meter_readings_p0", "archived", 2)]
    rows = check_archive(tmp_path / "arch", "meter_readings_p0", 2)
    assert {(r["meter_id"], r["seq"], r["minted"]) for r in rows} == {("part-a", "1", "t"), ("part-b", "1", "t")}
    assert await where(migrated_db, "part-a", 1) is None
    assert await count(migrated_db, "SELECT count(*) FROM meter_reading_keys") == 3  # keys outlive the archive

    # After the archive: still a duplicate, and nothing more is minted for it.
    assert await ingest(migrated_db, "b5", [first]) == [("duplicate", None)]
    assert await ingest(migrated_db, "b6", [m.item(1, 11, 11)]) == [("rejected", Reason.EQUIVOCATION)]
    assert await count(migrated_db, "SELECT count(*) FROM meter_readings WHERE NOT minted") == 0
    minted_wh = await count(migrated_db, "SELECT minted_wh FROM meter_mint_ledger WHERE meter_id = 'part-a'")
    assert minted_wh == 30
    in_batches = await query(migrated_db, "SELECT rid FROM mint_batches b, unnest(b.reading_ids) rid"
                             " WHERE b.status = 'confirmed'")
    assert len(in_batches) == len({r["rid"] for r in in_batches}) == 3  # each reading in one confirmed batch
    archived = await query(migrated_db, "SELECT meter_id, wh, minted_wh FROM meter_readings_archived ORDER BY 1")
    assert [tuple(r) for r in archived] == [("part-a", 10, 10), ("part-b", 5, 5)]


async def test_retention_keeps_live_and_unminted_partitions_and_archives_dead_letters(
        migrated_db: str, tmp_path: Path) -> None:
    m = Meter.make("ret-1")
    await register(migrated_db, [m])
    bounds = [FIRST_BOUNDARY * k for k in (1, 2, 3)]
    await ingest(migrated_db, "p0", [m.item(1, 10, 10)])                       # p0: stays unminted
    await next_ids_from(migrated_db, bounds[0])
    await ingest(migrated_db, "p1", [m.item(2, 10, 20), m.item(3, 10, 30)])   # dead-lettered + minted
    await next_ids_from(migrated_db, bounds[1])
    await ingest(migrated_db, "p2", [m.item(4, 10, 40)])                      # minted
    await next_ids_from(migrated_db, bounds[2])
    await ingest(migrated_db, "p3", [m.item(5, 10, 50)])                      # live
    dead = await count(migrated_db, "SELECT reading_id FROM meter_reading_keys WHERE meter_id = 'ret-1' AND seq = 2")
    await query(migrated_db, "INSERT INTO minting_retry_queue (reading_id, attempts, dead_lettered, error_message)"
                " VALUES ($1, 10, TRUE, 'rpc down')", dead)
    # The minter's own writes are exercised elsewhere; here only their outcome matters.
    await query(migrated_db, "UPDATE meter_readings SET minted = TRUE, minted_at = now()"
                " WHERE id >= $1 AND id <> $2", bounds[0], dead)

    dry = await partitions.retention(migrated_db, older_than=timedelta(days=30), archive_dir=None, dry_run=True,
                                     now=later(31))
    actions = {p.name: (p.action, p.reason) for p in dry.partitions}
    assert actions["meter_readings_p0"] == ("kept", "1 reading(s) not minted yet (nor dead-lettered)")
    assert actions[f"meter_readings_p{bounds[0]}"][0] == actions[f"meter_readings_p{bounds[1]}"][0] == "would_archive"
    assert actions[f"meter_readings_p{bounds[2]}"] == ("kept", "live: the id sequence is in it")
    assert await count(migrated_db, "SELECT count(*) FROM meter_readings") == 5

    young = await partitions.retention(migrated_db, older_than=timedelta(days=30), archive_dir=tmp_path,
                                       dry_run=False, now=later(1))
    assert all(p.action == "kept" for p in young.partitions)
    assert "not old enough" in {p.name: p.reason for p in young.partitions}[f"meter_readings_p{bounds[1]}"]

    result = await asyncio.to_thread(CliRunner().invoke, gridtokenx_main, [
        "cloud", "readings", "retention", "--older-than", "0s", "--archive-dir", str(tmp_path), "--json",
        "--database-url", migrated_db])
    assert result.exit_code == 0, result.output
    done = {p["name"]: p for p in json.loads(result.output)["partitions"]}
    action = {name: p["action"] for name, p in done.items()}
    assert action[f"meter_readings_p{bounds[0]}"] == action[f"meter_readings_p{bounds[1]}"] == "archived"
    assert action["meter_readings_p0"] == action[f"meter_readings_p{bounds[2]}"] == "kept"
    check_archive(tmp_path, f"meter_readings_p{bounds[0]}", 2)
    check_archive(tmp_path, f"meter_readings_p{bounds[1]}", 1)
    retry = list(csv.DictReader(io.StringIO(gzip.decompress(
        (tmp_path / f"meter_readings_p{bounds[0]}.retry.csv.gz").read_bytes()).decode())))
    assert [(r["reading_id"], r["dead_lettered"]) for r in retry] == [(str(dead), "t")]
    assert await count(migrated_db, "SELECT count(*) FROM minting_retry_queue") == 0
    assert {r["seq"] for r in await query(migrated_db, "SELECT seq FROM meter_readings")} == {1, 5}
    # A dead-lettered reading resent after its archive is a duplicate too.
    assert await ingest(migrated_db, "again", [m.item(2, 10, 20)]) == [("duplicate", None)]


async def test_an_insert_past_the_last_partition_creates_the_partitions_ahead(migrated_db: str) -> None:
    m = Meter.make("far-1")
    await register(migrated_db, [m])
    last = max(p.upper for p in await _partitions(migrated_db))
    await next_ids_from(migrated_db, last + 5)
    assert await ingest(migrated_db, "far", [m.item(1, 10, 10)]) == [("accepted", None)]
    assert await where(migrated_db, "far-1", 1) == f"meter_readings_p{last}"
    assert max(p.upper for p in await _partitions(migrated_db)) >= last + 4 * FIRST_BOUNDARY


async def _partitions(dsn: str) -> list[partitions.Partition]:
    conn = await asyncpg.connect(dsn)
    try:
        return await partitions.partitions(conn)
    finally:
        await conn.close()


async def test_migration_060_upgrades_a_database_that_has_readings(database_url: str, tmp_path: Path) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in db.discover():
        if path.version < 60:
            (before / f"{path.name}.sql").write_text(path.sql)
    await db.migrate(database_url, before)
    m = Meter.make("old-1")
    await register(database_url, [m])
    items = [m.item(seq, 10, 10 * seq) for seq in range(1, 6)]
    for item in items:
        r = m.reading(item.seq, 10, 10 * item.seq)
        await query(database_url,
                    "INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end,"
                    " export_wh, export_register_wh, format, payload, signature)"
                    " VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), $6, $7, 'v1', $8, 'sig')",
                    m.meter_id, r.seq, m.wallet, r.start, r.end, r.export_wh, r.export_register_wh, item.payload)
    await query(database_url, "INSERT INTO minting_retry_queue (reading_id) SELECT id FROM meter_readings"
                " WHERE seq = 3")

    upgraded = await db.migrate(database_url)
    assert upgraded[0] == "060_meter_readings_partitioned"
    assert upgraded == [p.name for p in db.discover() if p.version >= 60]  # 060 and whatever came after it
    assert await count(database_url, "SELECT count(*) FROM meter_readings") == 5
    keys = await query(database_url, "SELECT k.seq, k.payload_sha256 = sha256(r.payload) AS same FROM"
                       " meter_reading_keys k JOIN meter_readings r ON r.id = k.reading_id ORDER BY k.seq")
    assert [(k["seq"], k["same"]) for k in keys] == [(s, True) for s in range(1, 6)]
    assert await where(database_url, "old-1", 1) == "meter_readings_p0"
    assert await ingest(database_url, "resend", [items[2]]) == [("duplicate", None)]
    assert await ingest(database_url, "next", [m.item(6, 10, 60)]) == [("accepted", None)]
    assert await count(database_url, "SELECT count(*) FROM minting_retry_queue") == 1
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await query(database_url, "INSERT INTO minting_retry_queue (reading_id) VALUES (999999)")


def test_the_archive_directory_is_required_unless_dry_run(migrated_db: str) -> None:
    result = CliRunner().invoke(gridtokenx_main, ["cloud", "readings", "retention", "--older-than", "30d",
                                                  "--database-url", migrated_db])
    assert result.exit_code != 0 and "--archive-dir" in result.output


async def test_an_archive_interrupted_after_the_detach_is_finished_by_the_next_run(
        migrated_db: str, tmp_path: Path) -> None:
    m = Meter.make("int-1")
    await register(migrated_db, [m])
    await ingest(migrated_db, "a", [m.item(1, 10, 10)])
    await next_ids_from(migrated_db, FIRST_BOUNDARY)
    await ingest(migrated_db, "b", [m.item(2, 10, 20)])
    await query(migrated_db, "UPDATE meter_readings SET minted = TRUE, minted_at = now()")
    # Where a crash can leave retention: the partition detached, not yet archived nor dropped.
    await query(migrated_db, "ALTER TABLE meter_readings DETACH PARTITION meter_readings_p0")
    report = await partitions.retention(migrated_db, older_than=timedelta(days=30), archive_dir=tmp_path,
                                        dry_run=False, now=later(31))
    finished = [p for p in report.partitions if p.action == "archived"]
    assert [(p.name, p.reason, p.rows) for p in finished] == [
        ("meter_readings_p0", "finishing an interrupted archive", 1)]
    check_archive(tmp_path, "meter_readings_p0", 1)
    assert await count(migrated_db, "SELECT count(*) FROM pg_class WHERE relname = 'meter_readings_p0'") == 0
    assert await ingest(migrated_db, "c", [m.item(1, 10, 10)]) == [("duplicate", None)]
