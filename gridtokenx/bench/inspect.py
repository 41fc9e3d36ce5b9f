"""Benchmark: build an N-row buffer with the real schema and time `inspect stats` on it.

    python -m gridtokenx.bench.inspect --rows 1000000 [--meters 1000] [--db PATH] [--keep]

Payloads are real signed v1 readings: a few are signed and reused with varied meter/seq columns,
so building a million rows takes seconds, not a million signatures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from edge.inspect import db, queries
from protocol import Reading, Reason, secret_key_from_seed, sign_reading

_SAMPLE_PAYLOADS = 16
_CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class BenchResult:
    rows: int
    build_seconds: float
    stats_seconds: float
    cold_stats_seconds: float
    file_bytes: int


def _sample_payloads(now: int) -> list[bytes]:
    _, secret = secret_key_from_seed(bytes(32))
    return [
        sign_reading(
            Reading(meter_id="bench-meter", seq=i, start=now - 900, end=now, export_wh=100 + i,
                    export_register_wh=1_000_000 + i), secret)
        for i in range(_SAMPLE_PAYLOADS)
    ]


def _reading_rows(rows: int, meters: int, now: float, payloads: list[bytes]) -> Iterator[tuple[object, ...]]:
    for i in range(rows):
        payload = payloads[i % len(payloads)]
        meter, seq = divmod(i, max(1, rows // meters))
        # 90 % pending (an outage backlog), 5 % inflight, 5 % rejected by the cloud.
        bucket = i % 20
        state = "inflight" if bucket == 0 else "rejected" if bucket == 1 else "pending"
        received = now - (rows - i) * 0.05
        yield (i + 1, f"m{meter:05d}", seq, payload, len(payload), int(received) - 10, received, state,
               f"b{i // 500}" if state != "pending" else None, 1 if state != "pending" else 0,
               Reason.CAPACITY_EXCEEDED.value if state == "rejected" else None)


def build(path: Path, *, rows: int, meters: int = 1000) -> None:
    """Write a buffer at `path` (replaced) with `rows` readings plus quarantine, drops and batches."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    now = time.time()
    payloads = _sample_payloads(int(now))
    conn = db.create_buffer(path)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        it = _reading_rows(rows, meters, now, payloads)
        while chunk := [row for _, row in zip(range(_CHUNK), it, strict=False)]:
            conn.executemany(
                "INSERT INTO readings (id, meter_id, seq, payload, size, reading_end, received_at, state, "
                "batch_id, attempts, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?)", chunk)
        quarantine_reasons = [Reason.MALFORMED, Reason.BAD_SIGNATURE, Reason.TOPIC_MISMATCH]
        conn.executemany(
            "INSERT INTO quarantine (topic, payload, meter_id, seq, reason, detail, received_at) "
            "VALUES (?,?,?,?,?,?,?)",
            ((f"meters/q{i % 50}/readings", b"junk", f"q{i % 50}", i, quarantine_reasons[i % 3].value,
              "bench", now - i) for i in range(rows // 100)))
        conn.executemany(
            "INSERT INTO drops (meter_id, seq, size, reason, detail, received_at, dropped_at) VALUES (?,?,?,?,?,?,?)",
            ((f"m{i % meters:05d}", 10**6 + i, 300, (Reason.EXPIRED if i % 2 else Reason.QUOTA_DROPPED).value,
              "bench", now - 86400 - i, now - i) for i in range(rows // 20)))
        conn.executemany(
            "INSERT INTO batches (batch_id, created_at, items, bytes, sends, last_sent_at, acked_at, accepted, "
            "rejected) VALUES (?,?,?,?,?,?,?,?,?)",
            ((f"acked-{i}", now - i, 500, 500 * 330, 1, now - i, now - i + 0.2, 495, 5)
             for i in range(20_000)))
        conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?)",
                         [("received", rows * 3), ("forwarded", rows * 2), ("acked", rows * 2)])
        conn.execute("INSERT INTO meta (key, value) VALUES ('gateway_id', 'bench-gw')")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def evict_from_page_cache(path: Path) -> None:
    """Drop this file's pages from the OS cache (only this file's): a technician's first, cold run."""
    for name in (path, Path(f"{path}-wal")):
        if name.exists():
            fd = os.open(name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_stats(path: Path, *, repeat: int = 3, cold: bool = False) -> float:
    """Best wall time of `stats` (open read-only + every query), in seconds."""
    best = float("inf")
    for _ in range(repeat):
        if cold:
            evict_from_page_cache(path)
        start = time.perf_counter()
        conn = db.open_readonly(path)
        try:
            queries.stats(conn, now=time.time())
        finally:
            conn.close()
        best = min(best, time.perf_counter() - start)
    return best


def run(*, rows: int, meters: int = 1000, path: Path | None = None, keep: bool = False,
        reuse: bool = False) -> BenchResult:
    """Build (unless `reuse` and `path` exists) and time `stats`; `reuse` also times a real agent's buffer."""
    with tempfile.TemporaryDirectory(prefix="gtx-inspect-bench-") as tmp:
        target = path or Path(tmp) / "bench-buffer.sqlite"
        start = time.perf_counter()
        if reuse and path is not None and path.exists():
            keep = True
            with closing(db.open_readonly(path)) as conn:
                rows = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        else:
            build(target, rows=rows, meters=meters)
        built = time.perf_counter() - start
        seconds = time_stats(target)
        cold = time_stats(target, repeat=1, cold=True)
        size = target.stat().st_size
        if not keep and path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
    return BenchResult(rows=rows, build_seconds=built, stats_seconds=seconds, cold_stats_seconds=cold,
                       file_bytes=size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gridtokenx.bench.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--db", type=Path, default=None, help="build here (default: a temporary file)")
    parser.add_argument("--keep", action="store_true", help="keep the --db file afterwards")
    parser.add_argument("--reuse", action="store_true", help="time an existing --db file (e.g. a real buffer), "
                        "do not build")
    args = parser.parse_args(argv)
    result = run(rows=args.rows, meters=args.meters, path=args.db, keep=args.keep, reuse=args.reuse)
    made = f"built in {result.build_seconds:.1f} s" if not args.reuse else "existing file"
    print(f"{result.rows:,} rows ({result.file_bytes / 1e6:.0f} MB, {made}); "  # noqa: T201
          f"inspect stats: {result.stats_seconds * 1000:.0f} ms (warm, best of 3), "
          f"{result.cold_stats_seconds * 1000:.0f} ms (cold: file evicted from the page cache)")


if __name__ == "__main__":
    main()
