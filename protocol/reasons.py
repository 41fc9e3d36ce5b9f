"""The one list of reason codes, shared by the edge, the cloud, the inspector and the docs.

A reason code is what a reading that did not make it becomes: it is stored next to the raw
bytes, counted in metrics and sent back to the edge in acks. Never rename a member: the string
values are part of the wire protocol (PROTOCOL.md, "Reason codes").
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a reading was rejected, quarantined or dropped."""

    # Structure (edge quarantine and cloud alike)
    MALFORMED = "malformed"
    """The payload is not a reading in any known format (bad framing, JSON, field types, encoding)."""
    OVERSIZED = "oversized"
    """The payload is larger than the protocol's maximum (4096 bytes)."""
    TOPIC_MISMATCH = "topic_mismatch"
    """The topic is not meters/{meter_id}/readings, or names another meter than the reading."""
    RETAINED = "retained"
    """A batch was published as a retained MQTT message; the cloud discards it unread."""
    UNSTORABLE = "unstorable"
    """PostgreSQL refused to store the item for a reason other than a transient fault; the raw
    envelope and the error are kept in ingest_dead_letters for review."""

    # Identity and signature (cloud, or edge pre-check)
    BAD_SIGNATURE = "bad_signature"
    """The Ed25519 signature does not verify with the meter's registered public key."""
    UNKNOWN_METER = "unknown_meter"
    """The meter_id is not in the registry; the cloud never skips verification."""
    SUSPENDED_METER = "suspended_meter"
    """The meter is suspended, revoked or quarantined after equivocation."""
    EQUIVOCATION = "equivocation"
    """Same (meter_id, seq) as an accepted reading but different signed bytes; both are kept."""

    # Validation rules (cloud)
    OUT_OF_RANGE = "out_of_range"
    """Energy is negative, or above TOKENIZATION_MAX_READING_KWH for one reading."""
    CAPACITY_EXCEEDED = "capacity_exceeded"
    """Export energy is above the meter's registered capacity times the interval length."""
    TOO_OLD = "too_old"
    """The interval ended more than TOKENIZATION_READING_MAX_AGE_DAYS ago."""
    IN_FUTURE = "in_future"
    """The interval ends later than now plus the clock-skew tolerance."""
    REGISTER_REGRESSION = "register_regression"
    """The cumulative export register went down, or seq went backwards against a later register."""
    REGISTER_MISMATCH = "register_mismatch"
    """The interval delta does not equal the change of the cumulative register since the previous seq."""
    OVERLAPPING_INTERVAL = "overlapping_interval"
    """The interval overlaps (or is out of seq order with) an accepted interval of the same meter;
    both readings are kept and the meter is quarantined, as for equivocation."""
    INTERVAL_TOO_LONG = "interval_too_long"
    """The interval is longer than TOKENIZATION_MAX_INTERVAL_SECS."""

    # Edge buffer housekeeping
    QUOTA_DROPPED = "quota_dropped"
    """The edge buffer was full (rows or bytes) and its policy dropped this reading."""
    EXPIRED = "expired"
    """The reading waited in the edge buffer longer than its TTL."""
    RATE_LIMITED = "rate_limited"
    """The meter published faster (messages or bytes) than the edge's per-meter limit: it is cut off."""


#: Reasons a meter can cause by sending a bad reading (as opposed to edge housekeeping).
READING_REASONS: frozenset[Reason] = frozenset(Reason) - {Reason.QUOTA_DROPPED, Reason.EXPIRED, Reason.RETAINED,
                                                         Reason.RATE_LIMITED}
