"""`cloud run --role mint` reports its dependencies' real state on /healthz, not only that it is alive."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from gridtokenx.harness.brokers import free_port
from gridtokenx.harness.processes import Proc
from tests.helpers import wait_for


def _healthz(port: int) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def _minter(database_url: str, tmp_path: Path, **env: str) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc("minter", [sys.executable, "-m", "gridtokenx", "cloud", "run", "--role", "mint", "--port", str(port),
                           "--host", "127.0.0.1"],
                env=os.environ | {"DATABASE_URL": database_url, "GRIDTOKENX_CHAIN_STATE_DIR": str(tmp_path / "chain"),
                                  **env}, log_path=tmp_path / "minter.log", metrics_port=port)
    proc.start()
    return proc, port


def test_a_minter_whose_chain_does_not_answer_is_unhealthy(database_url: str, tmp_path: Path) -> None:
    proc, port = _minter(database_url, tmp_path, GRIDTOKENX_CHAIN_BACKEND="rpc",
                         SOLANA_RPC_URL=f"http://127.0.0.1:{free_port()}")
    try:
        wait_for(lambda: _healthz(port) is not None, timeout=30, message="/healthz answering")
        status, doc = _healthz(port) or (0, {})
        assert status == 503 and doc["component"] == "cloud-mint" and doc["problem"], doc
    finally:
        assert proc.stop(20) == 0, proc.log_tail()


def test_a_working_minter_is_healthy(database_url: str, tmp_path: Path) -> None:
    proc, port = _minter(database_url, tmp_path, GRIDTOKENX_CHAIN_BACKEND="embedded")
    try:
        wait_for(lambda: (_healthz(port) or (0, {}))[0] == 200, timeout=60, message="/healthz 200 after a pass")
        _, doc = _healthz(port) or (0, {})
        assert doc["problem"] is None and isinstance(doc["last_pass_age_s"], float), doc
    finally:
        assert proc.stop(20) == 0, proc.log_tail()
