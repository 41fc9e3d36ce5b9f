"""What the inspector reports: typed structs, encoded as JSON for scripts and drawn as tables for people."""

from __future__ import annotations

from typing import Literal

import msgspec

#: Where a row lives: a buffered reading's state, or the quarantine / drops tables.
Source = Literal["pending", "inflight", "rejected", "quarantined", "dropped"]
READING_STATES: tuple[Source, ...] = ("pending", "inflight", "rejected")
SOURCES: tuple[Source, ...] = ("pending", "inflight", "rejected", "quarantined", "dropped")


class StateTotal(msgspec.Struct, frozen=True):
    state: str
    rows: int
    bytes: int


class MeterSummary(msgspec.Struct, frozen=True):
    meter_id: str
    buffered: int
    """Rows in `readings` (any state) for this meter."""
    rejected: int
    max_seq: int
    last_seen: float
    """received_at of the meter's highest seq still buffered (UTC s)."""


class ReasonCount(msgspec.Struct, frozen=True):
    reason: str
    rows: int
    last_at: float | None


class ForwardRate(msgspec.Struct, frozen=True):
    window_seconds: int
    batches_acked: int
    readings_acked: int
    readings_rejected: int
    per_minute: float
    batches_unacked: int


class Stats(msgspec.Struct, frozen=True):
    db: str
    gateway_id: str | None
    schema_version: int
    generated_at: float
    file_bytes: int
    wal_bytes: int
    totals: list[StateTotal]
    buffered_rows: int
    buffered_bytes: int
    oldest_pending_at: float | None
    oldest_pending_age_seconds: float | None
    meters: list[MeterSummary]
    quarantine: list[ReasonCount]
    drops: list[ReasonCount]
    forward: ForwardRate
    counters: dict[str, int]
    meta: dict[str, str]
    """The agent's meta table: gateway_id, agent_version, quota_*, ttl_seconds, started_at …"""


class Row(msgspec.Struct, frozen=True):
    """One row of `list`/`export`: a buffered reading, a quarantined payload or a drop record."""

    source: Source
    id: int
    meter_id: str | None
    seq: int | None
    size: int
    received_at: float
    reason: str | None = None
    detail: str | None = None
    batch_id: str | None = None
    attempts: int = 0
    reading_end: int | None = None
    dropped_at: float | None = None
    topic: str | None = None


class BatchRecord(msgspec.Struct, frozen=True):
    batch_id: str
    created_at: float
    items: int
    bytes: int
    sends: int
    last_sent_at: float | None
    acked_at: float | None
    accepted: int
    rejected: int


class DecodedReading(msgspec.Struct, frozen=True):
    format: str
    meter_id: str
    seq: int
    start: int
    end: int
    export_wh: int
    export_register_wh: int | None
    import_wh: int | None
    import_register_wh: int | None
    flags: int
    claimed_wallet: str | None


SignatureStatus = Literal["valid", "invalid", "unknown_meter", "not_checked", "unparseable"]


class Shown(msgspec.Struct, frozen=True):
    """`show METER SEQ`: every row the buffer holds for that key, decoded, with its forwarding history."""

    row: Row
    decoded: DecodedReading | None
    parse_error: str | None
    signature: SignatureStatus
    first_sent_at: float | None
    last_sent_at: float | None
    batch: BatchRecord | None
    payload_text: str


class VerifyFailure(msgspec.Struct, frozen=True):
    source: Source
    id: int
    meter_id: str | None
    seq: int | None
    status: SignatureStatus
    detail: str | None = None


class VerifyReport(msgspec.Struct, frozen=True):
    checked: int
    valid: int
    invalid: int
    unknown_meter: int
    unparseable: int
    failures: list[VerifyFailure]
    failures_shown: int


class ChangeReport(msgspec.Struct, frozen=True):
    """`requeue` / `purge`: what would change (dry run) or what changed."""

    action: Literal["requeue", "purge"]
    applied: bool
    matched: int
    matched_bytes: int
    by_source: dict[str, int]
    by_reason: dict[str, int]
    changed: int
    skipped: int
    """Requeue: quarantined payloads that still do not parse, or whose (meter, seq) is already buffered."""
    sample: list[Row]


CheckStatus = Literal["OK", "WARN", "FAIL", "SKIP"]


class Check(msgspec.Struct, frozen=True):
    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None
