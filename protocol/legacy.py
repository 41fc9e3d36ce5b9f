"""The GridTokenX gateway's legacy signed string, accepted from meters already in the field.

    GRIDTOKENX_METER_READING
    meter_serial: {serial}
    timestamp: {RFC 3339, UTC}
    kwh_amount: {kwh:.6f}
    wallet: {base58 wallet}

Mapping to `Reading` (PROTOCOL.md, "Legacy format"): meter_id = serial, seq = the timestamp in
UTC seconds, the interval is the LEGACY_INTERVAL_SECONDS before it, export_wh = kWh × 1000
exactly (a value with a non-zero sub-Wh digit is malformed: Wh is the protocol's unit), no
cumulative register. The wallet is kept as a claim only; the registry decides where tokens go.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import base58

from protocol.errors import ProtocolError
from protocol.reading import METER_ID_RE, Reading
from protocol.reasons import Reason

HEADER = b"GRIDTOKENX_METER_READING\n"
#: The GridTokenX simulator's reading_interval_seconds.
LEGACY_INTERVAL_SECONDS = 300

_KWH_RE = re.compile(r"^-?\d{1,15}\.\d{6}$")
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_FIELDS = ("meter_serial", "timestamp", "kwh_amount", "wallet")


def format_message(serial: str, when: datetime | int, kwh_text: str, wallet: str) -> bytes:
    """The exact bytes a legacy meter signs. `kwh_text` is already `{:.6f}`-formatted."""
    if isinstance(when, int):
        when = datetime.fromtimestamp(when, UTC)
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"GRIDTOKENX_METER_READING\nmeter_serial: {serial}\ntimestamp: {stamp}\n"
        f"kwh_amount: {kwh_text}\nwallet: {wallet}"
    ).encode()


def kwh_text(wh: int) -> str:
    """Integer Wh in the gateway's `{:.6f}` kWh form, computed without floats."""
    sign = "-" if wh < 0 else ""
    whole, frac = divmod(abs(wh), 1000)
    return f"{sign}{whole}.{frac:03d}000"


def parse_message(message: bytes) -> tuple[Reading, str]:
    """Parse a legacy message (without signature) into a reading and the claimed wallet."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(Reason.MALFORMED, "legacy message is not UTF-8") from exc
    lines = text.split("\n")
    if len(lines) != 1 + len(_FIELDS):
        raise ProtocolError(Reason.MALFORMED, f"legacy message has {len(lines)} lines, expected 5")
    values: dict[str, str] = {}
    for name, line in zip(_FIELDS, lines[1:], strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise ProtocolError(Reason.MALFORMED, f"legacy line {line[:40]!r} should start with {prefix!r}")
        values[name] = line[len(prefix) :]

    serial = values["meter_serial"]
    if not METER_ID_RE.match(serial):
        raise ProtocolError(Reason.MALFORMED, f"meter_serial {serial[:80]!r} is not a valid meter id")
    end = _parse_timestamp(values["timestamp"])
    export_wh = _parse_kwh(values["kwh_amount"])
    wallet = values["wallet"]
    try:
        if len(base58.b58decode(wallet)) != 32:
            raise ValueError
    except ValueError as exc:
        raise ProtocolError(Reason.MALFORMED, f"wallet {wallet[:60]!r} is not a base58 public key") from exc
    reading = Reading(
        meter_id=serial, seq=end, start=end - LEGACY_INTERVAL_SECONDS, end=end, export_wh=export_wh
    )
    return reading, wallet


def _parse_timestamp(text: str) -> int:
    if not _TS_RE.match(text):
        raise ProtocolError(Reason.MALFORMED, f"timestamp {text[:40]!r} is not RFC 3339")
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProtocolError(Reason.MALFORMED, f"timestamp {text[:40]!r} is not a valid date") from exc
    seconds = int(when.timestamp())
    if seconds < LEGACY_INTERVAL_SECONDS:
        raise ProtocolError(Reason.MALFORMED, f"timestamp {text!r} is before 1970")
    return seconds


def _parse_kwh(text: str) -> int:
    if not _KWH_RE.match(text):
        raise ProtocolError(Reason.MALFORMED, f"kwh_amount {text[:40]!r} is not a {{:.6f}} decimal")
    whole, frac = text.lstrip("-").split(".")
    if frac[3:] != "000":
        raise ProtocolError(
            Reason.MALFORMED, f"kwh_amount {text} has sub-Wh digits; the protocol's unit is 1 Wh"
        )
    wh = int(whole) * 1000 + int(frac[:3])
    return -wh if text.startswith("-") else wh
