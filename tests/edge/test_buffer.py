"""The SQLite buffer on its own: claims never prefetch rows in flight, acks by key, recovery, synchronous."""

from __future__ import annotations

from pathlib import Path

from edge.buffer import Buffer, Quota
from edge.screening import Accepted, screen
from gridtokenx.harness.standin import make_meters, reading_payload
from protocol.envelopes import AckItem
from protocol.reasons import Reason

QUOTA = Quota(1000, 10**9, "drop_oldest")


def _fill(buf: Buffer, n: int) -> list[Accepted]:
    (meter,) = make_meters(1)
    verdicts = [screen(f"meters/{meter.meter_id}/readings", reading_payload(meter, s)) for s in range(n)]
    assert all(isinstance(v, Accepted) for v in verdicts)
    buf.ingest(list(verdicts), 1000.0)
    return [v for v in verdicts if isinstance(v, Accepted)]


def test_claims_take_only_pending_rows_in_arrival_order(tmp_path: Path) -> None:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=QUOTA)
    _fill(buf, 25)
    first = buf.claim("b1", 10, 1.0)
    second = buf.claim("b2", 10, 1.0)
    third = buf.claim("b3", 10, 1.0)
    assert [r.seq for r in first] == list(range(10))
    assert [r.seq for r in second] == list(range(10, 20))  # never the rows of b1 again
    assert [r.seq for r in third] == list(range(20, 25))
    assert buf.claim("b4", 10, 1.0) == []
    assert (buf.counts.pending, buf.counts.inflight) == (0, 25)
    buf.close()


def test_ack_deletes_accepted_keeps_rejected_and_requeues_the_unmentioned(tmp_path: Path) -> None:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=QUOTA)
    _fill(buf, 5)
    rows = buf.claim("b1", 5, 1.0)
    results = [AckItem(rows[0].meter_id, 0, "accepted"), AckItem(rows[0].meter_id, 1, "duplicate"),
               AckItem(rows[0].meter_id, 2, "rejected", Reason.TOO_OLD)]
    out = buf.apply_ack("b1", results, 2.0, whole_batch_ok=False)
    assert (out.deleted, dict(out.rejected), out.requeued) == (2, {"too_old": 1}, 2)
    assert (buf.counts.pending, buf.counts.inflight, buf.counts.rejected) == (2, 0, 1)
    assert buf.resync() == buf.counts  # the in-memory counts match the table
    assert [r.seq for r in buf.claim("b2", 10, 3.0)] == [3, 4]
    buf.close()


def test_restart_turns_inflight_rows_back_into_pending(tmp_path: Path) -> None:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=QUOTA)
    _fill(buf, 5)
    buf.claim("b1", 3, 1.0)
    buf.close()
    again = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=QUOTA)
    assert (again.counts.pending, again.counts.inflight) == (5, 0)
    assert [r.seq for r in again.claim("b2", 10, 2.0)] == list(range(5))
    again.close()


def test_synchronous_full_is_applied_and_meta_is_written(tmp_path: Path) -> None:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw-9", quota=QUOTA, synchronous="FULL")
    assert buf._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert buf._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert buf._db.execute("PRAGMA user_version").fetchone()[0] == 1
    meta = dict(buf._db.execute("SELECT key, value FROM meta").fetchall())
    assert meta["gateway_id"] == "gw-9" and meta["synchronous"] == "FULL"
    buf.close()


def test_orphaned_inflight_rows_go_back_to_pending(tmp_path: Path) -> None:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=QUOTA)
    _fill(buf, 6)
    buf.claim("held", 3, 100.0)
    buf.claim("lost", 3, 100.0)
    assert buf.requeue_orphans(["held"], older_than=50.0) == 0  # too recent: maybe being registered
    assert buf.requeue_orphans(["held"], older_than=200.0) == 3
    assert (buf.counts.pending, buf.counts.inflight) == (3, 3)
    assert [r.seq for r in buf.claim("again", 10, 300.0)] == [3, 4, 5]
    buf.close()
