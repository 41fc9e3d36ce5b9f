"""`gridtokenx bench e2e` totals count what the meters published, also after the simulator exited;
the report says which simulator mode it measured, and in replay mode every reading still commits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from gridtokenx.bench.e2e import e2e, summary_line


def bench_e2e(tmp_path: Path, *flags: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "gridtokenx", "bench", "e2e", "--meters", "10", "--duration", "4",
                             "--rate", "100", "--consumers", "1", "--drain-timeout", "60", "--json",
                             "--workdir", str(tmp_path), *flags], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_bench_e2e_totals_include_the_readings_published(tmp_path: Path) -> None:
    doc = bench_e2e(tmp_path)
    assert doc["sim_mode"] == "live" and doc["presign"] is None
    assert doc["totals"]["sim_published"] == doc["simulator"]["acked"] > 0  # was 0: the exited simulator's metrics
    assert doc["totals"]["cloud_accepted"] > 0


def test_bench_e2e_replay_mode_is_reported_and_every_reading_commits(tmp_path: Path) -> None:
    doc = bench_e2e(tmp_path, "--sim-mode", "replay")
    assert doc["sim_mode"] == "replay"
    # 100/s for 4 s over 10 meters: 40 consecutive 300 s intervals each, all signed before the run.
    presign = doc["presign"]
    assert presign["messages"] == presign["signs"] == doc["simulator"]["acked"] == 400
    assert presign["seconds"] > 0 and presign["signs_per_s"] > 0 and presign["cpu_s"] > 0
    totals = doc["totals"]
    assert doc["drained"] and doc["simulator"]["errors"] == {}
    # Every reading the meters and the latency probes published is committed in Postgres, and minted.
    assert totals["sim_published"] == 400
    assert totals["cloud_accepted"] == totals["minted"] == 400 + doc["probe_readings"]
    assert summary_line(doc).startswith("simulator mode: replay (400 payloads signed before the run")


def test_bench_e2e_help_explains_the_simulator_modes() -> None:
    text = " ".join(CliRunner().invoke(e2e, ["--help"]).output.split())
    assert "--sim-mode [live|replay]" in text
    assert "replay: every payload is signed before the timed run" in text
