"""Server engine life cycle with a fake clock (draft §4): no sockets, no sleeping."""

from __future__ import annotations

import random

import pytest
from aiocoap import CONTENT, GET, NON, NOT_FOUND, SERVICE_UNAVAILABLE, Message

from mcobserve.constants import CodePoints
from mcobserve.engine.common import Endpoint
from mcobserve.engine.server import (
    Cancelled,
    CongestionControl,
    GroupPolicy,
    Kind,
    Render,
    RenderReason,
    SendMulticast,
    ServerEngine,
    TokenSpace,
)
from mcobserve.errors import TokenSpaceExhaustedError
from mcobserve.wire import InformativeResponse, parse_message

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
UNLIMITED = CongestionControl(interval=0)  # draft §4.4 budget off: these tests are about other rules
T0 = 1_700_000_000.0


def request(path: str = "r", **opts) -> Message:
    m = Message(code=GET, observe=0, uri_path=[p for p in path.split("/") if p], **opts)
    m.token = b"\x4a"
    return m


def content(text: str, **opts) -> Message:
    return Message(code=CONTENT, payload=text.encode(), content_format=0, **opts)


def engine(policy: GroupPolicy | None = None, **kw) -> ServerEngine:
    kw.setdefault("congestion", UNLIMITED)  # per-group congestion control has its own tests
    e = ServerEngine(SRV, GRP, **kw)
    e.add_resource(("r",), policy or GroupPolicy(min_interval=3.0))
    return e


def started(e: ServerEngine, now: float = T0, text: str = "1234", rng: random.Random | None = None):
    rng = rng or random.Random(1)
    reg = e.on_registration(("r",), "c1", request(), now, rng)
    assert reg.kind is Kind.GROUP and reg.started
    assert e.rendered(reg.observation, content(text), now) == []  # INIT_NOTIF is never sent
    return reg.observation


def test_first_registration_starts_group_observation_and_answers_informative_response():
    e = engine()
    rng = random.Random(7)
    reg = e.on_registration(("r",), "c1", request(), T0, rng)
    assert reg.kind is Kind.GROUP and reg.started and reg.shifted == ()
    obs = reg.observation
    assert obs.rendering is RenderReason.INIT and not obs.ready
    assert obs.count == 1
    # The phantom request: GET, Observe 0, Uri-Path, Token T (draft §4.1 step 1-4).
    assert obs.phantom.code == GET and obs.phantom.opt.observe == 0
    assert obs.phantom.opt.uri_path == ("r",) and obs.phantom.token == obs.token
    assert obs.token in e.tokens and len(obs.token) == 2
    assert obs.ph_req == bytes.fromhex("01605172")  # GET, Observe 0 (empty), Uri-Path "r"

    assert e.rendered(obs, content("1234"), T0) == []
    assert obs.ready and obs.sent == 0

    resp = e.informative_response(obs, request(), T0 + 0.5)
    assert resp.code == SERVICE_UNAVAILABLE
    assert resp.opt.content_format == CodePoints().content_format
    assert resp.opt.max_age == 0 and resp.opt.observe is None
    ir = InformativeResponse.decode(resp.payload)
    assert ir.tp_info.tpi_token == obs.token
    assert str(ir.tp_info.tpi_server.host) == "2001:db8::ab" and ir.tp_info.tpi_server.port in (None, 5683)
    assert str(ir.tp_info.tpi_client.host) == "ff35:30:2001:db8::23" and ir.tp_info.tpi_client.port == 61616
    # Same transport-independent request as the phantom request: 'ph_req' omitted (draft §4.2).
    assert ir.ph_req is None
    last = parse_message(ir.last_notif, token=obs.token)
    assert last.code == CONTENT and last.payload == b"1234" and last.opt.observe == obs.observe
    assert ir.last_notif[0] == 0x45
    assert ir.next_not_before is None and ir.ending is None


def test_ph_req_included_when_request_differs():
    e = engine()
    obs = started(e)
    other = request()
    other.opt.uri_host = "sensor.example"
    ir = InformativeResponse.decode(e.informative_payload(obs, other, T0))
    assert ir.ph_req == obs.ph_req
    assert parse_message(ir.ph_req).opt.uri_path == ("r",)


def test_group_after_shifts_traditional_observers():
    e = engine(GroupPolicy(group_after=3))
    rng = random.Random(3)
    r1, r2 = request(), request()
    r2.opt.uri_host = "x.example"
    assert e.on_registration(("r",), "c1", r1, T0, rng).kind is Kind.TRADITIONAL
    assert e.on_registration(("r",), "c2", r2, T0, rng).kind is Kind.TRADITIONAL
    # A re-registration of the same observer does not count twice.
    assert e.on_registration(("r",), "c2", r2, T0, rng).kind is Kind.TRADITIONAL
    assert e.traditional_count(("r",)) == 2
    reg = e.on_registration(("r",), "c3", request(), T0 + 1, rng)
    assert reg.kind is Kind.GROUP and reg.started
    assert dict(reg.shifted) == {"c1": r1, "c2": r2}
    assert reg.observation.count == 3
    assert e.traditional_count(("r",)) == 0
    e.rendered(reg.observation, content("x"), T0 + 1)
    # The moved observer whose request differs gets 'ph_req'; the other does not.
    assert InformativeResponse.decode(e.informative_payload(reg.observation, r2, T0)).ph_req is not None
    assert InformativeResponse.decode(e.informative_payload(reg.observation, r1, T0)).ph_req is None


def test_traditional_observer_that_left_is_not_shifted():
    e = engine(GroupPolicy(group_after=2))
    rng = random.Random(3)
    e.on_registration(("r",), "c1", request(), T0, rng)
    e.traditional_ended(("r",), "c1")
    assert e.on_registration(("r",), "c2", request(), T0, rng).kind is Kind.TRADITIONAL
    reg = e.on_registration(("r",), "c3", request(), T0, rng)
    assert reg.started and [k for k, _ in reg.shifted] == ["c2"]


def test_later_registrations_join_and_count():
    e = engine()
    obs = started(e)
    reg = e.on_registration(("r",), "c2", request(), T0 + 1, random.Random())
    assert reg.kind is Kind.GROUP and not reg.started and reg.observation is obs
    assert obs.count == 2


def test_no_response_16_is_counted_not_answered():
    e = engine()
    obs = started(e)
    reg = e.on_registration(("r",), "c2", request(no_response=16), T0 + 1, random.Random())
    assert reg.kind is Kind.SILENT and reg.observation is obs and obs.count == 2


def test_incompatible_request_and_unconfigured_resource_stay_traditional():
    e = engine()
    started(e)
    rng = random.Random()
    assert e.on_registration(("r",), "c2", request(accept=50), T0, rng).kind is Kind.TRADITIONAL
    q = request()
    q.opt.uri_query = ("a=1",)
    assert e.on_registration(("r",), "c3", q, T0, rng).kind is Kind.TRADITIONAL
    assert e.on_registration(("other",), "c4", request("other"), T0, rng).kind is Kind.TRADITIONAL


def test_notifications_are_non_with_token_t_and_increasing_observe():
    e = engine(GroupPolicy(min_interval=0))
    obs = started(e)
    observes = [obs.observe]
    for i in range(5):
        now = T0 + 1 + i
        (render,) = e.on_change(("r",), now)
        assert render == Render(obs, RenderReason.CHANGE)
        (send,) = e.rendered(obs, content(f"v{i}"), now)
        assert isinstance(send, SendMulticast) and send.kind == "notification"
        m = send.message
        assert m.mtype == NON and m.token == obs.token and m.code == CONTENT
        assert m.payload == f"v{i}".encode() and m.opt.content_format == 0
        observes.append(m.opt.observe)
    assert observes == sorted(observes) and len(set(observes)) == 6
    # 'last_notif' follows the latest notification sent.
    ir = InformativeResponse.decode(e.informative_payload(obs, request(), T0 + 10))
    assert parse_message(ir.last_notif).payload == b"v4"


def test_changes_coalesce_inside_the_minimum_interval():
    e = engine(GroupPolicy(min_interval=3.0))
    obs = started(e)
    (r,) = e.on_change(("r",), T0 + 10)
    e.rendered(obs, content("a"), T0 + 10)
    assert e.on_change(("r",), T0 + 10.5) == []
    assert e.on_change(("r",), T0 + 11) == []
    assert e.on_change(("r",), T0 + 12.9) == []
    assert e.next_deadline() == pytest.approx(T0 + 13, abs=1e-6)
    assert e.poll(T0 + 12.99) == []
    (r,) = e.poll(T0 + 13)
    assert r.reason is RenderReason.CHANGE
    (send,) = e.rendered(obs, content("d"), T0 + 13)
    assert send.message.payload == b"d"
    assert obs.sent == 2  # four changes, two datagrams
    assert e.poll(T0 + 14) == []


def test_change_during_render_is_not_lost():
    e = engine(GroupPolicy(min_interval=0))
    obs = started(e)
    e.on_change(("r",), T0 + 1)
    assert e.on_change(("r",), T0 + 1.01) == []  # render in flight
    e.rendered(obs, content("a"), T0 + 1.02)
    (r,) = e.poll(T0 + 1.03)
    assert r.reason is RenderReason.CHANGE


def test_next_not_before_announced_inside_the_interval():
    e = engine(GroupPolicy(min_interval=10.0))
    obs = started(e)
    e.on_change(("r",), T0 + 1)
    e.rendered(obs, content("a"), T0 + 1)
    ir = InformativeResponse.decode(e.informative_payload(obs, request(), T0 + 3.5))
    assert ir.next_not_before == 7  # floor(11 - 3.5) whole seconds at least
    ir = InformativeResponse.decode(e.informative_payload(obs, request(), T0 + 20))
    assert ir.next_not_before is None


def test_latest_notification_refreshed_after_its_max_age():
    e = engine(GroupPolicy(min_interval=0))
    obs = started(e)  # INIT_NOTIF without Max-Age: 60 s
    assert e.next_deadline() == pytest.approx(T0 + 60, abs=1e-6)
    assert e.poll(T0 + 59.9) == []
    (r,) = e.poll(T0 + 60)
    assert r.reason is RenderReason.MAX_AGE
    (send,) = e.rendered(obs, content("same", max_age=10), T0 + 60)
    assert send.message.opt.max_age == 10
    assert e.next_deadline() == pytest.approx(T0 + 70, abs=1e-6)
    (r,) = e.poll(T0 + 70.5)
    assert r.reason is RenderReason.MAX_AGE


def test_max_age_zero_does_not_storm():
    e = engine(GroupPolicy(min_interval=0))
    obs = started(e)
    e.on_change(("r",), T0)
    e.rendered(obs, content("x", max_age=0), T0)
    assert e.next_deadline() >= T0 + 1.0


def test_cancellation_is_multicast_503_and_frees_token():
    e = engine()
    obs = started(e)
    send, cancelled = e.cancel_path(("r",), T0 + 5, "operator")
    assert isinstance(send, SendMulticast) and send.kind == "cancellation"
    m = send.message
    assert m.code == SERVICE_UNAVAILABLE and m.mtype == NON and m.token == obs.token
    assert m.payload == b"" and m.opt.observe is None
    assert isinstance(cancelled, Cancelled) and cancelled.reason == "operator"
    assert obs.token not in e.tokens and e.by_token(obs.token) is None
    assert e.observation(("r",)) is None
    assert e.cancel(obs, T0 + 6, "again") == []  # idempotent
    assert e.on_change(("r",), T0 + 7) == []
    # The next registration starts a new group observation.
    reg = e.on_registration(("r",), "c9", request(), T0 + 8, random.Random(5))
    assert reg.started and reg.observation is not obs


def test_scheduled_ending_is_announced_and_enforced():
    e = engine(GroupPolicy(duration=100.0))
    obs = started(e)
    ir = InformativeResponse.decode(e.informative_payload(obs, request(), T0))
    assert ir.ending == int(T0 + 100)
    assert e.next_deadline() == pytest.approx(T0 + 60, abs=1e-6)  # Max-Age refresh comes first
    actions = e.poll(T0 + 100)
    kinds = [type(a).__name__ for a in actions]
    assert kinds == ["SendMulticast", "Cancelled"] and actions[1].reason == "ending reached"


def test_resource_removal_and_shutdown_cancel():
    e = engine()
    e.add_resource(("s",), GroupPolicy())
    o1 = started(e)
    reg = e.on_registration(("s",), "c", request("s"), T0, random.Random(9))
    e.rendered(reg.observation, content("s"), T0)
    assert [type(a).__name__ for a in e.remove_resource(("r",), T0)] == ["SendMulticast", "Cancelled"]
    assert o1.cancelled and not e.is_group_observable(("r",))
    actions = e.shutdown(T0)
    assert [a.reason for a in actions if isinstance(a, Cancelled)] == ["shutdown"]
    assert len(e.tokens) == 0


def test_unsuccessful_render_cancels():
    e = engine()
    obs = started(e)
    e.on_change(("r",), T0 + 1)
    actions = e.rendered(obs, Message(code=NOT_FOUND), T0 + 1)
    assert actions[0].message.code == SERVICE_UNAVAILABLE and obs.cancelled


def test_render_of_init_failing_cancels():
    e = engine()
    reg = e.on_registration(("r",), "c1", request(), T0, random.Random(1))
    actions = e.render_failed(reg.observation, T0, "boom")
    assert isinstance(actions[1], Cancelled) and not reg.observation.ready


def test_token_space_reuse_only_after_release():
    class Same(random.Random):
        def getrandbits(self, k: int) -> int:
            return 0x7B

    space = TokenSpace(1)
    rng = Same()
    t1 = space.allocate(rng)
    assert t1 == b"\x7b"
    t2 = space.allocate(rng)  # collides with a live token: another one is chosen
    assert t2 != t1 and t2 in space
    space.release(t1)
    assert space.allocate(rng) == b"\x7b"
    for _ in range(254):
        space.allocate(rng)
    assert len(space) == 256
    with pytest.raises(TokenSpaceExhaustedError):
        space.allocate(rng)


def test_tokens_unique_across_live_group_observations():
    e = ServerEngine(SRV, GRP, token_length=1)
    rng = random.Random(0)
    tokens = set()
    for i in range(200):
        e.add_resource((f"r{i}",), GroupPolicy())
        m = Message(code=GET, observe=0, uri_path=[f"r{i}"])
        tokens.add(e.on_registration((f"r{i}",), "c", m, T0, rng).observation.token)
    assert len(tokens) == 200


def test_introspection_reports_ending_and_commits():
    e = engine(GroupPolicy(commitment=600))
    obs = started(e)
    assert e.introspect(b"\xff\xff\xff", T0) is None
    ir = InformativeResponse.decode(e.introspect(obs.token, T0 + 1))
    assert ir.ph_req == obs.ph_req and ir.tp_info.tpi_token == obs.token
    assert ir.ending == int(T0 + 601) and obs.committed_until == T0 + 601
    e2 = engine(GroupPolicy(duration=50))
    o2 = started(e2)
    assert InformativeResponse.decode(e2.introspect(o2.token, T0)).ending == int(T0 + 50)


def test_engine_refuses_bad_addresses():
    with pytest.raises(ValueError):
        ServerEngine(SRV, Endpoint.parse("[2001:db8::1]:61616"))
    with pytest.raises(ValueError):
        ServerEngine(SRV, Endpoint.parse("239.255.0.1:61616"))
    with pytest.raises(ValueError):
        GroupPolicy(group_after=0)
