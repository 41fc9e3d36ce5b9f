"""`gridtokenx edge inspect ...`: the field technician's view of a gateway's buffer (thin shell over the modules)."""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edge.inspect import db, maintenance, queries, render, signatures
from edge.inspect import doctor as doctor_mod
from edge.inspect import export as export_mod
from edge.inspect.filters import Filter, FilterError, parse_when
from edge.inspect.models import (
    READING_STATES,
    SOURCES,
    ChangeReport,
    DecodedReading,
    Shown,
    Source,
    VerifyFailure,
    VerifyReport,
)
from protocol import Reason

F = TypeVar("F", bound=Callable[..., Any])
REASONS = [r.value for r in Reason]


def _guard(fn: F) -> F:
    """User errors become one sentence and exit code 1; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (db.BufferUnusable, signatures.KeysError, FilterError) as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.OperationalError as exc:
            raise click.ClickException(f"the buffer could not be read ({exc}); retry, or copy the file "
                                       "and inspect the copy.") from None
        except sqlite3.DatabaseError as exc:
            raise click.ClickException(f"the buffer is damaged ({exc}); copy it aside and let the agent "
                                       "create a new one.") from None

    return cast(F, wrapper)


def _db_option(fn: F) -> F:
    return click.option("--db", "db_path", type=click.Path(path_type=Path, dir_okay=True),
                        default=db.default_buffer_path,
                        show_default=f"${db.BUFFER_ENV} or the agent's --buffer default",
                        help="The agent's SQLite buffer (a copied file works too).")(fn)


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")(fn)


def _filter_options(states: tuple[str, ...], *, until: bool = False,
                    default_note: str = "Default: all of them.") -> Callable[[F], F]:
    def deco(fn: F) -> F:
        opts = [
            click.option("--state", "states", multiple=True, type=click.Choice(states),
                         help=f"Only these (repeatable): {', '.join(states)}. {default_note}"),
            click.option("--meter", help="Only this meter_id."),
            click.option("--reason", type=click.Choice(REASONS), help="Only this reason code."),
            click.option("--since", help="Received at or after: 30m, 2h, 7d, RFC 3339 (…Z) or UTC seconds."),
        ]
        if until:
            opts.append(click.option("--older-than", "until",
                                     help="Received before: 7d (that long ago), RFC 3339 or UTC seconds."))
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


def _filter(states: tuple[str, ...], default: tuple[Source, ...], meter: str | None, reason: str | None,
            since: str | None, until: str | None = None) -> Filter:
    return Filter(sources=cast(tuple[Source, ...], tuple(states) or default), meter=meter, reason=reason,
                  since=parse_when(since) if since else None, until=parse_when(until) if until else None)


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; otherwise a no-op."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda _n: None
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@click.group(name="inspect")
def inspect() -> None:
    """Inspect and repair a gateway's buffer: is data flowing, what is stuck, since when, for which
    meters, and why.

    \b
    Read-only commands (stats, list, show, verify, export) open the buffer read-only and never block
    the running agent. requeue and purge write in short transactions; purge is a dry run unless --apply.
    Works on a copied buffer file with no agent and no network.
    """


@inspect.command()
@_db_option
@click.option("--window", default="5m", show_default=True, help="Forward-rate window: 1m, 5m, 1h …")
@_json_option
@_guard
def stats(db_path: Path, window: str, as_json: bool) -> None:
    """Totals by state, bytes, oldest pending age, per-meter counts, quarantine and drops by reason,
    forward rate."""
    now = time.time()
    seconds = max(1, round(now - parse_when(window, now=now)))
    conn = db.open_readonly(db_path)
    try:
        result = queries.stats(conn, now=now, window_seconds=seconds)
    finally:
        conn.close()
    if as_json:
        click.echo(render.to_json(result))
    else:
        render.stats(_stdout(), result)


@inspect.command(name="list")
@_db_option
@_filter_options(SOURCES)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="At most this many rows.")
@_json_option
@_guard
def list_(db_path: Path, states: tuple[str, ...], meter: str | None, reason: str | None, since: str | None,
          limit: int, as_json: bool) -> None:
    """Rows matching the filters, oldest first: buffered readings, quarantined payloads, drop records."""
    flt = _filter(states, SOURCES, meter, reason, since)
    conn = db.open_readonly(db_path)
    try:
        items = queries.list_rows(conn, flt, limit=limit)
    finally:
        conn.close()
    if as_json:
        click.echo(render.to_json(items))
    else:
        render.rows(_stdout(), items, limit=limit)


def _keys(path: Path | None) -> dict[str, bytes] | None:
    return signatures.load_keys(path) if path is not None else None


_keys_option = click.option("--keys", "keys_path", type=click.Path(path_type=Path),
                            help="Key directory (*.key from `sim keygen`) or meters.csv with public keys.")


@inspect.command()
@_db_option
@click.argument("meter")
@click.argument("seq", type=int)
@_keys_option
@_json_option
@_guard
def show(db_path: Path, meter: str, seq: int, keys_path: Path | None, as_json: bool) -> None:
    """One reading: decoded, its signature status (with --keys), and its forwarding history."""
    keys = _keys(keys_path)
    conn = db.open_readonly(db_path)
    try:
        found = queries.find(conn, meter, seq)
        out: list[Shown] = []
        for row, payload in found:
            status, signed, error = signatures.check(payload, keys) if payload else ("unparseable", None, None)
            decoded = None
            if signed is not None:
                r = signed.reading
                decoded = DecodedReading(format=signed.format, meter_id=r.meter_id, seq=r.seq, start=r.start,
                                         end=r.end, export_wh=r.export_wh, export_register_wh=r.export_register_wh,
                                         import_wh=r.import_wh, import_register_wh=r.import_register_wh,
                                         flags=r.flags, claimed_wallet=signed.claimed_wallet)
            first, last = (queries.reading_sent_times(conn, row.id) if row.source in READING_STATES
                           else (None, None))
            out.append(Shown(row=row, decoded=decoded, parse_error=error,
                             signature=status if payload else "unparseable",
                             first_sent_at=first, last_sent_at=last,
                             batch=queries.batch(conn, row.batch_id) if row.batch_id else None,
                             payload_text=payload.decode("utf-8", errors="replace") if payload
                             else "(not kept for drop records)"))
    finally:
        conn.close()
    if not out:
        raise click.ClickException(f"no reading {meter} seq {seq} in {db_path}: it was acked and deleted, "
                                   f"or never arrived; try `inspect list --meter {meter}`.")
    if as_json:
        click.echo(render.to_json(out))
    else:
        render.shown(_stdout(), out)


_VERIFY_DEFAULT: tuple[Source, ...] = ("pending", "inflight", "rejected", "quarantined")


@inspect.command()
@_db_option
@click.option("--keys", "keys_path", type=click.Path(path_type=Path), required=True,
              help="Key directory (*.key from `sim keygen`) or meters.csv with public keys.")
@_filter_options(_VERIFY_DEFAULT)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(0), help="Failures to list.")
@_json_option
@_guard
def verify(db_path: Path, keys_path: Path, states: tuple[str, ...], meter: str | None, reason: str | None,
           since: str | None, limit: int, as_json: bool) -> None:
    """Re-check every stored payload's Ed25519 signature against the meters' public keys.

    Exit code 1 when any signature is invalid or any meter is unknown."""
    keys = signatures.load_keys(keys_path)
    flt = _filter(states, _VERIFY_DEFAULT, meter, reason, since)
    counts = {"valid": 0, "invalid": 0, "unknown_meter": 0, "unparseable": 0}
    failures: list[VerifyFailure] = []
    conn = db.open_readonly(db_path)
    try:
        with _progress(queries.count_rows(conn, flt), "verifying") as advance:
            for row, payload in queries.iter_rows(conn, flt, with_payload=True):
                status, _, error = signatures.check(payload or b"", keys)
                counts[status] += 1
                if status != "valid" and len(failures) < limit:
                    failures.append(VerifyFailure(source=row.source, id=row.id, meter_id=row.meter_id,
                                                  seq=row.seq, status=status, detail=error))
                advance(1)
    finally:
        conn.close()
    report = VerifyReport(checked=sum(counts.values()), failures=failures, failures_shown=len(failures), **counts)
    if as_json:
        click.echo(render.to_json(report))
    else:
        render.verify(_stdout(), report)
    if report.invalid or report.unknown_meter:
        sys.exit(1)


@inspect.command()
@_db_option
@_filter_options(SOURCES)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="Output file; - is stdout.")
@click.option("--decode", is_flag=True, help="Add the decoded reading fields (format, interval, Wh, flags).")
@click.option("--json", "as_json", is_flag=True,
              help="End with a JSON summary {exported, out, format} (on stderr when the rows go to stdout).")
@_guard
def export(db_path: Path, states: tuple[str, ...], meter: str | None, reason: str | None, since: str | None,
           fmt: str, out: Path, decode: bool, as_json: bool) -> None:
    """Stream matching rows (with the exact payload, base64) to CSV or JSONL, in constant memory."""
    flt = _filter(states, SOURCES, meter, reason, since)
    conn = db.open_readonly(db_path)
    try:
        with _progress(queries.count_rows(conn, flt), "exporting") as advance:
            if str(out) == "-":
                n = export_mod.export(conn, flt, sys.stdout, fmt=fmt, decode=decode, progress=advance)  # type: ignore[arg-type]
            else:
                with out.open("w", newline="") as fh:
                    n = export_mod.export(conn, flt, fh, fmt=fmt, decode=decode, progress=advance)  # type: ignore[arg-type]
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps({"exported": n, "out": str(out), "format": fmt}), err=str(out) == "-")
    elif str(out) != "-":
        Console(stderr=True).print(f"exported {n:,} row(s) to {out}")


def _emit_change(report: ChangeReport, as_json: bool) -> None:
    if as_json:
        click.echo(render.to_json(report))
    else:
        render.change(_stdout(), report)


@inspect.command()
@_db_option
@_filter_options(maintenance.REQUEUE_SOURCES)
@click.option("--dry-run", is_flag=True, help="Only show what would be requeued.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@_guard
def requeue(db_path: Path, states: tuple[str, ...], meter: str | None, reason: str | None, since: str | None,
            dry_run: bool, yes: bool, as_json: bool) -> None:
    """Put rejected readings and quarantined payloads back to pending, so the agent forwards them again.

    A quarantined payload is parsed again and moves into the buffer only if it is now a well-formed reading.
    Equivocation evidence (a second, different payload for a buffered key) is left alone unless
    --reason equivocation asks for it: the cloud would suspend the meter."""
    flt = _filter(states, maintenance.REQUEUE_SOURCES, meter, reason, since)
    if reason is None:
        # Forwarding an equivocating payload makes the cloud suspend the meter: only on explicit request.
        flt = dataclasses.replace(flt, exclude_reasons=(Reason.EQUIVOCATION.value,))
    if as_json and not (yes or dry_run):
        raise click.ClickException("--json cannot ask for confirmation: add --yes (or --dry-run).")
    conn = db.open_writer(db_path)
    try:
        report, keys = maintenance.plan(conn, flt, "requeue")
        if dry_run or not keys:
            _emit_change(report, as_json)
            return
        if not yes:
            render.change(_stdout(), report)
            click.confirm(f"Requeue {report.matched:,} row(s)?", abort=True)
        with _progress(len(keys), "requeueing") as advance:
            changed, skipped = maintenance.requeue(conn, keys, progress=advance)
    finally:
        conn.close()
    _emit_change(ChangeReport(**{**_fields(report), "applied": True, "changed": changed, "skipped": skipped}),
                 as_json)


def _fields(report: ChangeReport) -> dict[str, Any]:
    return {f: getattr(report, f) for f in report.__struct_fields__}


@inspect.command()
@_db_option
@_filter_options(SOURCES, until=True, default_note="Required: say what to purge.")
@click.option("--apply", is_flag=True, help="Really delete (default: dry run, shows what would go).")
@click.option("--yes", is_flag=True, help="With --apply: do not ask for confirmation.")
@_json_option
@_guard
def purge(db_path: Path, states: tuple[str, ...], meter: str | None, reason: str | None, since: str | None,
          until: str | None, apply: bool, yes: bool, as_json: bool) -> None:
    """Delete rejected readings, quarantined payloads or drop records by filter. DRY RUN unless --apply.

    Deleting pending/inflight readings (never acked by the cloud) needs --older-than and leaves a drop
    record with reason `expired`, so nothing disappears silently."""
    if not states:
        raise click.ClickException("say what to purge with --state (rejected, quarantined, dropped, "
                                   "pending, inflight); repeat it for several.")
    if {"pending", "inflight"} & set(states) and not until:
        raise click.ClickException("purging pending/inflight readings loses data the cloud never saw: "
                                   "add --older-than (e.g. 7d) to limit it to stale rows.")
    if yes and not apply:
        raise click.ClickException("--yes only skips the confirmation of --apply; add --apply to delete.")
    if as_json and apply and not yes:
        raise click.ClickException("--json cannot ask for confirmation: add --yes.")
    flt = _filter(states, SOURCES, meter, reason, since, until)
    conn = db.open_writer(db_path) if apply else db.open_readonly(db_path)
    try:
        report, keys = maintenance.plan(conn, flt, "purge")
        if not apply or not keys:
            _emit_change(report, as_json)
            return
        if not yes:
            render.change(_stdout(), report)
            click.confirm(f"Delete {report.matched:,} row(s)? This cannot be undone", abort=True)
        with _progress(len(keys), "deleting") as advance:
            deleted = maintenance.purge(conn, keys, progress=advance)
    finally:
        conn.close()
    _emit_change(ChangeReport(**{**_fields(report), "applied": True, "changed": deleted,
                                 "skipped": report.matched - deleted}), as_json)


@inspect.command(name="doctor")
@_db_option
@click.option("--edge-broker-url", envvar="GRIDTOKENX_EDGE_BROKER_URL", show_envvar=True,
              help="The agent's edge broker URL (mqtt://user:pass@host:port).")
@click.option("--cloud-broker-url", envvar="GRIDTOKENX_CLOUD_BROKER_URL", show_envvar=True,
              help="The agent's cloud broker URL (mqtt[s]://gateway:pass@host:port).")
@click.option("--inspector-url", envvar="GRIDTOKENX_EDGE_INSPECTOR_URL", show_envvar=True,
              help="Edge broker URL with the edge-inspector user, for $SYS (default: --edge-broker-url).")
@click.option("--quota-rows", type=int, envvar="GRIDTOKENX_EDGE_MAX_ROWS", help="The agent's row quota.")
@click.option("--quota-bytes", type=int, envvar="GRIDTOKENX_EDGE_MAX_BYTES", help="The agent's byte quota.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per broker check.")
@_json_option
@_guard
def doctor(db_path: Path, edge_broker_url: str | None, cloud_broker_url: str | None, inspector_url: str | None,
           quota_rows: int | None, quota_bytes: int | None, timeout: float, as_json: bool) -> None:
    """Check everything data flow needs: brokers reachable with the configured credentials, buffer
    writable, WAL on, disk space, quota headroom, clocks. One line each; exit code 1 on any FAIL."""
    results = doctor_mod.run(doctor_mod.DoctorConfig(
        buffer=db_path, edge_broker=edge_broker_url, cloud_broker=cloud_broker_url, inspector=inspector_url,
        quota_rows=quota_rows, quota_bytes=quota_bytes, timeout=timeout))
    if as_json:
        click.echo(render.to_json(results))
    else:
        render.checks(_stdout(), results)
    if any(c.status == "FAIL" for c in results):
        sys.exit(1)


COMMANDS: list[click.Command] = [inspect]
