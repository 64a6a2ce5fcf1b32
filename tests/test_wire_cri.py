"""CRI-no-local (draft §4.2.1) and 'tp_info' for CoAP over UDP (draft §4.2.1.1)."""

from __future__ import annotations

import ipaddress

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcobserve.errors import MalformedError, UnsupportedTransportError
from mcobserve.wire import CRI, TpInfo, cbor_decode, cbor_encode

SRV = ipaddress.IPv6Address("2001:db8::ab")
GRP = ipaddress.IPv6Address("ff35:30:2001:db8::23")
SRV_BYTES = bytes.fromhex("20010db80000000000000000000000ab")
GRP_BYTES = bytes.fromhex("ff35003020010db80000000000000023")

# Digest §4 (checked against draft-ietf-core-href cddl/cri.cddl and tests.csv).
VECTORS = [
    ("coap://[2001:db8::ab]", "8220815020010db80000000000000000000000ab"),
    ("coap://[ff35:30:2001:db8::23]:61616", "82208250ff35003020010db8000000000000002319f0b0"),
    ("coap://192.0.2.1:5684", "82208244c0000201191634"),
]
TP_INFO_HEX = "838220815020010db80000000000000000000000ab82208250ff35003020010db8000000000000002319f0b0417b"


@pytest.mark.parametrize(("uri", "hexval"), VECTORS)
def test_digest_vectors_encode(uri: str, hexval: str) -> None:
    cri = CRI.from_uri(uri)
    assert cbor_encode(cri.to_cbor_obj()).hex() == hexval
    assert cbor2.dumps(cri.to_cbor_obj()).hex() == hexval  # independent encoder agrees
    assert cri.to_uri() == uri


@pytest.mark.parametrize(("uri", "hexval"), VECTORS)
def test_digest_vectors_decode(uri: str, hexval: str) -> None:
    cri = CRI.from_cbor_obj(cbor_decode(bytes.fromhex(hexval)))
    assert cri.to_uri() == uri
    assert cri == CRI.from_uri(uri)


def test_href_vector_coaps() -> None:
    # href tests.csv: coaps://192.168.0.97 -> [-2, [h'C0A80061']]
    cri = CRI.from_uri("coaps://192.168.0.97")
    assert cbor_encode(cri.to_cbor_obj()).hex() == "82218144c0a80061"
    assert cri.effective_port() == 5684


def test_whole_tp_info_vector() -> None:
    tp = TpInfo(CRI(-1, SRV), CRI(-1, GRP, 61616), b"\x7b")
    assert cbor_encode(tp.to_cbor_obj()).hex() == TP_INFO_HEX
    assert TpInfo.from_cbor_obj(cbor_decode(bytes.fromhex(TP_INFO_HEX))) == tp


def test_flat_form_of_draft_figure_decodes_to_same_value() -> None:
    # draft §4.2.1.1, Figure "Example of 'tp_info' with UDP as Transport Protocol" (flat authority)
    flat = [[-1, SRV_BYTES], [-1, GRP_BYTES, 61616], bytes.fromhex("7b")]
    nested = TpInfo.from_cbor_obj(cbor_decode(bytes.fromhex(TP_INFO_HEX)))
    decoded = TpInfo.from_cbor_obj(cbor_decode(cbor2.dumps(flat)))
    assert decoded == nested
    assert decoded.tpi_server.host == SRV and decoded.tpi_server.port is None
    assert decoded.tpi_client is not None and decoded.tpi_client.port == 61616
    assert decoded.tpi_token == b"\x7b"
    # re-encoding always gives the nested form
    assert cbor_encode(decoded.to_cbor_obj()).hex() == TP_INFO_HEX


def test_flat_host_name_with_default_port() -> None:
    cri = CRI.from_cbor_obj([-1, "example", "com", 5683])
    assert cri == CRI(-1, "example.com")
    assert cri.port is None and cri.effective_port() == 5683
    assert cri.to_cbor_obj() == [-1, ["example", "com"]]


def test_host_name_nested() -> None:
    cri = CRI.from_cbor_obj(cbor_decode(cbor2.dumps([-1, ["example", "com"]])))
    assert cri.host == "example.com"
    assert cri.to_uri() == "coap://example.com"
    assert cbor_encode(cri.to_cbor_obj()) == cbor2.dumps([-1, ["example", "com"]])


def test_default_port_is_omitted() -> None:
    cri = CRI(-1, SRV, 5683)
    assert cri.port is None
    assert cri.to_cbor_obj() == [-1, [SRV_BYTES]]
    assert CRI.from_cbor_obj([-1, [SRV_BYTES, 5683]]) == cri
    # 5683 is not the default of coaps: kept
    assert CRI(-2, SRV, 5683).to_cbor_obj() == [-2, [SRV_BYTES, 5683]]
    assert CRI(-2, SRV, 5684).port is None


def test_ipv4_and_ipv6_literals() -> None:
    v4 = CRI.from_cbor_obj([-1, [bytes([10, 0, 0, 1]), 61616]])
    assert v4.host == ipaddress.IPv4Address("10.0.0.1")
    assert v4.to_uri() == "coap://10.0.0.1:61616"
    v6 = CRI.from_cbor_obj([-1, [SRV_BYTES]])
    assert v6.to_uri() == "coap://[2001:db8::ab]"
    assert v6.is_host_ip and not CRI(-1, "example.com").is_host_ip


def test_loopback_is_allowed() -> None:
    assert CRI.from_uri("coap://127.0.0.1:5683").host == ipaddress.IPv4Address("127.0.0.1")
    assert CRI.from_uri("[::1]:61616").port == 61616


def test_userinfo() -> None:
    cri = CRI.from_cbor_obj([-1, [False, "user", SRV_BYTES, 1234]])
    assert cri.userinfo == "user" and cri.port == 1234
    assert cri.to_uri() == "coap://user@[2001:db8::ab]:1234"
    assert cri.to_cbor_obj() == [-1, [False, "user", SRV_BYTES, 1234]]
    assert CRI.from_cbor_obj([-1, False, "user", SRV_BYTES, 1234]) == cri
    assert CRI.from_uri("coap://user@[2001:db8::ab]:1234") == cri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[fd00:db8:1::1]:5683", "coap://[fd00:db8:1::1]"),
        ("[fd00:db8:1::1]:61616", "coap://[fd00:db8:1::1]:61616"),
        ("fd00:db8:1::1", "coap://[fd00:db8:1::1]"),
        ("coap://10.0.0.1:61616", "coap://10.0.0.1:61616"),
        ("coap://10.0.0.1:61616/", "coap://10.0.0.1:61616"),
        ("COAP://Example.COM", "coap://example.com"),
        ("239.255.0.1:61616", "coap://239.255.0.1:61616"),
        ("coaps://[2001:db8::1]:5684", "coaps://[2001:db8::1]"),
        ("coap+tcp://example.org:1234", "coap+tcp://example.org:1234"),
    ],
)
def test_from_uri(text: str, expected: str) -> None:
    assert CRI.from_uri(text).to_uri() == expected


@pytest.mark.parametrize(
    "text",
    [
        "coap://[2001:db8::1]/path",
        "coap://host?q",
        "coap://host#f",
        "coap://[fe80::1%25eth0]",
        "coap://[fe80::1]",
        "coap://[2001:db8::1",
        "coap://[2001:db8::1]x",
        "coap://host:99999",
        "coap://host:-1",
        "coap://host:",
        "coap://",
        "foo://host",
        "coap://ho st",
        "coap://a..b",
        "coap://169.254.1.1",
    ],
)
def test_from_uri_refuses(text: str) -> None:
    with pytest.raises(MalformedError):
        CRI.from_uri(text)


LOCAL_ADDRESSES = [
    "fe80::1",
    "febf:ffff::1",
    "fec0::1",
    "feff::1",
    "ff02::1",
    "ff12::fb",
    "ff32::1",
    "169.254.0.1",
    "169.254.255.254",
    "224.0.0.1",
    "224.0.0.251",
    "::ffff:169.254.1.1",
    "::",
    "0.0.0.0",
]


@pytest.mark.parametrize("addr", LOCAL_ADDRESSES)
def test_link_local_and_site_local_refused_on_construction(addr: str) -> None:
    with pytest.raises(MalformedError):
        CRI(-1, ipaddress.ip_address(addr))
    with pytest.raises(MalformedError):
        CRI(-1, addr)


@pytest.mark.parametrize("addr", LOCAL_ADDRESSES)
def test_link_local_and_site_local_refused_on_decoding(addr: str) -> None:
    packed = ipaddress.ip_address(addr).packed
    with pytest.raises(MalformedError):
        CRI.from_cbor_obj([-1, [packed]])
    with pytest.raises(MalformedError):
        CRI.from_cbor_obj([-1, packed, 61616])


@pytest.mark.parametrize(
    "addr", ["ff05::4242", "ff35:30:2001:db8::23", "ff03::1", "224.0.1.187", "239.255.0.1", "fd00:db8::1"]
)
def test_non_local_addresses_allowed(addr: str) -> None:
    assert CRI(-1, addr).host == ipaddress.ip_address(addr)


def test_scoped_ipv6_object_refused() -> None:
    with pytest.raises(MalformedError, match="zone-id"):
        CRI(-1, ipaddress.IPv6Address("2001:db8::1%eth0"))


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ("coap", "must be an array"),
        ([], "empty array"),
        ([-1], "no authority"),
        ([1, [SRV_BYTES]], "negative integer"),
        ([0, [SRV_BYTES]], "negative integer"),
        ([True, [SRV_BYTES]], "negative integer"),
        ([-1.0, [SRV_BYTES]], "negative integer"),
        ([-1, []], "empty authority"),
        ([-1, [b"\x01\x02\x03"]], "4 or 16 bytes"),
        ([-1, [b""]], "4 or 16 bytes"),
        ([-1, [bytes(17)]], "4 or 16 bytes"),
        ([-1, [SRV_BYTES, 65536]], "outside 0..65535"),
        ([-1, [SRV_BYTES, -1]], "outside 0..65535"),
        ([-1, [SRV_BYTES, True]], "port must be an unsigned integer"),
        ([-1, [SRV_BYTES, 5683.0]], "port must be an unsigned integer"),
        ([-1, [SRV_BYTES, 5683, ["path"]]], "extra element"),
        ([-1, [SRV_BYTES, 5683, 1]], "extra element"),
        ([-1, [SRV_BYTES], ["path"]], "path, query and fragment"),
        ([-1, [SRV_BYTES], None], "path, query and fragment"),
        ([-1, SRV_BYTES, 61616, ["p"]], "extra element"),
        ([-1, [SRV_BYTES, "eth0"]], "zone-id"),
        ([-1, [SRV_BYTES, "eth0", 5683]], "zone-id"),
        ([-1, [bytes(4) + b"", "x"]], "text after an IPv4"),
        ([-1, [5683]], "host must be"),
        ([-1, [None]], "host must be"),
        ([-1, None], "host must be"),
        ([-1, 61616], "host must be"),
        ([-1, [""]], "empty host-name label"),
        ([-1, ["example", ""]], "empty host-name label"),
        ([-1, ["Example", "com"]], "not lowercase"),
        ([-1, ["exa.mple"]], "contains a dot"),
        ([-1, ["exa mple"]], "invalid character"),
        ([-1, ["a/b"]], "invalid character"),
        ([-1, ["a" * 64]], "longer than 63"),
        ([-1, ["10", "0", "0", "1"]], "IP literal"),
        ([-1, [False]], "userinfo marker"),
        ([-1, [False, 1, SRV_BYTES]], "userinfo must be a text"),
        ([-1, [False, "u"]], "no host"),
        ([-1, [SRV_BYTES, False]], "port must be"),
        ([-1, ["example", False, "x"]], "port must be"),
    ],
)
def test_cri_decode_refuses(obj: object, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment):
        CRI.from_cbor_obj(obj)


def test_unknown_scheme_decodes_but_has_no_uri() -> None:
    cri = CRI.from_cbor_obj([-100, [SRV_BYTES]])
    assert cri.scheme is None
    with pytest.raises(MalformedError):
        cri.to_uri()
    with pytest.raises(MalformedError):
        cri.effective_port()
    assert CRI.from_cbor_obj([-100, [SRV_BYTES, 1]]).effective_port() == 1


# ----------------------------------------------------------------------------------------------------
# TpInfo (draft §4.2.1.1)
# ----------------------------------------------------------------------------------------------------


def test_tp_info_without_details() -> None:
    tp = TpInfo.from_cbor_obj([[-1, [SRV_BYTES]]])
    assert tp.tpi_client is None and tp.tpi_token is None and not tp.has_details
    assert tp.to_cbor_obj() == [[-1, [SRV_BYTES]]]


def test_tp_info_host_name_client_and_empty_token() -> None:
    tp = TpInfo.from_cbor_obj([[-1, ["srv", "example"]], [-1, ["grp", "example", 61616]], b""])
    assert tp.tpi_client == CRI(-1, "grp.example", 61616)
    assert tp.tpi_token == b""


@pytest.mark.parametrize("scheme_id", [-2, -7, -8, -25, -26, -3, -100])
def test_tp_info_unsupported_transport(scheme_id: int) -> None:
    with pytest.raises(UnsupportedTransportError):
        TpInfo.from_cbor_obj([[scheme_id, [SRV_BYTES]], [-1, [GRP_BYTES, 61616]], b"\x7b"])
    with pytest.raises(UnsupportedTransportError):
        TpInfo(CRI(scheme_id, SRV))


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({}, "must be an array"),
        ([], "tpi_server is mandatory"),
        ([[-1, [SRV_BYTES]], [-1, [GRP_BYTES]]], "expected 1 or 3 elements"),
        ([[-1, [SRV_BYTES]], [-1, [GRP_BYTES]], b"\x7b", b""], "expected 1 or 3 elements"),
        ([[-1, [SRV_BYTES]], [-1, [GRP_BYTES]], "7b"], "byte string"),
        ([[-1, [SRV_BYTES]], [-1, [GRP_BYTES]], bytes(9)], "0..8 bytes"),
        ([[-1, [SRV_BYTES]], [-1, [SRV_BYTES, 61616]], b"\x7b"], "not a multicast address"),
        ([[-1, [SRV_BYTES]], [-1, [bytes([10, 0, 0, 1])]], b"\x7b"], "not a multicast address"),
        ([[-1, [SRV_BYTES]], [-2, [GRP_BYTES]], b"\x7b"], "tpi_client: scheme-id must be -1"),
        (
            [[-1, [SRV_BYTES]], [-1, [bytes.fromhex("ff020000000000000000000000000001")]], b"\x7b"],
            "link-local",
        ),
        ([[-1, [bytes.fromhex("fe800000000000000000000000000001")]]], "tpi_server: link-local"),
        ([[-1, [SRV_BYTES]], None, b"\x7b"], "tpi_client"),
        ([5], "tpi_server"),
    ],
)
def test_tp_info_refuses(obj: object, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment) as info:
        TpInfo.from_cbor_obj(obj)
    assert not isinstance(info.value, UnsupportedTransportError)


def test_tp_info_constructor_checks() -> None:
    with pytest.raises(MalformedError, match="both"):
        TpInfo(CRI(-1, SRV), CRI(-1, GRP), None)
    with pytest.raises(MalformedError, match="both"):
        TpInfo(CRI(-1, SRV), None, b"\x01")
    with pytest.raises(MalformedError, match="multicast"):
        TpInfo(CRI(-1, SRV), CRI(-1, SRV), b"\x01")
    with pytest.raises(MalformedError):
        TpInfo(CRI(-1, SRV), CRI(-1, GRP), bytes(9))


# ----------------------------------------------------------------------------------------------------
# Round trips (hypothesis)
# ----------------------------------------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,14}[a-z0-9]", fullmatch=True)
HOST_NAMES = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
UNICAST_V4 = st.ip_addresses(v=4).filter(
    lambda a: not (a.is_multicast or a.is_link_local or a.is_unspecified or a.is_reserved)
)
UNICAST_V6 = st.ip_addresses(v=6).filter(
    lambda a: (
        not (a.is_multicast or a.is_link_local or a.is_site_local or a.is_unspecified)
        and a.ipv4_mapped is None
    )
)
MULTICAST_V4 = st.ip_addresses(network="224.0.1.0/24") | st.ip_addresses(network="239.0.0.0/8")
MULTICAST_V6 = st.builds(
    lambda flags, scope, rest: ipaddress.IPv6Address(bytes([0xFF, flags << 4 | scope]) + rest),
    st.sampled_from([0, 1, 3]),
    st.sampled_from([3, 4, 5, 8, 0xE]),
    st.binary(min_size=14, max_size=14),
)
PORTS = st.none() | st.integers(0, 65535)
SERVER_CRIS = st.builds(CRI, st.just(-1), UNICAST_V4 | UNICAST_V6 | HOST_NAMES, PORTS)
CLIENT_CRIS = st.builds(CRI, st.just(-1), MULTICAST_V4 | MULTICAST_V6 | HOST_NAMES, PORTS)
ANY_CRIS = st.builds(
    CRI,
    st.sampled_from([-1, -2, -7, -8, -25, -26]),
    UNICAST_V4 | UNICAST_V6 | MULTICAST_V6 | HOST_NAMES,
    PORTS,
    st.none() | st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
)
TP_INFOS = st.builds(TpInfo, SERVER_CRIS) | st.builds(
    TpInfo, SERVER_CRIS, CLIENT_CRIS, st.binary(min_size=0, max_size=8)
)


@settings(max_examples=150, deadline=None)
@given(ANY_CRIS)
def test_cri_round_trip(cri: CRI) -> None:
    data = cbor_encode(cri.to_cbor_obj())
    assert cbor2.loads(data) == cri.to_cbor_obj()
    assert CRI.from_cbor_obj(cbor_decode(data)) == cri
    assert CRI.from_uri(cri.to_uri()) == cri


@settings(max_examples=150, deadline=None)
@given(ANY_CRIS)
def test_cri_flat_form_equivalent(cri: CRI) -> None:
    scheme_id, authority = cri.to_cbor_obj()
    assert CRI.from_cbor_obj([scheme_id, *authority]) == cri


@settings(max_examples=150, deadline=None)
@given(TP_INFOS)
def test_tp_info_round_trip(tp: TpInfo) -> None:
    data = cbor_encode(tp.to_cbor_obj())
    assert cbor2.dumps(tp.to_cbor_obj()) == data
    assert TpInfo.from_cbor_obj(cbor_decode(data)) == tp
