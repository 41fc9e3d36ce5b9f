"""`meters.csv` (written by `gridtokenx sim keygen`): parse and check rows, pure.

Header: meter_id,public_key,wallet_address,meter_type,capacity_w. A bad row becomes a
`RowError` with its line number (1 = the header), never an exception.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import base58

from protocol.errors import ProtocolFailure
from protocol.reading import METER_ID_RE

#: Text PostgreSQL and every report can hold: no control characters, no NUL.
METER_TYPE_RE = re.compile(r"\A[A-Za-z0-9_-]{1,32}\Z")

COLUMNS = ("meter_id", "public_key", "wallet_address", "meter_type", "capacity_w")


@dataclass(frozen=True, slots=True)
class MeterRow:
    meter_id: str
    public_key: str
    wallet_address: str
    meter_type: str
    capacity_w: int


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str


def check_base58_32(text: str, what: str) -> str | None:
    """None when `text` is base58 of exactly 32 bytes, else a sentence saying what is wrong."""
    try:
        raw = base58.b58decode(text.encode())
    except ValueError:
        return f"{what} {text[:60]!r} is not base58"
    if len(raw) != 32:
        return f"{what} decodes to {len(raw)} bytes, not 32"
    return None


#: Broker usernames of the services (docs/brokers.md): never a meter's id, or a meter could log in as one.
SERVICE_ACCOUNTS = frozenset({"edge-agent", "edge-inspector", "sim-fleet", "cloud-consumer"})
#: Gateway ids are cloud-broker usernames; by convention they start with this.
GATEWAY_PREFIX = "gw-"


def reserved_id(meter_id: str) -> bool:
    """A service account's or a gateway's name (case-insensitive), which the registry refuses."""
    lowered = meter_id.lower()
    return lowered in SERVICE_ACCOUNTS or lowered.startswith(GATEWAY_PREFIX)


def check_row(meter_id: str, public_key: str, wallet_address: str, meter_type: str,
              capacity_w: str | int) -> MeterRow | str:
    """A checked row, or the sentence that says why it is not one."""
    if not METER_ID_RE.match(meter_id):
        return f"meter_id {meter_id[:70]!r} is not valid (letters, digits, '.', '_', '-'; at most 64)"
    if reserved_id(meter_id):
        return (f"meter_id {meter_id!r} is reserved for a service account or a gateway "
                f"({', '.join(sorted(SERVICE_ACCOUNTS))}, {GATEWAY_PREFIX}*)")
    for text, what in ((public_key, "public_key"), (wallet_address, "wallet_address")):
        problem = check_base58_32(text, what)
        if problem:
            return problem
    if not METER_TYPE_RE.match(meter_type):
        return (f"meter_type {meter_type[:40]!r} is not valid (letters, digits, '_', '-'; 1 to 32, "
                "e.g. solar, consumer, hybrid, battery)")
    try:
        capacity = int(capacity_w)
    except ValueError:
        return f"capacity_w {capacity_w!r} is not an integer number of watts"
    if capacity < 0:
        return f"capacity_w {capacity} is negative"
    return MeterRow(meter_id, public_key, wallet_address, meter_type, capacity)


def parse(text: str) -> tuple[list[MeterRow], list[RowError]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        return [], [RowError(1, f"the header must be {','.join(COLUMNS)}")]
    rows: list[MeterRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for line, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(COLUMNS):
            errors.append(RowError(line, f"expected {len(COLUMNS)} fields, found {len(fields)}"))
            continue
        checked = check_row(*(f.strip() for f in fields))
        if isinstance(checked, str):
            errors.append(RowError(line, checked))
        elif checked.meter_id in seen:
            errors.append(RowError(line, f"meter_id {checked.meter_id!r} already appears on line "
                                         f"{seen[checked.meter_id]}"))
        else:
            seen[checked.meter_id] = line
            rows.append(checked)
    return rows, errors


class MetersCsvError(ProtocolFailure):
    """A meters.csv that cannot serve as a key source; the message is one sentence with the fix."""


def public_keys(text: str, source: str) -> dict[str, bytes]:
    """meter_id → 32-byte Ed25519 public key from a meters.csv that has at least meter_id and public_key.

    The edge's signature pre-check and the inspector read only these two columns, so a gateway can be
    given a public-key-only export; the full registry rows are checked by `parse` on import.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"meter_id", "public_key"} - {h.strip() for h in reader.fieldnames or ()}
    if missing:
        raise MetersCsvError(f"{source} has no {', '.join(sorted(missing))} column; expected the columns "
                             f"{','.join(COLUMNS)} (the `gridtokenx sim keygen` export).")
    keys: dict[str, bytes] = {}
    for line, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not METER_ID_RE.match(row["meter_id"]):
            raise MetersCsvError(f"{source} line {line}: meter_id {row['meter_id'][:70]!r} is not valid")
        problem = check_base58_32(row["public_key"], "public_key")
        if problem:
            raise MetersCsvError(f"{source} line {line}: {problem}; regenerate it with `gridtokenx sim keygen`.")
        keys[row["meter_id"]] = base58.b58decode(row["public_key"].encode())
    return keys


def read_public_keys(path: Path) -> dict[str, bytes]:
    try:
        return public_keys(path.read_text(), str(path))
    except UnicodeDecodeError as exc:
        raise MetersCsvError(f"{path} is not a text CSV file; pass meters.csv or a key directory.") from exc


def render(rows: Iterable[MeterRow]) -> str:
    """The registry export, header first: what `cloud meters import` and the edge read back."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow((r.meter_id, r.public_key, r.wallet_address, r.meter_type, r.capacity_w))
    return out.getvalue()
