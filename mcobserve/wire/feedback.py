"""The Feedback-Divider option: elective, unsafe, uint of 0-1 bytes, class E (draft §8.1)."""

from __future__ import annotations

import logging

from aiocoap import Message
from aiocoap.optiontypes import UintOption

from mcobserve.constants import DEFAULT_CODE_POINTS, CodePoints

log = logging.getLogger(__name__)


def get_feedback_divider(message: Message, code_points: CodePoints = DEFAULT_CODE_POINTS) -> int | None:
    """Q of the message's Feedback-Divider option; an empty value is 0 (draft §8.1, RFC 7252 §3.2).

    Absent, repeated or longer than one byte: None. The option is elective, so a malformed one is
    ignored like an unrecognized option (RFC 7252 §5.4.1), and logged.
    """
    options = message.opt.get_option(code_points.feedback_divider)
    if not options:
        return None
    if len(options) > 1:
        log.info("ignored a repeated Feedback-Divider option")
        return None
    value = options[0].value
    if isinstance(value, int):
        raw_len = (value.bit_length() + 7) // 8
        if raw_len > 1:
            log.info("ignored a Feedback-Divider option of %d bytes", raw_len)
            return None
        return value
    raw = bytes(value)
    if len(raw) > 1:
        log.info("ignored a Feedback-Divider option of %d bytes", len(raw))
        return None
    return raw[0] if raw else 0


def set_feedback_divider(message: Message, q: int, code_points: CodePoints = DEFAULT_CODE_POINTS) -> None:
    """Put Feedback-Divider Q into ``message``, replacing any (draft §8.1)."""
    if not 0 <= q <= 0xFF:
        raise ValueError("Feedback-Divider is a uint of 0-1 bytes")
    message.opt.delete_option(code_points.feedback_divider)
    message.opt.add_option(UintOption(code_points.feedback_divider, q))
