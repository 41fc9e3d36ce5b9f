"""Start `gridtokenx localnet` as its own process (as in production: a long-lived separate node)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for

LocalnetFactory = Callable[..., str]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def localnet_factory(tmp_path: Path) -> Iterator[LocalnetFactory]:
    """start(*flags) -> url; start(..., stop_previous=True) first stops the last started node."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, stop_previous: bool = False) -> str:
        if stop_previous and procs:
            _stop(procs[-1])
        ready = tmp_path / f"localnet-{len(procs)}.json"
        log = (tmp_path / f"localnet-{len(procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "gridtokenx", "localnet", "--port", "0",
                                 "--ready-file", str(ready), *flags], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=30, message="localnet ready")
        assert proc.poll() is None, (tmp_path / f"localnet-{len(procs) - 1}.log").read_text()
        return str(json.loads(ready.read_text())["url"])

    yield start
    for proc in procs:
        if proc.poll() is None:
            _stop(proc)
