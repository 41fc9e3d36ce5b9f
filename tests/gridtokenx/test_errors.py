"""Errors name the real cause in one sentence, and never print a secret."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.redact import redact_text, redact_url

SECRET = "s3cr3t-Pa55"


def gtx(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDTOKENX_", "TOKENIZATION_", "DATABASE_URL"))}
    return subprocess.run([sys.executable, "-m", "gridtokenx", *args], env=base | (env or {}), capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql://postgres:{SECRET}@db:5432/gridtokenx", "postgresql://postgres:***@db:5432/gridtokenx"),
    (f"mqtt://edge-agent:{SECRET}@127.0.0.1:1883", "mqtt://edge-agent:***@127.0.0.1:1883"),
    (f"mqtts://gw-1:{SECRET.replace('-', '%40')}@cloud.example.net:8883", "mqtts://gw-1:***@cloud.example.net:8883"),
    ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://postgres@127.0.0.1:5432/postgres"),
    (f"https://rpc.example.net/?api-key={SECRET}&commitment=confirmed",
     "https://rpc.example.net/?api-key=***&commitment=confirmed"),
    (f"mqtt://u:{SECRET}@host:notaport", "mqtt://u:***@host:notaport"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_text(f"failed to reach {url}: refused")


def test_a_connection_error_never_prints_the_database_password() -> None:
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:1/gridtokenx"  # nothing listens on port 1
    for args in (["cloud", "status"], ["cloud", "reconcile"], ["cloud", "why", "M-1:1"], ["cloud", "migrate"],
                 ["cloud", "meters", "list"]):
        result = gtx(*args, env={"DATABASE_URL": dsn})
        assert result.returncode != 0, args
        assert SECRET not in result.stdout + result.stderr, args
        assert "postgres:***@127.0.0.1:1" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, args


def test_an_invalid_broker_url_is_shown_without_its_password(tmp_path: Path) -> None:
    bad = f"mqtt://edge-agent:{SECRET}@127.0.0.1:99999999"
    edge = gtx("edge", "run", "--buffer", str(tmp_path / "b.db"), env={"GRIDTOKENX_EDGE_BROKER_URL": bad})
    assert edge.returncode != 0
    assert "has an invalid port" in edge.stderr and SECRET not in edge.stderr + edge.stdout


def test_cloud_run_on_a_busy_port_says_the_port_not_postgres(database_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = gtx("cloud", "run", "--role", "ingest", "--port", str(port), "--host", "127.0.0.1",
                     env={"DATABASE_URL": database_url, "GRIDTOKENX_CLOUD_BROKER_URL": "mqtt://127.0.0.1:1"})
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}" in error and "pick another port" in error, result.stderr
    assert "PostgreSQL" not in result.stderr


def test_a_mint_missing_from_the_cluster_is_one_sentence(database_url: str, tmp_path: Path) -> None:
    """What `localnet` restarted elsewhere (a fresh ledger) looks like to the minter: its mint file names
    a mint the cluster does not have. Before: a 60-line ExceptionGroup traceback."""
    state = tmp_path / "chain"
    state.mkdir()
    (state / "mint.json").write_text(json.dumps({"mint": "So11111111111111111111111111111111111111112"[:-1] + "3",
                                                 "decimals": 9}))
    result = gtx("cloud", "run", "--role", "mint", "--port", "0", "--host", "127.0.0.1",
                 env={"DATABASE_URL": database_url, "GRIDTOKENX_CHAIN_BACKEND": "embedded",
                      "GRIDTOKENX_CHAIN_STATE_DIR": str(state)}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]  # the minter's refusal to start
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "mint " in last and "is not on this cluster" in last, result.stderr[-2000:]


def test_http_client_chatter_is_not_logged_at_info() -> None:
    """httpx logged one INFO line per RPC call: 34 of a cloud run's 45 log lines."""
    code = ("import logging; from runtime import logs; logs.setup(level='INFO'); "
            "logging.getLogger('httpx').info('HTTP Request: POST http://127.0.0.1:8899 \"HTTP/1.1 200 OK\"'); "
            "logging.getLogger('cloud').info('kept')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "kept" in result.stdout and "HTTP Request" not in result.stdout


def test_why_for_a_reading_the_cloud_never_saw_points_at_the_edge(database_url: str) -> None:
    """Before: 'not received yet?', with no pointer to where a quarantined reading actually is."""
    assert gtx("cloud", "migrate", env={"DATABASE_URL": database_url}).returncode == 0
    result = gtx("cloud", "why", "M-00007:12", env={"DATABASE_URL": database_url})
    assert "gridtokenx edge inspect list --meter M-00007" in result.stdout + result.stderr


def test_meter_admin_commands_speak_json(database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    assert gtx("cloud", "migrate", env=env).returncode == 0
    key = "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"
    added = gtx("cloud", "meters", "add", "M-00001", "--public-key", key, "--wallet", key, "--capacity-w", "5000",
                "--json", env=env)
    assert json.loads(added.stdout) == {"meter_id": "M-00001", "result": "added"}, added.stderr
    for command, status in (("suspend", "suspended"), ("reinstate", "active"), ("revoke", "revoked")):
        done = gtx("cloud", "meters", command, "M-00001", "--reason", "test", "--json", env=env)
        assert json.loads(done.stdout) == {"meter_id": "M-00001", "status": status, "reason": "test"}, done.stderr
