"""`gridtokenx sim keygen` and `sim run` as a user runs them: files, JSON, and one-sentence errors."""

from __future__ import annotations

import asyncio
import csv
import json
import stat
from collections.abc import Callable
from pathlib import Path

import aiohttp
import base58
import yaml
from click.testing import CliRunner

from gridtokenx.harness.brokers import free_port
from protocol.keys import decode_key
from protocol.wire import sign, verify
from simulator.cli import sim
from simulator.fleet import run_fleet
from tests.simulator.conftest import Fleet


def test_keygen_writes_private_keys_and_registry_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    runner = CliRunner()
    result = runner.invoke(sim, ["keygen", "--meters", "3", "--out", str(out), "--types", "solar,consumer"])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.glob("*.key"))
    assert files == ["M-00001.key", "M-00002.key", "M-00003.key"]
    for p in out.glob("*.key"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    before = {p.name: p.read_bytes() for p in out.glob("*.key")}
    lines = (out / "meters.csv").read_text().splitlines()
    assert lines[0] == "meter_id,public_key,wallet_address,meter_type,capacity_w"

    result = runner.invoke(sim, ["keygen", "--meters", "5", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["created"] == ["M-00004", "M-00005"] and doc["existing"] == 3 and doc["total"] == 5
    assert all((out / name).read_bytes() == data for name, data in before.items())
    with (out / "meters.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["meter_id"] for r in rows] == [f"M-0000{i}" for i in range(1, 6)]
    assert [r["meter_type"] for r in rows[:3]] == ["solar", "consumer", "solar"]
    for row in rows:
        key = decode_key((out / f"{row['meter_id']}.key").read_bytes())
        assert (row["public_key"], row["wallet_address"], int(row["capacity_w"])) == \
            (key.public_key, key.wallet_address, key.capacity_w)
        # Unseeded keygen (what operators run): the secret must sign for the exported public key.
        public, secret = key.keypair()
        assert base58.b58encode(public).decode() == row["public_key"]
        assert verify(public, b"probe", sign(b"probe", secret))

    result = runner.invoke(sim, ["keygen", "--meters", "2", "--out", str(out)])
    assert result.exit_code == 0 and "nothing overwritten" in result.output


def test_user_errors_are_one_sentence_with_the_fix(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["keygen", "--meters", "2", "--out", str(tmp_path), "--types", "wind"], "unknown meter type 'wind'"),
        (["run", "--keys", str(tmp_path / "none"), "--duration", "1"], "sim keygen --meters N"),
        (["run", "--keys", str(tmp_path), "--format", "legacy", "--interval", "900"], "--interval 300"),
        (["run", "--keys", str(tmp_path), "--connections", "2"], "--fleet-user"),
        (["run", "--keys", str(tmp_path), "--broker-url", "http://x"], "mqtt://"),
    ]
    for args, hint in cases:
        result = runner.invoke(sim, args)
        assert result.exit_code != 0, args
        assert hint in result.output, (args, result.output)
        assert "Traceback" not in result.output
    runner.invoke(sim, ["keygen", "--meters", "2", "--out", str(tmp_path / "k")])
    result = runner.invoke(sim, ["run", "--keys", str(tmp_path / "k"), "--meters", "5"])
    assert result.exit_code != 0 and "--meters 5 but" in result.output


def test_run_from_yaml_with_json_report(fleet_factory: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = fleet_factory(2)
    config = tmp_path / "simulator.yaml"
    config.write_text(yaml.safe_dump({
        "broker": {"url": fleet.broker.url},
        "meter": {"ids": ["M-00002"], "reading_interval_seconds": 900},
        "signing": {"keys_dir": str(fleet.keys_dir)},
        "run": {"speed": 43_200, "duration": 1.0},
    }))
    report_file = tmp_path / "report.json"
    result = CliRunner().invoke(sim, ["run", "--config", str(config), "--fault-replay", "0.5", "--json",
                                      "--report", str(report_file)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc == json.loads(report_file.read_text())
    assert doc["meters"] == 1 and list(doc["per_meter"]) == ["M-00002"]
    assert doc["per_meter"]["M-00002"]["readings"] == 48 and doc["per_meter"]["M-00002"]["first_seq"] == 1
    replay = doc["faults"]["replay"]
    assert replay["expected"] == "duplicate" and replay["count"] == len(replay["affected"]) > 0
    assert doc["acked"] == 48 + replay["count"] and doc["errors"] == {}
    assert set(doc["latency_ms"]) == {"p50", "p95", "p99", "max"} and doc["rate"] > 0


def test_metrics_are_served_while_running(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(2)
    port = free_port()
    settings = fleet.settings(speed=86_400, duration=3.0, metrics_port=port, backfill=86_400)

    async def scenario() -> str:
        run = asyncio.create_task(run_fleet(settings))
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                        text = await response.text()
                        if "gridtokenx_sim_readings_published_total" in text:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
        await run
        return text

    text = asyncio.run(scenario())
    assert "gridtokenx_sim_readings_published_total" in text
    assert "gridtokenx_sim_publish_errors_total" in text and "gridtokenx_sim_injected_total" in text
