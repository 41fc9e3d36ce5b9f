"""`gridtokenx bench verify`: the protocol's CPU cost per reading (sign, parse, verify) on one core."""

from __future__ import annotations

import json
import time

import click

from protocol import Reading, parse_payload, secret_key_from_seed, sign_reading, verify_signed


def measure(n: int) -> dict[str, float]:
    public, secret = secret_key_from_seed(bytes(range(32)))
    readings = [Reading(f"M-{i % 1000:05d}", i, 1_800_000_000 + 900 * i, 1_800_000_900 + 900 * i, 1234,
                        export_register_wh=1_000_000 + i) for i in range(n)]
    t0 = time.perf_counter()
    payloads = [sign_reading(r, secret) for r in readings]
    t1 = time.perf_counter()
    parsed = [parse_payload(p) for p in payloads]
    t2 = time.perf_counter()
    ok = sum(verify_signed(s, public) for s in parsed)
    t3 = time.perf_counter()
    assert ok == n
    return {"readings": n, "sign_per_s": n / (t1 - t0), "parse_per_s": n / (t2 - t1),
            "verify_per_s": n / (t3 - t2), "parse_and_verify_per_s": n / (t3 - t1),
            "payload_bytes": sum(map(len, payloads)) / n}


@click.command("verify")
@click.option("--readings", "n", default=20_000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def verify_bench(n: int, as_json: bool) -> None:
    """Sign, parse and verify N v1 readings on one core; prints readings/s for each stage."""
    result = measure(n)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:24} {value:12,.0f}")


COMMANDS = [verify_bench]
