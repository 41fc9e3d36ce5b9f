"""The readings' partitions (migration 060): create them ahead, and retire old ones to archive files.

meter_readings is partitioned by id ranges (ids are drawn in arrival order, so a range is a span of
time). `ensure` keeps empty partitions ahead of the id sequence. `retention` archives and drops a
partition only when all of these hold, and says for every partition it keeps which one failed:
it is not the live partition (the one the sequence is in) nor one ahead of it; its newest reading
arrived before the cutoff; none of its readings is left to mint (each is minted or dead-lettered);
no open mint batch names one of its ids. Archiving: the partition is detached (CONCURRENTLY, so
ingest never waits), copied to `<archive dir>/<name>.csv.gz` with a manifest `<name>.json` (id range,
row count, SHA-256 of the file), and dropped. A partition holding dead-lettered readings has rows in
minting_retry_queue that reference it; those rows are archived to `<name>.retry.csv.gz` and deleted
in the same transaction as a plain DETACH, so no minter can see those readings without their queue row.

The keys of archived readings stay in meter_reading_keys: they make a late resend a duplicate (or an
equivocation), never a new reading that would be minted again.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from cloud.errors import CloudError

_NAME = re.compile(r"^meter_readings_p\d+$")


class RetentionError(CloudError):
    pass


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: int | None   # None: MINVALUE (the table that existed before migration 060)
    upper: int


@dataclass(slots=True)
class PartitionOutcome:
    name: str
    lower: int | None
    upper: int
    action: str               # archived | would_archive | kept
    reason: str
    rows: int | None = None
    archive: str | None = None
    sha256: str | None = None


@dataclass(slots=True)
class RetentionReport:
    cutoff: datetime
    dry_run: bool
    created_ahead: int = 0
    partitions: list[PartitionOutcome] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run, "created_ahead": self.created_ahead,
                "partitions": [asdict(p) for p in self.partitions]}


async def ensure(conn: asyncpg.Connection) -> int:
    """Create the partitions missing ahead of the id sequence; returns how many were created."""
    return int(await conn.fetchval("SELECT meter_readings_ensure_partitions()"))


_PARTITIONS = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound, i.inhdetachpending AS pending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'meter_readings'::regclass
"""
_BOUND = re.compile(r"FROM \((MINVALUE|'?(-?\d+)'?)\) TO \('?(-?\d+)'?\)")


async def partitions(conn: asyncpg.Connection, *, finalize: bool = False) -> list[Partition]:
    """The attached partitions, oldest first. A detach left pending by an interrupted retention is
    left out; with `finalize` it is completed (DETACH ... FINALIZE), so the table becomes a leftover
    for retention to archive."""
    rows = await conn.fetch(_PARTITIONS)
    out = []
    for r in rows:
        if r["pending"]:
            if finalize:
                await conn.execute(f'ALTER TABLE meter_readings DETACH PARTITION "{r["name"]}" FINALIZE')
            continue
        m = _BOUND.search(r["bound"])
        if m is None:
            raise RetentionError(f"partition {r['name']} has an unexpected bound {r['bound']!r}")
        out.append(Partition(r["name"], None if m.group(1) == "MINVALUE" else int(m.group(2)), int(m.group(3))))
    return sorted(out, key=lambda p: -1 if p.lower is None else p.lower)


async def _leftovers(conn: asyncpg.Connection) -> list[str]:
    """Tables an interrupted retention detached but did not drop (named like partitions, attached to nothing)."""
    rows = await conn.fetch("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                            " WHERE c.relkind = 'r' AND n.nspname = current_schema() AND NOT c.relispartition"
                            " AND c.relname LIKE 'meter\\_readings\\_p%'")
    return sorted(r["relname"] for r in rows if _NAME.match(r["relname"]))


async def _position(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END"
                                   " FROM meter_readings_id_seq"))


async def _why_keep(conn: asyncpg.Connection, p: Partition, position: int, cutoff: datetime) -> str | None:
    """None when `p` may be archived, else the reason it is kept."""
    if p.upper > position:
        return "live: the id sequence is in it" if (p.lower or 0) <= position else "ahead: created for future readings"
    table = f'"{p.name}"'
    newest = await conn.fetchval(f"SELECT max(submitted_at) FROM {table}")
    if newest is None:
        return None
    if newest >= cutoff:
        return f"not old enough: its newest reading arrived {newest:%Y-%m-%d %H:%M:%SZ}"
    waiting = int(await conn.fetchval(
        f"SELECT count(*) FROM {table} r LEFT JOIN minting_retry_queue q ON q.reading_id = r.id"
        " WHERE NOT r.minted AND NOT coalesce(q.dead_lettered, FALSE)"))
    if waiting:
        return f"{waiting} reading(s) not minted yet (nor dead-lettered)"
    batches = await conn.fetch(
        "SELECT DISTINCT b.id FROM mint_batches b, unnest(b.reading_ids) AS rid"
        " WHERE b.status IN ('planned', 'sent') AND rid >= $1 AND rid < $2 ORDER BY b.id",
        p.lower if p.lower is not None else -(2**63), p.upper)
    if batches:
        return f"open mint batch(es) {', '.join(str(b['id']) for b in batches)} name its readings"
    return None


async def retention(dsn: str, *, older_than: timedelta, archive_dir: Path | None, dry_run: bool,
                    now: datetime) -> RetentionReport:
    """Archive and drop the partitions that may go (module docstring); never the live one."""
    report = RetentionReport(now - older_than, dry_run)
    if not dry_run:
        if archive_dir is None:
            raise RetentionError("--archive-dir is required unless --dry-run (a partition is dropped only after "
                                 "its archive file and manifest are written)")
        await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
    conn = await asyncpg.connect(dsn)
    try:
        if not dry_run:
            report.created_ahead = await ensure(conn)
            await partitions(conn, finalize=True)
            for name in await _leftovers(conn):
                assert archive_dir is not None
                report.partitions.append(await _archive_detached(conn, name, None, None, archive_dir,
                                                                 "finishing an interrupted archive"))
        position = await _position(conn)
        for p in await partitions(conn):
            why = await _why_keep(conn, p, position, report.cutoff)
            if why is not None:
                report.partitions.append(PartitionOutcome(p.name, p.lower, p.upper, "kept", why))
            elif dry_run:
                report.partitions.append(PartitionOutcome(
                    p.name, p.lower, p.upper, "would_archive", "older than the cutoff, nothing left to mint"))
            else:
                assert archive_dir is not None
                outcome = await _archive(conn, p, position, report.cutoff, archive_dir)
                report.partitions.append(outcome)
    finally:
        await conn.close()
    return report


async def _archive(conn: asyncpg.Connection, p: Partition, position: int, cutoff: datetime,
                   archive_dir: Path) -> PartitionOutcome:
    table = f'"{p.name}"'
    lo = p.lower if p.lower is not None else -(2**63)
    retry = int(await conn.fetchval("SELECT count(*) FROM minting_retry_queue WHERE reading_id >= $1"
                                    " AND reading_id < $2", lo, p.upper))
    if retry == 0:
        await conn.execute(f"ALTER TABLE meter_readings DETACH PARTITION {table} CONCURRENTLY")
    else:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            # No reading of the partition can change now (a minter planning a dead letter by hand
            # would have to update it), so the decision is taken again and holds until the commit.
            await conn.execute(f"LOCK TABLE {table} IN SHARE MODE")
            why = await _why_keep(conn, p, position, cutoff)
            if why is not None:
                return PartitionOutcome(p.name, p.lower, p.upper, "kept", why)
            await _copy_out(conn, "SELECT * FROM minting_retry_queue WHERE reading_id >= $1 AND reading_id < $2"
                            " ORDER BY reading_id", (lo, p.upper), archive_dir / f"{p.name}.retry.csv.gz")
            await conn.execute("DELETE FROM minting_retry_queue WHERE reading_id >= $1 AND reading_id < $2",
                               lo, p.upper)
            await conn.execute(f"ALTER TABLE meter_readings DETACH PARTITION {table}")
    return await _archive_detached(conn, p.name, p.lower, p.upper, archive_dir,
                                   "older than the cutoff, nothing left to mint")


# The partition's contribution to reconciliation's per-meter totals (cloud/minter/reconcile.py).
_SUMMARISE = """
INSERT INTO meter_readings_archived AS a (meter_id, wallet_address, settings_id, readings, wh, minted_wh, minted_units)
SELECT r.meter_id, r.wallet_address, coalesce(s.id, 0), count(*), sum(r.export_wh),
       coalesce(sum(r.export_wh) FILTER (WHERE r.minted), 0),
       coalesce(sum(r.mint_base_units) FILTER (WHERE r.minted), 0)
FROM {table} r
LEFT JOIN LATERAL (SELECT id FROM mint_settings s WHERE s.from_reading_id <= r.id
                   ORDER BY s.from_reading_id DESC LIMIT 1) s ON TRUE
GROUP BY 1, 2, 3
ON CONFLICT (meter_id, wallet_address, settings_id) DO UPDATE SET readings = a.readings + EXCLUDED.readings,
    wh = a.wh + EXCLUDED.wh, minted_wh = a.minted_wh + EXCLUDED.minted_wh,
    minted_units = a.minted_units + EXCLUDED.minted_units
"""


async def _archive_detached(conn: asyncpg.Connection, name: str, lower: int | None, upper: int | None,
                            archive_dir: Path, reason: str) -> PartitionOutcome:
    """Copy a detached partition to its archive file and manifest, then drop it."""
    table = f'"{name}"'
    first, last = await conn.fetchrow(f"SELECT min(id), max(id) FROM {table}")
    path = archive_dir / f"{name}.csv.gz"
    rows, digest = await _copy_out(conn, f"SELECT * FROM {table} ORDER BY id", (), path)
    retry_path = archive_dir / f"{name}.retry.csv.gz"
    manifest = {"table": "meter_readings", "partition": name, "partition_lower": lower, "partition_upper": upper,
                "first_id": first, "last_id": last, "rows": rows, "file": path.name, "format": "csv, header, gzip",
                "sha256": digest,
                "retry_queue_file": retry_path.name if await asyncio.to_thread(retry_path.exists) else None}
    await asyncio.to_thread(_write_manifest, archive_dir, name, manifest)
    async with conn.transaction():
        await conn.execute(_SUMMARISE.format(table=table))
        await conn.execute(f"DROP TABLE {table}")
    return PartitionOutcome(name, lower, upper if upper is not None else (last or 0) + 1, "archived", reason, rows,
                            str(path), digest)


async def _copy_out(conn: asyncpg.Connection, query: str, args: tuple[object, ...], path: Path) -> tuple[int, str]:
    """COPY `query` as CSV with a header into a gzip file, durably; returns (rows, SHA-256 of the file)."""
    out = await asyncio.to_thread(_ArchiveFile, path)
    try:
        status = await conn.copy_from_query(query, *args, output=out.write_async, format="csv", header=True)
    except BaseException:
        await asyncio.to_thread(out.abandon)
        raise
    digest = await asyncio.to_thread(out.finish)
    return int(status.split()[-1]), digest


class _ArchiveFile:
    """A gzip file written under a temporary name, hashed as it is written, renamed when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._raw = open(self.tmp, "wb")  # noqa: SIM115 (closed by finish or abandon)
        self._sha = hashlib.sha256()
        self._gz = gzip.GzipFile(fileobj=self, mode="wb", compresslevel=6, mtime=0)

    def write(self, data: bytes) -> int:  # the compressed stream, from GzipFile
        self._sha.update(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    async def write_async(self, chunk: bytes) -> None:  # COPY's rows
        self._gz.write(chunk)

    def finish(self) -> str:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self.tmp.replace(self.path)
        return self._sha.hexdigest()

    def abandon(self) -> None:
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


def _write_manifest(archive_dir: Path, name: str, manifest: dict[str, object]) -> None:
    tmp = archive_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync(tmp)
    tmp.replace(archive_dir / f"{name}.json")
    _fsync(archive_dir)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
