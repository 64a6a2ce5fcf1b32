"""The proxy's forwarding rules without a network (proxy draft §4, §6; RFC 7252 §5.7; RFC 7641 §5)."""

from __future__ import annotations

import random

import pytest
from aiocoap import (
    BAD_GATEWAY,
    BAD_OPTION,
    BAD_REQUEST,
    CONTENT,
    GET,
    NOT_FOUND,
    POST,
    PROXYING_NOT_SUPPORTED,
    SERVICE_UNAVAILABLE,
    Message,
)
from aiocoap.optiontypes import OpaqueOption
from hypothesis import given, settings
from hypothesis import strategies as st

from mcobserve.constants import DEFAULT_CODE_POINTS, CodePoints
from mcobserve.errors import McObserveError, ProxyError
from mcobserve.proxy.engine import (
    OBSERVE_MODULO,
    ProxyEngine,
    Target,
    check_options,
    forward_request,
    parse_uri,
    target_of,
)
from mcobserve.wire.feedback import get_feedback_divider, set_feedback_divider

R = Target("coap", "fd00:db8::1", None, ("r",))


def notif(payload: bytes, observe: int | None, max_age: int | None = None, q: int | None = None) -> Message:
    m = Message(code=CONTENT, payload=payload, observe=observe, content_format=0)
    m.token = b"\x7b"
    if max_age is not None:
        m.opt.max_age = max_age
    if q is not None:
        set_feedback_divider(m, q)
    return m


def engine(seed: int = 1) -> ProxyEngine:
    return ProxyEngine(random.Random(seed))


def test_target_from_proxy_uri_and_from_proxy_scheme_are_the_same():
    """Proxy-Uri and Proxy-Scheme + Uri-* name the same target (RFC 7252 §5.10.2, what libcoap sends)."""
    a = Message(code=GET, proxy_uri="coap://[fd00:db8::1]/r?x=1")
    b = Message(code=GET, proxy_scheme="coap", uri_host="fd00:db8::1", uri_path=("r",), uri_query=("x=1",))
    assert target_of(a) == target_of(b) == Target("coap", "fd00:db8::1", None, ("r",), ("x=1",))
    assert target_of(a).uri() == "coap://[fd00:db8::1]/r?x=1"
    c = Message(code=GET, proxy_uri="coap://sensor.example:61000/a/b%2Fc")
    t = target_of(c)
    assert (t.host, t.port, t.path) == ("sensor.example", 61000, ("a", "b/c"))
    assert parse_uri(t.uri()) == t


def test_accept_is_part_of_the_target():
    """Different representations are different observations at the server (RFC 7252 §5.6)."""
    a = Message(code=GET, proxy_uri="coap://h/r", accept=0)
    b = Message(code=GET, proxy_uri="coap://h/r", accept=60)
    assert target_of(a) != target_of(b)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (Message(code=GET, proxy_uri="http://h/r"), PROXYING_NOT_SUPPORTED),
        (Message(code=GET, proxy_uri="coaps://h/r"), PROXYING_NOT_SUPPORTED),
        (Message(code=GET, proxy_uri="coap:///r"), BAD_REQUEST),
        (Message(code=GET, proxy_uri="coap://[::1/r"), BAD_REQUEST),
        (Message(code=GET, proxy_uri="coap://h/r", uri_path=("x",)), BAD_OPTION),
        (Message(code=GET, proxy_scheme="coap"), BAD_REQUEST),
        (Message(code=GET, proxy_scheme="http", uri_host="h"), PROXYING_NOT_SUPPORTED),
        (Message(code=GET, uri_path=("r",)), NOT_FOUND),
    ],
)
def test_requests_the_proxy_cannot_forward(request_, code):
    with pytest.raises(ProxyError) as e:
        target_of(request_)
    assert e.value.code == code


def test_reverse_proxy_maps_paths_onto_the_origin():
    """RFC 7252 §5.7.3: a request without proxy options goes to the origin the proxy stands in for."""
    origin = parse_uri("coap://[fd00:db8::1]:5684/base")
    t = target_of(Message(code=GET, uri_path=("r",), uri_query=("a",)), origin)
    assert t == Target("coap", "fd00:db8::1", 5684, ("base", "r"), ("a",))
    assert t.uri() == "coap://[fd00:db8::1]:5684/base/r?a"


def test_forward_request_keeps_other_options_and_rebuilds_the_uri():
    req = Message(code=POST, proxy_uri="coap://[fd00:db8::1]/r", payload=b"x", content_format=0, etag=b"1")
    out = forward_request(req, target_of(req))
    assert out.code == POST and out.payload == b"x"
    assert out.opt.proxy_uri is None and out.opt.uri_path == ("r",)
    assert out.get_request_uri() == "coap://[fd00:db8::1]/r"
    assert out.opt.content_format == 0 and out.opt.etag == b"1"


def test_unknown_critical_option_and_ltmr_are_refused():
    """RFC 7252 §5.4.1; LTMR (critical) is only understood by the secured proxy (proxy draft §5.1)."""
    req = Message(code=GET, proxy_uri="coap://h/r")
    req.opt.add_option(OpaqueOption(65001, b"x"))  # critical, unknown
    with pytest.raises(ProxyError) as e:
        check_options(req)
    assert e.value.code == BAD_OPTION
    req = Message(code=GET, proxy_uri="coap://h/r")
    req.opt.add_option(OpaqueOption(DEFAULT_CODE_POINTS.listen_to_multicast_responses, b"\x80"))
    with pytest.raises(ProxyError):
        check_options(req)
    ok = Message(code=GET, proxy_uri="coap://h/r", observe=0)
    set_feedback_divider(ok, 0)  # elective, understood
    check_options(ok)


def test_one_upstream_registration_for_many_clients_answered_from_cache():
    """proxy draft §4: the first client makes the proxy register; the next is served from the cache."""
    e = engine()
    first = e.register(R, ("c1", b"\x4a"), 0.0)
    assert first.register_upstream and first.answer is None
    fan = e.on_upstream(R, notif(b"1234", 54120, max_age=30), 1.0)
    assert fan is not None and fan.clients == (("c1", b"\x4a"),) and not fan.last
    second = e.register(R, ("c2", b"\x01"), 11.0)
    assert not second.register_upstream
    assert second.answer is not None and second.answer.payload == b"1234"
    assert second.answer.opt.observe == fan.message.opt.observe
    assert second.answer.opt.max_age == 20  # 30 s minus 10 s in the cache (RFC 7252 §5.6.1)
    assert e.clients(R) == 2


def test_observe_numbers_grow_per_client_and_feedback_divider_is_removed():
    """Every client sees increasing Observe numbers; Feedback-Divider never leaves the proxy (§6)."""
    e = engine()
    e.register(R, "c1", 0.0)
    seen = []
    for i, upstream in enumerate([5, 6, 7]):
        fan = e.on_upstream(R, notif(str(i).encode(), upstream, q=2), float(i))
        assert fan is not None
        assert get_feedback_divider(fan.message) is None
        assert fan.message.token == b""  # the client's own Token is set per exchange
        seen.append(fan.message.opt.observe)
    assert seen == [seen[0], seen[0] + 1, seen[0] + 2]
    assert e.register(R, "c2", 3.0).answer.opt.observe == seen[-1]


def test_observe_wraps_at_24_bits():
    e = engine()
    e.register(R, "c", 0.0)
    e._up[R].observe = OBSERVE_MODULO - 1
    fan = e.on_upstream(R, notif(b"x", 1), 0.0)
    assert fan.message.opt.observe == 0


def test_custom_feedback_divider_number_is_removed():
    cp = CodePoints(feedback_divider=65010)
    e = ProxyEngine(random.Random(0), cp)
    e.register(R, "c", 0.0)
    fan = e.on_upstream(R, _with_fd(65010), 0.0)
    assert get_feedback_divider(fan.message, cp) is None


def _with_fd(number: int) -> Message:
    m = notif(b"x", 1)
    set_feedback_divider(m, 3, CodePoints(feedback_divider=number))
    return m


def test_last_client_leaving_ends_the_upstream_observation():
    """proxy draft §6: with no client left the proxy forgets its participation."""
    e = engine()
    e.register(R, "a", 0.0)
    e.register(R, "b", 0.0)
    assert e.deregister("a") is None
    assert e.deregister("a") is None  # twice is harmless
    assert e.deregister("b") == R
    assert e.clients(R) == 0 and list(e.targets()) == []
    assert e.register(R, "c", 1.0).register_upstream  # a new client registers anew


def test_client_moving_to_another_target():
    e = engine()
    other = Target("coap", "h", None, ("s",))
    e.register(R, "a", 0.0)
    e.register(other, "a", 0.0)
    assert e.clients(R) == 0 and e.clients(other) == 1


def test_error_from_the_server_ends_every_client_observation():
    """An error notification (or the multicast 5.03 ending the group observation) ends all (RFC 7641)."""
    e = engine()
    e.register(R, "a", 0.0)
    e.register(R, "b", 0.0)
    fan = e.on_upstream(R, Message(code=NOT_FOUND), 1.0)
    assert fan.last and set(fan.clients) == {"a", "b"} and fan.message.code == NOT_FOUND
    assert e.clients(R) == 0
    assert e.on_upstream(R, notif(b"x", 1), 2.0) is None


def test_upstream_failure_becomes_bad_gateway():
    e = engine()
    e.register(R, "a", 0.0)
    fan = e.on_upstream_failed(R, None, "timeout")
    assert fan.last and fan.message.code == BAD_GATEWAY and fan.message.payload == b"timeout"
    e.register(R, "a", 0.0)
    ended = Message(code=SERVICE_UNAVAILABLE, payload=b"")
    fan = e.on_upstream_failed(R, ended, "ended")
    assert fan.message.code == SERVICE_UNAVAILABLE
    assert e.on_upstream_failed(R, None, "again") is None


def test_many_clients_cost_nothing_per_registration():
    """Registration and deregistration are O(1): 100k clients in well under a second."""
    import time

    e = engine()
    t0 = time.perf_counter()
    for i in range(100_000):
        e.register(R, i, 0.0)
    for i in range(100_000):
        e.deregister(i)
    assert time.perf_counter() - t0 < 2.0


@settings(max_examples=300, deadline=None)
@given(
    proxy_uri=st.one_of(st.none(), st.text(max_size=40)),
    scheme=st.one_of(st.none(), st.text(max_size=8)),
    host=st.one_of(st.none(), st.text(max_size=20)),
    path=st.lists(st.text(max_size=5), max_size=3),
    reverse=st.booleans(),
)
def test_target_of_accepts_or_raises_our_error(proxy_uri, scheme, host, path, reverse):
    """h11's rule for parsers: any request gives a Target or a ProxyError, nothing else."""
    m = Message(code=GET)
    try:
        if proxy_uri is not None:
            m.opt.proxy_uri = proxy_uri
        if scheme is not None:
            m.opt.proxy_scheme = scheme
        if host is not None:
            m.opt.uri_host = host
        m.opt.uri_path = path
    except Exception:
        return  # aiocoap refused to build it; nothing for us to parse
    try:
        t = target_of(m, R if reverse else None)
    except McObserveError:
        return
    assert t.scheme == "coap"
    assert isinstance(t.uri(), str)


# -- ticket requests (proxy draft §5.1, §5.2) ------------------------------------------------------

from aiocoap import FETCH, NON  # noqa: E402

from mcobserve.engine.common import Endpoint  # noqa: E402
from mcobserve.proxy.engine import ticket_of, ticket_request  # noqa: E402
from mcobserve.wire import CRI, TpInfo, cbor_encode, serialize_message  # noqa: E402

TP = TpInfo(
    CRI.from_uri("coap://[fd00:db8::1]"), CRI.from_uri("coap://[ff35:30:2001:db8::23]:61616"), b"\x7b"
)


def protected_phantom() -> Message:
    m = Message(code=FETCH, observe=0, payload=b"\x01\x02ciphertext+signature")
    m.opt.oscore = b"\x39\x01\x05"
    return m


def test_ticket_request_round_trip():
    """What the client builds, the proxy reduces to the phantom request and 'tp_info' (§5.2)."""
    ph = protected_phantom()
    ticket = ticket_request(ph, TP, R)
    assert ticket.opt.proxy_scheme == "coap" and ticket.opt.uri_host == "fd00:db8::1"
    assert ticket.opt.observe == 0 and ticket.opt.oscore == ph.opt.oscore and ticket.payload == ph.payload
    raw = ticket.opt.get_option(DEFAULT_CODE_POINTS.listen_to_multicast_responses)[0].value
    assert bytes(raw) == cbor_encode(TP.to_cbor_obj())
    ticket.token = b"\x99"
    t = ticket_of(ticket)
    assert t is not None
    assert t.phantom == serialize_message(ph)
    assert t.token == b"\x7b" and t.server == Endpoint.parse("[fd00:db8::1]")
    assert t.group == Endpoint.parse("[ff35:30:2001:db8::23]:61616")
    other = ticket_request(ph, TP, R)
    other.token = b"\x01\x02"
    assert ticket_of(other) == t  # every client builds the same ticket: one listener for all
    # the option number is configurable
    cp = CodePoints(listen_to_multicast_responses=65047)
    assert ticket_of(ticket_request(ph, TP, R, cp), cp) == t
    assert ticket_of(ticket_request(ph, TP, R, cp)) is None


@pytest.mark.parametrize(
    "value",
    [
        b"\x80\x80",
        cbor_encode([1, 2, 3]),
        cbor_encode(TpInfo(CRI.from_uri("coap://[fd00:db8::1]")).to_cbor_obj()),
    ],
)
def test_malformed_ltmr_is_bad_option(value):
    m = protected_phantom()
    m.opt.add_option(OpaqueOption(DEFAULT_CODE_POINTS.listen_to_multicast_responses, value))
    with pytest.raises(ProxyError) as e:
        ticket_of(m)
    assert e.value.code == BAD_OPTION


def test_ticket_without_observe_is_refused():
    m = ticket_request(protected_phantom(), TP, R)
    m.opt.observe = None
    with pytest.raises(ProxyError) as e:
        ticket_of(m)
    assert e.value.code == BAD_REQUEST


def _heard(token: bytes = b"\x7b", observe: int | None = 5, mtype=NON) -> Message:
    m = Message(code=CONTENT, observe=observe, payload=b"ct")
    m.opt.oscore = b"\x29\x07"
    m.token, m.mtype = token, mtype
    return m


def test_protected_notifications_forwarded_unchanged_and_cached():
    """Only Token, source, type and outer Observe are checked; the bytes go on as they are (§5.2)."""
    t = ticket_of(ticket_request(protected_phantom(), TP, R))
    e = engine()
    assert e.register(t, "c1", 0.0).register_upstream
    srv = Endpoint.parse("[fd00:db8::1]")
    fan = e.on_protected(t, _heard(), srv, 1.0)
    assert fan is not None and fan.clients == ("c1",)
    assert (
        fan.message.opt.oscore == b"\x29\x07"
        and fan.message.opt.observe == 5
        and fan.message.payload == b"ct"
    )
    assert e.on_protected(t, _heard(token=b"\x01"), srv, 1.0) is None
    assert e.on_protected(t, _heard(observe=6), Endpoint.parse("[fd00:db8::9]"), 1.0) is None
    assert e.on_protected(t, _heard(observe=6, mtype=0), srv, 1.0) is None  # CON
    assert e.on_protected(t, _heard(observe=4), srv, 2.0) is None  # older (RFC 7641 §3.4)
    later = e.register(t, "c2", 3.0)
    assert (
        not later.register_upstream
        and later.answer.opt.observe == 5
        and later.answer.opt.oscore == b"\x29\x07"
    )
    assert later.answer.opt.max_age is None  # not touched: the proxy cannot read it


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=64), observe=st.sampled_from([None, 0, 1]))
def test_ticket_of_accepts_or_raises_our_error(value, observe):
    """Fuzzed Listen-To-Multicast-Responses values: a Ticket or a ProxyError, nothing else."""
    m = protected_phantom()
    m.opt.observe = observe
    m.opt.add_option(OpaqueOption(DEFAULT_CODE_POINTS.listen_to_multicast_responses, value))
    try:
        t = ticket_of(m)
    except ProxyError as e:
        assert e.code in (BAD_OPTION, BAD_REQUEST)
        return
    assert t is not None and t.group.host.is_multicast


def test_listen_to_checks_ph_req_and_tp_info():
    from mcobserve.errors import MalformedError
    from mcobserve.proxy.engine import listen_to
    from mcobserve.wire import InformativeResponse

    ph = serialize_message(protected_phantom())
    t = listen_to(InformativeResponse(tp_info=TP, ph_req=ph), ph)
    assert t.token == b"\x7b" and t.group.port == 61616
    assert listen_to(InformativeResponse(tp_info=TP), ph) == t  # 'ph_req' may be omitted (App. D)
    with pytest.raises(MalformedError):
        listen_to(InformativeResponse(tp_info=TP, ph_req=ph + b"x"), ph)
    with pytest.raises(MalformedError):
        listen_to(InformativeResponse(tp_info=TpInfo(CRI.from_uri("coap://[fd00:db8::1]"))), ph)


def test_deterministic_target_is_the_cache_key():
    """Two clients' identical Deterministic Requests are one target; other requests are not (§9)."""
    from mcobserve.proxy.engine import DeterministicTarget, deterministic_target

    def det(token: bytes) -> Message:
        m = protected_phantom()
        m.opt.request_hash = b"\x01" * 32
        m.opt.proxy_scheme, m.opt.uri_host = "coap", "fd00:db8::1"
        m.token = token
        return m

    a = deterministic_target(det(b"\x01"), target_of(det(b"\x01")))
    b = deterministic_target(det(b"\x02\x03"), target_of(det(b"\x02\x03")))
    assert isinstance(a, DeterministicTarget) and a == b
    plain = protected_phantom()  # no Request-Hash: an ordinary OSCORE request, relayed one to one
    assert deterministic_target(plain, R) is None
    e = engine()
    assert e.register(a, "c1", 0.0).register_upstream and not e.register(b, "c2", 0.0).register_upstream
    fan = e.on_unchanged(a, _heard(), 1.0)
    assert fan.clients == ("c1", "c2") and e.register(a, "c3", 2.0).answer.opt.oscore == b"\x29\x07"


@pytest.mark.parametrize(
    "argv",
    [
        ["proxy", "--bind", "not an address"],
        ["proxy", "--bind", "[fd00:db8::2]", "--reverse", "http://example/"],
        ["proxy", "--bind", "[fd00:db8::2]", "--run-for", "0"],
        ["observe", "coap://[fd00:db8::1]/r", "--proxy", "coap://[fd00:db8::2]/with/path"],
        ["observe", "coap://[fd00:db8::1]/r", "--proxy", "http://[fd00:db8::2]"],
    ],
)
def test_cli_usage_errors_are_one_line_exit_64(argv, capsys):
    """Bad usage: exit 64 and one line ``mcobserve: ...`` on stderr, no traceback, no socket opened."""
    from mcobserve.cli.main import main

    assert main(argv) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcobserve: "), err
