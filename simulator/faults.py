"""Fault injection: the bad readings a security or validation test wants, and what the system should say.

Each fault is a named rate (0..1) drawn once per meter interval. A faulty reading is sent *in
addition to* the meter's good reading for that interval, so the good series stays intact:

- faults that carry a reading of their own (bad_signature, wrong_key, over_max, negative, too_old,
  future, register_regression, malformed, oversized, wrong_topic) take a fresh `seq` just before the
  good reading's, and carry the meter's *current* register unchanged. The good reading that follows
  then matches the register of the previous good reading and of the faulty one alike, so the cloud's
  `register_mismatch` rule passes whichever of them it treats as the predecessor (PROTOCOL.md §3).
  The accepted series therefore has a seq gap where a fault was injected; that is expected.
- replay re-sends the exact bytes of the meter's last good reading (a duplicate, never an error);
  equivocation re-signs the last good reading's seq with one more Wh (the cloud keeps both as
  evidence and quarantines the meter, so its later readings come back `suspended_meter`).

Pure functions over readings and bytes; the meter (`simulator.meter`) decides when to call them.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

import base58
import msgspec

from protocol import legacy
from protocol.reading import Reading
from protocol.reasons import Reason
from protocol.wire import MAX_PAYLOAD_BYTES, V1_PREFIX

#: How far outside the cloud's time window the time faults land (its limits are 7 days and 5 min).
TOO_OLD_SECONDS = 8 * 86_400
FUTURE_SECONDS = 3_600


class Fault(StrEnum):
    BAD_SIGNATURE = "bad_signature"
    WRONG_KEY = "wrong_key"
    REPLAY = "replay"
    EQUIVOCATION = "equivocation"
    OVER_MAX = "over_max"
    NEGATIVE = "negative"
    TOO_OLD = "too_old"
    FUTURE = "future"
    REGISTER_REGRESSION = "register_regression"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    WRONG_TOPIC = "wrong_topic"

    @property
    def option(self) -> str:
        return "--fault-" + self.value.replace("_", "-")


#: What the system answers, for a fault: a protocol Reason value, or `duplicate` (no rejection)
#: or `denied` (the broker ACL drops it; it never reaches the edge agent).
DUPLICATE = "duplicate"
DENIED = "denied"

_EXPECTED: dict[Fault, str] = {
    Fault.BAD_SIGNATURE: Reason.BAD_SIGNATURE, Fault.WRONG_KEY: Reason.BAD_SIGNATURE,
    Fault.REPLAY: DUPLICATE, Fault.EQUIVOCATION: Reason.EQUIVOCATION,
    Fault.OVER_MAX: Reason.OUT_OF_RANGE, Fault.NEGATIVE: Reason.OUT_OF_RANGE,
    Fault.TOO_OLD: Reason.TOO_OLD, Fault.FUTURE: Reason.IN_FUTURE,
    Fault.REGISTER_REGRESSION: Reason.REGISTER_REGRESSION, Fault.MALFORMED: Reason.MALFORMED,
    Fault.OVERSIZED: Reason.OVERSIZED, Fault.WRONG_TOPIC: DENIED,
}

#: Faults that only make sense with a cumulative register (v1).
V1_ONLY = frozenset({Fault.REGISTER_REGRESSION})


def expected_reason(fault: Fault, *, multiplexed: bool) -> str:
    """With a fleet user allowed to write every meter's topic, a wrong topic *is* delivered, and the
    edge and cloud reject it as topic_mismatch; with per-meter credentials the broker denies it."""
    if fault is Fault.WRONG_TOPIC and multiplexed:
        return Reason.TOPIC_MISMATCH.value
    return str(_EXPECTED[fault])


@dataclasses.dataclass(frozen=True, slots=True)
class FaultRates:
    """Rate (0..1) of each fault per meter interval. All zero by default."""

    bad_signature: float = 0.0
    wrong_key: float = 0.0
    replay: float = 0.0
    equivocation: float = 0.0
    over_max: float = 0.0
    negative: float = 0.0
    too_old: float = 0.0
    future: float = 0.0
    register_regression: float = 0.0
    malformed: float = 0.0
    oversized: float = 0.0
    wrong_topic: float = 0.0

    def active(self) -> list[tuple[Fault, float]]:
        return [(f, getattr(self, f.value)) for f in Fault if getattr(self, f.value) > 0]

    def check(self) -> None:
        for f in Fault:
            rate = getattr(self, f.value)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{f.option} is {rate}; a fault rate is between 0 and 1")


# --- payload mutations (pure) -------------------------------------------------------------------

def corrupt_signature(payload: bytes) -> bytes:
    """Flip bits in one signature byte, keeping valid base58 of 64 bytes (so it is not `malformed`)."""
    cut = payload.rfind(b"\n")
    signature = bytearray(base58.b58decode(payload[cut + 1 :]))
    signature[7] ^= 0x5A
    return payload[: cut + 1] + base58.b58encode(bytes(signature))


def malformed_message(reading: Reading, wallet: str, fmt: str) -> bytes:
    """A message that parses as neither format's reading: a field of the wrong type (v1), or a
    kWh value with seven decimals (legacy). It is properly signed, so only structure rejects it."""
    if fmt == "legacy":
        return legacy.format_message(reading.meter_id, reading.end, legacy.kwh_text(reading.export_wh) + "1",
                                     wallet)
    fields = msgspec.structs.asdict(reading)
    fields["export_wh"] = str(reading.export_wh)
    return V1_PREFIX + msgspec.json.encode({k: v for k, v in fields.items() if v is not None})


def oversized_message(message: bytes) -> bytes:
    """The message padded past the protocol's 4096-byte payload limit (under the broker's 8 KiB)."""
    return message + b" " * (MAX_PAYLOAD_BYTES + 64 - len(message))
