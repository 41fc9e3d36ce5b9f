"""A meter that signs the way the GridTokenX smart-meter simulator does (legacy message, base58 signature)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import base58
from nacl.signing import SigningKey

from protocol.meters_csv import MeterRow
from protocol.reading import Reading
from protocol.wire import secret_key_from_seed, sign_reading


@dataclass(frozen=True)
class SimMeter:
    meter_id: str

    @property
    def key(self) -> SigningKey:
        return SigningKey(hashlib.sha256(b"sim" + self.meter_id.encode()).digest())

    @property
    def public_key(self) -> str:
        return base58.b58encode(bytes(self.key.verify_key)).decode()

    @property
    def wallet(self) -> str:
        return base58.b58encode(hashlib.sha256(b"wallet" + self.meter_id.encode()).digest()).decode()

    def row(self) -> MeterRow:
        return MeterRow(self.meter_id, self.public_key, self.wallet, "solar", 10_000)

    def admin_body(self) -> dict[str, Any]:
        return {"meter_id": self.meter_id, "public_key": self.public_key, "wallet_address": self.wallet,
                "meter_type": "solar", "capacity_w": 10_000}

    def phase2(self, when: datetime, surplus_kwh: float) -> tuple[dict[str, Any], bytes]:
        """(JSON body, framed payload) as the GridTokenX simulator builds and signs them: the canonical
        message uses `timestamp.isoformat()` and `{surplus:.6f}`; the signature is base58."""
        stamp = when.astimezone(UTC).isoformat()
        message = (f"GRIDTOKENX_METER_READING\nmeter_serial: {self.meter_id}\ntimestamp: {stamp}\n"
                   f"kwh_amount: {surplus_kwh:.6f}\nwallet: {self.wallet}")
        signature = base58.b58encode(self.key.sign(message.encode()).signature).decode()
        body = {"meter_serial": self.meter_id, "kwh_amount": surplus_kwh, "reading_timestamp": stamp,
                "wallet_address": self.wallet, "meter_signature": signature,
                # fields the gateway also accepts, ignored here
                "voltage": 231.2, "energy_generated": surplus_kwh + 0.5, "meter_id": None}
        return body, message.encode() + b"\n" + signature.encode()

    def v1(self, seq: int, end: int, export_wh: int, register: int) -> bytes:
        _, secret = secret_key_from_seed(hashlib.sha256(b"sim" + self.meter_id.encode()).digest())
        reading = Reading(meter_id=self.meter_id, seq=seq, start=end - 300, end=end, export_wh=export_wh,
                          export_register_wh=register)
        return sign_reading(reading, secret)
