"""CBOR diagnostic notation of informative-response payloads, for ``mcobserve inspect`` (draft §4.2, §11).

Output is EDN (RFC 8949 §8, draft-ietf-cbor-edn-literals): parameter names as inline comments
(``/ tp_info / 0: ...``, as in the draft's figures) and annotations that may contain ``/`` (URIs, option
values) as end-of-line ``#`` comments, so the text stays parseable EDN.
"""

from __future__ import annotations

import datetime
import json
import math
from typing import Any, Final

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption, ContentFormatOption, StringOption, UintOption

from mcobserve.constants import DEFAULT_CODE_POINTS, CodePoints
from mcobserve.errors import MalformedError
from mcobserve.wire.cbor import UNDEFINED, CborSimple, CborTag, cbor_decode
from mcobserve.wire.cri import CRI, SCHEME_COAP
from mcobserve.wire.informative import GP_MATERIAL_NAMES, PARAMETERS_BY_KEY, InformativeResponse
from mcobserve.wire.message import code_str, option_name, parse_message

INDENT: Final = 2
WIDTH: Final = 76
_MAX_DEPTH: Final = 64

# An entry of a container: (text before the value, lines of the value, end-of-line comment or None).
_Entry = tuple[str, list[str], str | None]


def _comment(text: str) -> str:
    """Make ``text`` safe for an end-of-line comment: no line breaks or other control characters."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _scalar(obj: Any) -> str | None:
    """EDN of a non-container item, or None for containers and tags."""
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if obj is None:
        return "null"
    if obj is UNDEFINED:
        return "undefined"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return f"h'{bytes(obj).hex()}'"
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=True)
    if isinstance(obj, CborSimple):
        return f"simple({obj.value})"
    return None


def _inline(obj: Any, depth: int = 0) -> str:
    """Compact one-line EDN."""
    if depth > _MAX_DEPTH:
        raise MalformedError(f"cannot render: nesting deeper than {_MAX_DEPTH} levels")
    text = _scalar(obj)
    if text is not None:
        return text
    if isinstance(obj, list | tuple):
        return "[" + ", ".join(_inline(v, depth + 1) for v in obj) + "]"
    if isinstance(obj, dict):
        return (
            "{" + ", ".join(f"{_inline(k, depth + 1)}: {_inline(v, depth + 1)}" for k, v in obj.items()) + "}"
        )
    if isinstance(obj, CborTag):
        return f"{obj.tag}({_inline(obj.value, depth + 1)})"
    raise MalformedError(f"cannot render a {type(obj).__name__} as CBOR diagnostic notation")


def _container(open_: str, entries: list[_Entry], close: str, level: int) -> list[str]:
    """Lines of a multi-line container; the first line is not indented (it follows a prefix)."""
    if not entries:
        return [open_ + close]
    pad = " " * (INDENT * (level + 1))
    lines = [open_]
    for i, (prefix, value_lines, comment) in enumerate(entries):
        body = [pad + prefix + value_lines[0], *value_lines[1:]]
        if i < len(entries) - 1:
            body[-1] += ","
        if comment:
            body[-1] += "  # " + _comment(comment)
        lines += body
    lines.append(" " * (INDENT * level) + close)
    return lines


def _block(obj: Any, level: int, key_names: dict[Any, str] | None = None) -> list[str]:
    """Pretty EDN lines: one line when it fits in :data:`WIDTH`, else one item per line."""
    text = _inline(obj)
    if len(text) + INDENT * level <= WIDTH and not key_names:
        return [text]
    if isinstance(obj, list | tuple) and obj:
        return _container("[", [("", _block(v, level + 1), None) for v in obj], "]", level)
    if isinstance(obj, dict) and obj:
        entries: list[_Entry] = []
        for key, value in obj.items():
            name = (key_names or {}).get(key) if _hashable(key) else None
            prefix = (f"/ {name} / " if name else "") + f"{_inline(key)}: "
            entries.append((prefix, _block(value, level + 1), None))
        return _container("{", entries, "}", level)
    if isinstance(obj, CborTag):
        inner = _block(obj.value, level)
        inner[0] = f"{obj.tag}(" + inner[0]
        inner[-1] += ")"
        return inner
    return [text]


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def cbor_diag(obj: Any) -> str:
    """EDN (RFC 8949 §8) of a decoded CBOR item (as produced by ``cbor_decode``), pretty-printed."""
    return "\n".join(_block(obj, 0))


# ----------------------------------------------------------------------------------------------------
# CoAP message summaries (draft §4.2.2)
# ----------------------------------------------------------------------------------------------------


def _code_text(code: int) -> str:
    text = code_str(code)
    member = Code(code)
    name = getattr(member, "name", None)
    if not name or name.startswith("("):
        return text
    return f"{text} {name if code < 32 else member.name_printable}"


def _option_value(opt: Any) -> str:
    if isinstance(opt, StringOption):
        return json.dumps(opt.value, ensure_ascii=True)
    if isinstance(opt, BlockOption):
        v = opt.value
        return f"{v.block_number}/{int(v.more)}/{v.size}"
    if isinstance(opt, UintOption | ContentFormatOption):
        return str(int(opt.value))
    value = bytes(opt.encode())
    return f"h'{value.hex()}'" if value else "(empty)"


def message_summary(msg: Message, code_points: CodePoints = DEFAULT_CODE_POINTS) -> str:
    """One line: code, options by name with values, payload length (draft §4.2.2)."""
    parts = [_code_text(int(msg.code))]
    for opt in msg.opt.option_list():
        parts.append(f"{option_name(int(opt.number), code_points)}: {_option_value(opt)}")
    payload = len(msg.payload)
    parts.append(f"payload {payload} byte{'s' if payload != 1 else ''}" if payload else "no payload")
    return ", ".join(parts)


def _serialized_message_comment(value: object, code_points: CodePoints) -> str | None:
    if type(value) is not bytes:
        return None
    try:
        return message_summary(parse_message(value, code_points=code_points), code_points)
    except MalformedError as exc:
        return f"not a valid serialized CoAP message: {exc}"


def _time_comment(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    try:
        when = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return when.isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------------
# tp_info and the informative response
# ----------------------------------------------------------------------------------------------------


def _cri_comment(value: object) -> str:
    try:
        return str(CRI.from_cbor_obj(value))
    except MalformedError as exc:
        return f"invalid CRI: {exc}"


def _tp_info_lines(value: Any, level: int) -> list[str]:
    if not isinstance(value, list) or not value:
        return _block(value, level)
    first = value[0]
    udp = isinstance(first, list) and bool(first) and type(first[0]) is int and first[0] == SCHEME_COAP
    entries: list[_Entry] = []
    for i, item in enumerate(value):
        if i == 0:
            name, comment = "tpi_server", _cri_comment(item)
        elif udp and i == 1:
            name, comment = "tpi_client", _cri_comment(item)
        elif udp and i == 2:
            name, comment = "tpi_token", None
        else:
            name, comment = "tpi_details", None
        entries.append((f"/ {name} / ", _block(item, level + 1), comment))
    return _container("[", entries, "]", level)


def _value_lines(key: Any, value: Any, level: int, code_points: CodePoints) -> tuple[list[str], str | None]:
    param = PARAMETERS_BY_KEY.get(key) if type(key) is int else None
    name = param.name if param else None
    if name == "tp_info":
        return _tp_info_lines(value, level), None
    if name in ("ph_req", "last_notif"):
        return _block(value, level), _serialized_message_comment(value, code_points)
    if name in ("ending", "exp"):
        return _block(value, level), _time_comment(value)
    if name == "gp_material" and isinstance(value, dict):
        names = {k: v for k, v in GP_MATERIAL_NAMES.items() if k in value and type(k) is int}
        return _block(value, level, names or None), None
    return _block(value, level), None


def informative_response_diag(data: bytes, *, code_points: CodePoints = DEFAULT_CODE_POINTS) -> str:
    """Annotated EDN of an informative-response payload (draft §4.2, §11).

    Parameter names are shown as comments, tp_info elements are named with their URIs, and ph_req /
    last_notif get a summary of the serialized CoAP message. Payloads that are valid CBOR but not a
    valid informative response are still shown (with a first-line note); only input that is not one
    well-formed CBOR item (or too large or deep) raises :class:`MalformedError`.
    """
    obj = cbor_decode(data)
    header: list[str] = []
    try:
        InformativeResponse.from_cbor_obj(obj)
    except MalformedError as exc:
        header.append("# not a valid informative response: " + _comment(str(exc)))
    if not isinstance(obj, dict):
        return "\n".join([*header, *_block(obj, 0)])
    entries: list[_Entry] = []
    for key, value in obj.items():
        param = PARAMETERS_BY_KEY.get(key) if type(key) is int else None
        prefix = (f"/ {param.name} / " if param else "") + f"{_inline(key)}: "
        lines, comment = _value_lines(key, value, 1, code_points)
        entries.append((prefix, lines, comment))
    return "\n".join([*header, *_container("{", entries, "}", 0)])
