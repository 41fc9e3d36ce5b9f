"""Drawing reports for people (rich tables) and for scripts (one JSON document on stdout)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from rich.console import Console
from rich.table import Table

from edge.inspect.models import ChangeReport, Check, Row, Shown, Stats, VerifyReport

#: The per-meter table on a terminal shows the meters with the most buffered rows; --json has all.
METERS_SHOWN = 20
_encoder = msgspec.json.Encoder()


def to_json(value: object) -> str:
    return msgspec.json.format(_encoder.encode(value), indent=2).decode()


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def stats(console: Console, s: Stats) -> None:
    console.print(f"[bold]{s.db}[/]  gateway {s.gateway_id or '?'}  schema v{s.schema_version}  "
                  f"file {size(s.file_bytes)} + WAL {size(s.wal_bytes)}")
    t = Table(title="Buffered readings", title_justify="left")
    for col in ("state", "rows", "bytes"):
        t.add_column(col, justify="right" if col != "state" else "left")
    for total in s.totals:
        t.add_row(total.state, f"{total.rows:,}", size(total.bytes))
    t.add_row("[bold]total", f"[bold]{s.buffered_rows:,}", f"[bold]{size(s.buffered_bytes)}")
    console.print(t)
    quota = [f"{s.meta[k]} {unit}" for k, unit in (("quota_max_rows", "rows"), ("quota_max_bytes", "bytes"))
             if k in s.meta]
    if quota:
        console.print(f"Agent quota: {' / '.join(quota)} ({s.meta.get('quota_policy', '?')}), "
                      f"TTL {s.meta.get('ttl_seconds', '?')} s")
    oldest = (f"{age(s.oldest_pending_age_seconds)} ago ({when(s.oldest_pending_at)})"
              if s.oldest_pending_at is not None else "none pending")
    console.print(f"Oldest pending: {oldest}")
    f = s.forward
    console.print(f"Forwarding, last {f.window_seconds // 60} min: {f.readings_acked:,} acked, "
                  f"{f.readings_rejected:,} rejected in {f.batches_acked:,} batches "
                  f"({f.per_minute:,.1f}/min); {f.batches_unacked} batch(es) awaiting ack")
    if s.meters:
        t = Table(title=f"Meters with buffered rows ({len(s.meters)}; top {min(METERS_SHOWN, len(s.meters))})",
                  title_justify="left")
        for col in ("meter", "buffered", "rejected", "max seq", "last seen"):
            t.add_column(col, justify="left" if col == "meter" else "right")
        for m in sorted(s.meters, key=lambda m: (-m.buffered, m.meter_id))[:METERS_SHOWN]:
            t.add_row(m.meter_id, f"{m.buffered:,}", f"{m.rejected:,}", str(m.max_seq),
                      f"{age(s.generated_at - m.last_seen)} ago")
        console.print(t)
    for title, counts in (("Quarantine", s.quarantine), ("Drops", s.drops)):
        if not counts:
            console.print(f"{title}: none")
            continue
        t = Table(title=title, title_justify="left")
        for col in ("reason", "rows", "last"):
            t.add_column(col, justify="left" if col == "reason" else "right")
        for c in counts:
            t.add_row(c.reason, f"{c.rows:,}", when(c.last_at))
        console.print(t)
    if s.counters:
        console.print("Counters: " + ", ".join(f"{k}={v:,}" for k, v in s.counters.items()))


def rows(console: Console, items: list[Row], *, limit: int) -> None:
    t = Table(title_justify="left")
    for col in ("source", "id", "meter", "seq", "size", "received", "reason", "batch", "tries"):
        t.add_column(col, no_wrap=True)
    t.add_column("detail", overflow="fold")
    for r in items:
        t.add_row(r.source, str(r.id), r.meter_id or "?", "" if r.seq is None else str(r.seq), str(r.size),
                  when(r.received_at), r.reason or "", r.batch_id or "", str(r.attempts), (r.detail or "")[:60])
    console.print(t)
    more = " (limit reached; raise --limit or narrow the filters)" if len(items) >= limit else ""
    console.print(f"{len(items)} row(s){more}")


def shown(console: Console, items: list[Shown]) -> None:
    for s in items:
        r = s.row
        console.print(f"[bold]{r.meter_id} seq {r.seq}[/]: {r.source} (row {r.id}), {r.size} bytes, "
                      f"received {when(r.received_at)}")
        if r.reason:
            console.print(f"  reason: {r.reason}" + (f" — {r.detail}" if r.detail else ""))
        if s.decoded is not None:
            d = s.decoded
            console.print(f"  reading ({d.format}): interval {when(d.start)} → {when(d.end)}, "
                          f"export {d.export_wh} Wh, register {d.export_register_wh}, import {d.import_wh}, "
                          f"flags {d.flags}" + (f", claimed wallet {d.claimed_wallet}" if d.claimed_wallet else ""))
        elif s.parse_error:
            console.print(f"  payload does not parse: {s.parse_error}")
        console.print(f"  signature: {s.signature}")
        if r.source in ("pending", "inflight", "rejected"):
            console.print(f"  sent {r.attempts} time(s); first {when(s.first_sent_at)}, last {when(s.last_sent_at)}")
        if s.batch is not None:
            b = s.batch
            status = f"acked {when(b.acked_at)}" if b.acked_at else "awaiting ack"
            console.print(f"  batch {b.batch_id}: {b.items} items, sent {b.sends}×, last {when(b.last_sent_at)}, "
                          f"{status} ({b.accepted} accepted, {b.rejected} rejected)")
        elif r.batch_id:
            console.print(f"  batch {r.batch_id}: no longer in the history (pruned after a week)")
        if r.dropped_at:
            console.print(f"  dropped {when(r.dropped_at)}")
        console.print(f"  payload: {s.payload_text}")


def verify(console: Console, report: VerifyReport) -> None:
    console.print(f"checked {report.checked:,}: {report.valid:,} valid, {report.invalid:,} invalid, "
                  f"{report.unknown_meter:,} unknown meter, {report.unparseable:,} unparseable")
    if report.failures:
        t = Table(title=f"Failures (first {report.failures_shown})", title_justify="left")
        for col in ("source", "id", "meter", "seq", "status", "detail"):
            t.add_column(col, overflow="fold")
        for f in report.failures:
            t.add_row(f.source, str(f.id), f.meter_id or "?", "" if f.seq is None else str(f.seq), f.status,
                      (f.detail or "")[:80])
        console.print(t)


def change(console: Console, report: ChangeReport) -> None:
    verb = {"requeue": "requeue", "purge": "delete"}[report.action]
    head = (f"{'Done' if report.applied else 'Would ' + verb}: {report.matched:,} row(s), "
            f"{size(report.matched_bytes)}")
    console.print(head)
    if report.by_source:
        console.print("  by source: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.by_source.items())))
        console.print("  by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.by_reason.items())))
    if report.applied:
        console.print(f"  changed {report.changed:,}, skipped {report.skipped:,}")
    if report.sample and not report.applied:
        rows(console, report.sample, limit=len(report.sample) + 1)


def checks(console: Console, items: list[Check]) -> None:
    colour = {"OK": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "dim"}
    for c in items:
        fix = f"  → {c.fix}" if c.fix and c.status != "OK" else ""
        console.print(f"[{colour[c.status]}]{c.status:<4}[/] {c.name:<13} {c.detail}{fix}", highlight=False)


