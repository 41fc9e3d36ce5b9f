"""`gridtokenx bench e2e` totals count what the meters published, also after the simulator exited."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_e2e_totals_include_the_readings_published(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gridtokenx", "bench", "e2e", "--meters", "10", "--duration", "4",
                             "--rate", "100", "--consumers", "1", "--drain-timeout", "60", "--json",
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["totals"]["sim_published"] == doc["simulator"]["acked"] > 0  # was 0: the exited simulator's metrics
    assert doc["totals"]["cloud_accepted"] > 0
