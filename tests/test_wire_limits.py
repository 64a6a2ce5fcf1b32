"""Size and depth limits of the decoders: hostile payloads get a MalformedError, not memory or recursion."""

from __future__ import annotations

import pytest

from mcobserve.errors import MalformedError
from mcobserve.wire import (
    MAX_CBOR_SIZE,
    MAX_INFORMATIVE_RESPONSE_SIZE,
    MAX_NESTING_DEPTH,
    InformativeResponse,
    cbor_decode,
    parse_message,
)
from mcobserve.wire.message import MAX_SERIALIZED_MESSAGE_SIZE


def bstr(n: int) -> bytes:
    return b"\x5a" + n.to_bytes(4, "big") + b"\x00" * n


def test_oversized_informative_response_is_refused():
    payload = b"\xa1\x18\x40" + bstr(MAX_INFORMATIVE_RESPONSE_SIZE)
    with pytest.raises(MalformedError, match="limit"):
        InformativeResponse.decode(payload)
    # Just under the limit, an unknown key with a large value is accepted and kept.
    ok = b"\xa1\x18\x40" + bstr(MAX_INFORMATIVE_RESPONSE_SIZE - 16)
    assert len(InformativeResponse.decode(ok).extra[0x40]) == MAX_INFORMATIVE_RESPONSE_SIZE - 16


def test_announced_length_beyond_the_data_is_refused_without_allocation():
    with pytest.raises(MalformedError):
        cbor_decode(b"\x5b" + (2**62).to_bytes(8, "big"))
    with pytest.raises(MalformedError):
        cbor_decode(b"\x9b" + (2**62).to_bytes(8, "big"))


def test_deep_nesting_is_refused():
    with pytest.raises(MalformedError, match="nest"):
        cbor_decode(b"\x81" * (MAX_NESTING_DEPTH + 5) + b"\x00")
    with pytest.raises(MalformedError):
        InformativeResponse.decode(b"\xa1\x00" + b"\x81" * 10_000 + b"\x00")
    assert MAX_CBOR_SIZE >= MAX_INFORMATIVE_RESPONSE_SIZE


def test_oversized_serialized_message_is_refused():
    with pytest.raises(MalformedError):
        parse_message(b"\x45\xff" + b"x" * MAX_SERIALIZED_MESSAGE_SIZE)


def test_cri_scheme_id_stays_a_cbor_negative_integer():
    """Hypothesis found: a Python int below -2**64 was accepted as scheme-id and could not be re-encoded."""
    from mcobserve.wire import CRI, cbor_decode, cbor_encode

    with pytest.raises(MalformedError, match="scheme-id"):
        CRI.from_cbor_obj([-(2**64) - 1, b"\x00\x00\x00\x01"])
    cri = CRI.from_cbor_obj([-(2**64), [b"\x0a\x00\x00\x01"]])
    assert CRI.from_cbor_obj(cbor_decode(cbor_encode(cri.to_cbor_obj()))) == cri
