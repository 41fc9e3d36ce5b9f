"""The startup check: a broker that grants `$share` subscriptions but delivers nothing through
them (NATS's MQTT gateway) is refused with one sentence; Mosquitto passes (every other test)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridtokenx.harness.brokers import free_port
from tests.cloud.ingest.support import ConsumerProcess
from tests.helpers import wait_for


@pytest.fixture
def nats_mqtt(tmp_path: Path) -> Iterator[str]:
    """nats-server with JetStream and its MQTT listener on free ports; yields the consumer's URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.fail("nats-server is not installed: run ./scripts/setup (it installs Debian's nats-server)")
    port, mqtt_port = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"""
server_name: gtx_capability_test
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
mqtt {{ listen: 127.0.0.1:{mqtt_port} }}
authorization {{ users = [ {{ user: "cloud-consumer", password: "probe-pw" }} ] }}
""")
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.2).close()
            except OSError:
                assert proc.poll() is None, (tmp_path / "nats.log").read_text()
                return False
            return True
        wait_for(listening, timeout=15, message="nats-server's MQTT listener")
        yield f"mqtt://cloud-consumer:probe-pw@127.0.0.1:{mqtt_port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_a_broker_without_shared_subscriptions_is_refused_with_one_sentence(
        nats_mqtt: str, migrated_db: str, tmp_path: Path) -> None:
    consumer = ConsumerProcess(dsn=migrated_db, broker_url=nats_mqtt, client_id="cloud-consumer-1",
                               log_dir=tmp_path, env={"GRIDTOKENX_INGEST_PROBE_TIMEOUT_SECS": "3"})
    try:
        started = time.monotonic()
        code = consumer.proc.wait(30)
        log = consumer.log_path.read_text()
        errors = [line for line in log.splitlines() if line.startswith("Error:")]
        print(errors, f"after {time.monotonic() - started:.1f} s")
        assert code != 0
        assert len(errors) == 1 and "lacks MQTT shared subscriptions" in errors[0], log[-2000:]
        assert "Traceback" not in log
    finally:
        consumer.close()
