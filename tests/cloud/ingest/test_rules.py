"""The pure validation rules and the batch classification, without I/O."""

from __future__ import annotations

import hashlib
import itertools

import base58
from hypothesis import given
from hypothesis import strategies as st

from cloud.ingest.pipeline import StoredContext, classify, parse_items, verify_signatures
from cloud.ingest.registry import KeyRecord, MeterRecord
from cloud.ingest.rules import Limits, RegisterPoint, check_reading, check_register
from protocol.envelopes import Batch, BatchItem
from protocol.reading import Reading
from protocol.reasons import Reason
from protocol.wire import secret_key_from_seed, sign_reading

NOW = 1_800_000_000
LIMITS = Limits(max_reading_wh=100_000, max_age_secs=7 * 86_400, clock_skew_secs=300)


def reading(seq: int = 2, export_wh: int = 100, register: int | None = 1_100, *, end: int = NOW - 600,
            length: int = 900) -> Reading:
    return Reading(meter_id="m1", seq=seq, start=end - length, end=end, export_wh=export_wh,
                   export_register_wh=register)


def reason(r: Reading, capacity_w: int = 10_000, prev: RegisterPoint | None = None,
           next_: RegisterPoint | None = None) -> Reason | None:
    v = check_reading(r, capacity_w=capacity_w, limits=LIMITS, now=NOW, prev=prev, next_=next_)
    return v.reason if v else None


def test_each_rule_names_its_reason() -> None:
    assert reason(reading()) is None
    assert reason(reading(export_wh=-1)) == Reason.OUT_OF_RANGE
    assert reason(reading(export_wh=100_001, register=200_000), capacity_w=10**9) == Reason.OUT_OF_RANGE
    assert reason(reading(export_wh=100_000, register=200_000), capacity_w=10**9) is None  # the limit itself is fine
    assert reason(reading(end=NOW - 7 * 86_400 - 1)) == Reason.TOO_OLD
    assert reason(reading(end=NOW + 300)) is None
    assert reason(reading(end=NOW + 301)) == Reason.IN_FUTURE


def test_capacity_is_exact_integer_math() -> None:
    # 1,200 W for 900 s is exactly 300 Wh.
    assert reason(reading(export_wh=300, register=300), capacity_w=1_200) is None
    assert reason(reading(export_wh=301, register=301), capacity_w=1_200) == Reason.CAPACITY_EXCEEDED


def test_register_against_neighbours() -> None:
    prev = RegisterPoint(1, 100, 1_000)
    assert check_register(reading(2, 100, 1_100), prev, None) is None
    assert check_register(reading(2, 100, 900), prev, None).reason == Reason.REGISTER_REGRESSION  # type: ignore[union-attr]
    assert check_register(reading(2, 100, 1_150), prev, None).reason == Reason.REGISTER_MISMATCH  # type: ignore[union-attr]
    # A gap in seq: the interval may not overlap energy already counted.
    gap = RegisterPoint(1, 100, 1_000)
    assert check_register(reading(5, 100, 1_500), gap, None) is None
    assert check_register(reading(5, 600, 1_500), gap, None).reason == Reason.REGISTER_MISMATCH  # type: ignore[union-attr]
    # A late reading must fit below the next one.
    nxt = RegisterPoint(3, 100, 1_200)
    assert check_register(reading(2, 100, 1_100), prev, nxt) is None
    assert check_register(reading(2, 100, 1_300), None, nxt).reason == Reason.REGISTER_REGRESSION  # type: ignore[union-attr]
    # No neighbour: the register cannot be below its own interval.
    assert check_register(reading(1, 100, 50), None, None).reason == Reason.REGISTER_MISMATCH  # type: ignore[union-attr]
    assert check_register(reading(1, 100, None), prev, None) is None  # legacy: no register, no rule


@given(st.lists(st.integers(min_value=0, max_value=5_000), min_size=2, max_size=30), st.integers(0, 10**9))
def test_consistent_series_always_pass_and_any_tamper_is_caught(deltas: list[int], base: int) -> None:
    registers, total = [], base
    for d in deltas:
        total += d
        registers.append(total)
    points = [RegisterPoint(i + 1, d, r) for i, (d, r) in enumerate(zip(deltas, registers, strict=True))]
    for i in range(1, len(points)):
        r = reading(points[i].seq, deltas[i], registers[i])
        assert check_register(r, points[i - 1], points[i + 1] if i + 1 < len(points) else None) is None
    # Claiming one Wh more than the register moved is always caught.
    r = reading(2, deltas[1] + 1, registers[1])
    assert check_register(r, points[0], None) is not None


def _meter(seed: bytes, *, status: str = "active", old: tuple[bytes, int] | None = None,
           below_seq: int = 2) -> tuple[MeterRecord, bytes]:
    public, secret = secret_key_from_seed(hashlib.sha256(seed).digest())
    keys = [KeyRecord(public, None)]
    if old:
        keys.append(KeyRecord(old[0], old[1], below_seq))
    return MeterRecord("m1", base58.b58encode(b"w" * 32).decode(), "solar", 10_000, status, tuple(keys)), secret


def test_classify_duplicates_claims_and_rotated_keys() -> None:
    old_public, old_secret = secret_key_from_seed(hashlib.sha256(b"old").digest())
    record, secret = _meter(b"new", old=(old_public, NOW - 1_000))
    r1, r2, r3 = reading(1, 100, 1_000, end=NOW - 2_000), reading(2, 100, 1_100), reading(3, 100, 1_200)
    items = [
        BatchItem("m1", 1, sign_reading(r1, old_secret)),  # old key, seq below its watermark (2)
        BatchItem("m1", 2, sign_reading(r2, secret)),
        BatchItem("m1", 2, sign_reading(r2, secret)),      # identical duplicate in the batch
        BatchItem("m1", 3, sign_reading(r3, old_secret)),  # old key at/above its watermark
        BatchItem("m1", 9, sign_reading(r3, secret)),      # claim ≠ payload
    ]
    batch = Batch(gateway_id="gw", batch_id="b", sent_at=NOW, items=items)
    parsed = parse_items(batch)
    verified = verify_signatures(parsed, {"m1": record}.get)
    plan = classify(batch, parsed, verified, {}, {"m1": record}.get, limits=LIMITS, now=NOW)
    assert [(r.status, r.reason) for r in plan.results()] == [
        ("accepted", None), ("accepted", None), ("duplicate", None), ("rejected", Reason.BAD_SIGNATURE),
        ("rejected", Reason.MALFORMED)]


def test_classify_uses_stored_context() -> None:
    record, secret = _meter(b"k")
    r2 = reading(2, 100, 1_100)
    payload = sign_reading(r2, secret)
    other = sign_reading(reading(2, 101, 1_101), secret)
    batch = Batch(gateway_id="gw", batch_id="b", sent_at=NOW,
                  items=[BatchItem("m1", 2, payload), BatchItem("m1", 3, sign_reading(reading(3, 50, 1_200), secret))])
    stored = {("m1", 2): StoredContext(hashlib.sha256(other).digest(), RegisterPoint(1, 100, 1_000), None)}
    parsed = parse_items(batch)
    verified = verify_signatures(parsed, {"m1": record}.get)
    plan = classify(batch, parsed, verified, stored, {"m1": record}.get, limits=LIMITS, now=NOW)
    assert [(r.status, r.reason) for r in plan.results()] == [
        ("rejected", Reason.EQUIVOCATION), ("rejected", Reason.SUSPENDED_METER)]
    assert "m1" in plan.quarantine


def test_classify_checks_registers_against_earlier_items_of_the_same_batch() -> None:
    record, secret = _meter(b"local")
    items = [BatchItem("m1", s, sign_reading(reading(s, wh, reg, end=NOW - 600 - (3 - s) * 900), secret))
             for s, wh, reg in ((3, 100, 1_300), (1, 100, 1_100), (2, 100, 1_250))]  # out of order on purpose
    batch = Batch(gateway_id="gw", batch_id="b", sent_at=NOW, items=items)
    parsed = parse_items(batch)
    plan = classify(batch, parsed, verify_signatures(parsed, {"m1": record}.get), {}, {"m1": record}.get,
                    limits=LIMITS, now=NOW)
    # seq 1 is the baseline; seq 2 claims 100 Wh but the register moved 150; seq 3 then follows the
    # accepted seq 1 across a gap (1_300 − 100 ≥ 1_100), so it is accepted.
    assert [(r.seq, r.status, r.reason) for r in plan.results()] == [
        (3, "accepted", None), (1, "accepted", None), (2, "rejected", Reason.REGISTER_MISMATCH)]


def test_series_rules_length_and_overlap() -> None:
    long_limits = Limits(max_reading_wh=100_000, max_age_secs=7 * 86_400, clock_skew_secs=300,
                         max_interval_secs=900)
    assert check_reading(reading(length=900), capacity_w=10_000, limits=long_limits, now=NOW) is None
    v = check_reading(reading(length=901), capacity_w=10_000, limits=long_limits, now=NOW)
    assert v is not None and v.reason == Reason.INTERVAL_TOO_LONG
    r = reading()  # [NOW - 1500, NOW - 600)
    before = RegisterPoint(1, 100, 1_000, NOW - 2_400, NOW - 1_500)
    after = RegisterPoint(3, 100, 1_200, NOW - 600, NOW + 300)
    assert reason(r, prev=before, next_=after) is None  # touching is not overlapping
    assert reason(r, prev=RegisterPoint(1, 100, 1_000, NOW - 2_400, NOW - 1_499)) == Reason.OVERLAPPING_INTERVAL
    assert reason(r, next_=RegisterPoint(3, 100, 1_200, NOW - 601, NOW)) == Reason.OVERLAPPING_INTERVAL
    # A later seq may not go back in time, even without overlapping: seq order is time order.
    assert reason(r, prev=RegisterPoint(1, 100, 1_000, NOW - 600, NOW)) == Reason.OVERLAPPING_INTERVAL


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8)), min_size=1, max_size=30))
def test_accepted_intervals_are_disjoint_whatever_the_arrival_order(spans: list[tuple[int, int]]) -> None:
    """Insert random intervals (seq = arrival index, in random seq order) checking only the two seq
    neighbours: the accepted set is always pairwise disjoint."""
    accepted: dict[int, RegisterPoint] = {}
    for arrival, (start_slot, length) in enumerate(spans):
        seq = (arrival * 7919) % 101  # arrival order is not seq order
        if seq in accepted:
            continue
        start = NOW - 100_000 + start_slot * 300
        r = Reading(meter_id="m1", seq=seq, start=start, end=start + length * 300, export_wh=0)
        below = [p for s, p in accepted.items() if s < seq]
        above = [p for s, p in accepted.items() if s > seq]
        prev = max(below, key=lambda p: p.seq) if below else None
        nxt = min(above, key=lambda p: p.seq) if above else None
        limits = Limits(max_reading_wh=100_000, max_age_secs=10**6, clock_skew_secs=300, max_interval_secs=10**6)
        if check_reading(r, capacity_w=10_000, limits=limits, now=NOW, prev=prev, next_=nxt) is None:
            accepted[seq] = RegisterPoint(seq, 0, None, r.start, r.end)
    spans_ok = sorted((p.start or 0, p.end or 0) for p in accepted.values())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans_ok))


def test_retired_keys_verify_only_below_their_watermark_and_compromised_keys_never() -> None:
    old_public, old_secret = secret_key_from_seed(hashlib.sha256(b"old").digest())
    new_public, _ = secret_key_from_seed(hashlib.sha256(b"new").digest())
    back_dated = reading(5, 100, 1_000, end=NOW - 86_400)  # timestamps never matter
    message = sign_reading(back_dated, old_secret)
    signed = parse_items(Batch(gateway_id="gw", batch_id="b", sent_at=NOW,
                               items=[BatchItem("m1", 5, message)]))[0].signed
    assert signed is not None

    def record(old: KeyRecord) -> MeterRecord:
        return MeterRecord("m1", "w", "solar", 10_000, "active", (KeyRecord(new_public, None), old))

    def ok(old: KeyRecord) -> bool:
        return record(old).verifies(signed.reading, signed.message, signed.signature)

    assert ok(KeyRecord(old_public, NOW, below_seq=6))
    assert not ok(KeyRecord(old_public, NOW, below_seq=5))  # exclusive
    assert not ok(KeyRecord(old_public, NOW, below_seq=None))
    assert not ok(KeyRecord(old_public, NOW, below_seq=10**9, compromised=True))
