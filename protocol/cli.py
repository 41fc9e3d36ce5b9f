"""`gridtokenx protocol ...`: check the test vectors, decode a payload. Not part of the pure core."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

import click

from protocol import vectors
from protocol.errors import ProtocolError
from protocol.wire import parse_payload

DEFAULT_VECTORS = Path(__file__).with_name("test_vectors.json")


@click.group(name="protocol", help="The meter protocol: test vectors and payload decoding (PROTOCOL.md).")
def protocol_cli() -> None:
    pass


@protocol_cli.command("verify-vectors")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_VECTORS)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def verify_vectors(path: Path, as_json: bool) -> None:
    """Check every vector in PATH against this implementation; exit 1 on any disagreement."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path} is not a readable JSON vectors file: {exc}") from exc
    outcomes = vectors.check(document)
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        click.echo(json.dumps({"vectors": [o.__dict__ for o in outcomes], "failed": len(failed)}, indent=2))
    else:
        for o in outcomes:
            mark = "ok  " if o.ok else "FAIL"
            click.echo(f"{mark} {o.name:28} expected {o.expected:28} got {o.got}")
        click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} vectors agree with {path}")
    sys.exit(1 if failed else 0)


@protocol_cli.command("generate-vectors")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_VECTORS)
def generate_vectors(path: Path) -> None:
    """(Re)write the vectors file from the fixed seeds. Only needed when the protocol changes."""
    path.write_text(json.dumps(vectors.generate(), indent=2) + "\n")
    click.echo(f"wrote {path}")


@protocol_cli.command("decode")
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--json", "as_json", is_flag=True,
              help="Also a bad payload as JSON ({valid: false, reason, detail}, exit 1), for scripts.")
def decode(source: IO[bytes], as_json: bool) -> None:
    """Decode one MQTT payload (file or stdin) and print the reading as JSON, or the reason it is bad."""
    payload = source.read()
    try:
        signed = parse_payload(payload)
    except ProtocolError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "reason": exc.reason.value, "detail": exc.detail}, indent=2))
            sys.exit(1)
        raise click.ClickException(f"not a valid reading ({exc.reason.value}): {exc.detail}") from exc
    import msgspec

    doc = {"format": signed.format, "reading": msgspec.to_builtins(signed.reading),
           "signature": signed.payload.rsplit(b"\n", 1)[1].decode()}
    click.echo(json.dumps(({"valid": True} | doc) if as_json else doc, indent=2))
