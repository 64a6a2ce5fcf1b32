"""The Wireshark/tshark Lua dissector (mcobserve/dissector/mcobserve.lua): tshark decodes the
informative-response payload (every key of draft §11, CRIs as URIs), Feedback-Divider and
Listen-To-Multicast-Responses, on built messages and on traffic captured in a lab."""

from __future__ import annotations

import os
import subprocess

import pytest
from aiocoap import CON, CONTENT, GET, NON, SERVICE_UNAVAILABLE, Message
from aiocoap.optiontypes import OpaqueOption, UintOption

from mcobserve.capture import Capture, decode, decode_hex_messages
from mcobserve.dissector import LUA
from mcobserve.engine.common import Endpoint
from mcobserve.wire import CRI, InformativeResponse, TpInfo
from mcobserve.wire.cbor import cbor_encode

from .livekit import PY, observer, put, server

TP = TpInfo(
    CRI(-1, Endpoint.parse("[fd00:db8::1]").host),
    CRI(-1, Endpoint.parse("[ff35:30:2001:db8::23]").host, 61616),
    b"\x68\x04",
)
GRP6 = "ff35003020010db80000000000000023"
SRV6 = "fd000db8000000000000000000000001"
IR_FIELDS = {
    "mcobserve.ir.tp_info.tpi_server": "coap://[fd00:db8::1]",
    "mcobserve.ir.tp_info.tpi_client": "coap://[ff35:30:2001:db8::23]:61616",
    "mcobserve.ir.tp_info.tpi_token": "6804",
    "mcobserve.ir.ph_req.code": "0.01",
    "mcobserve.ir.last_notif.code": "2.05",
    "mcobserve.ir.last_notif.observe": "11",
    "mcobserve.ir.last_notif.payload": "32312e302043",
    "mcobserve.ir.next_not_before": "3",
    "mcobserve.ir.ending": "2051251201",
    "mcobserve.ir.join_uri": "coap://as.example/join",
    "mcobserve.ir.sec_gp": "mcobserve",
    "mcobserve.ir.as_uri": "coap://as.example/token",
    "mcobserve.ir.hkdf": "5",
    "mcobserve.ir.cred_fmt": "14",
    "mcobserve.ir.gp_enc_alg": "10",
    "mcobserve.ir.sign_alg": "-8",
    "mcobserve.ir.sign_params": "[[1], [1, 6]]",
    "mcobserve.ir.gp_material": "{0: h'01', 2: h'02020202020202020202020202020202'}",
    "mcobserve.ir.srv_cred": "a102",
    "mcobserve.ir.srv_identifier": "05",
    "mcobserve.ir.exi": "3600",
    "mcobserve.ir.exp": "2051254801.5",
    "mcobserve.ir.unknown": '99: "future"',
}
OTHER_FIELDS = (
    "mcobserve.feedback_divider",
    "mcobserve.ltmr.tpi_server",
    "mcobserve.ltmr.tpi_client",
    "mcobserve.ltmr.tpi_token",
    "mcobserve.error",
    "_ws.col.Info",
    "coap.code",
    "ipv6.dst",
    "udp.payload",
)
FIELDS = (*IR_FIELDS, *OTHER_FIELDS)


@pytest.fixture(autouse=True)
def _tools(tools):
    """tshark and text2pcap (the ``tools`` fixture: missing tools fail under CI)."""


def _message(code, payload=b"", mtype=CON, mid=1, token=b"\x01\x02", **kw):
    m = Message(code=code, payload=payload, **kw)
    m.mtype, m.mid, m.token = mtype, mid, token
    return m


def _full_informative_response() -> bytes:
    ir = InformativeResponse(
        tp_info=TP,
        ph_req=bytes([1]) + bytes.fromhex("b474656d70"),
        last_notif=bytes.fromhex("45610b") + b"\xff21.0 C",
        next_not_before=3,
        ending=2051251201,
        join_uri="coap://as.example/join",
        sec_gp="mcobserve",
        as_uri="coap://as.example/token",
        hkdf=5,
        cred_fmt=14,
        gp_enc_alg=10,
        sign_alg=-8,
        sign_params=[[1], [1, 6]],
        gp_material={0: b"\x01", 2: b"\x02" * 16},
        srv_cred=b"\xa1\x02",
        srv_identifier=b"\x05",
        exi=3600,
        exp=2051254801.5,
        extra={99: "future"},
    )
    return _message(SERVICE_UNAVAILABLE, ir.encode(), content_format=65000).encode()


def test_every_informative_response_parameter_is_decoded():
    row = decode_hex_messages([_full_informative_response()], lua_script=LUA, fields=FIELDS)[0]
    assert {k: row[k] for k in IR_FIELDS} == IR_FIELDS
    assert row["mcobserve.error"] is None
    assert "[informative response 5.03]" in row["_ws.col.Info"]


def test_feedback_divider_and_listen_to_multicast_responses():
    q5 = _message(CONTENT, b"22.5 C", NON, 2, b"\x68\x04", observe=7)
    q5.opt.add_option(UintOption(18, 5))
    q0 = _message(CONTENT, b"22.6 C", NON, 3, b"\x68\x04", observe=8)
    q0.opt.add_option(UintOption(18, 0))  # the empty option: value 0 (draft §7)
    ltmr = _message(GET, mid=4, token=b"\x09", uri_path=["temperature"], observe=0)
    ltmr.opt.add_option(OpaqueOption(47, cbor_encode(TP.to_cbor_obj())))
    plain = _message(CONTENT, b"x", NON, 5, b"\x68\x04", observe=9)
    rows = decode_hex_messages([m.encode() for m in (q5, q0, ltmr, plain)], lua_script=LUA, fields=FIELDS)
    assert [r["mcobserve.feedback_divider"] for r in rows] == ["5", "0", None, None]
    assert rows[2]["mcobserve.ltmr.tpi_server"] == "coap://[fd00:db8::1]"
    assert rows[2]["mcobserve.ltmr.tpi_client"] == "coap://[ff35:30:2001:db8::23]:61616"
    assert rows[2]["mcobserve.ltmr.tpi_token"] == "6804"
    assert "Listen-To-Multicast-Responses" in rows[2]["_ws.col.Info"]
    assert all(r["mcobserve.error"] is None for r in rows)


@pytest.mark.parametrize(
    ("tp_info", "server", "client"),
    [
        ([[-1, [bytes([10, 77, 0, 1])]]], "coap://10.77.0.1", None),
        ([[-1, [bytes([10, 77, 0, 1]), 5684]], [-1, [bytes([239, 255, 0, 23]), 61616]], b"\x01"],
         "coap://10.77.0.1:5684", "coap://239.255.0.23:61616"),
        ([[-1, ["sensor", "example"]], [-1, bytes.fromhex(GRP6), 61616], b"\x01"],
         "coap://sensor.example", "coap://[ff35:30:2001:db8::23]:61616"),  # a host name; a flat CRI
        ([[-2, [bytes.fromhex(SRV6), 5684]]], "coaps://[fd00:db8::1]:5684", None),
    ],
)  # fmt: skip
def test_cris_are_shown_as_uris(tp_info, server, client):
    payload = cbor_encode({0: tp_info})
    row = decode_hex_messages(
        [_message(SERVICE_UNAVAILABLE, payload, content_format=65000).encode()], lua_script=LUA, fields=FIELDS
    )[0]
    assert row["mcobserve.ir.tp_info.tpi_server"] == server
    assert row["mcobserve.ir.tp_info.tpi_client"] == client


@pytest.mark.parametrize(
    "payload",
    [b"\xa1\x00", b"\x83\x01\x02", b"\xa1\x00\x81\x20\xff", b"\xbf\xff", b"\xa1" + b"\x81" * 40, b"\xa0\x00"],
)
def test_malformed_payload_is_flagged_not_fatal(payload):
    good = _message(CONTENT, b"ok", NON, 9, b"\x68\x04", observe=3)
    good.opt.add_option(UintOption(18, 2))
    msgs = [_message(SERVICE_UNAVAILABLE, payload, content_format=65000).encode(), good.encode()]
    rows = decode_hex_messages(msgs, lua_script=LUA, fields=FIELDS)
    assert rows[0]["mcobserve.error"]  # says what is wrong
    assert rows[1]["mcobserve.feedback_divider"] == "2" and rows[1]["mcobserve.error"] is None


def test_code_points_are_preferences():
    msg = _message(SERVICE_UNAVAILABLE, cbor_encode({0: TP.to_cbor_obj()}), content_format=65001)
    fd = _message(CONTENT, b"x", NON, 2, b"\x68\x04", observe=1)
    fd.opt.add_option(UintOption(65018, 4))
    default = decode_hex_messages([msg.encode(), fd.encode()], lua_script=LUA, fields=FIELDS)
    assert default[0]["mcobserve.ir.tp_info.tpi_server"] is None
    assert default[1]["mcobserve.feedback_divider"] is None
    moved = decode_hex_messages(
        [msg.encode(), fd.encode()],
        lua_script=LUA,
        fields=FIELDS,
        options=["mcobserve.content_format:65001", "mcobserve.feedback_divider:65018"],
    )
    assert moved[0]["mcobserve.ir.tp_info.tpi_server"] == "coap://[fd00:db8::1]"
    assert moved[1]["mcobserve.feedback_divider"] == "4"


def test_install_puts_it_where_tshark_finds_it(tmp_path):
    """`mcobserve dissector install` with HOME elsewhere: a plain tshark (no -X) then decodes with it."""
    env = dict(os.environ, HOME=str(tmp_path))
    res = subprocess.run([*PY, "dissector", "install"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    installed = tmp_path / ".local" / "lib" / "wireshark" / "plugins" / "mcobserve.lua"
    assert installed.read_bytes() == LUA.read_bytes()
    assert str(installed) in res.stdout
    pcap = tmp_path / "one.pcapng"
    subprocess.run(
        ["text2pcap", "-q", "-6", "fd00:db8::1,fd00:db8::2", "-u", "5683,5683", "-", str(pcap)],
        input="".join(
            f"{i:06x} " + " ".join(f"{b:02x}" for b in _full_informative_response()[i : i + 16]) + "\n"
            for i in range(0, len(_full_informative_response()), 16)
        ),
        text=True,
        check=True,
        timeout=30,
    )
    res = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "mcobserve.ir.tp_info.tpi_client"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.stdout.strip() == "coap://[ff35:30:2001:db8::23]:61616", res.stderr
    path = subprocess.run([*PY, "dissector", "path"], capture_output=True, text=True, timeout=60)
    assert path.stdout.strip() == str(LUA)


def test_captured_group_observation_is_decoded(lan, tmp_path):
    """Real traffic: the server's informative response and its multicast notifications, captured on an
    observer host; the first notification with two observers asks every one to confirm (Q = 0)."""
    a, b = lan.clients[0], lan.clients[1]
    bind, group = f"[{lan.server.addr6}]", "[ff35:30:2001:db8::23]:61616"
    base = f"coap://[{lan.server.addr6}]"
    srv = server(lan.server, bind, group, "--count-every", "1")
    try:
        with Capture(a, a.ifname, "udp", tmp_path / "c.pcapng"):
            o1 = observer(a, f"{base}/r", count=3, extra=("--leisure", "0.2"))
            o1.wait_event(lambda e: e.get("via") == "last_notif")
            o2 = observer(b, f"{base}/r", count=3, name="o2", extra=("--leisure", "0.2"))
            o2.wait_event(lambda e: e.get("via") == "last_notif")
            put(lan.clients[2], f"{base}/r", ["x", "y"])
            o1.collect(15)
            o2.collect(15)
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
    finally:
        events = srv.stop()
    sent = [e for e in events if e.get("event") == "notification_sent"]
    rows = decode(tmp_path / "c.pcapng", ports=[5683, 61616], lua_script=LUA, fields=FIELDS)
    informative = [r for r in rows if r["mcobserve.ir.tp_info.tpi_client"]]
    assert len(informative) == 1  # observer a's; b's went to b
    ir = informative[0]
    assert ir["coap.code"] == "163"
    assert ir["mcobserve.ir.tp_info.tpi_server"] == f"coap://[{lan.server.addr6}]"
    assert ir["mcobserve.ir.tp_info.tpi_client"] == "coap://[ff35:30:2001:db8::23]:61616"
    assert ir["mcobserve.ir.tp_info.tpi_token"] == token
    assert ir["mcobserve.ir.last_notif.code"] == "2.05"
    assert ir["mcobserve.ir.last_notif.payload"] == b"1234".hex()
    mcast = [r for r in rows if r["ipv6.dst"] == "ff35:30:2001:db8::23"]
    assert len(mcast) == len(sent) == 2
    want = [None if e.get("feedback_divider") is None else str(e["feedback_divider"]) for e in sent]
    assert [r["mcobserve.feedback_divider"] for r in mcast] == want
    assert "0" in want  # a counting round ran and tshark shows its Feedback-Divider
    assert all(r["mcobserve.error"] is None for r in rows)
