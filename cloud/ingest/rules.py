"""Validation rules for one verified reading: pure functions over values, no I/O, no clock.

A rule never raises for bad input; it returns a `Violation` (a protocol `Reason` plus a detail
sentence) that becomes a rejected_readings row, a counter and an ack result.

Register rules (v1 readings only; the legacy format has no register). Let `prev` be the accepted
reading of the same meter with the highest seq below this one, and `next` the one with the lowest
seq above it (each taken from Postgres or from earlier items of the same batch):

- register_regression: ``register < prev.register`` or ``register > next.register``.
- register_mismatch, adjacent neighbour (``prev.seq == seq - 1``): ``register - prev.register``
  must equal ``export_wh`` exactly; likewise ``next.register - register == next.export_wh``.
- register_mismatch, gap in seq (readings in between not seen yet): the interval may not overlap
  energy already counted, ``register - export_wh >= prev.register`` (and the same towards next).
- register_mismatch, no neighbour: ``register >= export_wh`` (a register cannot count less than
  its own last interval).

Series rules (every format, legacy included), with the same `prev` and `next`:

- interval_too_long: ``end - start > TOKENIZATION_MAX_INTERVAL_SECS``.
- capacity_exceeded: ``export_wh × 3600 > capacity_w × (end - start)``, for every reading.
- overlapping_interval: ``start < prev.end`` or ``end > next.start``. A meter's accepted intervals are
  therefore ordered like its seqs and pairwise disjoint (checking the two neighbours suffices: the
  accepted set stays sorted and disjoint by induction), so its accepted energy over any stretch of
  time is at most capacity × the time its intervals cover. Both readings are kept (the accepted one
  in meter_readings, the new one as evidence) and the meter is quarantined, as for equivocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.settings import TokenizationSettings
from protocol.reading import Reading
from protocol.reasons import Reason

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class Limits:
    max_reading_wh: int
    max_age_secs: int
    clock_skew_secs: int
    max_interval_secs: int = 3600

    @classmethod
    def from_settings(cls, tokenization: TokenizationSettings) -> Limits:
        return cls(
            max_reading_wh=tokenization.max_reading_wh,
            max_age_secs=int(tokenization.reading_max_age_days * SECONDS_PER_DAY),
            clock_skew_secs=tokenization.clock_skew_secs,
            max_interval_secs=tokenization.max_interval_secs,
        )


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """What the register and series rules need of an accepted neighbour reading."""

    seq: int
    export_wh: int
    export_register_wh: int | None
    start: int | None = None
    end: int | None = None
    """The neighbour's interval, UTC seconds (None only in register-only unit tests)."""


@dataclass(frozen=True, slots=True)
class Violation:
    reason: Reason
    detail: str


def check_reading(reading: Reading, *, capacity_w: int, limits: Limits, now: int,
                  prev: RegisterPoint | None = None, next_: RegisterPoint | None = None) -> Violation | None:
    """The first rule `reading` breaks, or None. Order: range, time, interval length, capacity,
    register, overlap."""
    return (check_range(reading, limits) or check_time(reading, limits, now)
            or check_length(reading, limits) or check_capacity(reading, capacity_w)
            or check_register(reading, prev, next_) or check_overlap(reading, prev, next_))


def check_length(reading: Reading, limits: Limits) -> Violation | None:
    seconds = reading.end - reading.start
    if seconds > limits.max_interval_secs:
        return Violation(Reason.INTERVAL_TOO_LONG, f"interval is {seconds} s long; the maximum is "
                                                   f"{limits.max_interval_secs} s (TOKENIZATION_MAX_INTERVAL_SECS)")
    return None


def check_overlap(reading: Reading, prev: RegisterPoint | None, next_: RegisterPoint | None) -> Violation | None:
    """Neighbours by seq must also be neighbours in time, without overlap."""
    if prev is not None and prev.end is not None and reading.start < prev.end:
        return Violation(Reason.OVERLAPPING_INTERVAL,
                         f"interval [{reading.start}, {reading.end}) of seq {reading.seq} overlaps or precedes "
                         f"the accepted interval [{prev.start}, {prev.end}) of seq {prev.seq}")
    if next_ is not None and next_.start is not None and reading.end > next_.start:
        return Violation(Reason.OVERLAPPING_INTERVAL,
                         f"interval [{reading.start}, {reading.end}) of seq {reading.seq} overlaps or follows "
                         f"the accepted interval [{next_.start}, {next_.end}) of seq {next_.seq}")
    return None


def check_range(reading: Reading, limits: Limits) -> Violation | None:
    for name in ("export_wh", "export_register_wh", "import_wh", "import_register_wh"):
        value = getattr(reading, name)
        if value is not None and value < 0:
            return Violation(Reason.OUT_OF_RANGE, f"{name} is negative ({value})")
    if reading.export_wh > limits.max_reading_wh:
        return Violation(Reason.OUT_OF_RANGE,
                         f"export_wh {reading.export_wh} is above the per-reading maximum {limits.max_reading_wh}")
    return None


def check_time(reading: Reading, limits: Limits, now: int) -> Violation | None:
    if reading.end < now - limits.max_age_secs:
        return Violation(Reason.TOO_OLD, f"interval ended {now - reading.end} s ago; "
                                         f"the maximum age is {limits.max_age_secs} s")
    if reading.end > now + limits.clock_skew_secs:
        return Violation(Reason.IN_FUTURE, f"interval ends {reading.end - now} s in the future; "
                                           f"the clock-skew tolerance is {limits.clock_skew_secs} s")
    return None


def check_capacity(reading: Reading, capacity_w: int) -> Violation | None:
    # Integer math: Wh × 3600 = W·s, compared with the registered W × the interval's seconds.
    seconds = reading.end - reading.start
    if reading.export_wh * 3600 > capacity_w * seconds:
        return Violation(Reason.CAPACITY_EXCEEDED,
                         f"export_wh {reading.export_wh} is above capacity {capacity_w} W × {seconds} s")
    return None


def check_register(reading: Reading, prev: RegisterPoint | None,
                   next_: RegisterPoint | None) -> Violation | None:
    register = reading.export_register_wh
    if register is None:
        return None
    if prev is not None and prev.export_register_wh is not None:
        violation = _between(prev, RegisterPoint(reading.seq, reading.export_wh, register))
        if violation:
            return violation
    if next_ is not None and next_.export_register_wh is not None:
        violation = _between(RegisterPoint(reading.seq, reading.export_wh, register), next_)
        if violation:
            return violation
    if (prev is None or prev.export_register_wh is None) and register < reading.export_wh:
        return Violation(Reason.REGISTER_MISMATCH,
                         f"export register {register} is below this interval's export_wh {reading.export_wh}")
    return None


def _between(earlier: RegisterPoint, later: RegisterPoint) -> Violation | None:
    """Rules between two readings of one meter, `earlier.seq < later.seq`, both with registers."""
    assert earlier.export_register_wh is not None and later.export_register_wh is not None
    low, high = earlier.export_register_wh, later.export_register_wh
    if high < low:
        return Violation(Reason.REGISTER_REGRESSION,
                         f"export register {high} at seq {later.seq} is below {low} at seq {earlier.seq}")
    if later.seq == earlier.seq + 1:
        if high - low != later.export_wh:
            return Violation(Reason.REGISTER_MISMATCH,
                             f"register went {low} → {high} from seq {earlier.seq} to {later.seq}, "
                             f"but export_wh of seq {later.seq} is {later.export_wh}")
    elif high - later.export_wh < low:
        return Violation(Reason.REGISTER_MISMATCH,
                         f"seq {later.seq} claims {later.export_wh} Wh since register {high - later.export_wh}, "
                         f"below register {low} at seq {earlier.seq}")
    return None
