"""Simulated smart meters: keys (keystore), physics (models), the interval job (meter), write-ahead
state (state), MQTT links (link), the fleet and its API `run_fleet` (fleet), faults, reports, CLI."""
