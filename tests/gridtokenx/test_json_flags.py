"""`--json` on the commands the issue listed that lacked it: `protocol decode` and `edge inspect export`
(the meter admin commands are in test_errors.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.edge.inspect_fixtures import build_known


def gtx(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gridtokenx", *args], input=stdin, capture_output=True,
                          timeout=60, check=False)


def test_protocol_decode_json_for_good_and_bad_payloads(tmp_path: Path) -> None:
    known = build_known(tmp_path / "buffer.db")
    good = gtx("protocol", "decode", "--json", stdin=known.requeueable)
    assert good.returncode == 0, good.stderr
    doc = json.loads(good.stdout)
    assert doc["valid"] is True and doc["reading"]["seq"] == 7
    bad = gtx("protocol", "decode", "--json", stdin=b"junk")
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {"valid": False, "reason": "malformed", "detail": json.loads(bad.stdout)["detail"]}


def test_edge_inspect_export_json_summary(tmp_path: Path) -> None:
    build_known(tmp_path / "buffer.db")
    out = tmp_path / "rows.jsonl"
    to_file = gtx("edge", "inspect", "export", "--db", str(tmp_path / "buffer.db"), "--state", "pending",
                  "--out", str(out), "--json")
    assert to_file.returncode == 0, to_file.stderr
    summary = json.loads(to_file.stdout)
    assert summary == {"exported": len(out.read_text().splitlines()), "out": str(out), "format": "jsonl"}
    assert summary["exported"] == 6
    to_stdout = gtx("edge", "inspect", "export", "--db", str(tmp_path / "buffer.db"), "--state", "pending",
                    "--json")
    assert len(to_stdout.stdout.decode().splitlines()) == 6  # the rows; the summary went to stderr
    assert json.loads(to_stdout.stderr.decode().strip().splitlines()[-1])["exported"] == 6


def test_long_commands_show_progress_on_a_terminal_only() -> None:
    import io

    from rich.console import Console

    from runtime.progress import working

    tty = io.StringIO()
    with working("reconciling: scanning", console=Console(file=tty, force_terminal=True)):
        pass
    assert "reconciling: scanning" in tty.getvalue()
    pipe = io.StringIO()
    with working("reconciling: scanning", console=Console(file=pipe, force_terminal=False)):
        pass
    assert pipe.getvalue() == ""  # scripts and --json see nothing
