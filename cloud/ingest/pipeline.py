"""The decision for one batch, as a pure function: which items are accepted, duplicate or rejected.

Order of checks for each item (the first failing one decides):

1. the edge's claim (`boundary.check_item`: meter_id pattern, seq in int64, payload size) and the
   parse (`protocol.wire.parse_payload`) → malformed / oversized; parsed key ≠ the claim → malformed.
2. same bytes as a reading already stored (Postgres, by SHA-256, or earlier in this batch) → duplicate. Checked
   before the registry so that a batch re-sent after a crash is recognised even if the meter was
   quarantined since.
3. registry: unknown meter → unknown_meter.
4. signature against a key valid for the reading → bad_signature (never skipped).
5. same key, different signed bytes → equivocation; the meter is quarantined. Only *signed*
   conflicting bytes count, so nobody but the meter's key holder can get a meter quarantined.
   Checked before the status, so a re-sent equivocation gets the same answer after the quarantine.
6. status not active (suspended, revoked, quarantined) → suspended_meter.
7. validation rules (`rules.check_reading`), with register neighbours from Postgres and this batch;
   an overlapping interval also quarantines the meter (it takes the meter's key to sign one).

The I/O around it (`store`) supplies the `StoredContext` of each key and persists the `Plan`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from cloud.ingest.boundary import check_item, storable_claim
from cloud.ingest.registry import MeterRecord
from cloud.ingest.rules import Limits, RegisterPoint, check_reading
from protocol.envelopes import AckItem, Batch, BatchItem
from protocol.errors import ProtocolError
from protocol.reading import SignedReading
from protocol.reasons import Reason
from protocol.wire import parse_payload

Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Parsed:
    index: int
    item: BatchItem
    signed: SignedReading | None
    reason: Reason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StoredContext:
    """What Postgres holds around one key: the SHA-256 of the payload stored at that key (kept in
    meter_reading_keys even after the reading's partition was archived) and its register neighbours."""

    payload_sha256: bytes | None = None
    prev: RegisterPoint | None = None
    next_: RegisterPoint | None = None


@dataclass(frozen=True, slots=True)
class AcceptedRow:
    index: int
    signed: SignedReading
    wallet_address: str


@dataclass(frozen=True, slots=True)
class RejectedRow:
    index: int
    meter_id: str | None
    """None when the edge's claim is not a valid meter id (the ack still echoes the claim)."""
    seq: int | None
    reason: Reason
    detail: str
    payload: bytes

    @property
    def payload_sha256(self) -> bytes:
        return hashlib.sha256(self.payload).digest()


@dataclass(slots=True)
class Plan:
    batch: Batch
    accepted: list[AcceptedRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    quarantine: dict[str, str] = field(default_factory=dict)
    """meter_id → status_reason, for meters caught equivocating in this batch."""

    def reject(self, parsed: Parsed, meter_id: str | None, seq: int | None, reason: Reason, detail: str) -> None:
        self.rejected.append(RejectedRow(parsed.index, meter_id, seq, reason, detail, parsed.item.payload))

    def results(self) -> list[AckItem]:
        """One ack result per batch item, in item order, addressed by the edge's claim."""
        status: dict[int, AckItem] = {}
        items = self.batch.items
        for row in self.accepted:
            item = items[row.index]
            status[row.index] = AckItem(item.meter_id, item.seq, "accepted")
        for index in self.duplicates:
            item = items[index]
            status[index] = AckItem(item.meter_id, item.seq, "duplicate")
        for rej in self.rejected:
            item = items[rej.index]
            status[rej.index] = AckItem(item.meter_id, item.seq, "rejected", rej.reason)
        return [status[i] for i in range(len(items))]


def parse_items(batch: Batch) -> list[Parsed]:
    out: list[Parsed] = []
    for index, item in enumerate(batch.items):
        bad_claim = check_item(item)
        if bad_claim is not None:
            out.append(Parsed(index, item, None, *bad_claim))
            continue
        try:
            signed = parse_payload(item.payload)
        except ProtocolError as exc:
            out.append(Parsed(index, item, None, exc.reason, exc.detail))
            continue
        if signed.key != (item.meter_id, item.seq):
            out.append(Parsed(index, item, None, Reason.MALFORMED,
                              f"the edge claimed {(item.meter_id, item.seq)} but the payload is {signed.key}"))
            continue
        out.append(Parsed(index, item, signed))
    return out


def verify_signatures(parsed: list[Parsed], meter: Callable[[str], MeterRecord | None]) -> frozenset[int]:
    """Indices of the parsed items whose signature verifies with a key valid for them.

    The CPU-bound step (~42 µs per reading). It needs only the registry's keys, not Postgres, so
    the consumer runs it in a worker thread (libsodium releases the GIL) while the previous batch
    commits.
    """
    good: list[int] = []
    for p in parsed:
        signed = p.signed
        if signed is None:
            continue
        record = meter(signed.reading.meter_id)
        if record is not None and record.verifies(signed.reading, signed.message, signed.signature):
            good.append(p.index)
    return frozenset(good)


def classify(batch: Batch, parsed: list[Parsed], verified: Collection[int], context: Mapping[Key, StoredContext],
             meter: Callable[[str], MeterRecord | None], *, limits: Limits, now: int) -> Plan:
    plan = Plan(batch)
    valid: list[tuple[Key, int, Parsed, SignedReading]] = []
    for p in parsed:
        if p.signed is None:
            assert p.reason is not None
            plan.reject(p, *storable_claim(p.item), p.reason, p.detail)
        else:
            valid.append((p.signed.key, p.index, p, p.signed))
    # Ascending seq per meter, so a batch-local predecessor is always decided before its successor.
    valid.sort(key=lambda v: (v[0], v[1]))
    local_payload: dict[Key, bytes] = {}
    local_last: dict[str, RegisterPoint] = {}
    for key, _, p, signed in valid:
        meter_id, seq = key
        ctx = context.get(key) or StoredContext()
        if ctx.payload_sha256 is not None:
            earlier: bytes | None = ctx.payload_sha256
            same = earlier == hashlib.sha256(signed.payload).digest()
        else:
            earlier = local_payload.get(key)
            same = earlier == signed.payload
        if same:
            plan.duplicates.append(p.index)
            continue
        record = meter(meter_id)
        if record is None:
            plan.reject(p, meter_id, seq, Reason.UNKNOWN_METER, f"meter {meter_id!r} is not in the registry")
            continue
        if p.index not in verified:
            plan.reject(p, meter_id, seq, Reason.BAD_SIGNATURE,
                        f"signature does not verify with the registered key of {meter_id!r}")
            continue
        if earlier is not None:
            detail = equivocation_detail(meter_id, seq, batch.batch_id)
            plan.reject(p, meter_id, seq, Reason.EQUIVOCATION, detail)
            plan.quarantine[meter_id] = detail
            continue
        if not record.active or meter_id in plan.quarantine:
            status = "quarantined" if meter_id in plan.quarantine else record.status
            plan.reject(p, meter_id, seq, Reason.SUSPENDED_METER, f"meter {meter_id!r} is {status}")
            continue
        prev = _later(ctx.prev, local_last.get(meter_id))
        reading = signed.reading
        violation = check_reading(reading, capacity_w=record.capacity_w, limits=limits, now=now,
                                  prev=prev, next_=ctx.next_)
        if violation is not None:
            plan.reject(p, meter_id, seq, violation.reason, violation.detail)
            if violation.reason is Reason.OVERLAPPING_INTERVAL:
                plan.quarantine[meter_id] = violation.detail
            continue
        plan.accepted.append(AcceptedRow(p.index, signed, record.wallet_address))
        local_payload[key] = signed.payload
        local_last[meter_id] = RegisterPoint(seq, reading.export_wh, reading.export_register_wh, reading.start,
                                             reading.end)
    return plan


def equivocation_detail(meter_id: str, seq: int, batch_id: str) -> str:
    return (f"equivocation: meter {meter_id!r} signed different bytes for seq {seq} "
            f"than the stored reading (batch {batch_id})")


def _later(a: RegisterPoint | None, b: RegisterPoint | None) -> RegisterPoint | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a.seq > b.seq else b
