"""A quarantined payload shows the seq it claims when its JSON says one (before: seq null for readings
that parse as JSON but are not well-formed readings)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edge.screening import Quarantined, screen
from tests.edge.inspect_fixtures import build_known


def test_bad_readings_keep_their_claimed_seq() -> None:
    good = build_known(Path(tempfile.mkdtemp()) / "b.db").requeueable  # m00002 seq 7, well-formed
    topic = "meters/m00002/readings"
    broken = {
        "negative flags": good.replace(b'"export_wh"', b'"flags":-1,"export_wh"'),
        "no register": good.replace(b',"export_register_wh":7359', b""),
        "bad signature line": good.rsplit(b"\n", 1)[0] + b"\n",
    }
    for why, payload in broken.items():
        verdict = screen(topic, payload)
        assert isinstance(verdict, Quarantined), why
        assert (verdict.meter_id, verdict.seq) == ("m00002", 7), why
    for junk in (b"junk", b"GRIDTOKENX/READING/1\n{\"seq\": true}\nsig", b"{\"seq\": -3}\nsig"):
        verdict = screen(topic, junk)
        assert isinstance(verdict, Quarantined) and verdict.seq is None
