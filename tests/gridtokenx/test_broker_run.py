"""`gridtokenx broker run edge|cloud`: a local Mosquitto from the packaged config, and `broker
credentials` from public material only (meter ids and MQTT passwords or their hashes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from gridtokenx.broker_cli import broker
from gridtokenx.harness.brokers import free_port, hash_password
from runtime.config import BrokerURL
from tests.brokers.probe import NOT_AUTHORIZED, Probe
from tests.brokers.test_credentials import make_keys
from tests.helpers import wait_for


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def _start(role: str, creds: Path, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{role}-broker.log").open("wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "gridtokenx", "broker", "run", role, "--credentials",
                                 str(creds), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_broker_run_serves_the_generated_credentials_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    meters_csv = make_keys(tmp_path / "keys", ["M-00001", "M-00002"])
    creds = tmp_path / "creds"
    made = CliRunner().invoke(broker, ["credentials", "--meters", str(meters_csv), "--out", str(creds),
                                       "--gateways", "gw-1"])
    assert made.exit_code == 0, made.output
    edge_port, cloud_port = free_port(), free_port()
    edge, cloud = _start("edge", creds, edge_port, tmp_path), _start("cloud", creds, cloud_port, tmp_path)
    try:
        wait_for(lambda: _listening(edge_port) and _listening(cloud_port), timeout=20, message="both brokers")
        agent_url = BrokerURL.parse(_env_file(creds / "env" / "edge-agent.env")["GRIDTOKENX_EDGE_BROKER_URL"])
        gateway = _env_file(creds / "env" / "gw-1.env")
        assert gateway["GRIDTOKENX_GATEWAY_ID"] == "gw-1"
        gw_url = BrokerURL.parse(gateway["GRIDTOKENX_CLOUD_BROKER_URL"])
        assert (agent_url.port, gw_url.port) == (edge_port, cloud_port)
        with Probe("127.0.0.1", edge_port, "edge-agent", agent_url.password) as agent, \
                Probe("127.0.0.1", edge_port, "M-00001", "meter-password-0") as meter, \
                Probe("127.0.0.1", edge_port, "M-00002", "wrong") as intruder, \
                Probe("127.0.0.1", cloud_port, "gw-1", gw_url.password) as gw:
            assert agent.connect() == 0
            assert agent.subscribe("meters/+/readings") == 1
            assert meter.connect() == 0
            assert meter.publish("meters/M-00001/readings", b"r") == 0
            assert agent.next_message().payload == b"r"
            assert intruder.connect() == NOT_AUTHORIZED
            assert gw.connect() == 0
        for proc in (edge, cloud):
            proc.send_signal(signum)
            assert proc.wait(timeout=15) == 0  # Mosquitto's own clean exit (exec'd, same pid: nothing left)
        assert not _listening(edge_port) and not _listening(cloud_port)
        assert (creds / "edge" / "run" / "data").is_dir()  # persistence lives in the workdir
    finally:
        for proc in (edge, cloud):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_broker_run_names_a_busy_port_and_missing_credentials(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        missing = CliRunner().invoke(broker, ["run", "edge", "--credentials", str(tmp_path / "none"),
                                              "--port", str(port)])
        assert missing.exit_code == 1
        assert "run `gridtokenx broker credentials" in missing.output
        make_keys(tmp_path / "keys", ["M-00001"])
        CliRunner().invoke(broker, ["credentials", "--meters", str(tmp_path / "keys" / "meters.csv"),
                                    "--out", str(tmp_path / "creds")])
        taken = CliRunner().invoke(broker, ["run", "edge", "--credentials", str(tmp_path / "creds"),
                                            "--port", str(port)])
    assert taken.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in taken.output
    assert "Traceback" not in taken.output


def test_credentials_from_public_material_only(tmp_path: Path) -> None:
    """Key files without the signing seed, or a list of passwords / Mosquitto hashes, are enough."""
    meters_csv = make_keys(tmp_path / "keys", ["M-00001", "M-00002", "M-00003"])
    for key_file in (tmp_path / "keys").glob("*.key"):  # strip the private part
        doc = json.loads(key_file.read_text())
        del doc["secret_seed"]
        key_file.write_text(json.dumps(doc))
    from_keys = CliRunner().invoke(broker, ["credentials", "--meters", str(meters_csv),
                                            "--out", str(tmp_path / "a"), "--json"])
    assert from_keys.exit_code == 0, from_keys.output
    assert json.loads(from_keys.output)["meters"] == 3

    listing = tmp_path / "passwords.csv"  # as a meter vendor could hand it over: no keys at all
    listing.write_text("meter_id,mqtt_password,mqtt_password_hash\n"
                       "M-00001,plain-one,\n"
                       f"M-00002,,{hash_password('hashed-two')}\n"
                       "M-00003,plain-three,\n")
    out = tmp_path / "b"
    from_list = CliRunner().invoke(broker, ["credentials", "--meters", str(meters_csv), "--passwords", str(listing),
                                            "--out", str(out)])
    assert from_list.exit_code == 0, from_list.output
    from gridtokenx.harness.brokers import Mosquitto

    with Mosquitto("edge", tmp_path / "edge-broker", {}, password_file=out / "edge" / "passwd") as edge:
        for user, password, expected in (("M-00001", "plain-one", 0), ("M-00002", "hashed-two", 0),
                                         ("M-00002", "meter-password-1", NOT_AUTHORIZED)):
            with Probe(edge.host, edge.port, user, password) as meter:
                assert meter.connect() == expected, (user, password)

    listing.write_text("meter_id,mqtt_password_hash\nM-00001,not-a-hash\n")
    bad = CliRunner().invoke(broker, ["credentials", "--meters", str(meters_csv), "--passwords", str(listing),
                                      "--out", str(tmp_path / "c")])
    assert bad.exit_code == 1
    assert "is not a Mosquitto password hash" in bad.output
    listing.write_text("meter_id,mqtt_password\nM-00001,x\n")
    short = CliRunner().invoke(broker, ["credentials", "--meters", str(meters_csv), "--passwords", str(listing),
                                        "--out", str(tmp_path / "d")])
    assert "has no password for meter M-00002 (and 1 more)" in short.output


def test_service_env_quotes_passwords() -> None:
    from gridtokenx.broker_cli import CredentialsFile, service_env

    files = service_env("cloud", CredentialsFile(edge={}, cloud={"cloud-consumer": "p@ss:w/rd", "gw-1": "x"},
                                                 gateways=["gw-1"], fleet_user=False), "127.0.0.1", 1884)
    url = files["cloud-consumer"].split("=", 1)[1].strip()
    assert BrokerURL.parse(url).password == "p@ss:w/rd"
    assert urlsplit(url).port == 1884


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_the_rendered_config_runs_as_an_ordinary_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `broker run` does for a non-root user (this suite runs as root, whose Python the user
    `nobody` cannot execute): the config has no `user root`, and Mosquitto started as that user reads
    its 0600 password file and serves the credentials."""
    with tempfile.TemporaryDirectory(prefix="gtx-nobody-") as top:  # pytest's tmp_path is 0700 root's
        _run_as_nobody(Path(top), monkeypatch)


def _run_as_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gridtokenx.harness.brokers import mosquitto_binary, render_config, write_password_file

    workdir = tmp_path / "nobody"
    workdir.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    conf = render_config("edge", workdir=workdir, port=(port := free_port()))
    monkeypatch.undo()
    assert "user root" not in conf.read_text()
    write_password_file(workdir / "passwd", {"edge-agent": "agent-pw"})
    subprocess.run(["chown", "-R", "nobody:nogroup", str(tmp_path)], check=True)
    tmp_path.chmod(0o755)
    proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", mosquitto_binary(),
                             "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, timeout=10, message="mosquitto as nobody")
        assert proc.poll() is None, (workdir / "mosquitto.log").read_text()
        with Probe("127.0.0.1", port, "edge-agent", "agent-pw") as agent:
            assert agent.connect() == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
