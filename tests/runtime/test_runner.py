"""The process runner, in a real child process: one signal drains, the drain is bounded, two signals force exit."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import asyncio, sys
    from runtime.errors import RuntimeFailure
    from runtime.runner import run_component

    async def work(stop):
        print("ready", flush=True)
        await stop.wait()
        print("draining", flush=True)
        if sys.argv[1] == "stubborn":
            await asyncio.sleep(3600)  # a drain that never ends
        return 0

    try:
        sys.exit(asyncio.run(run_component(work, name="child", drain_seconds=float(sys.argv[2]))))
    except RuntimeFailure as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)
""")


def start(mode: str, drain: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(drain)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_one_signal_drains_and_exits_zero() -> None:
    with start("polite", 30) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_a_drain_that_never_ends_is_cut_at_the_bound() -> None:
    with start("stubborn", 1.0) as proc:
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 1
        assert time.monotonic() - started < 10
        out = proc.stdout.read() if proc.stdout else ""
        assert "did not finish draining within 1 s" in out


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_forces_exit(second: signal.Signals) -> None:
    with start("stubborn", 3600) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "draining"
        proc.send_signal(second)
        assert proc.wait(timeout=10) == 128 + int(second)
