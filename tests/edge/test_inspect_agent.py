"""The inspector on a buffer written by the real edge agent (subprocess), with real Mosquittos and the
agent engineer's stand-in cloud: JSON output against what was published and judged, purge's dry run
deletes nothing, requeue makes rejected readings flow again while the agent runs, doctor against live
brokers."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from edge.inspect.cli import inspect
from gridtokenx.harness.standin import Fleet, interleaved, make_meters, meters_csv, reading_payload
from protocol import Reason, topics
from tests.edge.conftest import GATEWAY, Rig
from tests.helpers import wait_for

REJECTED = {("m00001", 3), ("m00001", 4), ("m00002", 9)}


def inspect_json(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(inspect, [*args, "--json"])
    assert result.exit_code == code, (result.output, result.exception)
    return json.loads(result.stdout)


def rows(buffer: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def test_inspect_a_live_agents_buffer_then_requeue_makes_rows_flow(rig: Rig, agent_factory: Any,
                                                                   tmp_path: Path) -> None:
    meters = make_meters(3)
    keys = tmp_path / "meters.csv"
    keys.write_text(meters_csv(meters))
    cloud_rejects = threading.Event()
    cloud_rejects.set()

    def judge(meter_id: str, seq: int, _payload: bytes) -> Reason | None:
        if cloud_rejects.is_set() and (meter_id, seq) in REJECTED:
            return Reason.CAPACITY_EXCEEDED
        return None

    agent = agent_factory().start()
    db = str(agent.buffer)
    with rig.standin(judge=judge) as cloud, Fleet(rig.fleet_url) as fleet:
        fleet.publish([*interleaved(meters, 10), (topics.meter_readings("m00002"), b"not a reading")])
        wait_for(lambda: cloud.seen.unique() == 30, timeout=30, message="30 keys at the stand-in cloud")
        wait_for(lambda: rows(agent.buffer, "SELECT count(*) FROM readings WHERE state != 'rejected'") == [(0,)]
                 and rows(agent.buffer, "SELECT count(*) FROM readings") == [(3,)],
                 timeout=15, message="only the 3 rejected readings left in the buffer")

        # stats: the agent's own numbers, read while it runs.
        s = inspect_json("stats", "--db", db)
        assert {t["state"]: t["rows"] for t in s["totals"]} == {"pending": 0, "inflight": 0, "rejected": 3}
        assert s["gateway_id"] == GATEWAY
        assert s["oldest_pending_at"] is None
        assert {(m["meter_id"], m["buffered"], m["rejected"]) for m in s["meters"]} == {
            ("m00001", 2, 2), ("m00002", 1, 1)}
        assert [(q["reason"], q["rows"]) for q in s["quarantine"]] == [("malformed", 1)]
        assert s["drops"] == []
        assert s["forward"]["readings_acked"] == 27
        assert s["forward"]["readings_rejected"] == 3
        assert s["counters"]["acked"] == 27
        assert s["counters"]["received"] == 31

        listed = inspect_json("list", "--db", db, "--state", "rejected")
        assert {(r["meter_id"], r["seq"]) for r in listed} == REJECTED
        assert {r["reason"] for r in listed} == {"capacity_exceeded"}
        assert inspect_json("list", "--db", db, "--reason", "malformed")[0]["topic"] == "meters/m00002/readings"

        [shown] = inspect_json("show", "--db", db, "m00001", "3", "--keys", str(keys))
        assert shown["decoded"]["export_wh"] == 100 + (3 * 37) % 400
        assert shown["signature"] == "valid"
        assert shown["row"]["attempts"] >= 1
        assert shown["batch"]["acked_at"] is not None
        assert shown["batch"]["rejected"] >= 1

        report = inspect_json("verify", "--db", db, "--keys", str(keys))
        assert (report["checked"], report["valid"], report["unparseable"]) == (4, 3, 1)

        exported = CliRunner().invoke(inspect, ["export", "--db", db, "--state", "rejected"])
        import base64
        payloads = {(x["meter_id"], x["seq"]): base64.b64decode(x["payload"])
                    for x in map(json.loads, exported.stdout.splitlines())}
        by_id = {m.meter_id: m for m in meters}
        assert payloads == {k: reading_payload(by_id[k[0]], k[1]) for k in REJECTED}

        doctor = {c["name"]: c for c in inspect_json(
            "doctor", "--db", db, "--edge-broker-url", rig.edge.url_for("edge-agent"),
            "--cloud-broker-url", rig.cloud.url_for(GATEWAY), "--inspector-url", rig.edge.url_for("edge-inspector"),
            "--timeout", "3")}
        assert {n: c["status"] for n, c in doctor.items()} == {
            "buffer": "OK", "WAL": "OK", "integrity": "OK", "writable": "OK", "disk": "OK", "quota": "OK",
            "meter limits": "OK",
            "meter clocks": "OK",
            "edge broker": "OK", "cloud broker": "OK", "broker clock": "SKIP"}
        assert "rows 0/2,000,000" in doctor["quota"]["detail"]  # the agent's default quota, from meta

        # purge's dry run deletes nothing, even from a live agent's buffer.
        plan = inspect_json("purge", "--db", db, "--state", "rejected", "--state", "quarantined")
        assert (plan["applied"], plan["matched"]) == (False, 4)
        assert rows(agent.buffer, "SELECT count(*) FROM readings") == [(3,)]
        assert rows(agent.buffer, "SELECT count(*) FROM quarantine") == [(1,)]

        # The cloud's rule is fixed; the technician requeues, and the agent forwards them again.
        cloud_rejects.clear()
        items_before = cloud.seen.items
        done = inspect_json("requeue", "--db", db, "--state", "rejected", "--yes")
        assert (done["applied"], done["changed"]) == (True, 3)
        assert rows(agent.buffer, "SELECT count(*) FROM readings WHERE state = 'pending'") == [(3,)]
        # The site keeps running: the meters' next readings arrive while the requeued ones wait.
        fleet.publish(interleaved(meters, 1, first_seq=10))
        wait_for(lambda: rows(agent.buffer, "SELECT count(*) FROM readings") == [(0,)], timeout=20,
                 message="the requeued readings forwarded, acked and deleted")
        assert cloud.seen.items >= items_before + 3 + 3
        assert agent.terminate() == 0
    assert rows(agent.buffer, "SELECT value FROM counters WHERE name = 'acked'") == [(33,)]
    assert inspect_json("stats", "--db", db)["buffered_rows"] == 0


def test_doctor_against_live_brokers(rig: Rig, tmp_path: Path) -> None:
    from tests.edge.inspect_fixtures import build_known

    known = build_known(tmp_path / "buffer.sqlite")
    good = ["--db", str(known.path), "--edge-broker-url", rig.edge.url_for("edge-agent"),
            "--cloud-broker-url", rig.cloud.url_for(GATEWAY),
            "--inspector-url", rig.edge.url_for("edge-inspector"), "--timeout", "3"]
    checks = {c["name"]: c for c in inspect_json("doctor", *good, "--quota-rows", "100")}
    assert checks["edge broker"]["status"] == "OK"
    assert checks["cloud broker"]["status"] == "OK"
    # Mosquitto publishes $SYS (the inspector may read it) but no wall clock: skipped, with the fix.
    assert checks["broker clock"]["status"] == "SKIP"
    assert "mosquitto" in checks["broker clock"]["detail"].lower()
    assert all(c["status"] in ("OK", "SKIP") for c in checks.values()), checks

    wrong_password = f"mqtt://{GATEWAY}:wrong@{rig.cloud.host}:{rig.cloud.port}"
    closed_port = f"mqtt://edge-agent:x@127.0.0.1:{_closed_port()}"
    bad = inspect_json("doctor", "--db", str(known.path), "--edge-broker-url", closed_port,
                       "--cloud-broker-url", wrong_password, "--timeout", "3", code=1)
    checks = {c["name"]: c for c in bad}
    assert checks["cloud broker"]["status"] == "FAIL"
    assert "GRIDTOKENX_CLOUD_BROKER_URL" in checks["cloud broker"]["fix"]
    assert checks["edge broker"]["status"] == "FAIL"
    assert "start the broker" in checks["edge broker"]["fix"]


def _closed_port() -> int:
    from gridtokenx.harness.brokers import free_port

    return free_port()


def test_requeue_flows_on_an_idle_agent(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(1)
    cloud_rejects = threading.Event()
    cloud_rejects.set()
    agent = agent_factory().start()
    with rig.standin(judge=lambda *_: Reason.TOO_OLD if cloud_rejects.is_set() else None) as cloud, \
            Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 3))
        wait_for(lambda: rows(agent.buffer, "SELECT count(*) FROM readings WHERE state = 'rejected'") == [(3,)],
                 timeout=20, message="3 rejected readings")
        cloud_rejects.clear()
        assert inspect_json("requeue", "--db", str(agent.buffer), "--yes")["changed"] == 3
        # No new reading arrives: only the agent noticing the requeue can make these flow.
        wait_for(lambda: rows(agent.buffer, "SELECT count(*) FROM readings") == [(0,)], timeout=10,
                 message="the requeued readings forwarded by an idle agent")
        assert cloud.seen.items == 6
        assert agent.terminate() == 0
