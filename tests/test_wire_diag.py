"""CBOR diagnostic notation of informative responses (draft §4.2, §11), for ``mcobserve inspect``.

A small EDN reader for the subset that cbor_diag emits checks that the output, comments included, is
parseable EDN denoting the same data item.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from typing import Any

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from hypothesis import given, settings
from hypothesis import strategies as st

from mcobserve.errors import MalformedError
from mcobserve.wire import (
    CRI,
    UNDEFINED,
    CborSimple,
    CborTag,
    InformativeResponse,
    TpInfo,
    cbor_decode,
    cbor_diag,
    cbor_encode,
    informative_response_diag,
    serialize_message,
)

SRV = ipaddress.IPv6Address("2001:db8::ab")
GRP = ipaddress.IPv6Address("ff35:30:2001:db8::23")
TP_INFO = TpInfo(CRI(-1, SRV), CRI(-1, GRP, 61616), b"\x7b")


# ----------------------------------------------------------------------------------------------------
# A minimal EDN reader (RFC 8949 §8 subset plus end-of-line '#' comments, draft-ietf-cbor-edn-literals)
# ----------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s+|/[^/]*/|\#[^\n]*
    |(?P<hex>h'[0-9a-f]*')
    |(?P<str>"(?:[^"\\]|\\.)*")
    |(?P<simple>simple\((?P<sv>\d+)\))
    |(?P<tag>\d+\()
    |(?P<num>-?(?:Infinity|\d+(?:\.\d+)?(?:e[+-]?\d+)?))
    |(?P<word>NaN|true|false|null|undefined)
    |(?P<punct>[\[\]{}:,)])""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"unexpected EDN at {text[pos : pos + 30]!r}"
        pos = m.end()
        kind = m.lastgroup
        if kind == "sv":
            kind = "simple"
        if kind is not None:
            out.append((kind, m.group(kind) if kind != "simple" else m.group("sv")))
    return out


def edn_parse(text: str) -> Any:
    toks = _tokens(text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        kind, tok = toks[pos]
        pos += 1
        if kind == "hex":
            return bytes.fromhex(tok[2:-1])
        if kind == "str":
            return json.loads(tok)
        if kind == "simple":
            return CborSimple(int(tok))
        if kind == "num":
            if "Infinity" in tok:
                return -math.inf if tok.startswith("-") else math.inf
            return float(tok) if ("." in tok or "e" in tok) else int(tok)
        if kind == "word":
            return {"NaN": math.nan, "true": True, "false": False, "null": None, "undefined": UNDEFINED}[tok]
        if kind == "tag":
            inner = value()
            assert toks[pos] == ("punct", ")")
            pos += 1
            return CborTag(int(tok[:-1]), inner)
        if tok == "[":
            items = []
            while toks[pos] != ("punct", "]"):
                items.append(value())
                if toks[pos] == ("punct", ","):
                    pos += 1
            pos += 1
            return items
        if tok == "{":
            out = {}
            while toks[pos] != ("punct", "}"):
                key = value()
                assert toks[pos] == ("punct", ":")
                pos += 1
                out[key] = value()
                if toks[pos] == ("punct", ","):
                    pos += 1
            pos += 1
            return out
        raise AssertionError(f"unexpected token {tok!r}")

    result = value()
    assert pos == len(toks), "trailing EDN tokens"
    return result


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN."""
    return cbor_encode(a) == cbor_encode(b)


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------


def _example_payload() -> bytes:
    ph_req = serialize_message(Message(code=Code.GET, observe=0, uri_path=["r"]))
    last_notif = serialize_message(Message(code=Code.CONTENT, observe=11, content_format=0, payload=b"5678"))
    return InformativeResponse(
        tp_info=TP_INFO, ph_req=ph_req, last_notif=last_notif, ending=2051251201
    ).encode()


def test_informative_response_diag_exact() -> None:
    text = informative_response_diag(_example_payload())
    assert text == "\n".join(
        [
            "{",
            "  / tp_info / 0: [",
            "    / tpi_server / [-1, [h'20010db80000000000000000000000ab']],  # coap://[2001:db8::ab]",
            "    / tpi_client / [-1, [h'ff35003020010db80000000000000023', 61616]],"
            "  # coap://[ff35:30:2001:db8::23]:61616",
            "    / tpi_token / h'7b'",
            "  ],",
            "  / ph_req / 1: h'01605172',  # 0.01 GET, Observe: 0, Uri-Path: \"r\", no payload",
            "  / last_notif / 2: h'45610b60ff35363738',"
            "  # 2.05 Content, Observe: 11, Content-Format: 0, payload 4 bytes",
            "  / ending / 4: 2051251201  # 2035-01-01T08:00:01Z",
            "}",
        ]
    )
    assert _same(edn_parse(text), cbor_decode(_example_payload()))


def test_diag_of_invalid_but_well_formed_payload() -> None:
    data = cbor2.dumps({0: [[-2, [b"\x01\x02\x03\x04"]]], 2: b"\x45\xff", 99: "x", "k": [1.5, None]})
    text = informative_response_diag(data)
    lines = text.splitlines()
    assert lines[0].startswith("# not a valid informative response: tp_info (0): tpi_server uses coaps")
    assert "/ tpi_server / [-2, [h'01020304']]  # coaps://1.2.3.4" in text
    assert "/ last_notif / 2: h'45ff',  # not a valid serialized CoAP message: payload marker" in text
    assert '  99: "x",' in text  # unknown keys without a name
    assert _same(edn_parse(text), cbor_decode(data))


def test_diag_names_gp_material_labels_and_security_parameters() -> None:
    ir = InformativeResponse(
        join_uri="coap://gm/x",
        sec_gp="g",
        gp_material={2: b"\x00" * 16, 6: b"\x57\xab\x2e", 8: 14},
        exp=1.5e9,
    )
    text = informative_response_diag(ir.encode())
    assert '/ join_uri / 5: "coap://gm/x"' in text
    assert "/ sec_gp / 6:" in text
    assert "/ ms / 2: h'00000000000000000000000000000000'" in text
    assert "/ contextId / 6: h'57ab2e'" in text
    assert "/ cred_fmt / 8: 14" in text
    assert "# 2017-07-14T02:40:00Z" in text
    assert _same(edn_parse(text), cbor_decode(ir.encode()))


def test_diag_of_non_map() -> None:
    text = informative_response_diag(cbor2.dumps([1, "a"]))
    assert text.splitlines() == [
        "# not a valid informative response: informative response payload must be a CBOR map, got array",
        '[1, "a"]',
    ]


@pytest.mark.parametrize("hexdata", ["", "ff", "a1", "a1010203", "1c", "82", "a20101 0101".replace(" ", "")])
def test_diag_refuses_non_cbor(hexdata: str) -> None:
    with pytest.raises(MalformedError):
        informative_response_diag(bytes.fromhex(hexdata))


def test_comments_cannot_break_out() -> None:
    # option values with newlines, slashes and '#' stay inside the end-of-line comment
    msg = Message(code=Code.CONTENT, uri_path=["a/b\n}", "#x"], payload=b"p")
    data = cbor_encode({2: serialize_message(msg), 100: "line\nbreak / slash # hash"})
    text = informative_response_diag(data)
    assert len(text.splitlines()) == 4
    assert _same(edn_parse(text), cbor_decode(data))


@pytest.mark.parametrize(
    ("obj", "text"),
    [
        (0, "0"),
        (-1, "-1"),
        (1.5, "1.5"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (1e300, "1e+300"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
        (True, "true"),
        (None, "null"),
        (UNDEFINED, "undefined"),
        (CborSimple(16), "simple(16)"),
        (b"\x01\xff", "h'01ff'"),
        ('a"\n\u00fc', '"a\\"\\n\\u00fc"'),
        ([], "[]"),
        ({}, "{}"),
        (CborTag(1, 0), "1(0)"),
        ({1: [2, {"a": b""}]}, "{1: [2, {\"a\": h''}]}"),
    ],
)
def test_cbor_diag_items(obj: object, text: str) -> None:
    assert cbor_diag(obj) == text


def test_cbor_diag_wraps_long_containers() -> None:
    obj = {"key": [b"\x00" * 30, b"\x01" * 30], "tag": CborTag(24, [b"\x02" * 40])}
    text = cbor_diag(obj)
    assert len(text.splitlines()) > 3
    assert all(len(line) <= 100 for line in text.splitlines())
    assert edn_parse(text) == obj


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.builds(CborSimple, st.integers(0, 19) | st.integers(32, 255))
    | st.just(UNDEFINED)
)
_ITEMS = st.recursive(
    _LEAF,
    lambda c: (
        st.lists(c, max_size=6)
        | st.dictionaries(st.integers(-30, 30) | st.text(max_size=4), c, max_size=6)
        | st.builds(CborTag, st.integers(0, 2**64 - 1), c)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(_ITEMS)
def test_cbor_diag_is_parseable_edn(obj: object) -> None:
    assert _same(edn_parse(cbor_diag(obj)), obj)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.integers(0, 20) | st.text(max_size=3), _ITEMS, max_size=8))
def test_informative_response_diag_is_parseable_edn(obj: dict[Any, Any]) -> None:
    data = cbor_encode(obj)
    assert _same(edn_parse(informative_response_diag(data)), cbor_decode(data))
