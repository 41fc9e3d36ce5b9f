"""One simulated meter: its key, its model, its persistent counters, and the payloads it publishes.

`Meter.next_interval` is the firmware's interval job: measure, advance seq and registers, sign,
and add any faults the settings ask for. It returns `Outgoing` items in the order they must be
published; the caller persists them (with the new counters) before handing them to the transport,
so a crash can resend an item but never reuse a seq or lower a register.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

import msgspec
from solders.signature import Signature

from protocol import legacy, topics
from protocol.keys import MeterKey
from protocol.reading import Reading
from protocol.wire import encode_v1_message, secret_key_from_seed, sign
from simulator.faults import (
    FUTURE_SECONDS,
    TOO_OLD_SECONDS,
    V1_ONLY,
    Fault,
    FaultRates,
    corrupt_signature,
    malformed_message,
    oversized_message,
)
from simulator.models import MeterModel, MeterType, salt, unit

PayloadFormat = Literal["v1", "legacy"]


@dataclass(slots=True)
class MeterState:
    """What survives a restart: the last seq used, the registers, and the next interval's start."""

    seq: int
    export_register_wh: int
    import_register_wh: int
    next_start: int


@dataclass(slots=True)
class Outgoing:
    """One MQTT message to publish: a good reading, or a fault."""

    meter_id: str
    seq: int
    topic: str
    payload: bytes
    fault: Fault | None = None
    export_wh: int = 0
    register_wh: int | None = None
    id: int = 0
    """Row id in the state store's outbox, assigned when it is persisted."""
    head: bytes = b""
    """Replay mode: the MQTT PUBLISH header and topic, encoded before the run (simulator.publish)."""


def frame(message: bytes, signature: bytes) -> bytes:
    """`protocol.wire.frame`, byte for byte, with a native base58 encoder: the pure-Python one costs
    more than the Ed25519 signature itself on the fleet's hot path (tests check they agree)."""
    return message + b"\n" + str(Signature.from_bytes(signature)).encode()


def initial_state(key: MeterKey, *, start: int, fleet_seed: int) -> MeterState:
    """A meter that has been in service for a while: its registers start at a plausible lifetime value."""
    u = unit(fleet_seed, salt(key.meter_id), 0x1E6)
    exporter = key.meter_type != MeterType.CONSUMER.value
    return MeterState(seq=0, export_register_wh=int(u * 5_000_000) if exporter else 0,
                      import_register_wh=int(u * 8_000_000), next_start=start)


class Meter:
    def __init__(self, key: MeterKey, state: MeterState, *, interval: int, fmt: PayloadFormat,
                 faults: FaultRates, fleet_seed: int, max_reading_wh: int, neighbour: str,
                 utc_offset_hours: float = 7.0) -> None:
        self.key = key
        self.meter_id = key.meter_id
        self.state = state
        self.interval = interval
        self.fmt: PayloadFormat = fmt
        self.topic = topics.meter_readings(key.meter_id)
        self._neighbour_topic = topics.meter_readings(neighbour)
        self._secret = key.keypair()[1]
        self._faults = [(f, r) for f, r in faults.active() if not (fmt == "legacy" and f in V1_ONLY)]
        self._salt = salt(key.meter_id)
        self._seed = fleet_seed
        self.model = MeterModel(meter_id=key.meter_id, meter_type=MeterType(key.meter_type),
                                capacity_w=key.capacity_w, fleet_seed=fleet_seed,
                                utc_offset_hours=utc_offset_hours, max_reading_wh=max_reading_wh)

    @property
    def next_end(self) -> int:
        return self.state.next_start + self.interval

    def next_interval(self, wall_now: int) -> list[Outgoing]:
        """The messages of the next interval, in publish order; advances the state."""
        start = self.state.next_start
        end = start + self.interval
        export_wh, import_wh = self.model.measure(start, end)
        drawn = [f for i, (f, rate) in enumerate(self._faults) if unit(self._seed, self._salt, start, i) < rate]
        out: list[Outgoing] = []
        base = self.state.export_register_wh
        if self.state.seq == 0 and Fault.REGISTER_REGRESSION in drawn:
            # Before the meter's first good reading the cloud has no register to compare with: a
            # lower register would be accepted, and would then make the next good reading mismatch.
            drawn.remove(Fault.REGISTER_REGRESSION)
        for i, fault in enumerate(f for f in drawn if f not in (Fault.REPLAY, Fault.EQUIVOCATION)):
            item = self._fault(fault, start, end, export_wh, base, wall_now, i + 1)
            if item is not None:
                out.append(item)
        self.state.seq += 1
        self.state.export_register_wh += export_wh
        self.state.import_register_wh += import_wh
        self.state.next_start = end
        reading = Reading(meter_id=self.meter_id, seq=self.state.seq, start=start, end=end, export_wh=export_wh,
                          export_register_wh=self.state.export_register_wh, import_wh=import_wh,
                          import_register_wh=self.state.import_register_wh)
        good = self._outgoing(reading, self._sign(reading))
        out.append(good)
        if Fault.REPLAY in drawn:
            out.append(replace(good, fault=Fault.REPLAY))
        if Fault.EQUIVOCATION in drawn:
            other = msgspec.structs.replace(reading, export_wh=export_wh + 1,
                            export_register_wh=self.state.export_register_wh + 1)
            out.append(self._outgoing(other, self._sign(other), Fault.EQUIVOCATION))
        return out

    # --- internals -------------------------------------------------------------------------------

    def _message(self, reading: Reading) -> bytes:
        if self.fmt == "legacy":
            return legacy.format_message(self.meter_id, reading.end, legacy.kwh_text(reading.export_wh),
                                         self.key.wallet_address)
        return encode_v1_message(reading)

    def _sign(self, reading: Reading, message: bytes | None = None, secret: bytes | None = None) -> bytes:
        message = self._message(reading) if message is None else message
        return frame(message, sign(message, secret or self._secret))

    def _outgoing(self, reading: Reading, payload: bytes, fault: Fault | None = None,
                  topic: str | None = None) -> Outgoing:
        seq = reading.end if self.fmt == "legacy" else reading.seq
        return Outgoing(self.meter_id, seq, topic or self.topic, payload, fault, reading.export_wh,
                        reading.export_register_wh)

    def _fault(self, fault: Fault, start: int, end: int, export_wh: int, register: int, wall_now: int,
               nth: int) -> Outgoing | None:
        """A faulty reading with a fresh seq and the current register (see `simulator.faults`)."""
        if fault is Fault.REGISTER_REGRESSION and register == 0:
            return None  # nothing to regress from (consumers export nothing): not injected
        if self.fmt == "legacy":
            # Legacy seq is the timestamp: shift it off the good reading's so keys never collide.
            start, end = start - nth, end - nth
        else:
            self.state.seq += 1
        if fault is Fault.TOO_OLD:
            end = (wall_now - TOO_OLD_SECONDS) // self.interval * self.interval - nth
            start = end - self.interval
        elif fault is Fault.FUTURE:
            end = (wall_now + FUTURE_SECONDS) // self.interval * self.interval + nth
            start = end - self.interval
        energy = {Fault.OVER_MAX: self.model.max_reading_wh + 1 + export_wh,
                  Fault.NEGATIVE: -1 - export_wh}.get(fault, export_wh)
        reading = Reading(meter_id=self.meter_id, seq=self.state.seq, start=start, end=end, export_wh=energy,
                          export_register_wh=register - 1 if fault is Fault.REGISTER_REGRESSION else register)
        if fault is Fault.REGISTER_REGRESSION:
            reading = msgspec.structs.replace(reading, export_wh=0)
        if fault is Fault.WRONG_KEY:
            payload = self._sign(reading, secret=secret_key_from_seed(os.urandom(32))[1])
        elif fault is Fault.BAD_SIGNATURE:
            payload = corrupt_signature(self._sign(reading))
        elif fault is Fault.MALFORMED:
            payload = self._sign(reading, malformed_message(reading, self.key.wallet_address, self.fmt))
        elif fault is Fault.OVERSIZED:
            payload = self._sign(reading, oversized_message(self._message(reading)))
        else:
            payload = self._sign(reading)
        topic = self._neighbour_topic if fault is Fault.WRONG_TOPIC else None
        return self._outgoing(reading, payload, fault, topic)
