"""A buffer with known contents, built with the real edge/schema.sql and real signed payloads."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import base58

from edge.inspect.db import create_buffer
from gridtokenx.harness.standin import Meter, make_meters, reading_payload
from protocol import Reason

GATEWAY = "gw-known"


@dataclass(frozen=True)
class Known:
    path: Path
    now: float
    meters: list[Meter]
    tampered: bytes
    """m00002 seq 0: well-formed, but its signature does not match its bytes."""
    requeueable: bytes
    """Quarantined for bad_signature (m00002 seq 7) yet a well-formed reading: requeue can move it."""

    def keys_csv(self, path: Path) -> Path:
        lines = ["meter_id,public_key,wallet_address,meter_type,capacity_w"]
        lines += [f"{m.meter_id},{base58.b58encode(m.public_key).decode()},"
                  f"{base58.b58encode(bytes(32)).decode()},solar,5000" for m in self.meters]
        path.write_text("\n".join(lines) + "\n")
        return path


def build_known(path: Path, *, now: float | None = None) -> Known:
    """
    readings: m00000 seq 0-4 pending; m00001 seq 0-1 inflight (batch b-1, unacked);
              m00001 seq 2 rejected capacity_exceeded (batch b-0, acked); m00002 seq 0 pending, tampered.
    quarantine: 'junk' malformed (m00009), m00002 seq 7 bad_signature (parses).
    drops: m00000 seq 100, 101 quota_dropped; m00000 seq 102 expired.
    """
    now = time.time() if now is None else now
    meters = make_meters(3)
    m0, m1, m2 = meters
    good = reading_payload(m2, 0)
    # Change one digit of export_wh: still valid JSON and a valid reading, signature no longer matches.
    tampered = good.replace(b'"export_wh":100', b'"export_wh":900', 1)
    assert tampered != good
    requeueable = reading_payload(m2, 7)
    conn = create_buffer(path)
    try:
        rows: list[tuple[object, ...]] = []
        for seq in range(5):
            p = reading_payload(m0, seq)
            rows.append((m0.meter_id, seq, p, len(p), 1000 + seq, now - 600 + seq, "pending", None, 0, None, None))
        for seq in range(2):
            p = reading_payload(m1, seq)
            rows.append((m1.meter_id, seq, p, len(p), 2000 + seq, now - 300 + seq, "inflight", "b-1", 1, None, None))
        p = reading_payload(m1, 2)
        rows.append((m1.meter_id, 2, p, len(p), 2002, now - 250, "rejected", "b-0", 1,
                     Reason.CAPACITY_EXCEEDED.value, "rejected by the cloud (batch b-0)"))
        rows.append((m2.meter_id, 0, tampered, len(tampered), 3000, now - 100, "pending", None, 0, None, None))
        conn.executemany(
            "INSERT INTO readings (meter_id, seq, payload, size, reading_end, received_at, state, batch_id, "
            "attempts, reason, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.execute("UPDATE readings SET first_sent_at = ?, last_sent_at = ? WHERE batch_id IS NOT NULL",
                     (now - 240, now - 200))
        conn.executemany(
            "INSERT INTO quarantine (topic, payload, meter_id, seq, reason, detail, received_at) "
            "VALUES (?,?,?,?,?,?,?)",
            [("meters/m00009/readings", b"junk", "m00009", None, Reason.MALFORMED.value, "no LF", now - 500),
             ("meters/m00002/readings", requeueable, m2.meter_id, 7, Reason.BAD_SIGNATURE.value, "pre-check",
              now - 400)])
        conn.executemany(
            "INSERT INTO drops (meter_id, seq, size, reason, detail, received_at, dropped_at) VALUES (?,?,?,?,?,?,?)",
            [(m0.meter_id, 100, 300, Reason.QUOTA_DROPPED.value, "rows", now - 900, now - 800),
             (m0.meter_id, 101, 310, Reason.QUOTA_DROPPED.value, "rows", now - 899, now - 799),
             (m0.meter_id, 102, 320, Reason.EXPIRED.value, "ttl", now - 9000, now - 700)])
        conn.executemany(
            "INSERT INTO batches (batch_id, created_at, items, bytes, sends, last_sent_at, acked_at, accepted, "
            "rejected) VALUES (?,?,?,?,?,?,?,?,?)",
            [("b-0", now - 260, 10, 3000, 1, now - 260, now - 30, 9, 1),
             ("b-1", now - 240, 2, 600, 2, now - 200, None, 0, 0),
             ("b-old", now - 7200, 50, 15000, 1, now - 7200, now - 7100, 50, 0)])
        conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?)",
                         [("received", 24), ("acked", 59), ("rejected", 1)])
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("gateway_id", GATEWAY), ("quota_max_rows", "10"), ("quota_max_bytes", "1000000"),
                          ("quota_policy", "drop_oldest")])
    finally:
        conn.close()
    return Known(path=path, now=now, meters=meters, tampered=tampered, requeueable=requeueable)


def payload_of(path: Path, meter: str, seq: int) -> bytes:
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT payload FROM readings WHERE meter_id = ? AND seq = ?", (meter, seq)).fetchone()
    return bytes(row[0])
