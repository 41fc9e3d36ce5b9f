from __future__ import annotations

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.b58 import b58decode, b58encode


@given(st.binary(max_size=80))
def test_same_as_the_base58_package(data: bytes) -> None:
    encoded = base58.b58encode(data)
    assert b58encode(data) == encoded
    assert b58decode(encoded) == data
    assert b58decode(encoded.decode()) == data


@pytest.mark.parametrize("bad", [b"0", b"O", b"I", b"l", b"abc+", "é"])
def test_characters_outside_the_alphabet_are_rejected(bad: bytes | str) -> None:
    with pytest.raises(ValueError):
        b58decode(bad)


def _signature_or_error(text: bytes) -> bytes | str:
    from protocol.errors import ProtocolError
    from protocol.wire import _decode_signature

    try:
        return _decode_signature(text)
    except ProtocolError as exc:
        return f"{exc.reason.value}: {exc.detail}"


def _reference(text: bytes) -> bytes | str:
    """What the signature line meant before the native decoder: the table loop, then the length."""
    if not text:
        return "malformed: the signature line is empty"
    if len(text) > 100:
        return "malformed: the signature line is too long for base58 of 64 bytes"
    try:
        raw = b58decode(text)
    except ValueError:
        return "malformed: the signature is not base58"
    return raw if len(raw) == 64 else f"malformed: the signature is {len(raw)} bytes, not 64"


@given(st.binary(min_size=60, max_size=68).map(base58.b58encode))
def test_native_signature_decoding_means_the_same_as_the_table_loop(text: bytes) -> None:
    assert _signature_or_error(text) == _reference(text)


@given(st.text(alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0OIl+ \n\té", max_size=100))
def test_any_signature_line_decodes_or_fails_as_before(text: str) -> None:
    raw = text.encode()
    assert _signature_or_error(raw) == _reference(raw)


@pytest.mark.parametrize("text", [b"1" * 64, b"1" * 63 + b"2", b"1" * 65, b"1" + base58.b58encode(bytes(1) + bytes(
    range(1, 64))), base58.b58encode(bytes(64))])
def test_leading_zero_signatures(text: bytes) -> None:
    assert _signature_or_error(text) == _reference(text)
