"""Meter public keys from a key directory (`*.key`, protocol.keys) or a `meters.csv`, and signature checks."""

from __future__ import annotations

from pathlib import Path

import base58
import msgspec

from edge.errors import EdgeError
from edge.inspect.models import SignatureStatus
from protocol import ProtocolError, parse_payload, verify_signed
from protocol.keys import decode_key
from protocol.meters_csv import MetersCsvError, read_public_keys
from protocol.reading import SignedReading


class KeysError(EdgeError):
    """The --keys source cannot be read; the message is one sentence with the fix."""


def _public_key(text: str, where: str) -> bytes:
    try:
        key = base58.b58decode(text.strip())
    except ValueError as exc:
        raise KeysError(f"{where}: public_key is not base58; regenerate it with `gridtokenx sim keygen`.") from exc
    if len(key) != 32:
        raise KeysError(f"{where}: public_key is {len(key)} bytes, not 32; check the file.")
    return key


def load_keys(source: Path) -> dict[str, bytes]:
    """meter_id → 32-byte Ed25519 public key, from a directory of `*.key` files or a meters.csv."""
    if not source.exists():
        raise KeysError(f"{source} does not exist; pass a key directory or a meters.csv with --keys.")
    if source.is_dir():
        return _from_dir(source)
    return _from_csv(source)


def _from_dir(directory: Path) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.key")):
        try:
            key = decode_key(path.read_bytes())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise KeysError(f"{path} is not a meter key file ({exc}); remove it or regenerate it.") from exc
        keys[key.meter_id] = _public_key(key.public_key, str(path))
    if not keys and (directory / "meters.csv").exists():
        return _from_csv(directory / "meters.csv")
    if not keys:
        raise KeysError(f"{directory} holds no *.key files and no meters.csv; point --keys at the sim keygen output.")
    return keys


def _from_csv(path: Path) -> dict[str, bytes]:
    try:
        return read_public_keys(path)
    except MetersCsvError as exc:
        raise KeysError(str(exc)) from exc


def check(payload: bytes, keys: dict[str, bytes] | None) -> tuple[SignatureStatus, SignedReading | None, str | None]:
    """(status, parsed reading or None, why it failed to parse)."""
    try:
        signed = parse_payload(payload)
    except ProtocolError as exc:
        return "unparseable", None, str(exc)
    if keys is None:
        return "not_checked", signed, None
    key = keys.get(signed.reading.meter_id)
    if key is None:
        return "unknown_meter", signed, None
    return ("valid" if verify_signed(signed, key) else "invalid"), signed, None
