"""The meter key file: one per meter, written by `sim keygen`, mode 0600.

JSON with the meter's Ed25519 seed and public key (base58, as the GridTokenX Phase 2 guide does), its MQTT
password and its registry row. Only the structure lives here; reading and writing files is the
simulator's job.
"""

from __future__ import annotations

import base58
import msgspec

from protocol.wire import secret_key_from_seed


class MeterKey(msgspec.Struct, frozen=True, kw_only=True):
    meter_id: str
    secret_seed: str
    """base58 of the 32-byte Ed25519 seed."""
    public_key: str
    """base58 of the 32-byte Ed25519 public key."""
    mqtt_password: str
    wallet_address: str
    meter_type: str
    capacity_w: int

    def keypair(self) -> tuple[bytes, bytes]:
        """(public_key, libsodium secret_key) as raw bytes."""
        return secret_key_from_seed(base58.b58decode(self.secret_seed))


def decode_key(data: bytes) -> MeterKey:
    return msgspec.json.decode(data, type=MeterKey)


def encode_key(key: MeterKey) -> bytes:
    return msgspec.json.format(msgspec.json.encode(key), indent=2) + b"\n"
