"""Test vectors: generate `test_vectors.json` from fixed seeds, and check a vectors file.

The file is the contract for implementers in other languages: fixed keys, exact payloads, and the
verdict each must get. `python -m protocol verify-vectors FILE` checks this code against it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import base58
import msgspec

from protocol import legacy, topics
from protocol.check import check_payload
from protocol.errors import ProtocolError
from protocol.reading import Reading
from protocol.wire import V1_PREFIX, encode_v1_message, frame, secret_key_from_seed, sign

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
WALLET = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
T0 = 1_793_491_200  # 2026-11-01T00:00:00Z


@dataclass(frozen=True)
class Outcome:
    name: str
    expected: str
    got: str
    ok: bool


def _vector(
    name: str, description: str, payload: bytes, *, public_key: bytes, topic: str, expect: dict[str, Any]
) -> dict[str, Any]:
    vector: dict[str, Any] = {
        "name": name,
        "description": description,
        "public_key": base58.b58encode(public_key).decode(),
        "topic": topic,
        "payload_hex": payload.hex(),
    }
    with contextlib.suppress(UnicodeDecodeError):
        vector["payload_text"] = payload.decode("utf-8")
    vector["expect"] = expect
    return vector


def generate() -> dict[str, Any]:
    pub_a, sk_a = secret_key_from_seed(SEED_A)
    pub_b, sk_b = secret_key_from_seed(SEED_B)
    topic = topics.meter_readings("M-0001")
    base = Reading("M-0001", 42, T0, T0 + 900, 1250, export_register_wh=1_500_250)
    full = Reading(
        "M-0001", 43, T0 + 900, T0 + 1800, 980, export_register_wh=1_501_230,
        import_wh=310, import_register_wh=702_115, flags=2,
    )
    v: list[dict[str, Any]] = []

    def valid(name: str, desc: str, payload: bytes, reading: Reading, fmt: str, **extra: Any) -> None:
        expect = {"verdict": "valid", "format": fmt, "reading": msgspec.to_builtins(reading), **extra}
        v.append(_vector(name, desc, payload, public_key=pub_a, topic=topic, expect=expect))

    def rejected(name: str, desc: str, payload: bytes, reason: str, *, public_key: bytes = pub_a,
                 topic_: str = topic) -> None:
        v.append(_vector(name, desc, payload, public_key=public_key, topic=topic_,
                         expect={"verdict": "rejected", "reason": reason}))

    p_base = frame(encode_v1_message(base), sign(encode_v1_message(base), sk_a))
    valid("v1_basic", "v1 reading, export only", p_base, base, "v1",
          signed_message_hex=encode_v1_message(base).hex())
    p_full = frame(encode_v1_message(full), sign(encode_v1_message(full), sk_a))
    valid("v1_full", "v1 reading with import registers and the clock-adjusted flag", p_full, full, "v1")

    reordered = V1_PREFIX + (
        b'{"seq":42,"meter_id":"M-0001","export_register_wh":1500250,'
        b'"end":1793492100,"start":1793491200,"export_wh":1250}'
    )
    valid("v1_other_key_order", "any JSON key order verifies: the signed bytes are what count",
          frame(reordered, sign(reordered, sk_a)), base, "v1")

    legacy_msg = legacy.format_message("M-0001", T0 + 300, legacy.kwh_text(2345), WALLET)
    legacy_reading = Reading("M-0001", T0 + 300, T0, T0 + 300, 2345)
    valid("legacy_basic", "GridTokenX gateway string, kWh {:.6f}, RFC 3339 timestamp",
          frame(legacy_msg, sign(legacy_msg, sk_a)), legacy_reading, "legacy", claimed_wallet=WALLET)

    sig = bytearray(sign(encode_v1_message(base), sk_a))
    sig[0] ^= 1
    rejected("v1_flipped_signature_bit", "one bit of the signature flipped",
             frame(encode_v1_message(base), bytes(sig)), "bad_signature")
    tampered = encode_v1_message(base).replace(b'"export_wh":1250', b'"export_wh":9250')
    rejected("v1_tampered_energy", "energy changed after signing",
             frame(tampered, sign(encode_v1_message(base), sk_a)), "bad_signature")
    rejected("v1_wrong_key", "signed by another meter's key",
             frame(encode_v1_message(base), sign(encode_v1_message(base), sk_b)), "bad_signature")
    rejected("v1_registered_other_key", "verified against another registered key", p_base,
             "bad_signature", public_key=pub_b)
    bad_legacy = legacy.format_message("M-0001", T0 + 300, "2.345678", WALLET)
    rejected("legacy_sub_wh", "legacy amount with sub-Wh digits",
             frame(bad_legacy, sign(bad_legacy, sk_a)), "malformed")
    rejected("topic_of_other_meter", "valid reading of M-0001 published on meter M-0002's topic",
             p_base, "topic_mismatch", topic_=topics.meter_readings("M-0002"))

    def signed_body(body: bytes) -> bytes:
        msg = V1_PREFIX + body
        return frame(msg, sign(msg, sk_a))

    rejected("no_signature_line", "no LF: the payload has no signature", encode_v1_message(base), "malformed")
    rejected("not_json", "v1 prefix followed by non-JSON", signed_body(b"meter=M-0001"), "malformed")
    rejected("missing_register", "v1 reading without export_register_wh",
             signed_body(b'{"meter_id":"M-0001","seq":1,"start":1,"end":2,"export_wh":5}'), "malformed")
    rejected("float_energy", "energy as a float",
             signed_body(b'{"meter_id":"M-0001","seq":1,"start":1,"end":2,"export_wh":5.5,'
                         b'"export_register_wh":9}'), "malformed")
    rejected("unknown_field", "a field v1 does not define",
             signed_body(b'{"meter_id":"M-0001","seq":1,"start":1,"end":2,"export_wh":5,'
                         b'"export_register_wh":9,"wallet":"x"}'), "malformed")
    rejected("duplicate_key", "export_wh twice (10, then 2000): one byte string, one meaning",
             signed_body(b'{"meter_id":"M-0001","seq":1,"start":1,"end":2,"export_wh":10,'
                         b'"export_register_wh":2000,"export_wh":2000}'), "malformed")
    rejected("duplicate_key_escaped", "meter_id again, written with a JSON escape (\\u0069 is i)",
             signed_body(b'{"meter_id":"M-0001","seq":1,"start":1,"end":2,"export_wh":10,'
                         b'"export_register_wh":20,"meter_\\u0069d":"M-0002"}'), "malformed")
    rejected("bad_interval", "end before start",
             signed_body(b'{"meter_id":"M-0001","seq":1,"start":5,"end":2,"export_wh":5,'
                         b'"export_register_wh":9}'), "malformed")
    rejected("unknown_prefix", "version 9 prefix", frame(b"GRIDTOKENX/READING/9\n{}", bytes(64)), "malformed")
    rejected("oversized", "5000-byte payload", b"x" * 5000, "oversized")
    rejected("not_utf8", "binary garbage", bytes(range(256)), "malformed")
    return {
        "description": "GridTokenX meter protocol test vectors; see PROTOCOL.md. Keys: seeds are "
        "bytes 0..31 (meter A, public key in each vector) and 32..63 (meter B).",
        "seeds_hex": {"A": SEED_A.hex(), "B": SEED_B.hex()},
        "vectors": v,
    }


def evaluate(vector: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run one vector through the code: ("valid", details) or ("rejected", {"reason": ...})."""
    payload = bytes.fromhex(vector["payload_hex"])
    public_key = base58.b58decode(vector["public_key"])
    try:
        signed = check_payload(payload, public_key=public_key, topic=vector["topic"])
    except ProtocolError as exc:
        return "rejected", {"reason": exc.reason.value, "detail": exc.detail}
    details: dict[str, Any] = {"format": signed.format, "reading": msgspec.to_builtins(signed.reading)}
    if signed.claimed_wallet is not None:
        details["claimed_wallet"] = signed.claimed_wallet
    return "valid", details


def check(document: dict[str, Any]) -> list[Outcome]:
    outcomes = []
    for vector in document["vectors"]:
        expect = vector["expect"]
        verdict, details = evaluate(vector)
        if expect["verdict"] == "valid":
            ok = verdict == "valid" and details["reading"] == expect["reading"] and (
                details["format"] == expect["format"]
            )
            want = f"valid ({expect['format']})"
        else:
            ok = verdict == "rejected" and details["reason"] == expect["reason"]
            want = f"rejected: {expect['reason']}"
        got = f"valid ({details['format']})" if verdict == "valid" else f"rejected: {details['reason']}"
        outcomes.append(Outcome(vector["name"], want, got, ok))
    return outcomes
