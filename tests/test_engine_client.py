"""Client engine (draft §5.2 steps 1-7, §5.3, §5.4) fed by the server engine, with a fake clock."""

from __future__ import annotations

import random

import pytest
from aiocoap import CON, CONTENT, GET, NON, SERVICE_UNAVAILABLE, Message

from mcobserve.engine.client import Accepted, Dropped, Ended, GroupObservationClient, Via
from mcobserve.engine.common import Endpoint, observe_is_fresh
from mcobserve.engine.server import CongestionControl, GroupPolicy, ServerEngine
from mcobserve.errors import MalformedError, UnsupportedTransportError, WithdrawnError
from mcobserve.wire import CRI, InformativeResponse, TpInfo, serialize_message

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
UNLIMITED = CongestionControl(interval=0)  # draft §4.4 budget off: these tests are about other rules
T0 = 1_700_000_000.0


def registration(path: str = "r") -> Message:
    return Message(code=GET, observe=0, uri_path=[path])


def server_with_group(text: str = "1234"):
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    reg = e.on_registration(("r",), "c1", registration(), T0, random.Random(4))
    e.rendered(reg.observation, Message(code=CONTENT, payload=text.encode()), T0)
    return e, reg.observation


def joined(request: Message | None = None):
    e, obs = server_with_group()
    request = request or registration()
    c = GroupObservationClient(request)
    first = c.join(c.parse(e.informative_payload(obs, request, T0)), T0 + 0.1)
    return e, obs, c, first


def notify(e, obs, text: str, now: float) -> Message:
    e.on_change(obs.path, now)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=text.encode()), now)
    return wire(send.message)


def wire(m: Message) -> Message:
    """Encode and decode as the adapter's send and the listener's receive would (MID assigned)."""
    out = Message(code=m.code, payload=m.payload)
    for option in m.opt.option_list():
        out.opt.add_option(option)
    out.mtype, out.mid, out.token = m.mtype, 0x1234, m.token
    return Message.decode(out.encode())


def test_join_adopts_token_group_server_and_last_notif():
    _, obs, c, first = joined()
    assert c.token == obs.token and c.group == GRP and c.server == SRV
    assert c.phantom.opt.uri_path == ("r",) and c.phantom.token == obs.token
    assert first.via is Via.LAST_NOTIF and first.payload == b"1234" and first.code == "2.05"
    assert first.message.token == obs.token and first.observe == obs.observe


def test_multicast_notifications_in_order_and_reordering():
    e, obs, c, _ = joined()
    m1 = notify(e, obs, "a", T0 + 1)
    m2 = notify(e, obs, "b", T0 + 2)
    v = c.on_multicast(m1, SRV, T0 + 1)
    assert isinstance(v, Accepted) and v.notification.via is Via.MULTICAST and v.notification.payload == b"a"
    assert isinstance(c.on_multicast(m2, SRV, T0 + 2), Accepted)
    # A late or duplicated datagram is not fresh (RFC 7641 §3.4).
    assert isinstance(c.on_multicast(m1, SRV, T0 + 3), Dropped)
    assert isinstance(c.on_multicast(m2, SRV, T0 + 3), Dropped)
    # ... unless more than 128 s passed.
    assert isinstance(c.on_multicast(m1, SRV, T0 + 2 + 129), Accepted)


def test_last_notif_is_the_baseline():
    _e, obs, c, _ = joined()
    stale = Message(code=CONTENT, observe=obs.observe, payload=b"old")
    stale.mtype = NON
    stale.token = obs.token
    assert isinstance(c.on_multicast(stale, SRV, T0 + 1), Dropped)


def test_wrong_token_source_type_are_dropped():
    e, obs, c, _ = joined()
    m = notify(e, obs, "a", T0 + 1)
    other = wire(m)
    other.token = b"\x00\x01\x02"
    assert "token" in c.on_multicast(other, SRV, T0 + 1).reason
    assert "source" in c.on_multicast(m, Endpoint.parse("[2001:db8::66]"), T0 + 1).reason
    assert "source" in c.on_multicast(m, Endpoint.parse("[2001:db8::ab]:5684"), T0 + 1).reason
    con = wire(m)
    con.mtype = CON
    assert "NON" in c.on_multicast(con, SRV, T0 + 1).reason
    assert isinstance(c.on_multicast(m, SRV, T0 + 1), Accepted)


def test_multicast_503_ends_the_observation():
    e, obs, c, _ = joined()
    send, _ = e.cancel(obs, T0 + 5, "operator")
    v = c.on_multicast(wire(send.message), SRV, T0 + 5)
    assert isinstance(v, Ended) and not c.joined
    assert isinstance(c.on_multicast(notify_like(obs), SRV, T0 + 6), Dropped)


def notify_like(obs) -> Message:
    m = Message(code=CONTENT, observe=obs.observe + 5, payload=b"z")
    m.mtype = NON
    m.token = obs.token
    return m


def test_ph_req_absent_uses_own_request():
    e, obs = server_with_group()
    c = GroupObservationClient(registration())
    ir = c.parse(e.informative_payload(obs, registration(), T0))
    assert ir.ph_req is None
    c.join(ir, T0)
    assert serialize_message(c.phantom) == serialize_message(registration())


def test_withdraw_when_phantom_serves_another_resource():
    e, obs = server_with_group()
    c = GroupObservationClient(registration("elsewhere"))
    ir = c.parse(e.informative_payload(obs, None, T0))  # ph_req for /r
    with pytest.raises(WithdrawnError):
        c.join(ir, T0)
    assert not c.joined


def test_ph_req_differing_only_in_transport_options_is_accepted():
    e, obs = server_with_group()
    own = registration()
    own.opt.uri_host = "server.example"
    c = GroupObservationClient(own)
    ir = c.parse(e.informative_payload(obs, own, T0))
    assert ir.ph_req is not None
    c.join(ir, T0)
    assert c.joined


def _ir(**kw) -> InformativeResponse:
    base = dict(
        tp_info=TpInfo(CRI(-1, SRV.host), CRI(-1, GRP.host, GRP.port), b"\x7b"),
        last_notif=bytes([0x45]) + bytes.fromhex("6105") + b"\xff1234",
    )
    base.update(kw)
    return InformativeResponse(**base)


def test_malformed_or_incomplete_informative_responses():
    c = GroupObservationClient(registration())
    with pytest.raises(MalformedError):
        c.join(_ir(tp_info=None), T0)
    with pytest.raises(MalformedError):
        c.join(_ir(tp_info=TpInfo(CRI(-1, SRV.host))), T0)
    with pytest.raises(UnsupportedTransportError):
        c.join(_ir(tp_info=TpInfo(CRI(-2, SRV.host), CRI(-1, GRP.host, GRP.port), b"\x7b")), T0)
    with pytest.raises(MalformedError):  # last_notif without Observe
        c.join(_ir(last_notif=bytes([0x45, 0xFF]) + b"1234"), T0)
    with pytest.raises(MalformedError):  # last_notif that is a request
        c.join(_ir(last_notif=bytes([0x01])), T0)
    with pytest.raises(MalformedError):  # ph_req that is not a registration
        c.join(_ir(ph_req=bytes([0x01]) + bytes.fromhex("b172")), T0)
    with pytest.raises(MalformedError):  # host name without resolution
        c.join(_ir(tp_info=TpInfo(CRI(-1, "srv.example"), CRI(-1, GRP.host, GRP.port), b"\x7b")), T0)
    with pytest.raises(MalformedError):
        c.parse(b"\xa1\x00\x01")
    assert not c.joined
    # The draft's own figure: 0x45, Observe 5, payload "1234", host names resolved by the caller.
    first = c.join(
        _ir(tp_info=TpInfo(CRI(-1, "srv.example"), CRI(-1, GRP.host, GRP.port), b"\x7b")),
        T0,
        {"srv.example": SRV.host},
    )
    assert first.payload == b"1234" and first.observe == 5 and c.server == SRV


def test_ipv4_group_and_v4_mapped_source():
    srv4 = Endpoint.parse("10.78.0.1")
    grp4 = Endpoint.parse("239.255.0.1:61616")
    e = ServerEngine(srv4, grp4, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    reg = e.on_registration(("r",), "c", registration(), T0, random.Random(1))
    e.rendered(reg.observation, Message(code=CONTENT, payload=b"x"), T0)
    c = GroupObservationClient(registration())
    c.join(c.parse(e.informative_payload(reg.observation, registration(), T0)), T0)
    assert c.server == srv4 and c.group == grp4
    m = notify(e, reg.observation, "y", T0 + 1)
    assert isinstance(c.on_multicast(m, Endpoint.of("::ffff:10.78.0.1", 5683), T0 + 1), Accepted)


def test_observe_freshness_rule():
    assert observe_is_fresh(1, 0, 2, 0)
    assert not observe_is_fresh(2, 0, 1, 0)
    assert not observe_is_fresh(5, 0, 5, 0)
    assert observe_is_fresh((1 << 24) - 1, 0, 0, 0)  # wrap-around
    assert not observe_is_fresh(0, 0, (1 << 24) - 1, 0)
    assert observe_is_fresh(10, 0, 3, 128.5)


def test_error_notification_ends():
    _e, obs, c, _ = joined()
    m = Message(code=SERVICE_UNAVAILABLE, observe=obs.observe + 1)
    m.mtype = NON
    m.token = obs.token
    assert isinstance(c.on_multicast(m, SRV, T0 + 1), Ended)
