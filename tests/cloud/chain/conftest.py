"""Start `gridtokenx localnet` as its own process (as in production: a long-lived separate node)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gridtokenx.harness.processes import Proc
from tests.helpers import wait_for

LocalnetFactory = Callable[..., str]


@pytest.fixture
def localnet_factory(tmp_path: Path) -> Iterator[LocalnetFactory]:
    """start(*flags) -> url; start(..., stop_previous=True) first stops the last started node."""
    procs: list[Proc] = []

    def start(*flags: str, stop_previous: bool = False) -> str:
        if stop_previous and procs:
            procs[-1].stop(10)
        ready = tmp_path / f"localnet-{len(procs)}.json"
        proc = Proc("localnet", [sys.executable, "-m", "gridtokenx", "localnet", "--port", "0", "--ready-file",
                                 str(ready), *flags], env=dict(os.environ),
                    log_path=tmp_path / f"localnet-{len(procs)}.log")
        proc.start()
        procs.append(proc)
        wait_for(lambda: ready.exists() or not proc.running, timeout=30, message="localnet ready")
        assert proc.running, proc.log_tail()
        return str(json.loads(ready.read_text())["url"])

    yield start
    for proc in procs:
        proc.stop(10)
