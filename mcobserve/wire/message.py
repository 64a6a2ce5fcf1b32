"""Transport-independent message serialization: Code ‖ options ‖ [0xff ‖ payload] (draft §4.2.2).

This is the format of 'ph_req' and 'last_notif' (draft §4.2). It has no version, type, Token or
Message ID: the Token comes from 'tpi_token' (draft §4.2.1.1) and is set on the parsed message.
aiocoap 0.4.17 is the codec; its option objects are used as is, but the framing is validated here first
(aiocoap accepts option numbers above 65535, a payload marker with no payload, and invalid UTF-8 raises
UnicodeDecodeError), and every failure becomes :class:`MalformedError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from aiocoap import Message
from aiocoap.message import Direction
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from mcobserve.constants import DEFAULT_CODE_POINTS, CodePoints
from mcobserve.errors import MalformedError

#: Largest serialized message accepted by :func:`parse_message` (bytes).
MAX_SERIALIZED_MESSAGE_SIZE: Final = 64 * 1024
#: Largest CoAP option number (RFC 7252 §3.1: 16 bits).
MAX_OPTION_NUMBER: Final = 0xFFFF
_PAYLOAD_MARKER: Final = 0xFF

#: Length ranges (min, max) of option values of registered options (RFC 7252 §5.10, RFC 7641 §2,
#: RFC 7959 §2.1, RFC 8613 §2, RFC 8768 §3, RFC 7967 §2, RFC 9175 §2.2 and §3.2, RFC 9177 §4, RFC 9668 §3.1).
OPTION_LENGTHS: Final[dict[int, tuple[int, int]]] = {
    1: (0, 8),  # If-Match
    3: (1, 255),  # Uri-Host
    4: (1, 8),  # ETag
    5: (0, 0),  # If-None-Match
    6: (0, 3),  # Observe
    7: (0, 2),  # Uri-Port
    8: (0, 255),  # Location-Path
    9: (0, 255),  # OSCORE
    11: (0, 255),  # Uri-Path
    12: (0, 2),  # Content-Format
    14: (0, 4),  # Max-Age
    15: (0, 255),  # Uri-Query
    16: (0, 1),  # Hop-Limit (RFC 8768 says 1 byte; aiocoap emits 0 as empty, so 0 bytes is tolerated)
    17: (0, 2),  # Accept
    19: (0, 3),  # Q-Block1
    20: (0, 255),  # Location-Query
    21: (0, 0),  # EDHOC
    23: (0, 3),  # Block2
    27: (0, 3),  # Block1
    28: (0, 4),  # Size2
    31: (0, 3),  # Q-Block2
    35: (1, 1034),  # Proxy-Uri
    39: (1, 255),  # Proxy-Scheme
    60: (0, 4),  # Size1
    252: (1, 40),  # Echo
    258: (0, 1),  # No-Response
    292: (0, 8),  # Request-Tag
}
_NAME_FIXES: Final[dict[int, str]] = {4: "ETag", 9: "OSCORE", 21: "EDHOC"}
#: Registered options that may occur more than once (RFC 7252 §5.10, RFC 9175 §3.2).
REPEATABLE_OPTIONS: Final[frozenset[int]] = frozenset({1, 4, 8, 11, 15, 19, 20, 31, 292})


def code_str(code: int) -> str:
    """The dotted ``c.dd`` form of a CoAP code, e.g. ``"2.05"`` for 69 (RFC 7252 §3)."""
    if type(code) is not int and not isinstance(code, Code):
        raise MalformedError(f"a CoAP code is an integer, got {type(code).__name__}")
    if not 0 <= code <= 0xFF:
        raise MalformedError(f"CoAP code {code} is outside 0..255")
    return f"{code >> 5}.{code & 0x1F:02d}"


def option_name(number: int, code_points: CodePoints = DEFAULT_CODE_POINTS) -> str:
    """Printable option name: aiocoap's (``Uri-Path``), the draft's (``Feedback-Divider``) or a number."""
    drafts = {
        code_points.feedback_divider: "Feedback-Divider",
        code_points.listen_to_multicast_responses: "Listen-To-Multicast-Responses",
        code_points.request_hash: "Request-Hash",
    }
    if number in drafts:
        return drafts[number]
    if number in _NAME_FIXES:
        return _NAME_FIXES[number]
    opt = OptionNumber(number)
    if hasattr(opt, "name"):
        return str(opt.name_printable)
    return f"Option {number}"


def serialize_message(msg: Message) -> bytes:
    """Code byte ‖ options ‖ (0xff ‖ payload if the payload is non-empty) (draft §4.2.2)."""
    if msg.code is None:
        raise MalformedError("message has no code")
    try:
        code = int(msg.code)
        if not 0 <= code <= 0xFF:
            raise MalformedError(f"CoAP code {code} is outside 0..255")
        options = msg.opt.encode()
    except MalformedError:
        raise
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise MalformedError(f"cannot serialize the options: {exc}") from exc
    payload = bytes(msg.payload or b"")
    out = bytes([code]) + options
    if payload:
        out += bytes([_PAYLOAD_MARKER]) + payload
    return out


def _extended(nibble: int, data: bytes, pos: int, what: str) -> tuple[int, int]:
    """Decode an option delta or length nibble with its extended bytes (RFC 7252 §3.1)."""
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos + 1 > len(data):
            raise MalformedError(f"option {what} truncated at offset {pos}")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise MalformedError(f"option {what} truncated at offset {pos}")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise MalformedError(f"reserved option {what} nibble 15 at offset {pos - 1} (RFC 7252 §3.1)")


def split_options(data: bytes, start: int = 0) -> tuple[list[tuple[int, bytes]], bytes]:
    """Walk the option sequence from ``start``: ``([(number, value), ...], payload)`` (RFC 7252 §3.1).

    Raises :class:`MalformedError` for nibble 15 misuse, truncated options, option numbers over 65535
    and a payload marker followed by an empty payload.
    """
    options: list[tuple[int, bytes]] = []
    number = 0
    pos = start
    while pos < len(data):
        byte = data[pos]
        if byte == _PAYLOAD_MARKER:
            payload = data[pos + 1 :]
            if not payload:
                raise MalformedError(
                    "payload marker followed by a zero-length payload (RFC 7252 §3: a message format error)"
                )
            return options, bytes(payload)
        pos += 1
        delta, pos = _extended(byte >> 4, data, pos, "delta")
        length, pos = _extended(byte & 0x0F, data, pos, "length")
        number += delta
        if number > MAX_OPTION_NUMBER:
            raise MalformedError(f"option number {number} exceeds {MAX_OPTION_NUMBER}")
        if pos + length > len(data):
            raise MalformedError(
                f"option {number} announces {length} byte(s) at offset {pos}, only {len(data) - pos} remain"
            )
        options.append((number, bytes(data[pos : pos + length])))
        pos += length
    return options, b""


def _check_option(number: int, value: bytes, seen: set[int], code_points: CodePoints) -> None:
    limits = OPTION_LENGTHS.get(number)
    if number == code_points.feedback_divider:
        limits = (0, 1)  # draft §8.1: uint, 0-1 bytes
    if limits is not None:
        low, high = limits
        if not low <= len(value) <= high:
            raise MalformedError(
                f"{option_name(number, code_points)} option value is {len(value)} byte(s); "
                f"the allowed length is {low}..{high}"
            )
        if number in seen and number not in REPEATABLE_OPTIONS:
            raise MalformedError(
                f"{option_name(number, code_points)} option is not repeatable but occurs twice"
            )
    seen.add(number)


def parse_message(
    data: bytes, token: bytes = b"", *, code_points: CodePoints = DEFAULT_CODE_POINTS
) -> Message:
    """Parse Code ‖ options ‖ [0xff ‖ payload] into an aiocoap Message (draft §4.2.2).

    ``token`` (0..8 bytes, e.g. 'tpi_token') is set on the message; its direction is INCOMING, as for
    ``Message.decode``; type and Message ID stay unset. Refused with :class:`MalformedError`: empty
    input, input over :data:`MAX_SERIALIZED_MESSAGE_SIZE`, code 0.00 (Empty) and the reserved classes
    1, 6, 7, nibble 15 misuse, truncated options, option numbers over 65535, an empty payload after the
    marker, registered options of a wrong length or repeated when not repeatable, invalid UTF-8 in string
    options. Unknown options, critical or not, are kept as opaque (see :func:`unknown_critical_options`).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not isinstance(token, bytes | bytearray) or len(token) > 8:
        raise MalformedError("the Token must be 0..8 bytes")
    if not data:
        raise MalformedError("empty message: the Code byte is missing (draft §4.2.2)")
    if len(data) > MAX_SERIALIZED_MESSAGE_SIZE:
        raise MalformedError(
            f"serialized message is {len(data)} bytes, over the limit of {MAX_SERIALIZED_MESSAGE_SIZE}"
        )
    code = data[0]
    if code == 0:
        raise MalformedError("code 0.00 (Empty) cannot carry a request or a notification")
    if code >> 5 in (1, 6, 7):
        raise MalformedError(f"code {code_str(code)} is of a reserved or signaling class")
    options, payload = split_options(data, 1)
    seen: set[int] = set()
    for number, value in options:
        _check_option(number, value, seen, code_points)
    try:
        msg = Message(code=Code(code))
        for number, value in options:
            msg.opt.add_option(OptionNumber(number).create_option(decode=value))
        msg.payload = payload
        msg.token = bytes(token)
    except UnicodeDecodeError as exc:
        raise MalformedError(
            f"option {number} ({option_name(number, code_points)}) is not valid UTF-8"
        ) from exc
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # defensive
        raise MalformedError(f"cannot parse the message: {exc}") from exc
    msg.direction = Direction.INCOMING
    return msg


def unknown_critical_options(
    msg: Message, *, known: Iterable[int] = (), code_points: CodePoints = DEFAULT_CODE_POINTS
) -> list[int]:
    """Critical options in ``msg`` that neither aiocoap, the draft nor ``known`` name (RFC 7252 §5.4.1).

    parse_message keeps such options; a recipient that processes the message must reject it.
    """
    extra = {
        *known,
        code_points.feedback_divider,
        code_points.listen_to_multicast_responses,
        code_points.request_hash,
    }
    out: list[int] = []
    for opt in msg.opt.option_list():
        number = int(opt.number)
        if number & 1 and number not in extra and not hasattr(OptionNumber(number), "name"):
            if number not in out:
                out.append(number)
    return out
