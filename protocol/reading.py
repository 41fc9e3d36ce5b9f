"""The reading model: one interval of one meter, as the meter signed it.

`Reading` is the typed view of the signed bytes. `SignedReading` keeps those exact bytes next to
it, because everything downstream (edge buffer, batch envelope, Postgres evidence) must carry the
bytes the meter signed, never a re-serialisation.
"""

from __future__ import annotations

import re
from enum import IntFlag
from typing import Literal

import msgspec

#: A meter_id is also an MQTT topic level and a broker username, so it excludes '/', '+', '#'.
METER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: Largest value any integer field may carry (signed 64-bit, what Postgres BIGINT holds).
MAX_INT = 2**63 - 1


class Quality(IntFlag):
    """Quality flags an AMI meter reports with an interval (the `flags` field)."""

    POWER_OUTAGE = 1
    """The meter lost power during the interval."""
    CLOCK_ADJUSTED = 2
    """The meter's clock was set during the interval, so its length may differ."""
    TAMPER = 4
    """The meter detected a cover opening or magnetic tamper."""
    ESTIMATED = 8
    """The value is estimated (for example after a register reset), not measured."""


class Reading(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One interval reading. Energy is integer Wh, times are UTC integer seconds since the epoch."""

    meter_id: str
    seq: int
    """Per-meter monotonic sequence number; (meter_id, seq) is the idempotency key everywhere."""
    start: int
    """Interval start, UTC seconds (inclusive)."""
    end: int
    """Interval end, UTC seconds (exclusive); the reading's time."""
    export_wh: int
    """Energy exported to the grid during the interval (Wh): what is tokenised."""
    export_register_wh: int | None = None
    """Lifetime export register at `end` (Wh). Required in v1; absent in the legacy format."""
    import_wh: int | None = None
    """Energy imported from the grid during the interval (Wh), if the meter measures it."""
    import_register_wh: int | None = None
    """Lifetime import register at `end` (Wh), if the meter measures it."""
    flags: int = 0
    """Bitwise OR of `Quality` flags."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.meter_id, self.seq)


Format = Literal["v1", "legacy"]


class SignedReading(msgspec.Struct, frozen=True):  # a Struct builds in ~0.1 µs, a frozen dataclass ~0.7
    """A parsed payload: the reading plus the exact bytes that were signed and travelled."""

    reading: Reading
    format: Format
    message: bytes
    """The exact signed bytes (everything before the payload's last LF)."""
    signature: bytes
    """The raw 64-byte Ed25519 signature."""
    payload: bytes
    """The whole MQTT payload, byte for byte as the meter published it."""
    claimed_wallet: str | None = None
    """Legacy only: the wallet the meter named. Never used for minting (the registry decides)."""

    @property
    def key(self) -> tuple[str, int]:
        return self.reading.key
