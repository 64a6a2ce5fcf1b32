"""Fuzzing: every wire decoder lets only MalformedError escape, for any input (draft §4.2, §4.2.1, §4.2.2).

Inputs: arbitrary bytes, arbitrary CBOR structures (encoded and as Python objects), structures shaped like
CRIs and tp_info, and mutations (flipped, inserted, deleted bytes, truncations) of valid encodings.
When a decoder accepts something, its output must re-encode and decode to the same value.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import cbor2
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcobserve.errors import MalformedError
from mcobserve.wire import (
    CRI,
    CborSimple,
    CborTag,
    InformativeResponse,
    TpInfo,
    cbor_decode,
    cbor_encode,
    informative_response_diag,
    parse_message,
    serialize_message,
)

#: Examples per fuzz test; raise it for a longer campaign: MCOBSERVE_FUZZ_EXAMPLES=20000 pytest ...
FUZZ_EXAMPLES = int(os.environ.get("MCOBSERVE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SRV = ipaddress.IPv6Address("2001:db8::ab")
GRP = ipaddress.IPv6Address("ff35:30:2001:db8::23")
TP_INFO = TpInfo(CRI(-1, SRV), CRI(-1, GRP, 61616), b"\x7b")


def _valid_messages() -> list[bytes]:
    notif = Message(code=Code.CONTENT, observe=11, content_format=0, max_age=30, payload=b"5678")
    notif.opt.add_option(OpaqueOption(18, b"\x03"))
    ph_req = Message(
        code=Code.FETCH, observe=0, uri_path=["r", "s"], uri_query=["a=b"], oscore=b"\x39\x00\x08"
    )
    ph_req.payload = bytes(range(40))
    cancel = Message(code=Code.SERVICE_UNAVAILABLE)
    return [serialize_message(m) for m in (notif, ph_req, cancel)]


MESSAGES = _valid_messages()
VALID_PAYLOADS = [
    InformativeResponse(tp_info=TP_INFO, last_notif=MESSAGES[0]).encode(),
    InformativeResponse(
        tp_info=TpInfo(CRI(-1, "srv.example", 1234), CRI(-1, "239.255.0.1", 61616), b""),
        ph_req=MESSAGES[1],
        last_notif=MESSAGES[0],
        next_not_before=3,
        ending=2051251201.5,
        join_uri="coap://gm/g",
        sec_gp="g",
        sign_params=[[1], [1, 6]],
        gp_material={2: bytes(16), 6: b"\x57", 11: [[1], [1, 6]]},
        srv_cred=b"\xa2\x02",
        exi=10,
        extra={"x": [1, {2: 3}], -7: CborTag(5, 1)},
    ).encode(),
    cbor2.dumps({0: [[-1, SRV.packed], [-1, GRP.packed, 61616], b"\x7b"]}),  # the draft's flat figure
    bytes.fromhex(
        "838220815020010db80000000000000000000000ab82208250ff35003020010db8000000000000002319f0b0417b"
    ),
]


def only_malformed(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; a MalformedError is fine (returns None), any other exception fails the test."""
    try:
        return fn(*args)
    except MalformedError as exc:
        assert str(exc), "MalformedError without a message"
        return None


# ----------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------

_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-70000, 70000)
    | st.floats()
    | st.binary(max_size=20)
    | st.sampled_from([SRV.packed, GRP.packed, bytes(4), b"\xa9\xfe\x00\x01", b"\xfe\x80" + bytes(14)])
    | st.text(max_size=12)
    | st.sampled_from(["example", "com", "Example", "", "a.b", "eth0"])
)
CBOR_OBJECTS = st.recursive(
    _LEAF,
    lambda c: (
        st.lists(c, max_size=6)
        | st.dictionaries(
            st.integers(-5, 20) | st.text(max_size=3) | st.booleans() | st.binary(max_size=2), c, max_size=6
        )
        | st.builds(CborTag, st.integers(0, 300), c)
    ),
    max_leaves=30,
)
_SCHEME = st.sampled_from([-1, -1, -1, -2, 0, 1, True, -1.0])
_AUTH_ITEM = st.one_of(
    st.integers(-2, 70000),
    st.sampled_from([SRV.packed, GRP.packed, bytes([10, 0, 0, 1]), bytes([224, 0, 0, 1]), b"", bytes(17)]),
    st.sampled_from(["example", "com", "Example", "", "a.b", "eth0", "grp"]),
    st.booleans(),
    st.none(),
)
CRI_SHAPED = st.one_of(
    st.tuples(_SCHEME, st.lists(_AUTH_ITEM, max_size=5)).map(list),
    st.builds(lambda s, rest: [s, *rest], _SCHEME, st.lists(_AUTH_ITEM, max_size=5)),
    st.builds(
        lambda s, a, extra: [s, a, *extra],
        _SCHEME,
        st.lists(_AUTH_ITEM, max_size=4),
        st.lists(_LEAF, max_size=2),
    ),
)
TP_INFO_SHAPED = st.lists(CRI_SHAPED | st.binary(max_size=10) | _LEAF, max_size=4)
INFORMATIVE_SHAPED = st.dictionaries(
    st.integers(-2, 20) | st.text(max_size=2),
    TP_INFO_SHAPED | CBOR_OBJECTS | st.sampled_from(MESSAGES) | st.integers(-5, 5) | st.floats(),
    max_size=8,
)


@st.composite
def mutated(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(
                st.sampled_from([0x00, 0x17, 0x18, 0x1F, 0x5F, 0x7F, 0x9F, 0xBF, 0xF7, 0xFF, 0xD0, 0xE0])
            )
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=3))
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


ANY_BYTES = st.binary(max_size=300)
CBOR_BYTES = CBOR_OBJECTS.map(cbor_encode) | INFORMATIVE_SHAPED.map(cbor_encode)


# ----------------------------------------------------------------------------------------------------
# Checks on success
# ----------------------------------------------------------------------------------------------------


def check_cri(obj: object) -> None:
    cri = only_malformed(CRI.from_cbor_obj, obj)
    if cri is not None:
        assert CRI.from_cbor_obj(cbor_decode(cbor_encode(cri.to_cbor_obj()))) == cri


def check_tp_info(obj: object) -> None:
    tp = only_malformed(TpInfo.from_cbor_obj, obj)
    if tp is not None:
        assert TpInfo.from_cbor_obj(cbor_decode(cbor_encode(tp.to_cbor_obj()))) == tp


def check_informative_obj(obj: object) -> None:
    ir = only_malformed(InformativeResponse.from_cbor_obj, obj)
    if ir is not None:
        data = ir.encode()
        assert InformativeResponse.decode(data).encode() == data


def check_informative_bytes(data: bytes) -> None:
    ir = only_malformed(InformativeResponse.decode, data)
    if ir is not None:
        encoded = ir.encode()
        assert InformativeResponse.decode(encoded).encode() == encoded


def check_message(data: bytes) -> None:
    msg = only_malformed(parse_message, data, b"\x7b")
    if msg is not None:
        again = parse_message(serialize_message(msg), b"\x7b")
        assert again.code == msg.code and again.opt == msg.opt and again.payload == msg.payload


def check_diag(data: bytes) -> None:
    text = only_malformed(informative_response_diag, data)
    if text is not None:
        assert isinstance(text, str) and text
        cbor_decode(data)  # diag succeeded, so the input was well-formed CBOR


def check_cbor_decode(data: bytes) -> None:
    obj = only_malformed(cbor_decode, data)
    if obj is not None or data[:1] == b"\xf6":
        assert cbor_encode(cbor_decode(cbor_encode(obj))) == cbor_encode(obj)


# ----------------------------------------------------------------------------------------------------
# Arbitrary bytes
# ----------------------------------------------------------------------------------------------------


@FUZZ
@given(ANY_BYTES)
def test_arbitrary_bytes(data: bytes) -> None:
    check_informative_bytes(data)
    check_message(data)
    check_diag(data)
    check_cbor_decode(data)


@FUZZ
@given(ANY_BYTES)
def test_arbitrary_bytes_as_cbor_objects(data: bytes) -> None:
    obj = only_malformed(cbor_decode, data)
    check_cri(obj)
    check_tp_info(obj)
    check_informative_obj(obj)


# ----------------------------------------------------------------------------------------------------
# Arbitrary CBOR structures
# ----------------------------------------------------------------------------------------------------


@FUZZ
@given(CBOR_OBJECTS)
def test_arbitrary_structures(obj: object) -> None:
    check_cri(obj)
    check_tp_info(obj)
    check_informative_obj(obj)
    data = only_malformed(cbor_encode, obj)
    if data is not None:
        check_informative_bytes(data)
        check_diag(data)
        check_message(data)


@FUZZ
@given(CRI_SHAPED)
def test_cri_shaped(obj: list[Any]) -> None:
    check_cri(obj)
    check_tp_info([obj])
    check_tp_info([[-1, [SRV.packed]], obj, b"\x7b"])


@FUZZ
@given(TP_INFO_SHAPED)
def test_tp_info_shaped(obj: list[Any]) -> None:
    check_tp_info(obj)
    check_informative_obj({0: obj})
    data = only_malformed(cbor_encode, {0: obj})
    if data is not None:
        check_diag(data)


@FUZZ
@given(INFORMATIVE_SHAPED)
def test_informative_shaped(obj: dict[Any, Any]) -> None:
    check_informative_obj(obj)
    data = only_malformed(cbor_encode, obj)
    if data is not None:
        check_informative_bytes(data)
        check_diag(data)


@FUZZ
@given(CBOR_BYTES)
def test_encoded_structures_via_cbor2_agree(data: bytes) -> None:
    obj = cbor_decode(data)
    try:
        theirs = cbor2.loads(data)
    except Exception:  # cbor2 may refuse or interpret tags; only compare plain data
        return
    if not _has_tag_or_simple(obj):
        assert cbor_encode(theirs) == data or _has_float(obj)


def _has_tag_or_simple(obj: object) -> bool:
    if isinstance(obj, CborTag | CborSimple):
        return True
    if isinstance(obj, list):
        return any(_has_tag_or_simple(v) for v in obj)
    if isinstance(obj, dict):
        return any(_has_tag_or_simple(k) or _has_tag_or_simple(v) for k, v in obj.items())
    return False


def _has_float(obj: object) -> bool:
    if isinstance(obj, float):
        return True
    if isinstance(obj, list):
        return any(_has_float(v) for v in obj)
    if isinstance(obj, dict):
        return any(_has_float(k) or _has_float(v) for k, v in obj.items())
    return False


# ----------------------------------------------------------------------------------------------------
# Mutations of valid encodings
# ----------------------------------------------------------------------------------------------------


@FUZZ
@given(mutated(VALID_PAYLOADS))
def test_mutated_informative_responses(data: bytes) -> None:
    check_informative_bytes(data)
    check_diag(data)
    obj = only_malformed(cbor_decode, data)
    check_tp_info(obj.get(0) if isinstance(obj, dict) else obj)


@FUZZ
@given(mutated(MESSAGES))
def test_mutated_messages(data: bytes) -> None:
    check_message(data)


@FUZZ
@given(st.sampled_from(VALID_PAYLOADS + MESSAGES), st.data())
def test_truncations(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    for chunk in (data[:cut], data[cut:]):
        check_informative_bytes(chunk)
        check_message(chunk)
        check_diag(chunk)


def test_valid_samples_decode() -> None:
    for payload in VALID_PAYLOADS[:3]:
        assert InformativeResponse.decode(payload).tp_info is not None
    for message in MESSAGES:
        assert serialize_message(parse_message(message)) == message
