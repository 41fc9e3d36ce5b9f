"""`gridtokenx bench preload`: fill a database with N already-minted readings, for growth measurements.

Issue 20 asks that ingest and mint rates with 10 million stored readings stay within 20% of an empty
store. This command makes such a store: its own meters (`pre-NNNNNN`, active, each with a ledger row),
and readings spread round-robin over them, 15-minute intervals, registers that add up, minted, with
their meter_reading_keys rows, written with binary COPY in chunks (with progress on stderr). The
payloads are real v1 messages framed with a per-meter signature of real length (signing 10 M
readings would take ~10 CPU-minutes and change nothing stored); `cloud reconcile` therefore reports
them as bad evidence, so preload only benchmark databases. It reports seconds, rows/s and the bytes
PostgreSQL stores per reading (tables + indexes + TOAST of the readings' partitions and of the keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import click
from base58 import b58encode

from cloud import db
from protocol.reading import Reading
from protocol.wire import encode_v1_message

INTERVAL_S = 900
CHUNK = 100_000
_READING_COLUMNS = ("id", "meter_id", "seq", "wallet_address", "interval_start", "interval_end", "export_wh",
                    "export_register_wh", "format", "payload", "signature", "gateway_id", "batch_id", "minted",
                    "mint_tx_signature", "mint_base_units", "mint_slot", "minted_at", "submitted_at", "updated_at")
_KEY_COLUMNS = ("meter_id", "seq", "reading_id", "payload_sha256", "export_wh", "export_register_wh",
                "interval_start", "interval_end")


@dataclass
class PreloadResult:
    readings: int
    meters: int
    seconds: float          # generating and copying the rows
    rows_per_s: float
    vacuum_seconds: float   # VACUUM (ANALYZE) afterwards
    stored_readings: int
    bytes_per_reading: float
    readings_bytes_per_reading: float
    keys_bytes_per_reading: float
    readings_bytes: int
    keys_bytes: int
    partitions: int


def _meter_id(i: int) -> str:
    return f"pre-{i:06d}"


def _wallet(i: int) -> str:
    return b58encode(hashlib.sha256(b"preload-wallet" + str(i).encode()).digest()).decode()


async def preload(dsn: str, *, readings: int, meters: int, progress: Callable[[int, float], None] | None = None,
                  now: datetime | None = None) -> PreloadResult:
    """Add `readings` minted readings over `meters` new meters to the database at `dsn` (migrated first)."""
    await db.migrate(dsn)
    now = now or datetime.now(UTC)
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        per_meter = -(-readings // meters)
        # Readings end before now, oldest first, in id order (as they would have arrived).
        first_end = int((now - timedelta(seconds=INTERVAL_S * per_meter)).timestamp()) // INTERVAL_S * INTERVAL_S
        wallets = [_wallet(i) for i in range(meters)]
        await conn.executemany(
            "INSERT INTO meters (meter_id, public_key, wallet_address, meter_type, capacity_w)"
            " VALUES ($1, $2, $3, 'solar', 20000) ON CONFLICT (meter_id) DO NOTHING",
            [(_meter_id(i), b58encode(hashlib.sha256(b"pk" + str(i).encode()).digest()).decode(), wallets[i])
             for i in range(meters)])
        seq_base = [int(r["s"]) for r in await conn.fetch(
            "SELECT coalesce(max(k.seq), 0) AS s FROM unnest($1::text[]) WITH ORDINALITY AS m(id, o)"
            " LEFT JOIN meter_reading_keys k ON k.meter_id = m.id GROUP BY m.o ORDER BY m.o",
            [_meter_id(i) for i in range(meters)])]
        # One block of ids, then the partitions for it (ahead of the sequence's new position).
        first_id = int(await conn.fetchval("SELECT nextval('meter_readings_id_seq')"))
        await conn.execute("SELECT setval('meter_readings_id_seq', $1)", first_id + readings - 1)
        await conn.fetchval("SELECT meter_readings_ensure_partitions()")
        # Triggers off for this session: the rows are consistent by construction (their meters were
        # just inserted), so the per-row FK checks are skipped, and a 'readings.accepted' event holding
        # millions of ids would be no use to anyone. Needs a superuser, as benchmark databases have.
        await conn.execute("SET session_replication_role = replica")
        signatures = [b58encode(hashlib.sha512(_meter_id(i).encode()).digest()).decode() for i in range(meters)]
        registers = [0] * meters
        minted_wh = [0] * meters
        try:
            done = 0
            while done < readings:
                n = min(CHUNK, readings - done)
                rows, keys = _chunk(done, n, first_id, meters, first_end, seq_base, wallets, signatures,
                                    registers, minted_wh)
                async with conn.transaction():
                    await conn.copy_records_to_table("meter_readings", records=rows, columns=_READING_COLUMNS)
                    await conn.copy_records_to_table("meter_reading_keys", records=keys, columns=_KEY_COLUMNS)
                done += n
                if progress is not None:
                    progress(done, time.monotonic() - started)
        finally:
            await conn.execute("RESET session_replication_role")
        await conn.execute(
            "INSERT INTO meter_mint_ledger AS l (meter_id, minted_wh, minted_units)"
            " SELECT m, w, w::numeric * 1000000 FROM unnest($1::text[], $2::bigint[]) AS u(m, w)"
            " ON CONFLICT (meter_id) DO UPDATE SET minted_wh = l.minted_wh + EXCLUDED.minted_wh,"
            " minted_units = l.minted_units + EXCLUDED.minted_units",
            [_meter_id(i) for i in range(meters)], minted_wh)
        copied = time.monotonic() - started
        # What autovacuum would have done by the time a real store holds this much.
        await conn.execute("VACUUM (ANALYZE) meter_readings")
        await conn.execute("VACUUM (ANALYZE) meter_reading_keys")
        return await _measure(conn, readings, meters, copied, time.monotonic() - started - copied)
    finally:
        await conn.close()


def _chunk(done: int, n: int, first_id: int, meters: int, first_end: int, seq_base: list[int], wallets: list[str],
           signatures: list[str], registers: list[int], minted_wh: list[int]
           ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rows: list[tuple[Any, ...]] = []
    keys: list[tuple[Any, ...]] = []
    for k in range(done, done + n):
        i, step = k % meters, k // meters
        meter_id, seq = _meter_id(i), seq_base[i] + step + 1
        end_s = first_end + (step + 1) * INTERVAL_S
        wh = (k * 2654435761) % 1500  # spread like a solar day, deterministic
        registers[i] += wh
        minted_wh[i] += wh
        payload = encode_v1_message(Reading(meter_id=meter_id, seq=seq, start=end_s - INTERVAL_S, end=end_s,
                                            export_wh=wh, export_register_wh=registers[i]))
        payload += b"\n" + signatures[i].encode()
        start, end = datetime.fromtimestamp(end_s - INTERVAL_S, UTC), datetime.fromtimestamp(end_s, UTC)
        arrived = end + timedelta(seconds=20)
        rid = first_id + k
        rows.append((rid, meter_id, seq, wallets[i], start, end, wh, registers[i], "v1", payload, signatures[i],
                     "gw-preload", f"preload-{step}", True, "preload", wh * 1_000_000, None,
                     arrived + timedelta(seconds=5), arrived, arrived))
        keys.append((meter_id, seq, rid, hashlib.sha256(payload).digest(), wh, registers[i], start, end))
    return rows, keys


async def _measure(conn: asyncpg.Connection, readings: int, meters: int, seconds: float,
                   vacuum_seconds: float) -> PreloadResult:
    stored = int(await conn.fetchval("SELECT count(*) FROM meter_readings"))
    readings_bytes = int(await conn.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
        " WHERE inhparent = 'meter_readings'::regclass"))
    keys_bytes = int(await conn.fetchval("SELECT pg_total_relation_size('meter_reading_keys')"))
    parts = int(await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'meter_readings'::regclass"))
    per = max(stored, 1)
    return PreloadResult(readings, meters, round(seconds, 2), round(readings / seconds if seconds else 0.0, 1),
                         round(vacuum_seconds, 2), stored,
                         round((readings_bytes + keys_bytes) / per, 1), round(readings_bytes / per, 1),
                         round(keys_bytes / per, 1), readings_bytes, keys_bytes, parts)


@click.command("preload")
@click.option("--readings", default=10_000_000, show_default=True, help="Minted readings to add.")
@click.option("--meters", default=1000, show_default=True, help="Meters (pre-NNNNNN) they are spread over.")
@click.option("--database-url", required=True, help="PostgreSQL DSN of a benchmark database (migrated first).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def preload_command(readings: int, meters: int, database_url: str, as_json: bool) -> None:
    """Fill a database with already-minted readings and their keys (binary COPY), then report seconds,
    rows/s and the bytes stored per reading."""
    if readings < 1 or meters < 1:
        raise click.UsageError("--readings and --meters must be at least 1")

    def report(done: int, elapsed: float) -> None:
        click.echo(f"  {done:,}/{readings:,} readings, {done / elapsed:,.0f}/s", err=True)

    result = asyncio.run(preload(database_url, readings=readings, meters=meters, progress=report))
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(f"{result.readings:,} readings in {result.seconds:,.1f} s ({result.rows_per_s:,.0f}/s); "
               f"{result.stored_readings:,} stored, {result.bytes_per_reading:,.0f} bytes/reading "
               f"(readings {result.readings_bytes_per_reading:,.0f} + keys {result.keys_bytes_per_reading:,.0f})")


COMMANDS = [preload_command]
