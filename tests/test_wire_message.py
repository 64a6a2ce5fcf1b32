"""Transport-independent message serialization for 'ph_req' and 'last_notif' (draft §4.2.2)."""

from __future__ import annotations

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption, UintOption
from hypothesis import given, settings
from hypothesis import strategies as st

from mcobserve.constants import CodePoints
from mcobserve.errors import MalformedError
from mcobserve.wire import (
    code_str,
    option_name,
    parse_message,
    serialize_message,
    split_options,
    unknown_critical_options,
)


def test_notification_bytes() -> None:
    """2.05, Observe 11, Content-Format 0, payload "5678" (draft §7, last multicast notification)."""
    msg = Message(code=Code.CONTENT, observe=11, content_format=0, payload=b"5678")
    data = serialize_message(msg)
    # 0x45 | Observe (6): delta 6 len 1 = 61 0b | Content-Format (12): delta 6 len 0 = 60 | ff | payload
    assert data.hex() == "45610b60ff35363738"
    back = parse_message(data, b"\x7b")
    assert back.code == Code.CONTENT
    assert back.opt.observe == 11
    assert back.opt.content_format == 0
    assert back.payload == b"5678"
    assert back.token == b"\x7b"
    assert serialize_message(back) == data


def test_phantom_request_bytes() -> None:
    msg = Message(code=Code.GET, observe=0, uri_path=["r"])
    data = serialize_message(msg)
    assert data.hex() == "01605172"  # GET | Observe 0 (empty value) | Uri-Path "r"; no payload marker
    assert parse_message(data).opt.uri_path == ("r",)


def test_empty_payload_has_no_marker() -> None:
    assert serialize_message(Message(code=Code.SERVICE_UNAVAILABLE)) == b"\xa3"
    msg = parse_message(b"\xa3")
    assert (
        msg.code == Code.SERVICE_UNAVAILABLE and msg.payload == b"" and len(list(msg.opt.option_list())) == 0
    )


def test_agrees_with_aiocoap_udp_encoding() -> None:
    """Code ‖ options ‖ payload equals the UDP encoding minus header, Message ID and Token."""
    msg = Message(code=Code.CONTENT, observe=70000, max_age=30, etag=b"\x01\x02", payload=b"x" * 300)
    msg.opt.add_option(UintOption(18, 0))  # Feedback-Divider (draft §8.1)
    msg.opt.add_option(OpaqueOption(65002, b"\xaa"))
    msg.mtype, msg.mid, msg.token = Type.NON, 0x1234, b"\x7b\x01"
    udp = msg.encode()
    ours = serialize_message(msg)
    assert ours[0] == udp[1]
    assert ours[1:] == udp[4 + 2 :]
    decoded = Message.decode(udp)
    assert serialize_message(decoded) == ours
    parsed = parse_message(ours, b"\x7b\x01")
    assert parsed.opt == decoded.opt and parsed.payload == decoded.payload and parsed.token == decoded.token


def test_large_option_numbers_and_lengths() -> None:
    msg = Message(code=Code.CONTENT, payload=b"p")
    msg.opt.add_option(OpaqueOption(65535, b"v" * 300))
    data = serialize_message(msg)
    options, payload = split_options(data, 1)
    assert options == [(65535, b"v" * 300)] and payload == b"p"
    assert parse_message(data).opt.get_option(65535)[0].value == b"v" * 300


def test_non_minimal_uint_is_accepted() -> None:
    # RFC 7252 §3.2: leading zeros MUST be accepted; re-serialization is minimal
    msg = parse_message(bytes.fromhex("45630000 0b".replace(" ", "")))
    assert msg.opt.observe == 11
    assert serialize_message(msg).hex() == "45610b"


def test_unknown_critical_options_are_kept_and_reported() -> None:
    msg = Message(code=Code.CONTENT, observe=1)
    msg.opt.add_option(OpaqueOption(65001, b"\x01"))  # odd: critical, unknown
    msg.opt.add_option(OpaqueOption(65000, b"\x02"))  # even: elective
    msg.opt.add_option(OpaqueOption(47, b""))  # Listen-To-Multicast-Responses: critical, known to the draft
    data = serialize_message(msg)
    parsed = parse_message(data)
    assert parsed.opt.get_option(65001)[0].value == b"\x01"
    assert unknown_critical_options(parsed) == [65001]
    assert unknown_critical_options(parsed, known=[65001]) == []
    assert unknown_critical_options(parsed, code_points=CodePoints(listen_to_multicast_responses=49)) == [
        47,
        65001,
    ]


def test_four_byte_observe_is_refused() -> None:
    with pytest.raises(MalformedError, match="Observe option value is 4 byte"):
        parse_message(bytes.fromhex("456400000001"))
    # aiocoap itself would accept it silently
    assert Message.decode(bytes.fromhex("5045000064000000 01".replace(" ", ""))).opt.observe == 1


@pytest.mark.parametrize(
    ("hexdata", "fragment"),
    [
        ("", "empty message"),
        ("00", "0.00"),
        ("0061ff", "0.00"),
        ("20", "reserved or signaling"),
        ("e1", "reserved or signaling"),
        ("c0", "reserved or signaling"),
        ("45ff", "zero-length payload"),
        ("45610bff", "zero-length payload"),
        ("45f0", "delta nibble 15"),
        ("45f1", "delta nibble 15"),
        ("450f", "length nibble 15"),
        ("451f", "length nibble 15"),
        ("45d0", "delta truncated"),
        ("45e0ff", "delta truncated"),
        ("450d", "length truncated"),
        ("4562 01".replace(" ", ""), "announces 2 byte"),
        ("45b3 6162".replace(" ", ""), "announces 3 byte"),
        ("45e0ffff00", "exceeds 65535"),
        ("45e0fef0 e00001 00".replace(" ", ""), "exceeds 65535"),
        ("45b1c3", "not valid UTF-8"),
        ("45640000 0001".replace(" ", ""), "Observe option value is 4"),
        ("45c3000001", "Content-Format option value is 3"),
        ("4530", "Uri-Host option value is 0"),
        ("4540", "ETag option value is 0"),
        ("4551 01".replace(" ", ""), "If-None-Match"),
        ("45d40a 01020304".replace(" ", ""), "Block2"),
        ("45610100", "Observe option is not repeatable"),
        ("456000", "Observe option is not repeatable"),
        ("45c1 00 01 00".replace(" ", ""), "Content-Format option is not repeatable"),
        ("45d2030000", "Hop-Limit option value is 2"),
        ("45d2 05 0000".replace(" ", ""), "Feedback-Divider option value is 2"),
    ],
)
def test_parse_refuses(hexdata: str, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment):
        parse_message(bytes.fromhex(hexdata))


def test_parse_refuses_bad_arguments() -> None:
    with pytest.raises(MalformedError):
        parse_message("45")  # type: ignore[arg-type]
    with pytest.raises(MalformedError, match="Token"):
        parse_message(b"\x45", bytes(9))
    with pytest.raises(MalformedError, match="limit"):
        parse_message(b"\x45\xff" + bytes(70000))


def test_feedback_divider_number_is_configurable() -> None:
    assert parse_message(bytes.fromhex("45d10502")).opt.get_option(18)[0].value == b"\x02"  # 0-1 bytes (§8.1)
    assert parse_message(bytes.fromhex("45d005")).opt.get_option(18)[0].value == b""
    data = bytes.fromhex("45d10c00")  # option 25 with a 1-byte value
    assert parse_message(data).opt.get_option(25)[0].value == b"\x00"
    with pytest.raises(MalformedError, match="Feedback-Divider"):
        parse_message(bytes.fromhex("45d20c0000"), code_points=CodePoints(feedback_divider=25))
    assert option_name(25, CodePoints(feedback_divider=25)) == "Feedback-Divider"
    assert option_name(11) == "Uri-Path"
    assert option_name(65002) == "Option 65002"


@pytest.mark.parametrize(
    ("code", "text"), [(1, "0.01"), (5, "0.05"), (69, "2.05"), (163, "5.03"), (255, "7.31")]
)
def test_code_str(code: int, text: str) -> None:
    assert code_str(code) == text
    assert code_str(Code(code)) == text


@pytest.mark.parametrize("code", [-1, 256, "2.05", 2.0])
def test_code_str_refuses(code: object) -> None:
    with pytest.raises(MalformedError):
        code_str(code)  # type: ignore[arg-type]


def test_serialize_refuses_message_without_code() -> None:
    with pytest.raises(MalformedError):
        serialize_message(Message())


# ----------------------------------------------------------------------------------------------------
# Round trips (hypothesis)
# ----------------------------------------------------------------------------------------------------

_SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    code = draw(st.sampled_from([1, 2, 3, 4, 5, 65, 68, 69, 128, 132, 160, 163, 164]))
    msg = Message(code=Code(code))
    if draw(st.booleans()):
        msg.opt.observe = draw(st.integers(0, 2**24 - 1))
    if draw(st.booleans()):
        msg.opt.max_age = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        msg.opt.content_format = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        msg.opt.etag = draw(st.binary(min_size=1, max_size=8))
    msg.opt.uri_path = draw(st.lists(_SEGMENT, max_size=3))
    msg.opt.uri_query = draw(st.lists(_SEGMENT, max_size=2))
    if draw(st.booleans()):
        msg.opt.oscore = draw(st.binary(max_size=20))
    for number in draw(st.lists(st.integers(61000, 65535), max_size=3, unique=True)):
        msg.opt.add_option(OpaqueOption(number, draw(st.binary(max_size=300))))
    msg.payload = draw(st.binary(max_size=100))
    return msg


@settings(max_examples=200, deadline=None)
@given(messages(), st.binary(max_size=8))
def test_message_round_trip(msg: Message, token: bytes) -> None:
    data = serialize_message(msg)
    back = parse_message(data, token)
    assert back.code == msg.code
    assert back.opt == msg.opt
    assert back.payload == msg.payload
    assert back.token == token
    assert serialize_message(back) == data
