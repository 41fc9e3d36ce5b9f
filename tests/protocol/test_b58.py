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
