"""Topic properties of draft-ietf-core-coap-pubsub -21 (§2.2.1, CBOR keys of §5) and their checks."""

from __future__ import annotations

import math
from typing import Any, Final

from ..errors import MalformedError, TopicError
from ..wire.cbor import CborTag, cbor_decode

TOPIC_NAME: Final = 0
TOPIC_DATA: Final = 1
RESOURCE_TYPE: Final = 2
TOPIC_CONTENT_FORMAT: Final = 3
TOPIC_TYPE: Final = 4
EXPIRATION_DATE: Final = 5
MAX_SUBSCRIBERS: Final = 6
OBSERVER_CHECK: Final = 7
INITIALIZE: Final = 8

NAMES: Final = {
    TOPIC_NAME: "topic-name",
    TOPIC_DATA: "topic-data",
    RESOURCE_TYPE: "resource-type",
    TOPIC_CONTENT_FORMAT: "topic-content-format",
    TOPIC_TYPE: "topic-type",
    EXPIRATION_DATE: "expiration-date",
    MAX_SUBSCRIBERS: "max-subscribers",
    OBSERVER_CHECK: "observer-check",
    INITIALIZE: "initialize",
}
#: Immutable after creation (pub-sub §3.2.3, §3.2.4).
IMMUTABLE: Final = (TOPIC_NAME, TOPIC_DATA, RESOURCE_TYPE)
#: Default of "observer-check" (RFC 7641 §4.5: 24 hours).
DEFAULT_OBSERVER_CHECK: Final = 86400

RT_COLLECTION: Final = "core.ps.coll"
RT_TOPIC: Final = "core.ps.conf"
RT_DATA: Final = "core.ps.data"
RT_BROKER: Final = "core.ps"

_MAX_TEXT: Final = 255
_UINT16: Final = 0xFFFF


def decode_map(payload: bytes) -> dict[int, Any]:
    """The CBOR map of a request payload (4.00 if it is not one)."""
    try:
        item = cbor_decode(payload)
    except MalformedError as e:
        raise TopicError(f"payload is not CBOR: {e}") from None
    if not isinstance(item, dict):
        raise TopicError("payload is not a CBOR map of topic properties")
    for k in item:
        if type(k) is not int:
            raise TopicError(f"topic property key {k!r} is not an integer")
    return item


def decode_key_array(payload: bytes) -> list[int]:
    """The CBOR array of property keys of a FETCH on a topic (pub-sub §3.2.2)."""
    try:
        item = cbor_decode(payload)
    except MalformedError as e:
        raise TopicError(f"payload is not CBOR: {e}") from None
    if not isinstance(item, list) or not all(type(k) is int for k in item):
        raise TopicError("payload is not a CBOR array of topic property keys")
    return item


def check_values(props: dict[int, Any], *, extra_keys: tuple[int, ...] = ()) -> None:
    """Every property has its CBOR type of pub-sub §5; unknown keys are refused (§3.1.3)."""
    for key, value in props.items():
        if key in (TOPIC_NAME, TOPIC_DATA, RESOURCE_TYPE, TOPIC_TYPE):
            if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
                raise TopicError(f"{NAMES[key]} must be a non-empty text string")
        elif key == TOPIC_CONTENT_FORMAT:
            if type(value) is not int or not 0 <= value <= _UINT16:
                raise TopicError("topic-content-format must be an unsigned integer Content-Format")
        elif key == EXPIRATION_DATE:
            if (
                not isinstance(value, CborTag)
                or value.tag != 1
                or type(value.value) not in (int, float)
                or not math.isfinite(value.value)
            ):
                raise TopicError("expiration-date must be a tag 1 epoch-based date/time (#6.1(number))")
        elif key == MAX_SUBSCRIBERS:
            if type(value) is not int or value < 0 or value > 2**32:
                raise TopicError("max-subscribers must be an unsigned integer")
        elif key == OBSERVER_CHECK:
            if type(value) is not int or value <= 0 or value > 2**32:
                raise TopicError("observer-check must be an unsigned integer greater than 0")
        elif key == INITIALIZE:
            if not isinstance(value, bytes):
                raise TopicError("initialize must be a byte string")
        elif key not in extra_keys:
            raise TopicError(f"unrecognized topic property {key}")
    if INITIALIZE in props and TOPIC_CONTENT_FORMAT not in props:
        raise TopicError("initialize needs topic-content-format (pub-sub §2.2.1)")


def expiration(props: dict[int, Any]) -> float | None:
    """The expiration date in POSIX seconds, or None."""
    value = props.get(EXPIRATION_DATE)
    return float(value.value) if isinstance(value, CborTag) else None


def matches(props: dict[int, Any], flt: dict[int, Any]) -> bool:
    """Each property of the filter is present with the same value (pub-sub §3.1.2)."""
    return all(k in props and props[k] == v and type(props[k]) is type(v) for k, v in flt.items())
