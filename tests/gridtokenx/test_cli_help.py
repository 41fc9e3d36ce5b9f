"""Every command group prints real help, through the installed console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

GROUPS = ["sim", "edge", "cloud", "broker", "localnet", "bench", "demo", "protocol"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridtokenx", *args], capture_output=True, text=True, check=False)


def test_root_help_lists_every_group() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for group in GROUPS:
        assert f"  {group} " in result.stdout
    assert "not built yet" not in result.stdout


@pytest.mark.parametrize("group", GROUPS)
def test_group_help(group: str) -> None:
    result = run(group, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "not built yet" not in result.stdout
    assert len(result.stdout.splitlines()) > 4


def test_unknown_command_is_one_clear_error() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert "Traceback" not in result.stderr
