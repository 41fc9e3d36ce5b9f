"""`export`: stream matching rows to CSV or JSONL, chunk by chunk, so a day of 1M rows never sits in memory."""

from __future__ import annotations

import base64
import csv
import sqlite3
from collections.abc import Callable
from typing import Literal, TextIO

import msgspec

from edge.inspect import queries
from edge.inspect.filters import Filter
from edge.inspect.models import Row
from protocol import ProtocolError, parse_payload

Format = Literal["csv", "jsonl"]

COLUMNS = ("source", "id", "meter_id", "seq", "size", "received_at", "reason", "detail", "batch_id", "attempts",
           "reading_end", "dropped_at", "topic")
DECODED = ("format", "start", "end", "export_wh", "export_register_wh", "import_wh", "import_register_wh", "flags")


class ExportRow(Row, frozen=True, omit_defaults=True):
    """A `list` row plus the payload and its decoded reading: one JSONL line."""

    payload: str | None = None
    """base64 of the meter's exact bytes (absent for drop records, which keep none)."""
    reading: dict[str, object] | None = None
    """Decoded fields (with --decode), when the payload parses."""


def _decode(payload: bytes | None) -> dict[str, object] | None:
    if not payload:
        return None
    try:
        signed = parse_payload(payload)
    except ProtocolError:
        return None
    fields = msgspec.structs.asdict(signed.reading)
    return {"format": signed.format, **{k: fields[k] for k in DECODED if k in fields}}


def export(conn: sqlite3.Connection, flt: Filter, out: TextIO, *, fmt: Format, decode: bool = False,
           progress: Callable[[int], None] | None = None) -> int:
    """Write every matching row to `out`; returns the row count."""
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    encoder = msgspec.json.Encoder()
    if writer is not None:
        writer.writerow([*COLUMNS, "payload_b64", *(DECODED if decode else ())])
    written = 0
    for row, payload in queries.iter_rows(conn, flt, with_payload=True):
        b64 = base64.b64encode(payload).decode() if payload else None
        reading = _decode(payload) if decode else None
        if writer is not None:
            values = [getattr(row, c) for c in COLUMNS]
            extra = [(reading or {}).get(c) for c in DECODED] if decode else []
            writer.writerow(["" if v is None else v for v in (*values, b64, *extra)])
        else:
            item = ExportRow(**{c: getattr(row, c) for c in COLUMNS}, payload=b64, reading=reading)
            out.write(encoder.encode(item).decode())
            out.write("\n")
        written += 1
        if progress and written % 1000 == 0:
            progress(1000)
    if progress:
        progress(written % 1000)
    return written
