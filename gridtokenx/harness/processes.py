"""One subprocess helper for the harness, the benchmarks and the tests: start a component through its
CLI in its own session, stop it with SIGTERM (drain) then SIGKILL, kill -9 it, read its log and metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gridtokenx.errors import GridtokenxError


def gridtokenx_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gridtokenx", *args]


class ProcessExited(GridtokenxError):
    """A component process ended while it was expected to run."""


@dataclass
class Proc:
    """One component process, restartable with the same command, environment and port."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    metrics_port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (drain), then SIGKILL after `timeout`. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.popen.returncode

    def wait(self, timeout: float | None = None) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def healthy(self, timeout: float = 1.0) -> bool:
        """/healthz answers 200. Raises if the process has exited (with its log tail): waiting longer
        would only hide why."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessExited(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
        if self.metrics_port is None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=timeout) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Until /healthz answers 200, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: /healthz not 200 within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)  # a poll interval under a deadline, not a wait for something to happen

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def metrics(self, timeout: float = 2.0) -> dict[str, float]:
        """Scrape /metrics: {'name{label="v"}': value}, plus the unlabelled sum under 'name'."""
        if self.metrics_port is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            out[key] = sample.value
            if labels:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
