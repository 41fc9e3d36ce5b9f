"""Prometheus files: `promtool check config` passes, `promtool test rules` runs the alert cases
(deploy/prometheus/alerts_test.yml), the edge exports its drop counters at 0 so that the first burst
fires EdgeDroppingReadings, and every runbook annotation is a command line the CLI accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from gridtokenx.cli import root

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: ./scripts/setup installs prometheus")


@needs_promtool
def test_promtool_check_config() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=PROMETHEUS, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_edge_exports_drop_counters_at_zero_before_any_drop() -> None:
    from edge.metrics import EdgeMetrics

    registry = CollectorRegistry()
    EdgeMetrics(registry)
    text = generate_latest(registry).decode()
    assert 'gridtokenx_edge_dropped_total{reason="quota_dropped"} 0.0' in text
    assert 'gridtokenx_edge_dropped_total{reason="expired"} 0.0' in text


def _runbooks() -> list[tuple[str, str]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [(rule["alert"], rule["annotations"]["runbook"]) for group in doc["groups"] for rule in group["rules"]
            if "runbook" in rule.get("annotations", {})]


@pytest.mark.parametrize(("alert", "runbook"), _runbooks())
def test_runbook_commands_parse(alert: str, runbook: str) -> None:
    """Placeholders are filled with example values; the command must resolve and take its arguments."""
    for command in runbook.split(";"):
        words = shlex.split(command.replace("METER_ID:SEQ", "M-00001:42"))
        assert words[0] == "gridtokenx", (alert, command)
        ctx = root.make_context("gridtokenx", [], resilient_parsing=True)
        cmd: click.Command = root
        args = words[1:]
        while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
            sub = cmd.get_command(ctx, args[0])
            assert sub is not None, (alert, command)
            cmd, args = sub, args[1:]
        cmd.make_context(cmd.name, list(args))  # raises UsageError on a wrong argument count or option
