"""One byte string, one meaning: a v1 object with a repeated key is malformed in every parser."""

from __future__ import annotations

import pytest

from protocol import ProtocolError, Reason, parse_payload
from protocol.wire import V1_PREFIX, frame, secret_key_from_seed, sign

_, SK = secret_key_from_seed(bytes(range(32)))


def signed(body: bytes) -> bytes:
    message = V1_PREFIX + body
    return frame(message, sign(message, SK))


CASES = {
    "energy_twice": b'{"meter_id":"M-1","seq":1,"start":0,"end":900,"export_wh":10,'
                    b'"export_register_wh":2000,"export_wh":2000}',
    "meter_twice": b'{"meter_id":"M-1","seq":1,"start":0,"end":900,"export_wh":10,'
                   b'"export_register_wh":2000,"meter_id":"M-2"}',
    "same_value_twice": b'{"seq":1,"seq":1,"meter_id":"M-1","start":0,"end":900,"export_wh":10,'
                        b'"export_register_wh":20}',
    # The second key is written with a JSON escape; it is still the same key once decoded.
    "escaped_duplicate": b'{"meter_id":"M-1","seq":1,"start":0,"end":900,"export_wh":10,'
                         b'"export_register_wh":2000,"export\\u005fwh":2000}',
    "spaced_duplicate": b'{ "meter_id" : "M-1", "seq" : 1, "start" : 0, "end" : 900, "export_wh" : 10 ,'
                        b' "export_register_wh" : 2000 , "export_wh"\t:\t2000 }',
    "flags_twice_default": b'{"meter_id":"M-1","seq":1,"start":0,"end":900,"export_wh":10,'
                           b'"export_register_wh":20,"flags":0,"flags":4}',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_duplicate_key_is_malformed(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_payload(signed(CASES[name]))
    assert info.value.reason is Reason.MALFORMED
    assert "more than once" in info.value.detail


def test_escaped_but_distinct_keys_still_parse() -> None:
    body = (b'{"meter_\\u0069d":"M-1","seq":1,"start":0,"end":900,"export_wh":10,'
            b'"export_register_wh":20}')
    assert parse_payload(signed(body)).reading.export_wh == 10


def test_every_parser_agrees_edge_screening_and_protocol_decode() -> None:
    """The edge's screening and `protocol decode` go through the same parser: same verdict."""
    import subprocess
    import sys

    from edge.screening import Quarantined, screen

    payload = signed(CASES["energy_twice"])
    verdict = screen("meters/M-1/readings", payload)
    assert isinstance(verdict, Quarantined) and verdict.reason is Reason.MALFORMED
    done = subprocess.run([sys.executable, "-m", "protocol", "decode", "-"], input=payload,
                          capture_output=True, check=False)
    assert done.returncode != 0
    assert b"(malformed)" in done.stderr and b"more than once" in done.stderr
