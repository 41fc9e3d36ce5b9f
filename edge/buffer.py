"""The SQLite buffer (edge/schema.sql): every state change of a reading between the meter and the cloud.

Used from ONE thread only (the writer, `edge.writer`): SQLite allows one writer, and keeping every
statement on one connection means no SQLITE_BUSY and no lock juggling. Each public method is one
transaction. Row/byte counts of the forwarding backlog are kept in memory (quota checks on the hot
path must not scan) and re-synced from the table now and then, since the inspector may
requeue or purge rows behind our back.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from edge.clock import StepDetector, anchor, step_since
from edge.integrity import damaged_sentence, is_damage, is_full, quick_check
from edge.reserve import ensure_reserve
from edge.screening import Accepted, Quarantined, Verdict
from protocol import ProtocolError, parse_payload
from protocol.envelopes import AckItem
from protocol.reasons import Reason
from protocol.wire import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
AGENT_VERSION = "0.1.0"
#: How many oldest pending rows one TTL pass looks at; the rest wait for the next pass.
EXPIRE_CHUNK = 5000
BATCH_HISTORY_S = 7 * 86400.0
#: How long the integrity check at open may take (a larger file is checked in part: see edge.integrity).
OPEN_CHECK_S = 10.0


class BufferDamaged(RuntimeError):
    """The buffer file is corrupt; the message is one sentence pointing to the repair steps."""


#: Quarantined payloads larger than the protocol allows keep only their first bytes (the evidence
#: that matters is "this meter sent N bytes"; a flood of them must not fill the disk).
EVIDENCE_HEAD = 1024
DEFAULT_EVIDENCE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Quota:
    max_rows: int
    max_bytes: int
    policy: str  # drop_oldest | reject_new
    evidence_bytes: int = DEFAULT_EVIDENCE_BYTES
    """Quarantined payloads + rejected readings (kept as evidence, never forwarded): beyond it the
    oldest evidence goes first (counted; a rejected reading also gets a drops row)."""


@dataclass(frozen=True, slots=True)
class Drop:
    meter_id: str
    seq: int
    size: int
    received_at: float
    reason: Reason
    detail: str


@dataclass(slots=True)
class LimitedCount:
    """Messages of one cut-off meter, acked without being stored."""
    detail: str
    messages: int = 0
    bytes: int = 0


@dataclass(slots=True)
class IngestOutcome:
    stored: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    drops: list[Drop] = field(default_factory=list)
    evicted: int = 0
    """Evidence rows (quarantine, rejected) removed by the evidence quota."""


class Claimed(msgspec.Struct, frozen=True, gc=False):  # one per forwarded reading: cheap to build
    id: int
    meter_id: str
    seq: int
    payload: bytes


@dataclass(slots=True)
class AckOutcome:
    deleted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    requeued: int = 0


@dataclass(slots=True)
class Counts:
    pending: int = 0
    inflight: int = 0
    rejected: int = 0
    backlog_bytes: int = 0
    """Bytes of pending + inflight rows: what the byte quota limits."""
    rejected_bytes: int = 0
    quarantine_rows: int = 0
    quarantine_bytes: int = 0


def _schema_sql() -> str:
    return (Path(__file__).resolve().parent / "schema.sql").read_text()


class Buffer:
    def __init__(self, conn: sqlite3.Connection, quota: Quota, ttl_seconds: float) -> None:
        self._db = conn
        self.path: Path | None = None
        self.quota = quota
        self.ttl_seconds = ttl_seconds
        self.counts = Counts()
        self.oldest_pending_at: float | None = None
        self._data_version = 0
        self.clock = StepDetector()
        self.clock_steps = 0
        """Wall-clock steps seen (and corrected for) since the agent started."""

    @classmethod
    def open(cls, path: Path, *, gateway_id: str, quota: Quota, ttl_seconds: float = 0.0,
             synchronous: str = "NORMAL") -> Buffer:
        """Open (creating if needed) and recover: rows left in flight by a crash become pending again.

        A damaged file (quick_check, bounded) raises BufferDamaged instead: writing into it could only
        spread the damage."""
        try:
            return cls._open(path, gateway_id=gateway_id, quota=quota, ttl_seconds=ttl_seconds,
                             synchronous=synchronous)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise BufferDamaged(damaged_sentence(path, str(exc))) from None
            raise

    @classmethod
    def _open(cls, path: Path, *, gateway_id: str, quota: Quota, ttl_seconds: float, synchronous: str) -> Buffer:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per method.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        # 16 MiB of page cache (default 2 MiB): keeps the hot index pages of a large backlog in memory.
        conn.execute("PRAGMA cache_size=-16384")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            conn.close()
            raise RuntimeError(f"buffer {path} has schema version {version}; this agent reads version "
                               f"{SCHEMA_VERSION}: move it aside or upgrade the agent")
        integrity = quick_check(conn, max_seconds=OPEN_CHECK_S, max_problems=3)
        if integrity.ok is False:
            conn.close()
            raise BufferDamaged(damaged_sentence(path, "; ".join(integrity.problems)))
        if integrity.ok is None:
            log.warning("integrity check of %s not finished within %.0f s (a large file); run "
                        "`gridtokenx edge inspect doctor` for a full one", path, OPEN_CHECK_S)
        try:
            conn.executescript(_schema_sql())
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            if not (is_full(exc) and version == SCHEMA_VERSION):
                raise
            log.error("the disk under %s is full: schema additions wait for the next start", path)
        buf = cls(conn, quota, ttl_seconds)
        buf.path = path
        try:
            requeued = buf._start_meta(gateway_id, synchronous)
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            # A full disk must not crash-loop the agent: it starts, acks nothing it cannot store, and
            # rows left in flight go back to pending by the orphan safety net once space returns.
            log.error("the disk under %s is full: the agent starts but stores (and acks) nothing until "
                      "space is freed", path)
            requeued = 0
        if requeued:
            log.info("recovered %d readings left in flight by the previous run; they will be re-sent", requeued)
        buf.resync()
        buf.changed_elsewhere()  # the baseline: from here on, only other connections' commits count
        ensure_reserve(path)
        return buf

    def _start_meta(self, gateway_id: str, synchronous: str) -> int:
        conn, quota, ttl_seconds = self._db, self.quota, self.ttl_seconds
        now = time.time()
        saved = conn.execute("SELECT value FROM meta WHERE key = 'clock_anchor'").fetchone()
        step = step_since(saved[0] if saved else None, now)
        if step:
            self._shift(step, "while the agent was stopped")
        with self._tx():
            self._save_anchor(now)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(now),))
            for key, value in (("gateway_id", gateway_id), ("agent_version", AGENT_VERSION),
                               ("quota_max_rows", str(quota.max_rows)), ("quota_max_bytes", str(quota.max_bytes)),
                               ("quota_policy", quota.policy), ("ttl_seconds", str(ttl_seconds)),
                               ("synchronous", synchronous.upper()), ("started_at", str(now))):
                conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
            requeued = conn.execute("UPDATE readings SET state = 'pending' WHERE state = 'inflight'").rowcount
        return int(requeued)

    def close(self) -> None:
        try:
            with contextlib.suppress(sqlite3.Error), self._tx():
                self._save_anchor(time.time())  # a step while the agent is stopped is measured from here
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    # -- transactions -------------------------------------------------------------------------

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    def _bump(self, values: dict[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in values.items() if v])

    # -- ingest -------------------------------------------------------------------------------

    # -- the wall clock -------------------------------------------------------------------------

    def follow_clock(self) -> float:
        """Notice a wall-clock step since the last call and shift every stored stamp by it, so ages
        and TTLs count real waiting time. Called first by ingest and the TTL passes (the writer thread)."""
        step = self.clock.step()
        if step:
            self._shift(step, "while the agent ran")
        return step

    def _shift(self, step: float, when: str) -> None:
        with self._tx():
            n = self._db.execute("UPDATE readings SET received_at = received_at + ?", (step,)).rowcount
            self._db.execute("UPDATE quarantine SET received_at = received_at + ?", (step,))
            self._save_anchor(time.time())
            self._bump({"clock_steps": 1})
        self.clock_steps += 1
        if self.oldest_pending_at is not None:
            self.oldest_pending_at += step
        log.warning("the gateway's wall clock stepped by %+.0f s %s; the receive times of %d buffered readings "
                    "moved with it, so TTLs and ages count real waiting time (check NTP: timedatectl)",
                    step, when, n)

    def _save_anchor(self, now: float) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES ('clock_anchor', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (anchor(now),))

    def ingest(self, verdicts: list[Verdict], now: float) -> IngestOutcome:
        """Store a group of screened messages in one transaction. After it returns they may be acked."""
        self.follow_clock()
        out = IngestOutcome()
        db = self._db
        with self._tx():
            for v in verdicts:
                if isinstance(v, Quarantined):
                    self._quarantine(v.topic, v.payload, v.meter_id, v.seq, v.reason, v.detail, now)
                    out.quarantined[v.reason.value] += 1
                    continue
                # When full, a re-delivery must not cost a drop: look for it before the policy runs.
                full = self._over(1, len(v.payload)) is not None
                if full and (self._held(v, now, out) or not self._make_room(v, now, out)):
                    continue
                inserted = db.execute(
                    "INSERT INTO readings(meter_id, seq, payload, size, reading_end, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id, seq) DO NOTHING",
                    (v.meter_id, v.seq, v.payload, len(v.payload), v.reading_end, now)).rowcount
                if not inserted:
                    self._held(v, now, out)
                    continue
                self.counts.pending += 1
                self.counts.backlog_bytes += len(v.payload)
                out.stored += 1
                if self.oldest_pending_at is None:
                    self.oldest_pending_at = now
            if out.quarantined:
                self._trim_evidence(now, out)
            self._bump({"received": len(verdicts), "stored": out.stored, "duplicates": out.duplicates,
                        "quarantined": sum(out.quarantined.values()), "dropped": len(out.drops),
                        "evidence_evicted": out.evicted})
        return out

    def _trim_evidence(self, now: float, out: IngestOutcome) -> None:
        """Keep quarantine + rejected bytes under the evidence quota: oldest quarantine rows first, then
        the oldest rejected readings (each of those leaves a drops row)."""
        c, limit = self.counts, self.quota.evidence_bytes
        while (excess := c.quarantine_bytes + c.rejected_bytes - limit) > 0 and c.quarantine_rows > 0:
            average = max(1, c.quarantine_bytes // c.quarantine_rows)
            rows = self._db.execute(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?) "
                "RETURNING length(payload)", (max(1, min(100, -(-excess // average))),)).fetchall()
            if not rows:
                c.quarantine_rows = 0
                break
            c.quarantine_rows -= len(rows)
            c.quarantine_bytes -= sum(r[0] for r in rows)
            out.evicted += len(rows)
        while c.quarantine_bytes + c.rejected_bytes > limit and c.rejected > 0:
            row = self._db.execute(
                "DELETE FROM readings WHERE id = (SELECT id FROM readings WHERE state = 'rejected' ORDER BY id "
                "LIMIT 1) RETURNING meter_id, seq, size, received_at").fetchone()
            if row is None:
                break
            c.rejected -= 1
            c.rejected_bytes -= row[2]
            out.evicted += 1
            self._drop(Drop(row[0], row[1], row[2], row[3], Reason.QUOTA_DROPPED,
                            "evidence quota full: a rejected reading kept as evidence was removed"), now, out)

    def _held(self, v: Accepted, now: float, out: IngestOutcome) -> bool:
        """True when the buffer already holds (meter_id, seq): a duplicate, or equivocation evidence."""
        row = self._db.execute("SELECT payload FROM readings WHERE meter_id = ? AND seq = ?",
                               (v.meter_id, v.seq)).fetchone()
        if row is None:
            return False
        if row[0] == v.payload:
            out.duplicates += 1  # a re-delivery (DUP) of what we hold: ack it, store it once
        else:
            # Never overwrite: the first stays for the cloud to judge, the second is kept as evidence.
            self._quarantine(f"meters/{v.meter_id}/readings", v.payload, v.meter_id, v.seq, Reason.EQUIVOCATION,
                             "different bytes for a (meter_id, seq) already in the buffer; the first is "
                             "kept and forwarded", now)
            out.quarantined[Reason.EQUIVOCATION.value] += 1
        return True

    def _quarantine(self, topic: str, payload: bytes, meter_id: str | None, seq: int | None,
                    reason: Reason, detail: str, now: float) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            detail = f"{detail} (first {EVIDENCE_HEAD} of {len(payload)} bytes kept)"
            payload = payload[:EVIDENCE_HEAD]
        self.counts.quarantine_rows += 1
        self.counts.quarantine_bytes += len(payload)
        self._db.execute("INSERT INTO quarantine(topic, payload, meter_id, seq, reason, detail, received_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (topic, payload, meter_id, seq, reason.value, detail, now))

    def _over(self, extra_rows: int, extra_bytes: int) -> str | None:
        c, q = self.counts, self.quota
        if c.pending + c.inflight + extra_rows > q.max_rows:
            return "rows"
        if c.backlog_bytes + extra_bytes > q.max_bytes:
            return "bytes"
        return None

    def _make_room(self, v: Accepted, now: float, out: IngestOutcome) -> bool:
        """Apply the quota policy for one new reading. False: the new reading is not stored."""
        size = len(v.payload)
        which = self._over(1, size)
        if which is None:
            return True
        q = self.quota
        if q.policy == "drop_oldest" and size <= q.max_bytes:
            while which is not None:
                row = self._db.execute(
                    "DELETE FROM readings WHERE id = (SELECT id FROM readings WHERE state = 'pending' "
                    "ORDER BY id LIMIT 1) RETURNING meter_id, seq, size, received_at").fetchone()
                if row is None:
                    break  # everything left is in flight: fall through and refuse the new one
                self.counts.pending -= 1
                self.counts.backlog_bytes -= row[2]
                self._drop(Drop(row[0], row[1], row[2], row[3], Reason.QUOTA_DROPPED,
                                f"drop_oldest: {which} quota full"), now, out)
                which = self._over(1, size)
            if which is None:
                return True
        self._drop(Drop(v.meter_id, v.seq, size, now, Reason.QUOTA_DROPPED,
                        f"reject_new: {which} quota full" if q.policy == "reject_new"
                        else f"drop_oldest: {which} quota full and nothing pending to drop"), now, out)
        return False

    def _drop(self, d: Drop, now: float, out: IngestOutcome) -> None:
        self._db.execute("INSERT INTO drops(meter_id, seq, size, reason, detail, received_at, dropped_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (d.meter_id, d.seq, d.size, d.reason.value, d.detail, d.received_at, now))
        out.drops.append(d)

    def record_limited(self, limited: dict[str, LimitedCount], now: float) -> None:
        """Count messages of cut-off meters (acked, not stored): one upsert per meter, one transaction."""
        if not limited:
            return
        with self._tx():
            self._db.executemany(
                "INSERT INTO meter_limits(meter_id, reason, detail, cut_off_at, last_at, messages, bytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(meter_id) DO UPDATE SET last_at = excluded.last_at, "
                "messages = messages + excluded.messages, bytes = bytes + excluded.bytes",
                [(m, Reason.RATE_LIMITED.value, c.detail, now, now, c.messages, c.bytes)
                 for m, c in limited.items()])
            self._bump({"rate_limited": sum(c.messages for c in limited.values())})

    # -- forwarding ---------------------------------------------------------------------------

    def claim(self, batch_id: str, limit: int, now: float) -> list[Claimed]:
        """Move the oldest pending rows (by id: arrival order, so per-meter order) into a new batch.

        Only pending rows are ever selected: rows in flight are never prefetched again.
        """
        with self._tx():
            rows = self._db.execute(
                "UPDATE readings SET state = 'inflight', batch_id = ?, attempts = attempts + 1, "
                "first_sent_at = coalesce(first_sent_at, ?), last_sent_at = ? "
                "WHERE id IN (SELECT id FROM readings WHERE state = 'pending' ORDER BY id LIMIT ?) "
                "RETURNING id, meter_id, seq, payload", (batch_id, now, now, limit)).fetchall()
            if not rows:
                return []
            rows.sort()
            size = sum(len(r[3]) for r in rows)
            self._db.execute("INSERT INTO batches(batch_id, created_at, items, bytes, sends, last_sent_at) "
                             "VALUES (?, ?, ?, ?, 1, ?)", (batch_id, now, len(rows), size, now))
            self._bump({"forwarded": len(rows), "batches_sent": 1})
        self.counts.pending -= len(rows)
        self.counts.inflight += len(rows)
        if self.counts.pending == 0:
            self.oldest_pending_at = None
        return [Claimed(*r) for r in rows]

    def mark_resent(self, batch_id: str, now: float) -> None:
        with self._tx():
            self._db.execute("UPDATE batches SET sends = sends + 1, last_sent_at = ? WHERE batch_id = ?",
                             (now, batch_id))
            self._db.execute("UPDATE readings SET attempts = attempts + 1, last_sent_at = ? "
                             "WHERE batch_id = ? AND state = 'inflight'", (now, batch_id))
            self._bump({"resent_batches": 1})

    def apply_ack(self, batch_id: str, results: list[AckItem], now: float, *, whole_batch_ok: bool) -> AckOutcome:
        """Delete accepted/duplicate rows, keep rejected ones with their reason; rows of the batch the
        ack did not mention go back to pending (they will be re-sent).

        `whole_batch_ok`: the ack covers exactly the batch we hold in memory and accepts all of it,
        so one DELETE by batch_id does the job.
        """
        out = AckOutcome()
        db = self._db
        c = self.counts
        with self._tx():
            if whole_batch_ok:
                for state, size in db.execute("DELETE FROM readings WHERE batch_id = ? AND state = 'inflight' "
                                              "RETURNING state, size", (batch_id,)):
                    self._forget(state, size)
                    out.deleted += 1
            else:
                for item in results:
                    row = db.execute("SELECT id, state, size FROM readings WHERE meter_id = ? AND seq = ?",
                                     (item.meter_id, item.seq)).fetchone()
                    if row is None or row[1] == "rejected":
                        continue  # already acked earlier (a re-sent batch), or already judged
                    rid, state, size = row
                    if item.status == "rejected":
                        reason = (item.reason or Reason.MALFORMED).value
                        db.execute("UPDATE readings SET state = 'rejected', reason = ?, detail = ? WHERE id = ?",
                                   (reason, f"rejected by the cloud (batch {batch_id})", rid))
                        self._forget(state, size)
                        c.rejected += 1
                        c.rejected_bytes += size
                        out.rejected[reason] += 1
                    else:
                        db.execute("DELETE FROM readings WHERE id = ?", (rid,))
                        self._forget(state, size)
                        out.deleted += 1
                out.requeued = db.execute("UPDATE readings SET state = 'pending' "
                                          "WHERE batch_id = ? AND state = 'inflight'", (batch_id,)).rowcount
                c.inflight -= out.requeued
                c.pending += out.requeued
            db.execute("UPDATE batches SET acked_at = ?, accepted = ?, rejected = ? WHERE batch_id = ?",
                       (now, out.deleted, sum(out.rejected.values()), batch_id))
            self._bump({"acked": out.deleted, "rejected": sum(out.rejected.values())})
        if out.requeued:
            self.refresh_oldest()
        elif c.pending == 0:
            self.oldest_pending_at = None
        return out

    def _forget(self, state: str, size: int) -> None:
        if state == "pending":
            self.counts.pending -= 1
        else:
            self.counts.inflight -= 1
        self.counts.backlog_bytes -= size

    # -- housekeeping -------------------------------------------------------------------------

    def expire_evidence(self, now: float) -> int:
        """Quarantined payloads and rejected readings older than the TTL go too (evidence is kept as
        long as a reading may wait, not forever); a rejected reading leaves a drops row."""
        if self.ttl_seconds <= 0:
            return 0
        self.follow_clock()
        cutoff = now - self.ttl_seconds
        out = IngestOutcome()
        with self._tx():
            q = self._db.execute(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE received_at < ? "
                "ORDER BY id LIMIT ?) RETURNING length(payload)", (cutoff, EXPIRE_CHUNK)).fetchall()
            self.counts.quarantine_rows -= len(q)
            self.counts.quarantine_bytes -= sum(r[0] for r in q)
            for meter_id, seq, size, received_at in self._db.execute(
                    "DELETE FROM readings WHERE id IN (SELECT id FROM readings WHERE state = 'rejected' AND "
                    "received_at < ? ORDER BY id LIMIT ?) RETURNING meter_id, seq, size, received_at",
                    (cutoff, EXPIRE_CHUNK)).fetchall():
                self.counts.rejected -= 1
                self.counts.rejected_bytes -= size
                self._drop(Drop(meter_id, seq, size, received_at, Reason.EXPIRED,
                                f"rejected reading kept longer than the TTL of {self.ttl_seconds:g} s"), now, out)
            self._bump({"evidence_expired": len(q) + len(out.drops), "dropped": len(out.drops)})
        return len(q) + len(out.drops)

    def expire(self, now: float) -> list[Drop]:
        """Drop pending readings older than the TTL (oldest first), each recorded in `drops`."""
        if self.ttl_seconds <= 0:
            return []
        self.follow_clock()
        cutoff = now - self.ttl_seconds
        candidates = self._db.execute("SELECT id, received_at FROM readings WHERE state = 'pending' "
                                      "ORDER BY id LIMIT ?", (EXPIRE_CHUNK,)).fetchall()
        ids = [(rid,) for rid, received_at in candidates if received_at < cutoff]
        if not ids:
            return []
        out = IngestOutcome()
        with self._tx():
            for (rid,) in ids:
                row = self._db.execute("DELETE FROM readings WHERE id = ? AND state = 'pending' "
                                       "RETURNING meter_id, seq, size, received_at", (rid,)).fetchone()
                if row is None:
                    continue
                self.counts.pending -= 1
                self.counts.backlog_bytes -= row[2]
                self._drop(Drop(row[0], row[1], row[2], row[3], Reason.EXPIRED,
                                f"waited longer than the TTL of {self.ttl_seconds:g} s"), now, out)
            self._bump({"dropped": len(out.drops)})
        self.refresh_oldest()
        return out.drops

    def requeue_orphans(self, known_batches: list[str], older_than: float) -> int:
        """Safety net: rows inflight in a batch the forwarder no longer holds go back to pending.

        Only rows last sent before `older_than`, so a claim whose batch is being registered right
        now is left alone. Should find nothing; a non-zero count is logged as a bug.
        """
        marks = ",".join("?" * len(known_batches))
        not_known = f"AND batch_id NOT IN ({marks})" if known_batches else ""
        with self._tx():
            n = self._db.execute(f"UPDATE readings SET state = 'pending' WHERE state = 'inflight' {not_known} "
                                 "AND last_sent_at < ?", (*known_batches, older_than)).rowcount
        if n:
            self.resync()
        return n

    def keep_reserve(self) -> bool:
        """Recreate the disk-space reserve a purge released (edge.reserve), once there is room."""
        return self.path is None or ensure_reserve(self.path)

    def prune_batches(self, now: float) -> int:
        with self._tx():
            self._save_anchor(now)  # once a minute: a step while the agent is down is measured from here
            return self._db.execute("DELETE FROM batches WHERE acked_at IS NOT NULL AND acked_at < ?",
                                    (now - BATCH_HISTORY_S,)).rowcount

    def refresh_oldest(self) -> float | None:
        row = self._db.execute("SELECT received_at FROM readings WHERE state = 'pending' "
                               "ORDER BY id LIMIT 1").fetchone()
        self.oldest_pending_at = row[0] if row else None
        return self.oldest_pending_at

    def resync(self) -> Counts:
        """Recount from the table (cheap enough once a minute even with a million rows)."""
        c = Counts()
        for state, n, size in self._db.execute(
                "SELECT state, count(*), coalesce(sum(size), 0) FROM readings GROUP BY state"):
            if state == "pending":
                c.pending, c.backlog_bytes = n, c.backlog_bytes + size
            elif state == "inflight":
                c.inflight, c.backlog_bytes = n, c.backlog_bytes + size
            else:
                c.rejected, c.rejected_bytes = n, size
        c.quarantine_rows, c.quarantine_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM quarantine").fetchone()
        self.counts = c
        self.refresh_oldest()
        return c

    def changed_elsewhere(self) -> bool:
        """True when another connection (the inspector's requeue or purge) committed since the last call.

        PRAGMA data_version changes only for commits by other connections, so this costs one
        pragma per call and never fires for our own writes.
        """
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._data_version
        self._data_version = version
        return changed

    def counter_values(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters").fetchall())


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on error. IMMEDIATE: take the write lock up front, so the
    inspector's concurrent writes wait on busy_timeout instead of failing mid-transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # SQLITE_FULL and I/O errors roll back by themselves
            self._db.execute("ROLLBACK")


# -- the technician's transitions (`edge inspect requeue | purge`) ------------------------------------
# They run in the inspector's process on its own connection, inside its write transaction; the agent
# sees them through `Buffer.changed_elsewhere` (PRAGMA data_version) and recounts. Every state change
# of a buffered reading is written in this module.

_REQUEUE_COLS = ("meter_id, seq, payload, size, reading_end, received_at, batch_id, attempts, first_sent_at,"
                 " last_sent_at")


def requeue_rejected(conn: sqlite3.Connection, row_id: int) -> int:
    """rejected → pending, under a new id (the back of the forwarding queue); attempts and send times stay,
    so `show` keeps the reading's history. 0 when the row changed meanwhile."""
    row = conn.execute(f"SELECT {_REQUEUE_COLS} FROM readings WHERE id = ? AND state = 'rejected'",
                       (row_id,)).fetchone()
    if row is None:  # the agent or another technician changed it meanwhile
        return 0
    conn.execute("DELETE FROM readings WHERE id = ?", (row_id,))
    conn.execute(f"INSERT INTO readings ({_REQUEUE_COLS}, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                 row)
    return 1


def requeue_quarantined(conn: sqlite3.Connection, row_id: int, now: float) -> bool:
    """quarantined → pending when the payload now parses as a reading not already buffered."""
    row = conn.execute("SELECT payload FROM quarantine WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        return False
    payload = bytes(row[0])
    try:
        reading = parse_payload(payload).reading
    except ProtocolError:
        return False
    # received_at is now: the TTL starts again from the technician's decision, not the first arrival.
    cur = conn.execute(
        "INSERT INTO readings (meter_id, seq, payload, size, reading_end, received_at, state) "
        "VALUES (?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT (meter_id, seq) DO NOTHING",
        (reading.meter_id, reading.seq, payload, len(payload), reading.end, now))
    if cur.rowcount == 0:
        return False
    conn.execute("DELETE FROM quarantine WHERE id = ?", (row_id,))
    return True


def purge_row(conn: sqlite3.Connection, source: str, row_id: int, now: float, *, detail: str) -> int:
    """Delete one row of `source` (a readings state, or quarantine / drops / batches); a reading the cloud
    never acked leaves a drops row (reason expired), so nothing is silently gone. Returns rows deleted."""
    if source in ("pending", "inflight"):
        conn.execute(
            "INSERT INTO drops (meter_id, seq, size, reason, detail, received_at, dropped_at) "
            "SELECT meter_id, seq, size, ?, ?, received_at, ? FROM readings WHERE id = ? AND state = ?",
            (Reason.EXPIRED.value, detail, now, row_id, source))
    table = _OTHER_TABLES.get(source)
    if table is None:  # a state of `readings`
        return conn.execute("DELETE FROM readings WHERE id = ? AND state = ?", (row_id, source)).rowcount
    return conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,)).rowcount


_OTHER_TABLES = {"quarantined": "quarantine", "dropped": "drops"}

