"""`gridtokenx edge inspect` on a buffer with known contents (real schema, real signed payloads):
each command's JSON checked against what was put in, bad input refused in one sentence."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import base58
import pytest
from click.testing import CliRunner

from edge.inspect.cli import inspect
from protocol.keys import MeterKey, encode_key
from tests.edge.inspect_fixtures import Known, build_known

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def known(tmp_path: Path) -> Known:
    return build_known(tmp_path / "buffer.sqlite")


def run(*args: str, code: int = 0, stdin: str | None = None) -> str:
    result = CliRunner().invoke(inspect, list(args), input=stdin)
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code))


def count(path: Path, sql: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_stats_json_matches_the_known_contents(known: Known) -> None:
    s = run_json("stats", "--db", str(known.path))
    by_state = {t["state"]: t["rows"] for t in s["totals"]}
    assert by_state == {"pending": 6, "inflight": 2, "rejected": 1}
    assert s["buffered_rows"] == 9
    with closing(sqlite3.connect(known.path)) as conn:
        assert s["buffered_bytes"] == conn.execute("SELECT sum(length(payload)) FROM readings").fetchone()[0]
    assert s["gateway_id"] == "gw-known"
    assert s["oldest_pending_at"] == pytest.approx(known.now - 600)
    assert 599 < s["oldest_pending_age_seconds"] < 700
    meters = {m["meter_id"]: m for m in s["meters"]}
    assert {k: (m["buffered"], m["rejected"], m["max_seq"]) for k, m in meters.items()} == {
        "m00000": (5, 0, 4), "m00001": (3, 1, 2), "m00002": (1, 0, 0)}
    assert meters["m00001"]["last_seen"] == pytest.approx(known.now - 250)
    assert {q["reason"]: q["rows"] for q in s["quarantine"]} == {"malformed": 1, "bad_signature": 1}
    assert {d["reason"]: d["rows"] for d in s["drops"]} == {"quota_dropped": 2, "expired": 1}
    # Only b-0 was acked in the last 5 minutes (b-old is two hours old, b-1 is still in flight).
    assert s["forward"] == {"window_seconds": 300, "batches_acked": 1, "readings_acked": 9,
                            "readings_rejected": 1, "per_minute": 2.0, "batches_unacked": 1}
    assert s["counters"] == {"acked": 59, "received": 24, "rejected": 1}
    assert run_json("stats", "--db", str(known.path), "--window", "3h")["forward"]["readings_acked"] == 59


def test_stats_table_on_a_terminal_names_the_essentials(known: Known) -> None:
    text = run("stats", "--db", str(known.path))
    for needle in ("pending", "inflight", "rejected", "m00001", "bad_signature", "quota_dropped", "Oldest pending"):
        assert needle in text


def test_list_filters(known: Known) -> None:
    db = str(known.path)
    everything = run_json("list", "--db", db, "--limit", "100")
    assert len(everything) == 9 + 2 + 3
    assert [r["received_at"] for r in everything] == sorted(r["received_at"] for r in everything)
    rejected = run_json("list", "--db", db, "--state", "rejected")
    assert [(r["meter_id"], r["seq"], r["reason"], r["batch_id"]) for r in rejected] == [
        ("m00001", 2, "capacity_exceeded", "b-0")]
    pending = run_json("list", "--db", db, "--meter", "m00000", "--state", "pending")
    assert [r["seq"] for r in pending] == [0, 1, 2, 3, 4]
    assert [(r["source"], r["seq"]) for r in run_json("list", "--db", db, "--reason", "quota_dropped")] == [
        ("dropped", 100), ("dropped", 101)]
    quarantined = run_json("list", "--db", db, "--state", "quarantined")
    assert [(r["reason"], r["topic"]) for r in quarantined] == [
        ("malformed", "meters/m00009/readings"), ("bad_signature", "meters/m00002/readings")]
    recent = run_json("list", "--db", db, "--since", "270s")
    assert {(r["meter_id"], r["seq"]) for r in recent} == {("m00001", 2), ("m00002", 0)}
    assert len(run_json("list", "--db", db, "--limit", "3")) == 3


def test_show_decodes_checks_the_signature_and_gives_the_history(known: Known, tmp_path: Path) -> None:
    keys = str(known.keys_csv(tmp_path / "meters.csv"))
    [shown] = run_json("show", "--db", str(known.path), "m00001", "1", "--keys", keys)
    assert shown["row"]["source"] == "inflight"
    assert shown["decoded"]["format"] == "v1"
    assert shown["decoded"]["seq"] == 1
    assert shown["decoded"]["export_wh"] == 100 + 37
    assert shown["signature"] == "valid"
    assert shown["first_sent_at"] == pytest.approx(known.now - 240)
    assert shown["batch"]["batch_id"] == "b-1"
    assert shown["batch"]["acked_at"] is None
    assert shown["batch"]["sends"] == 2
    [tampered] = run_json("show", "--db", str(known.path), "m00002", "0", "--keys", keys)
    assert tampered["signature"] == "invalid"
    [unchecked] = run_json("show", "--db", str(known.path), "m00000", "0")
    assert unchecked["signature"] == "not_checked"
    # m00000 seq 100 exists only as a drop record: shown, but with no payload to decode.
    [dropped] = run_json("show", "--db", str(known.path), "m00000", "100")
    assert dropped["row"]["source"] == "dropped"
    assert dropped["decoded"] is None
    result = CliRunner().invoke(inspect, ["show", "--db", str(known.path), "m00000", "55"])
    assert result.exit_code == 1
    assert "no reading m00000 seq 55" in result.output


def test_verify_with_meters_csv_and_with_a_key_directory(known: Known, tmp_path: Path) -> None:
    csv_path = known.keys_csv(tmp_path / "meters.csv")
    report = run_json("verify", "--db", str(known.path), "--keys", str(csv_path), code=1)
    # 9 buffered + 2 quarantined; the tampered reading fails, the junk does not parse; m00002 seq 7
    # (quarantined as bad_signature) is in fact validly signed.
    assert {k: report[k] for k in ("checked", "valid", "invalid", "unknown_meter", "unparseable")} == {
        "checked": 11, "valid": 9, "invalid": 1, "unknown_meter": 0, "unparseable": 1}
    assert {(f["meter_id"], f["status"]) for f in report["failures"]} == {("m00002", "invalid"),
                                                                          ("m00009", "unparseable")}
    keydir = tmp_path / "keys"
    keydir.mkdir()
    for m in known.meters[:2]:  # m00002's key missing: its readings are unknown_meter
        (keydir / f"{m.meter_id}.key").write_bytes(encode_key(MeterKey(
            meter_id=m.meter_id, secret_seed="1" * 32, public_key=base58.b58encode(m.public_key).decode(),
            mqtt_password="x", wallet_address="w", meter_type="solar", capacity_w=5000)))
    report = run_json("verify", "--db", str(known.path), "--keys", str(keydir), "--state", "pending", code=1)
    assert (report["checked"], report["valid"], report["unknown_meter"]) == (6, 5, 1)
    clean = run_json("verify", "--db", str(known.path), "--keys", str(csv_path), "--meter", "m00000")
    assert (clean["checked"], clean["valid"]) == (5, 5)


def test_export_jsonl_and_csv_carry_the_exact_bytes(known: Known, tmp_path: Path) -> None:
    import base64

    out = tmp_path / "out.jsonl"
    run("export", "--db", str(known.path), "--out", str(out), "--decode")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 14
    tampered = next(x for x in lines if x["meter_id"] == "m00002" and x["seq"] == 0)
    assert base64.b64decode(tampered["payload"]) == known.tampered
    assert tampered["reading"]["export_wh"] == 900
    text = run("export", "--db", str(known.path), "--format", "csv", "--state", "rejected", "--state", "dropped")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["source"], r["seq"], r["reason"]) for r in rows] == [
        ("rejected", "2", "capacity_exceeded"), ("dropped", "100", "quota_dropped"),
        ("dropped", "101", "quota_dropped"), ("dropped", "102", "expired")]


def test_export_streams_in_chunks(known: Known, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.inspect import queries

    monkeypatch.setattr(queries, "CHUNK", 2)
    text = run("export", "--db", str(known.path), "--state", "pending")
    assert [json.loads(line)["seq"] for line in text.splitlines()] == [0, 1, 2, 3, 4, 0]


def test_purge_is_a_dry_run_by_default(known: Known) -> None:
    before = known.path.read_bytes()
    report = run_json("purge", "--db", str(known.path), "--state", "quarantined", "--state", "dropped")
    assert report["applied"] is False
    assert report["matched"] == 5
    assert report["by_source"] == {"quarantined": 2, "dropped": 3}
    assert known.path.read_bytes() == before
    assert count(known.path, "SELECT count(*) FROM quarantine") == 2
    # Even the interactive --apply deletes nothing when the answer is no.
    run("purge", "--db", str(known.path), "--state", "dropped", "--apply", stdin="n\n", code=1)
    assert count(known.path, "SELECT count(*) FROM drops") == 3


def test_purge_apply_deletes_exactly_the_filter(known: Known) -> None:
    report = run_json("purge", "--db", str(known.path), "--state", "dropped", "--reason", "quota_dropped",
                      "--apply", "--yes")
    assert (report["applied"], report["changed"]) == (True, 2)
    assert count(known.path, "SELECT count(*) FROM drops") == 1
    run("purge", "--db", str(known.path), "--state", "quarantined", "--apply", stdin="y\n")
    assert count(known.path, "SELECT count(*) FROM quarantine") == 0


def test_purging_unacked_readings_needs_older_than_and_leaves_drop_records(known: Known) -> None:
    result = CliRunner().invoke(inspect, ["purge", "--db", str(known.path), "--state", "pending", "--apply"])
    assert result.exit_code == 1
    assert "--older-than" in result.output
    report = run_json("purge", "--db", str(known.path), "--state", "pending", "--older-than", "8m",
                      "--apply", "--yes")
    assert report["changed"] == 5  # m00000's five (10 min old); m00002 seq 0 is younger
    assert count(known.path, "SELECT count(*) FROM readings WHERE state = 'pending'") == 1
    assert count(known.path, "SELECT count(*) FROM drops WHERE reason = 'expired' AND detail LIKE 'purged%'") == 5


def test_requeue_moves_rejected_and_parseable_quarantined_rows_to_pending(known: Known) -> None:
    plan = run_json("requeue", "--db", str(known.path), "--dry-run")
    assert (plan["applied"], plan["matched"]) == (False, 3)
    assert count(known.path, "SELECT count(*) FROM readings WHERE state = 'rejected'") == 1
    max_id = count(known.path, "SELECT max(id) FROM readings")
    report = run_json("requeue", "--db", str(known.path), "--yes")
    assert (report["applied"], report["changed"], report["skipped"]) == (True, 2, 1)  # the junk stays
    assert count(known.path, "SELECT count(*) FROM readings WHERE state = 'rejected'") == 0
    assert count(known.path, "SELECT count(*) FROM readings WHERE state = 'pending'") == 8
    # Both went to the back of the forwarding queue, the rejected one with its history and no reason.
    with closing(sqlite3.connect(known.path)) as conn:
        moved = conn.execute("SELECT meter_id, seq, id > ?, reason, attempts FROM readings "
                             "WHERE (meter_id, seq) IN (VALUES ('m00001', 2), ('m00002', 7)) ORDER BY seq",
                             (max_id,)).fetchall()
        assert moved == [("m00001", 2, 1, None, 1), ("m00002", 7, 1, None, 0)]
        assert conn.execute("SELECT payload FROM readings WHERE seq = 7").fetchone()[0] == known.requeueable
        assert conn.execute("SELECT reason FROM quarantine").fetchall() == [("malformed",)]


def test_requeue_asks_first(known: Known) -> None:
    run("requeue", "--db", str(known.path), "--state", "rejected", stdin="n\n", code=1)
    assert count(known.path, "SELECT count(*) FROM readings WHERE state = 'rejected'") == 1
    result = CliRunner().invoke(inspect, ["requeue", "--db", str(known.path), "--json"])
    assert result.exit_code == 1
    assert "--yes" in result.output


def test_doctor_on_a_copied_file_with_no_brokers(known: Known, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GRIDTOKENX_EDGE_BROKER_URL", "GRIDTOKENX_CLOUD_BROKER_URL", "GRIDTOKENX_EDGE_INSPECTOR_URL"):
        monkeypatch.delenv(var, raising=False)
    checks = {c["name"]: c for c in run_json("doctor", "--db", str(known.path))}
    assert checks["WAL"]["status"] == "OK"
    assert checks["writable"]["status"] == "OK"
    assert checks["disk"]["status"] == "OK"
    # 8 of 10 backlog rows (pending + inflight) used: a warning, with the fix.
    assert checks["quota"]["status"] == "WARN"
    assert "rows 8/10" in checks["quota"]["detail"]
    assert checks["edge broker"]["status"] == "SKIP"
    assert checks["cloud broker"]["status"] == "SKIP"
    with closing(sqlite3.connect(known.path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    checks = {c["name"]: c for c in run_json("doctor", "--db", str(known.path), "--quota-rows", "8", code=1)}
    assert checks["WAL"]["status"] == "FAIL"
    assert checks["WAL"]["fix"]
    assert checks["quota"]["status"] == "FAIL"


# --- bad input: one sentence, non-zero exit, no traceback, through the real console script ----------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridtokenx", "edge", "inspect", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def _one_sentence_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]


def test_bad_input_is_one_clear_sentence(tmp_path: Path) -> None:
    _one_sentence_error(_cli("stats", "--db", str(tmp_path / "nope.sqlite")), "does not exist")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just text\n" * 200)
    _one_sentence_error(_cli("stats", "--db", str(junk)), "is not an SQLite database")
    newer = tmp_path / "newer.sqlite"
    build_known(newer)
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA user_version = 2")
    for command in ("stats", "list", "export", "requeue"):
        _one_sentence_error(_cli(command, "--db", str(newer)), "newer edge agent (buffer schema version 2")
    other = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
    _one_sentence_error(_cli("stats", "--db", str(other)), "not an edge buffer")


def test_missing_file_is_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    for args in (("stats",), ("purge", "--state", "dropped", "--apply", "--yes"), ("requeue", "--yes")):
        result = CliRunner().invoke(inspect, [*args, "--db", str(missing)])
        assert result.exit_code == 1
        assert "does not exist" in result.output
    assert not missing.exists()


def test_reason_choices_are_the_protocol_enum() -> None:
    from protocol import Reason

    result = CliRunner().invoke(inspect, ["list", "--reason", "nonsense"])
    assert result.exit_code == 2
    for reason in Reason:
        assert reason.value in result.output


def test_a_reader_never_blocks_the_agents_writes(known: Known) -> None:
    from edge.inspect import db, queries
    from edge.inspect.filters import Filter

    reader = db.open_readonly(known.path)
    writer = sqlite3.connect(known.path, isolation_level=None, timeout=0)  # fail at once if locked
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        reader.execute("BEGIN")
        stream = queries.iter_rows(reader, Filter(sources=("pending",)), chunk=2)
        first = next(stream)  # a read snapshot is open mid-export
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE readings SET state = 'inflight' WHERE state = 'pending'")
        writer.execute("COMMIT")
        assert first[0].source == "pending"
        assert len(list(stream)) == 5  # the reader still sees its snapshot
        reader.execute("COMMIT")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM readings")
    finally:
        reader.close()
        writer.close()


def test_requeue_leaves_equivocation_evidence_unless_asked(known: Known) -> None:
    from gridtokenx.harness.standin import reading_payload

    evidence = reading_payload(known.meters[2], 8)
    with closing(sqlite3.connect(known.path)) as conn:
        conn.execute("INSERT INTO quarantine (topic, payload, meter_id, seq, reason, detail, received_at) "
                     "VALUES ('meters/m00002/readings', ?, 'm00002', 8, 'equivocation', 'second payload', ?)",
                     (evidence, known.now))
        conn.commit()
    report = run_json("requeue", "--db", str(known.path), "--state", "quarantined", "--yes")
    assert report["by_reason"] == {"malformed": 1, "bad_signature": 1}
    assert count(known.path, "SELECT count(*) FROM quarantine WHERE reason = 'equivocation'") == 1
    report = run_json("requeue", "--db", str(known.path), "--reason", "equivocation", "--yes")
    assert (report["matched"], report["changed"]) == (1, 1)
    assert count(known.path, "SELECT count(*) FROM readings WHERE meter_id = 'm00002' AND seq = 8") == 1
