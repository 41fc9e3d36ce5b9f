"""`gridtokenx broker credentials`: the files it writes let exactly the right users into real brokers."""

from __future__ import annotations

import csv
import json
import stat
import subprocess
from pathlib import Path

import base58
import pytest
from click.testing import CliRunner, Result
from nacl.signing import SigningKey

from gridtokenx.broker_cli import broker
from gridtokenx.harness.brokers import Mosquitto, free_port
from protocol.keys import MeterKey, encode_key
from tests.brokers.probe import NOT_AUTHORIZED, Probe, Received


def make_keys(directory: Path, meter_ids: list[str]) -> Path:
    """Key files and meters.csv as `gridtokenx sim keygen` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, meter_id in enumerate(meter_ids):
        signing = SigningKey.generate()
        key = MeterKey(meter_id=meter_id, secret_seed=base58.b58encode(bytes(signing)).decode(),
                       public_key=base58.b58encode(bytes(signing.verify_key)).decode(),
                       mqtt_password=f"meter-password-{i}", wallet_address="11111111111111111111111111111111",
                       meter_type="solar", capacity_w=5000)
        (directory / f"{meter_id}.key").write_bytes(encode_key(key))
        rows.append([meter_id, key.public_key, key.wallet_address, key.meter_type, key.capacity_w])
    csv_path = directory / "meters.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["meter_id", "public_key", "wallet_address", "meter_type", "capacity_w"])
        writer.writerows(rows)
    return csv_path


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(broker, ["credentials", *args], env=env)


def test_generated_files_admit_meters_services_and_gateways(tmp_path: Path) -> None:
    meters_csv = make_keys(tmp_path / "keys", ["M-00001", "M-00002"])
    out = tmp_path / "creds"
    result = run("--meters", str(meters_csv), "--out", str(out), "--gateways", "gw1,gw2", "--tls",
                 "--tls-host", "localhost", "--tls-host", "edge-broker", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["meters"] == 2
    assert summary["edge_service_users"] == ["edge-agent", "edge-inspector"]
    assert summary["cloud_users"] == ["cloud-consumer", "gw1", "gw2"]
    assert summary["fleet_user"] is False
    assert "meter-password-0" not in result.output

    services = json.loads((out / "credentials.json").read_text())
    for secret in (out / "credentials.json", out / "edge" / "passwd", out / "cloud" / "passwd",
                   out / "certs" / "server.key", out / "certs" / "ca.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert not any(pw in result.output for pw in services["edge"].values())
    cert = subprocess.run(["openssl", "x509", "-in", str(out / "certs" / "server.crt"), "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    assert "DNS:localhost, IP Address:127.0.0.1, DNS:edge-broker" in cert

    edge = Mosquitto("edge", tmp_path / "edge-broker", {}, password_file=out / "edge" / "passwd",
                     tls_port=free_port(), certs_dir=out / "certs")
    cloud = Mosquitto("cloud", tmp_path / "cloud-broker", {}, password_file=out / "cloud" / "passwd")
    with edge, cloud:
        ca = out / "certs" / "ca.crt"
        with Probe(edge.host, edge.port, "edge-agent", services["edge"]["edge-agent"]) as agent, \
                Probe(edge.host, edge.tls_port or 0, "M-00002", "meter-password-1", ca=ca) as meter:
            assert agent.connect() == 0
            assert agent.subscribe("meters/+/readings") == 1
            assert meter.connect() == 0
            assert meter.publish("meters/M-00002/readings", b"r") == 0
            assert agent.next_message() == Received("meters/M-00002/readings", b"r")
        with Probe(edge.host, edge.port, "sim-fleet", "anything") as fleet:
            assert fleet.connect() == NOT_AUTHORIZED  # no --fleet-user, no entry
        with Probe(cloud.host, cloud.port, "gw2", services["cloud"]["gw2"]) as gw2, \
                Probe(cloud.host, cloud.port, "cloud-consumer", services["cloud"]["cloud-consumer"]) as consumer:
            assert gw2.connect() == 0
            assert consumer.connect() == 0
        with Probe(cloud.host, cloud.port, "gw1", services["cloud"]["gw2"]) as wrong:
            assert wrong.connect() == NOT_AUTHORIZED  # each gateway its own password


def test_fleet_user_only_with_the_flag_and_env_presets_and_reruns_keep_passwords(tmp_path: Path) -> None:
    meters_csv = make_keys(tmp_path / "keys", ["M-00001"])
    out = tmp_path / "creds"
    first = run("--meters", str(meters_csv), "--out", str(out), "--gateways", "gw1",
                env={"GRIDTOKENX_CLOUD_CONSUMER_PASSWORD": "from-env"})
    assert first.exit_code == 0, first.output
    before = json.loads((out / "credentials.json").read_text())
    assert before["cloud"]["cloud-consumer"] == "from-env"
    assert "sim-fleet" not in before["edge"]
    assert "sim-fleet" not in (out / "edge" / "passwd").read_text()

    second = run("--meters", str(meters_csv), "--out", str(out), "--gateways", "gw1", "--fleet-user")
    assert second.exit_code == 0, second.output
    assert "load tests only" in second.output  # the warning (stderr is mixed into output)
    after = json.loads((out / "credentials.json").read_text())
    assert after["edge"]["edge-agent"] == before["edge"]["edge-agent"]  # running services stay valid
    assert after["cloud"]["gw1"] == before["cloud"]["gw1"]
    assert "sim-fleet" in after["edge"]

    edge = Mosquitto("edge", tmp_path / "edge-broker", {}, password_file=out / "edge" / "passwd")
    with edge, Probe(edge.host, edge.port, "sim-fleet", after["edge"]["sim-fleet"]) as fleet:
        assert fleet.connect() == 0
        assert fleet.publish("meters/M-00042/readings", b"x") in (0, 0x10)


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("missing-key", [], "no key file for meter M-00002"),
    ("bad-column", [], "lacks column(s) capacity_w"),
    ("ok", ["--gateways", "gw+1"], "gateway id 'gw+1' is not a valid broker username"),
    ("ok", ["--gateways", "cloud-consumer"], "not a service user name"),
    ("ok", ["--client-certs"], "--client-certs needs --tls"),
])
def test_user_errors_are_one_sentence(tmp_path: Path, setup: str, args: list[str], message: str) -> None:
    meters_csv = make_keys(tmp_path / "keys", ["M-00001", "M-00002"])
    if setup == "missing-key":
        (tmp_path / "keys" / "M-00002.key").unlink()
    if setup == "bad-column":
        meters_csv.write_text(meters_csv.read_text().replace("capacity_w", "capacity"))
    result = run("--meters", str(meters_csv), "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_client_certs_let_meters_in_without_a_password(tmp_path: Path) -> None:
    meters_csv = make_keys(tmp_path / "keys", ["M-00001"])
    out = tmp_path / "creds"
    result = run("--meters", str(meters_csv), "--out", str(out), "--tls", "--client-certs", "--json")
    assert result.exit_code == 0, result.output
    certs = out / "certs"
    assert json.loads(result.output)["tls"]["clients"] == str(certs / "clients")
    cert = (certs / "clients" / "M-00001.crt", certs / "clients" / "M-00001.key")
    assert stat.S_IMODE(cert[1].stat().st_mode) == 0o600
    edge = Mosquitto("edge", tmp_path / "edge-broker", {}, password_file=out / "edge" / "passwd",
                     tls_port=free_port(), certs_dir=certs, client_certs=True)
    with edge, Probe(edge.host, edge.tls_port or 0, None, None, ca=certs / "ca.crt", cert=cert) as meter:
        assert meter.connect() == 0
        assert meter.publish("meters/M-00001/readings", b"x") in (0, 0x10)
        assert meter.publish("meters/M-00002/readings", b"x") == NOT_AUTHORIZED
