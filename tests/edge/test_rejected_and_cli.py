"""Cloud rejections are kept with their reason; the command line explains itself and its mistakes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from click.testing import CliRunner

from edge.agent_cli import run
from edge.settings import EdgeSettings
from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from protocol.reasons import Reason
from runtime.config import env_names, load
from tests.edge.conftest import ROOT, Rig
from tests.helpers import wait_for


def test_rejected_readings_stay_with_the_reason(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(2)

    def judge(meter_id: str, seq: int, _payload: bytes) -> Reason | None:
        return Reason.OUT_OF_RANGE if seq % 10 == 3 else None

    agent = agent_factory().start()
    with rig.standin(judge=judge) as cloud, Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 50))
        wait_for(lambda: cloud.seen.unique() == 100, timeout=30, message="100 keys at the cloud")
        wait_for(lambda: agent.count("SELECT count(*) FROM readings WHERE state != 'rejected'") == 0,
                 timeout=15, message="only rejected rows left")
        metrics = agent.metrics()
        assert agent.terminate() == 0
    with agent.db() as db:
        rows = db.execute("SELECT meter_id, seq, reason FROM readings ORDER BY meter_id, seq").fetchall()
    assert rows == [(m.meter_id, s, "out_of_range") for m in meters for s in range(3, 50, 10)]
    assert metrics['gridtokenx_edge_rejected_total{reason="out_of_range"}'] == 10
    assert metrics['gridtokenx_edge_buffer_rows{state="rejected"}'] == 10
    assert metrics["gridtokenx_edge_acked_total"] == 90


def test_settings_come_from_yaml_then_env_then_flags(tmp_path: Any) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("gateway_id: from-yaml\nbatch_size: 100\nquota_policy: reject_new\n")
    env = {"GRIDTOKENX_GATEWAY_ID": "from-env", "GRIDTOKENX_EDGE_BATCH_SIZE": "200",
           "GRIDTOKENX_CLOUD_BROKER_URL": "mqtts://:secret@cloud.example:8883"}
    settings = load(EdgeSettings, config, overrides={"batch_size": 300}, env=env).validate()
    assert (settings.gateway_id, settings.batch_size, settings.quota_policy) == ("from-env", 300, "reject_new")
    assert settings.cloud_url.username == "from-env"  # the gateway id is the cloud username by default
    assert settings.cloud_url.tls and settings.cloud_url.password == "secret"
    assert {"GRIDTOKENX_EDGE_BROKER_URL", "GRIDTOKENX_CLOUD_BROKER_URL", "GRIDTOKENX_GATEWAY_ID",
            "GRIDTOKENX_EDGE_BUFFER", "GRIDTOKENX_EDGE_METRICS_PORT"} <= env_names(EdgeSettings)


def test_bad_settings_are_one_sentence_with_the_fix(tmp_path: Any) -> None:
    runner = CliRunner()
    result = runner.invoke(run, ["--edge-broker-url", "http://nope", "--buffer", str(tmp_path / "b.db")])
    assert result.exit_code == 2
    assert "must start with mqtt:// or mqtts://" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(run, ["--meter-keys", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_help_lists_the_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "edge", "run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--edge-broker-url", "--cloud-broker-url", "--gateway-id", "--buffer", "--metrics-port",
                 "--meter-keys", "--quota-policy", "--synchronous", "--config"):
        assert flag in out
