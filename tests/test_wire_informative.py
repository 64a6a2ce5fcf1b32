"""Informative response payload (draft §4.2, §9.1, App. C, §11) and the strict CBOR codec."""

from __future__ import annotations

import ipaddress
import math

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from hypothesis import given, settings
from hypothesis import strategies as st

from mcobserve.errors import MalformedError, UnsupportedTransportError
from mcobserve.wire import (
    CRI,
    GP_MATERIAL_LABELS,
    MAX_INFORMATIVE_RESPONSE_SIZE,
    MAX_NESTING_DEPTH,
    PARAMETERS,
    UNDEFINED,
    CborSimple,
    CborTag,
    InformativeResponse,
    TpInfo,
    cbor_decode,
    cbor_encode,
    parse_message,
    serialize_message,
)

SRV = ipaddress.IPv6Address("2001:db8::ab")
GRP = ipaddress.IPv6Address("ff35:30:2001:db8::23")
TP_INFO = TpInfo(CRI(-1, SRV), CRI(-1, GRP, 61616), b"\x7b")
TP_INFO_HEX = "838220815020010db80000000000000000000000ab82208250ff35003020010db8000000000000002319f0b0417b"
# Digest §5: example gp_material
GP_MATERIAL_HEX = (
    "a802500102030405060708090a0b0c0d0e0f10030505489e7ca92223786340064357ab2e080e090a0a270b828101820106"
)


def _notification(payload: bytes = b"1234", observe: int = 10) -> bytes:
    msg = Message(code=Code.CONTENT, observe=observe, content_format=0, payload=payload)
    return serialize_message(msg)


# ----------------------------------------------------------------------------------------------------
# The parameter table (draft §11)
# ----------------------------------------------------------------------------------------------------


def test_parameter_table_matches_draft_section_11() -> None:
    expected = [
        ("tp_info", 0),
        ("ph_req", 1),
        ("last_notif", 2),
        ("next_not_before", 3),
        ("ending", 4),
        ("join_uri", 5),
        ("sec_gp", 6),
        ("as_uri", 7),
        ("hkdf", 8),
        ("cred_fmt", 9),
        ("gp_enc_alg", 10),
        ("sign_alg", 11),
        ("sign_params", 12),
        ("gp_material", 13),
        ("srv_cred", 14),
        ("srv_identifier", 15),
        ("exi", 16),
        ("exp", 17),
    ]
    assert [(p.name, p.key) for p in PARAMETERS] == expected
    fields = set(InformativeResponse.__dataclass_fields__) - {"extra"}
    assert fields == {p.name for p in PARAMETERS}


def test_gp_material_labels() -> None:
    assert GP_MATERIAL_LABELS["ms"] == 2
    assert GP_MATERIAL_LABELS["contextId"] == 6
    assert GP_MATERIAL_LABELS["cred_fmt"] == 8
    assert GP_MATERIAL_LABELS["sign_params"] == 11
    assert GP_MATERIAL_LABELS["det_hash_alg"] == 15


# ----------------------------------------------------------------------------------------------------
# Draft examples
# ----------------------------------------------------------------------------------------------------


def test_draft_section_7_example_structure() -> None:
    """{0: tp_info, 2: bstr(0x45 | OPT | 0xff | PAYLOAD)} (draft §7, informative response to C1)."""
    last_notif = _notification()
    assert last_notif[0] == 0x45
    ir = InformativeResponse(tp_info=TP_INFO, last_notif=last_notif)
    data = ir.encode()
    assert data.hex() == "a200" + TP_INFO_HEX + "02" + cbor2.dumps(last_notif).hex()
    assert cbor2.loads(data) == {0: cbor2.loads(bytes.fromhex(TP_INFO_HEX)), 2: last_notif}
    back = InformativeResponse.decode(data)
    assert back == ir
    assert back.present() == ["tp_info", "last_notif"]
    assert back.tp_info is not None and back.tp_info.tpi_token == b"\x7b"
    notif = parse_message(back.last_notif or b"", back.tp_info.tpi_token or b"")
    assert notif.code == Code.CONTENT and notif.opt.observe == 10
    assert notif.payload == b"1234" and notif.token == b"\x7b"


def test_draft_appendix_a2_example_structure() -> None:
    """App. A.2: tp_info (flat figure form), ph_req, last_notif and ending 2051251201."""
    flat_tp_info = [
        [-1, SRV.packed],
        [-1, GRP.packed, 61616],
        b"\x7b",
    ]
    ph_req = serialize_message(Message(code=Code.GET, observe=0, uri_path=["r"]))
    payload = cbor2.dumps({0: flat_tp_info, 1: ph_req, 2: _notification(), 4: 2051251201})
    ir = InformativeResponse.decode(payload)
    assert ir.tp_info == TP_INFO
    assert ir.ph_req == ph_req and ir.ending == 2051251201
    # re-encoding emits the nested CRIs
    assert ir.encode() != payload
    assert InformativeResponse.decode(ir.encode()) == ir


def test_security_group_parameters() -> None:
    ir = InformativeResponse(
        tp_info=TP_INFO,
        join_uri="coap://gm.example.com/ace-group/myGroup",
        sec_gp="myGroup",
        as_uri="coap://as.example.com/token",
        hkdf=5,
        cred_fmt=14,
        gp_enc_alg=10,
        sign_alg=-8,
        sign_params=[[1], [1, 6]],
    )
    obj = cbor2.loads(ir.encode())
    assert obj[5] == "coap://gm.example.com/ace-group/myGroup"  # join_uri is 5 (§11), not 4 as in §10
    assert obj[6] == "myGroup"
    assert obj[12] == [[1], [1, 6]]
    assert InformativeResponse.decode(ir.encode()) == ir


def test_self_managed_group_parameters_with_digest_gp_material() -> None:
    gp = cbor_decode(bytes.fromhex(GP_MATERIAL_HEX))
    assert gp[GP_MATERIAL_LABELS["contextId"]] == bytes.fromhex("57ab2e")
    ir = InformativeResponse(
        tp_info=TP_INFO,
        gp_material=gp,
        srv_cred=bytes.fromhex("a2026673657276657208a101a4010103272006215820") + bytes(32),
        srv_identifier=b"\x05",
        exi=3600,
        exp=1_900_000_000.5,
    )
    data = ir.encode()
    assert GP_MATERIAL_HEX in data.hex()
    back = InformativeResponse.decode(data)
    assert back == ir and back.exp == 1_900_000_000.5


# ----------------------------------------------------------------------------------------------------
# Unknown keys and encoding
# ----------------------------------------------------------------------------------------------------


def test_unknown_keys_kept_across_round_trip() -> None:
    extra = {
        18: "future",
        -5: [1, 2.5, None],
        1000: {"a": b"\x00", 3: [True, False]},
        "x": CborTag(1234, [UNDEFINED, CborSimple(16)]),
        "": -(2**64),
    }
    data = cbor_encode({0: cbor2.loads(bytes.fromhex(TP_INFO_HEX)), **extra})
    assert "6178d904d282f7f0" in data.hex()  # "x": 1234([undefined, simple(16)])
    ir = InformativeResponse.decode(data)
    assert ir.extra == extra
    again = InformativeResponse.decode(ir.encode())
    assert again == ir
    assert again.extra["x"] == CborTag(1234, [UNDEFINED, CborSimple(16)])


def test_encoding_is_deterministic() -> None:
    ir = InformativeResponse(next_not_before=3, ph_req=b"\x01", extra={"b": 1, "a": 2, 24: 0, -1: 0, 100: 0})
    data = ir.encode()
    # RFC 8949 §4.2.1: keys sorted by their encoded bytes: 01, 03, 1818, 1864, 20, 6161, 6162
    assert data.hex() == "a701410103031818001864002000616102616201"
    assert cbor_decode(data) == cbor2.loads(data)
    # the key order of the input does not matter
    assert (
        InformativeResponse.decode(
            cbor2.dumps({"a": 2, 3: 3, "b": 1, 1: b"\x01", 24: 0, -1: 0, 100: 0})
        ).encode()
        == data
    )


def test_indefinite_lengths_are_accepted_and_normalised() -> None:
    data = bytes.fromhex("bf0103ff")  # {_ 1: 3} with indefinite length, ph_req wrong type -> error
    with pytest.raises(MalformedError, match="ph_req"):
        InformativeResponse.decode(data)
    data = bytes.fromhex("bf035f4101ff")  # incomplete
    with pytest.raises(MalformedError):
        InformativeResponse.decode(data)
    ok = (
        bytes.fromhex("bf01") + bytes.fromhex("5f41014102ff") + bytes.fromhex("ff")
    )  # {_ 1: (_ h'01', h'02')}
    ir = InformativeResponse.decode(ok)
    assert ir.ph_req == b"\x01\x02"
    assert ir.encode().hex() == "a101420102"


def test_empty_map() -> None:
    ir = InformativeResponse.decode(b"\xa0")
    assert ir == InformativeResponse() and ir.encode() == b"\xa0"


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------

BAD_VALUES = [
    (0, [], "tp_info"),
    (0, "x", "tp_info"),
    (0, [[-1, [SRV.packed]], [-1, [SRV.packed]], b"\x7b"], "not a multicast"),
    (1, "text", "ph_req"),
    (1, [b"\x01"], "ph_req"),
    (2, 5, "last_notif"),
    (3, -1, "next_not_before"),
    (3, True, "next_not_before"),
    (3, 1.0, "next_not_before"),
    (3, CborTag(2, b"\x01"), "next_not_before"),
    (4, "2051251201", "ending"),
    (4, False, "ending"),
    (4, math.nan, "ending"),
    (4, math.inf, "ending"),
    (4, -math.inf, "ending"),
    (4, CborTag(1, 2051251201), "ending"),
    (5, b"coap://gm", "join_uri"),
    (6, 6, "sec_gp"),
    (7, None, "as_uri"),
    (8, 5.0, "hkdf"),
    (8, True, "hkdf"),
    (9, "kccs", "cred_fmt"),
    (9, False, "cred_fmt"),
    (10, b"\x0a", "gp_enc_alg"),
    (11, [-8], "sign_alg"),
    (12, {}, "sign_params"),
    (12, [[1]], "sign_params"),
    (12, [[1], 6], "sign_params"),
    (13, [], "gp_material"),
    (13, {b"k": 1}, "gp_material"),
    (13, {True: 1}, "gp_material"),
    (14, "cred", "srv_cred"),
    (15, 5, "srv_identifier"),
    (16, -3600, "exi"),
    (16, 3600.0, "exi"),
    (17, math.nan, "exp"),
    (17, "soon", "exp"),
    (17, True, "exp"),
]


@pytest.mark.parametrize(("key", "value", "name"), BAD_VALUES)
def test_type_errors_per_key(key: int, value: object, name: str) -> None:
    data = cbor_encode({key: value})
    with pytest.raises(MalformedError, match=name):
        InformativeResponse.decode(data)


@pytest.mark.parametrize(("key", "value", "name"), [row for row in BAD_VALUES if row[1] is not None])
def test_type_errors_on_encode(key: int, value: object, name: str) -> None:
    param = next(p for p in PARAMETERS if p.key == key)
    if param.name == "tp_info":
        value, name = "not a TpInfo", "tp_info"
    ir = InformativeResponse(**{param.name: value})
    with pytest.raises(MalformedError, match=name):
        ir.encode()


@pytest.mark.parametrize(
    ("hexdata", "fragment"),
    [
        ("", "empty input"),
        ("80", "must be a CBOR map"),
        ("4100", "must be a CBOR map"),
        ("f6", "must be a CBOR map"),
        ("a20140014101", "duplicate map key"),
        ("a1014000", "trailing"),
        ("a0a0", "trailing"),
        ("a14100f6", "neither an integer nor text"),  # bytes key
        ("a1f400", "neither an integer nor text"),  # false key
        ("a1f93c0000", "neither an integer nor text"),  # 1.0 key
        ("a1f600", "neither an integer nor text"),  # null key
        ("a18000", "map key of type list"),
        ("a1c10000", "neither an integer nor text"),  # tagged key
        ("a10162ff00", "not valid UTF-8"),
        ("a101", "more than remain"),
        ("a10119", "truncated"),
        ("a1015a0000ffff", "truncated"),
        ("9b00000000ffffffff", "more than remain"),
        ("bb00000000ffffffff", "more than remain"),
        ("a1011c", "reserved additional information"),
        ("a101ff", "unexpected break"),
        ("a101f810", "not well-formed"),
        ("a1015f4101", "no break"),
        ("a1015f6101ff", "wrong type"),
        ("a1015f5f4101ffff", "nested indefinite"),
        ("1f", "indefinite length is not allowed"),
        ("df01", "indefinite length is not allowed for a tag"),
    ],
)
def test_decode_refuses(hexdata: str, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment):
        InformativeResponse.decode(bytes.fromhex(hexdata))


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(MalformedError):
        InformativeResponse.decode("a0")  # type: ignore[arg-type]


def test_unsupported_transport_propagates() -> None:
    data = cbor_encode({0: [[-2, [SRV.packed]]]})
    with pytest.raises(UnsupportedTransportError, match="tp_info"):
        InformativeResponse.decode(data)


def test_size_limit() -> None:
    # a map {1: h'00...'} of exactly the limit is accepted; one byte more is refused
    head = bytes.fromhex("a1015a")
    n = MAX_INFORMATIVE_RESPONSE_SIZE - len(head) - 4
    exact = head + n.to_bytes(4, "big") + bytes(n)
    assert len(exact) == MAX_INFORMATIVE_RESPONSE_SIZE
    assert InformativeResponse.decode(exact).ph_req == bytes(n)
    over = head + (n + 1).to_bytes(4, "big") + bytes(n + 1)
    with pytest.raises(MalformedError, match="limit"):
        InformativeResponse.decode(over)


def test_depth_limit() -> None:
    ok = cbor_encode({100: _nest(MAX_NESTING_DEPTH - 1)})
    assert InformativeResponse.decode(ok).extra[100] == _nest(MAX_NESTING_DEPTH - 1)
    deep = b"\xa1\x18\x64" + b"\x81" * MAX_NESTING_DEPTH + b"\x00"
    with pytest.raises(MalformedError, match="nesting"):
        InformativeResponse.decode(deep)
    with pytest.raises(MalformedError, match="nesting"):
        InformativeResponse.decode(b"\x81" * 60_000)
    with pytest.raises(MalformedError, match="nesting"):
        InformativeResponse.decode(b"\xc1" * 1000 + b"\x00")


def _nest(depth: int) -> object:
    obj: object = 0
    for _ in range(depth):
        obj = [obj]
    return obj


def test_extra_keys_validated_on_encode() -> None:
    with pytest.raises(MalformedError, match="next_not_before"):
        InformativeResponse(extra={3: 1}).encode()
    with pytest.raises(MalformedError, match="neither"):
        InformativeResponse(extra={b"k": 1}).encode()
    with pytest.raises(MalformedError, match="neither"):
        InformativeResponse(extra={True: 1}).encode()
    with pytest.raises(MalformedError, match="cannot encode"):
        InformativeResponse(extra={"o": object()}).encode()


# ----------------------------------------------------------------------------------------------------
# The CBOR codec itself (RFC 8949 Appendix A examples)
# ----------------------------------------------------------------------------------------------------

RFC8949_EXAMPLES = [
    (0, "00"),
    (23, "17"),
    (24, "1818"),
    (1000000, "1a000f4240"),
    (18446744073709551615, "1bffffffffffffffff"),
    (18446744073709551616, "c249010000000000000000"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-18446744073709551617, "c349010000000000000000"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"),
    (-math.inf, "f9fc00"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (UNDEFINED, "f7"),
    (CborSimple(16), "f0"),
    (CborSimple(255), "f8ff"),
    (CborTag(1, 1363896240), "c11a514b67b0"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("\u00fc", "62c3bc"),
    ("\U00010151", "64f0908591"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
]


@pytest.mark.parametrize(("value", "hexval"), RFC8949_EXAMPLES)
def test_cbor_codec_rfc8949_examples(value: object, hexval: str) -> None:
    assert cbor_encode(value).hex() == hexval
    decoded = cbor_decode(bytes.fromhex(hexval))
    if isinstance(value, int) and not -(2**64) <= value < 2**64:
        assert decoded == CborTag(2 if value > 0 else 3, bytes.fromhex(hexval[4:]))  # bignums stay tags
    else:
        assert decoded == value
        assert type(decoded) is type(value)


def test_cbor_nan_and_value_sharing_tags_uninterpreted() -> None:
    assert math.isnan(cbor_decode(bytes.fromhex("fb7ff8000000000000")))
    assert cbor_encode(math.nan).hex() == "f97e00"
    # tag 28/29 (value sharing) would build a cyclic object in cbor2; here they are plain tags
    assert cbor_decode(bytes.fromhex("d81c81d81d00")) == CborTag(28, [CborTag(29, 0)])
    assert cbor_decode(bytes.fromhex("c11a00000000")) == CborTag(1, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**64), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.binary(max_size=20)
        | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.integers(-100, 100) | st.text(max_size=5), children, max_size=5)
        ),
        max_leaves=30,
    )
)
def test_cbor_codec_agrees_with_cbor2(value: object) -> None:
    data = cbor_encode(value)
    assert cbor2.loads(data) == value
    assert cbor_decode(cbor2.dumps(value)) == value
    assert cbor_decode(data) == value


# ----------------------------------------------------------------------------------------------------
# Round trip (hypothesis)
# ----------------------------------------------------------------------------------------------------

_HOSTS = st.sampled_from(["2001:db8::1", "192.0.2.7", "fd00:db8::1", "srv.example", "127.0.0.1"])
_GROUPS = st.sampled_from(["ff35:30:2001:db8::23", "ff05::fd", "239.255.0.1", "grp.example", "224.0.1.187"])
_TP = st.builds(TpInfo, st.builds(CRI, st.just(-1), _HOSTS, st.none() | st.integers(0, 65535))) | st.builds(
    TpInfo,
    st.builds(CRI, st.just(-1), _HOSTS, st.none() | st.integers(0, 65535)),
    st.builds(CRI, st.just(-1), _GROUPS, st.none() | st.integers(0, 65535)),
    st.binary(max_size=8),
)
_UINT = st.integers(0, 2**64 - 1)
_INT = st.integers(-(2**64), 2**64 - 1)
_TIME = _INT | st.floats(allow_nan=False, allow_infinity=False)
_INT_OR_TSTR = _INT | st.text(max_size=10)
_LEAF = (
    st.none()
    | st.booleans()
    | _INT
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
    | st.text(max_size=8)
)
_ANY = st.recursive(
    _LEAF,
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.integers(-5, 5) | st.text(max_size=3), c, max_size=3)
    ),
    max_leaves=10,
)
_EXTRA_KEYS = st.integers(18, 2**32) | st.integers(-(2**64), -1) | st.text(max_size=6)

INFORMATIVE = st.builds(
    InformativeResponse,
    tp_info=st.none() | _TP,
    ph_req=st.none() | st.binary(max_size=30),
    last_notif=st.none() | st.binary(max_size=30),
    next_not_before=st.none() | _UINT,
    ending=st.none() | _TIME,
    join_uri=st.none() | st.text(max_size=20),
    sec_gp=st.none() | st.text(max_size=20),
    as_uri=st.none() | st.text(max_size=20),
    hkdf=st.none() | _INT_OR_TSTR,
    cred_fmt=st.none() | _INT,
    gp_enc_alg=st.none() | _INT_OR_TSTR,
    sign_alg=st.none() | _INT_OR_TSTR,
    sign_params=st.none() | st.tuples(st.lists(_INT, max_size=3), st.lists(_INT, max_size=3)).map(list),
    gp_material=st.none() | st.dictionaries(st.integers(0, 20) | st.text(max_size=4), _ANY, max_size=5),
    srv_cred=st.none() | st.binary(max_size=40),
    srv_identifier=st.none() | st.binary(max_size=7),
    exi=st.none() | _UINT,
    exp=st.none() | _TIME,
    extra=st.dictionaries(_EXTRA_KEYS, _ANY, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(INFORMATIVE)
def test_informative_response_round_trip(ir: InformativeResponse) -> None:
    data = ir.encode()
    back = InformativeResponse.decode(data)
    assert back == ir
    assert back.encode() == data
    assert cbor2.loads(data).keys() == ir.to_cbor_obj().keys()
