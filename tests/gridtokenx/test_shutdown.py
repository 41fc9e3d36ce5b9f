"""SIGTERM or SIGINT to an orchestrator (`demo`, `bench e2e`) ends every process it started.

Components and brokers run in their own sessions, so a signal to the orchestrator reaches nobody
else: before the fix, SIGTERM killed `bench e2e` at once and left brokers, edge agent, consumers
and minter running. The tests record the orchestrator's children
(brokers, components, simulator) once they run, signal it, and check none of them is left.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_for


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # is_running also checks pid reuse
                out.append(" ".join(p.cmdline())[:160])
        except psutil.Error:
            continue
    return out


def _signal_when_running(argv: list[str], signum: int, *, components: int,
                         stderr_file: Path) -> tuple[int, str, list[str]]:
    """Start `argv`, wait until it has `components` long-running children, signal it; returns its exit
    code, stderr and the children (started in their own sessions) still alive afterwards."""
    def running() -> list[psutil.Process]:
        try:
            found = me.children(recursive=True)
            simulating = any("run" in p.cmdline() and "sim" in p.cmdline() for p in found)
        except psutil.Error:
            return []
        return found if simulating and len(found) >= components else []

    with stderr_file.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    me = psutil.Process(proc.pid)
    try:
        # The simulator starts last: by then brokers and components run.
        children = wait_for(running, timeout=120, interval=0.2, message=f"{components} child processes")
        for child in children:  # secrets travel in the environment, never on a command line (`ps` shows it)
            with contextlib.suppress(psutil.Error):
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", " ".join(child.cmdline())), child.cmdline()
        proc.send_signal(signum)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = _alive(children)
    for p in children:  # never leave them to the next test, whatever the assertion says
        with contextlib.suppress(psutil.Error):
            p.kill()
    return code, stderr_file.read_text(errors="replace"), left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_stops_everything_on_a_signal(tmp_path: Path, signum: int) -> None:
    argv = [sys.executable, "-m", "gridtokenx", "demo", "--meters", "3", "--duration", "120", "--json",
            "--workdir", str(tmp_path)]
    # edge broker, cloud broker, cloud, edge, sim
    code, stderr, left = _signal_when_running(argv, signum, components=5, stderr_file=tmp_path / "stderr")
    assert left == []
    assert code == 128 + signum, stderr[-2000:]


def test_bench_e2e_stops_everything_on_sigterm(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "gridtokenx", "bench", "e2e", "--meters", "20", "--duration", "120",
            "--rate", "50", "--consumers", "2", "--json", "--workdir", str(tmp_path)]
    # 2 brokers, minter, 2 consumers, edge, sim
    code, stderr, left = _signal_when_running(argv, signal.SIGTERM, components=7,
                                              stderr_file=tmp_path / "stderr")
    assert left == []
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
