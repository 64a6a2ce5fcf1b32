"""Issue 13 at the engine level with a fake clock: each test fails on the code before the fix."""

from __future__ import annotations

import logging
import random

import pytest
from aiocoap import CONTENT, Message

from mcobserve.engine.counting import CountingPolicy
from mcobserve.engine.server import (
    CongestionControl,
    GroupPolicy,
    NotificationRefused,
    ServerEngine,
)
from mcobserve.errors import NotificationTooLargeError
from mcobserve.wire import InformativeResponse

from .enginekit import GRP, SRV, T0, Driver, gaps, registration

UNLIMITED = CongestionControl(interval=0)

# -- item 5: the Max-Age refresh is a MUST and is never held back (draft §4.3, §13.1) -----------


def test_max_age_refresh_is_not_held_by_the_counting_budget():
    """While a counting round waits and the §13.1 budget is spent, the group still hears a
    notification at least once per Max-Age (+ the 1 s floor), carrying the current state."""
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    counting = CountingPolicy(max_unconfirmed=5, count_every=2)  # 452 s confirmation wait
    e.add_resource(("r",), GroupPolicy(min_interval=0, counting=counting))
    d = Driver(e, max_age=10)
    d.start(("r",))
    for i in range(600):  # 10 changes a second for a minute
        d.change(("r",), f"v{i}".encode(), T0 + 1 + i / 10)
    d.advance(T0 + 200)
    times = [T0] + [s.time for s in d.notifications()]
    assert max(gaps(times)) <= 10 + 1e-6
    assert len(d.notifications()) >= 5 + 19  # the budget, then one refresh per Max-Age at least
    # The refresh carried the latest state, not a stale one.
    late = [s for s in d.notifications() if s.time > T0 + 61]
    assert late and late[0].payload == b"v599"


def test_defaults_never_silence_a_busy_resource_longer_than_max_age():
    """The issue's run: default settings and min-interval 0, 120 changes at 10/s. The old engine sent
    50 notifications in 5.8 s, then nothing for the 452 s confirmation wait."""
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    d = Driver(e)  # no Max-Age option: 60 s
    d.start(("r",))
    for i in range(120):
        d.change(("r",), f"v{i}".encode(), T0 + 1 + i / 10)
    d.advance(T0 + 300)
    times = [s.time for s in d.notifications()]
    assert max(gaps([T0, *times, T0 + 300])) <= 60 + 1e-6
    last_change = T0 + 1 + 119 / 10
    assert any(s.payload == b"v119" and s.time <= last_change + 60 for s in d.notifications())


def test_default_engine_delivers_the_latest_state_within_the_interval():
    e = ServerEngine(SRV, GRP)  # draft defaults: 3 s per resource, 1 per 3 s per group
    e.add_resource(("r",), GroupPolicy())
    d = Driver(e)
    d.start(("r",))
    for i in range(120):
        d.change(("r",), f"v{i}".encode(), T0 + 1 + i / 10)
    d.advance(T0 + 30)
    sent = d.notifications()
    assert sent[-1].payload == b"v119" and sent[-1].time <= T0 + 12.9 + 3 + 1e-6
    assert min(gaps([s.time for s in sent])) >= 3 - 1e-6


# -- item 8: congestion control per multicast group (draft §4.4) ---------------------------------


def _busy(n: int, congestion: CongestionControl | None, seconds: float = 60.0) -> Driver:
    kw = {} if congestion is None else {"congestion": congestion}
    e = ServerEngine(SRV, GRP, **kw)
    paths = [(f"r{i}",) for i in range(n)]
    d = Driver(e)
    for p in paths:
        e.add_resource(p, GroupPolicy(min_interval=0))  # no per-resource limit: only the group's
        d.start(p)
    step = 0
    t = T0 + 1
    while t < T0 + seconds:
        for p in paths:
            d.change(p, f"{p[0]}-{step}".encode(), t)
        step += 1
        t += 0.5
    d.values_at_end = dict(d.values)  # type: ignore[attr-defined]
    d.advance(T0 + seconds + 3 * n + 3)
    return d


def test_one_multicast_notification_every_3_s_per_group_by_default():
    """Three busy resources share a group: the group hears at most one notification every 3 s
    (the old engine applied the interval per resource: three every 3 s)."""
    d = _busy(3, None)
    times = [s.time for s in d.notifications()]
    assert min(gaps(times)) >= 3 - 1e-6
    # Each resource got its turn (first come, first served), and the latest state of each went out.
    for p, value in d.values_at_end.items():  # type: ignore[attr-defined]
        mine = d.notifications(p)
        assert len(mine) >= 5
        assert mine[-1].payload == value
    assert len(times) <= (times[-1] - times[0]) / 3 + 1


def test_burst_is_documented_and_enforced():
    d = _busy(4, CongestionControl(interval=3.0, burst=3), seconds=30)
    times = [s.time for s in d.notifications()]
    # After the quiet start three go back to back, then one per 3 s on average.
    assert times[:3] == [T0 + 1] * 3
    for i in range(len(times)):
        window = [t for t in times if times[i] <= t < times[i] + 30]
        assert len(window) <= 3 + 10
    for p, value in d.values_at_end.items():  # type: ignore[attr-defined]
        assert d.notifications(p)[-1].payload == value


def test_refresh_goes_out_even_when_the_group_budget_is_spent():
    """Many resources with a short Max-Age: the MUST refresh wins over the SHOULD rate."""
    e = ServerEngine(SRV, GRP)
    d = Driver(e, max_age=4)
    for i in range(5):
        e.add_resource((f"r{i}",), GroupPolicy())
        d.start((f"r{i}",))
    d.advance(T0 + 60)
    for i in range(5):
        times = [T0] + [s.time for s in d.notifications((f"r{i}",))]
        assert max(gaps(times)) <= 4 + 1e-6
    assert e.budget(GRP).over_budget > 0


def test_zero_interval_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="mcobserve.engine.server"):
        ServerEngine(SRV, GRP, congestion=CongestionControl(interval=0))
    assert any("congestion control is off" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mcobserve.engine.server"):
        ServerEngine(SRV, GRP)
    assert not caplog.records


def test_congestion_control_validation():
    with pytest.raises(ValueError):
        CongestionControl(interval=-1)
    with pytest.raises(ValueError):
        CongestionControl(burst=0)
    with pytest.raises(ValueError):
        ServerEngine(SRV, GRP, max_message_size=10)


def test_oversized_multicast_notification_is_refused_not_sent():
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    d = Driver(e)
    obs = d.start(("r",), b"small")
    observe = obs.observe
    d.change(("r",), b"x" * 1300, T0 + 1)
    assert d.notifications() == []
    (refused,) = d.refused
    assert isinstance(refused, NotificationRefused) and refused.observation is obs
    assert isinstance(refused.error, NotificationTooLargeError)
    assert "1232" in str(refused.error) and "/r" in str(refused.error)
    assert obs.observe == observe and obs.latest.payload == b"small"  # nothing spent on it
    # Not a loop: the refresh tries again one Max-Age later, and a fitting change goes out.
    d.advance(T0 + 30)
    assert len(d.refused) == 1
    d.change(("r",), b"fits", T0 + 31)
    assert [s.payload for s in d.notifications()] == [b"fits"]
    # A limit of the operator's choice.
    e2 = ServerEngine(SRV, GRP, congestion=UNLIMITED, max_message_size=200)
    e2.add_resource(("r",), GroupPolicy(min_interval=0))
    d2 = Driver(e2)
    d2.start(("r",))
    d2.change(("r",), b"y" * 190, T0 + 1)
    assert d2.notifications() == [] and len(d2.refused) == 1


def test_informative_response_leaves_out_last_notif_that_would_not_fit():
    for size, included in ((100, True), (1100, True), (1200, False)):
        e = ServerEngine(SRV, GRP)
        e.add_resource(("r",), GroupPolicy())
        d = Driver(e)
        obs = d.start(("r",), b"z" * size)
        response = e.informative_response(obs, registration(("r",)), T0)
        ir = InformativeResponse.decode(response.payload)
        assert (ir.last_notif is not None) is included
        assert ir.tp_info.tpi_token == obs.token
        assert 4 + 8 + 5 + len(response.payload) <= e.max_message_size


def test_content_of_refused_is_not_an_exception_path():
    """A render answered with a large error code still ends the observation (RFC 7641 §3.2)."""
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    d = Driver(e, render=lambda p: Message(code=CONTENT, payload=b"ok"))
    obs = d.start(("r",))
    assert obs.ready


# -- item 9: a released Token is quarantined (draft §4.5, §13) ------------------------------------


class _SameDraw(random.Random):
    """A random source that always draws the same Token value: the worst case for reuse."""

    def getrandbits(self, k: int) -> int:
        return 0x5A


def test_token_is_not_handed_to_the_next_group_observation_after_cancellation():
    """The old engine handed the cancelled T straight to the next group observation when the draw
    came out the same (a client that missed the NON cancellation then takes its notifications)."""
    e = ServerEngine(SRV, GRP, token_length=1)
    e.add_resource(("r",), GroupPolicy())
    rng = _SameDraw(1)
    first = e.on_registration(("r",), "c1", registration(("r",)), T0, rng).observation
    e.rendered(first, Message(code=CONTENT, payload=b"a"), T0)
    assert first.token == b"\x5a"
    e.cancel(first, T0 + 1, "operator")
    second = e.on_registration(("r",), "c2", registration(("r",)), T0 + 2, rng).observation
    assert second.token != first.token
    assert e.tokens.quarantined(first.token, T0 + 2)
    e.rendered(second, Message(code=CONTENT, payload=b"b"), T0 + 2)
    e.cancel(second, T0 + 3, "operator")
    # After Max-Age (60 s) + MAX_TRANSMIT_WAIT (93 s) the value is free again.
    third = e.on_registration(("r",), "c3", registration(("r",)), T0 + 1 + 153, rng).observation
    assert third.token == first.token


def test_quarantine_lasts_max_age_plus_max_transmit_wait_and_yields_when_nothing_else_is_free():
    from mcobserve.engine.server import TokenSpace

    space = TokenSpace(1)
    rng = random.Random(2)
    tokens = [space.allocate(rng, T0) for _ in range(256)]
    assert len(set(tokens)) == 256
    for t in tokens[:10]:
        space.release(t, T0, 153.0)
    # Only quarantined values are free: the one whose quarantine ends first is reused, counted.
    again = space.allocate(rng, T0 + 1)
    assert again == tokens[0] and space.reused_early == 1
    # After the quarantine, values are free again without counting as early reuse.
    space.release(tokens[20], T0 + 2, 153.0)
    assert space.allocate(rng, T0 + 160) in tokens[1:10] and space.reused_early == 1
    # The engine's quarantine is the observation's Max-Age plus MAX_TRANSMIT_WAIT.
    e = ServerEngine(SRV, GRP, token_length=1)
    e.add_resource(("r",), GroupPolicy())
    d = Driver(e, max_age=20)
    obs = d.start(("r",))
    e.cancel(obs, T0 + 5, "operator")
    assert e.tokens.quarantined(obs.token, T0 + 5 + 20 + 93 - 0.01)
    assert not e.tokens.quarantined(obs.token, T0 + 5 + 20 + 93)


# -- item 1: link-local addresses (draft §4.2, §5.1, §3) -----------------------------------------


@pytest.mark.parametrize(
    ("server", "group", "why"),
    [
        ("[fe80::1]", "[ff35::23]:61616", "link-local"),
        ("169.254.0.7", "239.255.0.1", "link-local"),
        ("[fec0::1]", "[ff35::23]", "site-local"),
        ("[2001:db8::1]", "[ff02::23]", "link-local"),
        ("[2001:db8::1]", "[ff01::23]", "interface-local"),
        ("[2001:db8::1]", "[ff05::fd]", "All CoAP Nodes"),
        ("[2001:db8::1]", "[ff03::fd]:61616", "All CoAP Nodes"),
        ("10.0.0.1", "224.0.1.187", "All CoAP Nodes"),
        ("10.0.0.1", "224.0.0.5", "link-local"),
        ("[ff35::1]", "[ff35::23]", "multicast"),
        ("[::]", "[ff35::23]", "unspecified"),
    ],
)
def test_server_refuses_unusable_addresses_with_one_line_reason(server, group, why):
    from mcobserve.engine.common import Endpoint
    from mcobserve.errors import UnusableAddressError

    with pytest.raises(UnusableAddressError) as err:
        ServerEngine(Endpoint.parse(server), Endpoint.parse(group))
    assert why in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI turns it into its usage error


def test_usable_addresses_are_accepted():
    from mcobserve.engine.common import Endpoint

    for server, group in (
        ("[2001:db8::1]", "[ff35:30:2001:db8::23]:61616"),
        ("[fd00:db8:1::1]", "[ff05::23]"),
        ("10.78.0.1", "239.255.0.23"),
        ("[2001:db8::1]", "[ff15::fd]"),  # a transient group that merely ends in fd
    ):
        ServerEngine(Endpoint.parse(server), Endpoint.parse(group))


def test_link_local_registrant_is_never_shifted_into_a_group_observation():
    import ipaddress

    from mcobserve.engine.server import Kind

    e = ServerEngine(SRV, GRP)
    e.add_resource(("r",), GroupPolicy(group_after=2))
    rng = random.Random(1)
    ll = ipaddress.ip_address("fe80::1")
    ll4 = ipaddress.ip_address("169.254.3.4")
    glob = ipaddress.ip_address("2001:db8::7")
    reg = e.on_registration(("r",), "ll", registration(("r",)), T0, rng, client_address=ll)
    assert reg.kind is Kind.TRADITIONAL
    reg = e.on_registration(("r",), "ll4", registration(("r",)), T0, rng, client_address=ll4)
    assert reg.kind is Kind.TRADITIONAL
    # Two link-local observers do not reach group_after = 2: they are not candidates for a shift.
    reg = e.on_registration(("r",), "g1", registration(("r",)), T0, rng, client_address=glob)
    assert reg.kind is Kind.TRADITIONAL
    reg = e.on_registration(("r",), "g2", registration(("r",)), T0, rng, client_address=glob)
    assert reg.kind is Kind.GROUP and reg.started
    assert [k for k, _ in reg.shifted] == ["g1"]  # never the link-local ones
    assert e.traditional_count(("r",)) == 2  # they stay traditional observers
    # With the group observation running, a link-local registrant still gets a traditional one.
    reg = e.on_registration(("r",), "ll2", registration(("r",)), T0 + 1, rng, client_address=ll)
    assert reg.kind is Kind.TRADITIONAL and reg.observation is None
    assert e.observation(("r",)).count == 2


def test_client_never_registers_at_a_link_local_server():
    import ipaddress

    from mcobserve.engine.client import registration_target_problem

    assert "link-local" in registration_target_problem(ipaddress.ip_address("fe80::1"))
    assert "link-local" in registration_target_problem(ipaddress.ip_address("169.254.1.1"))
    assert registration_target_problem(ipaddress.ip_address("2001:db8::1")) is None
    assert registration_target_problem(ipaddress.ip_address("10.0.0.1")) is None


# -- item 4: 'sec_gp' without 'join_uri' is ignored (draft §9.1) ----------------------------------


def test_sec_gp_without_join_uri_is_ignored_and_the_observation_followed_unprotected():
    from mcobserve.engine.client import GroupObservationClient, needs_group_security

    e = ServerEngine(SRV, GRP)
    e.add_resource(("r",), GroupPolicy())
    d = Driver(e)
    obs = d.start(("r",), b"plain")
    informative = InformativeResponse.decode(e.informative_payload(obs, registration(("r",)), T0))
    informative.sec_gp = "someGroup"
    assert needs_group_security(informative, protected_phantom=False) is False
    informative.join_uri = "coap://gm.example/ace-group/someGroup"
    assert needs_group_security(informative, protected_phantom=False) is True
    informative.join_uri = None
    client = GroupObservationClient(registration(("r",)))
    first = client.join(InformativeResponse.decode(informative.encode()), T0)
    assert first.payload == b"plain" and client.joined
    only_join = InformativeResponse(join_uri="coap://gm.example/x")
    assert needs_group_security(only_join, protected_phantom=False) is False


# -- item 10: a client notices a dead group observation -------------------------------------------


def _joined_client(max_age: int | None = None):
    from mcobserve.engine.client import GroupObservationClient

    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    d = Driver(e, max_age=max_age)
    obs = d.start(("r",), b"a")
    client = GroupObservationClient(registration(("r",)))
    client.join(InformativeResponse.decode(e.informative_payload(obs, registration(("r",)), T0)), T0)
    return e, d, obs, client


def test_client_silence_deadline_follows_max_age():
    from aiocoap import NON

    from mcobserve.engine.client import SILENCE_MARGIN, Accepted

    _, d, obs, client = _joined_client(max_age=20)
    assert client.silence_deadline() == pytest.approx(T0 + 20 + SILENCE_MARGIN)
    assert not client.is_silent(T0 + 29) and client.is_silent(T0 + 30)
    # The server refreshes at Max-Age: the client never hits its deadline while the server lives.
    d.advance(T0 + 200)
    times = [s.time for s in d.notifications()]
    assert times and max(gaps([T0, *times])) <= 20 + 1e-6
    for s in d.notifications():
        m = Message(code=CONTENT, payload=s.payload, observe=s.observe, max_age=20)
        m.mtype, m.token = NON, obs.token
        assert client.is_silent(s.time) is False
        assert isinstance(client.on_multicast(m, SRV, s.time), Accepted)
    assert client.silence_deadline() == pytest.approx(times[-1] + 20 + SILENCE_MARGIN)
    # Server gone (restart, lost cancellation): silence is noticed after Max-Age + margin (item 15).
    assert client.is_silent(times[-1] + 20 + SILENCE_MARGIN)
    # Max-Age 0: the server's 1 s floor applies.
    _, _, _, c0 = _joined_client(max_age=0)
    assert c0.silence_deadline() == pytest.approx(T0 + 1 + SILENCE_MARGIN)


def test_client_silence_is_shorter_than_the_token_quarantine():
    from mcobserve.engine.client import SILENCE_MARGIN
    from mcobserve.engine.server import MAX_TRANSMIT_WAIT

    assert SILENCE_MARGIN < MAX_TRANSMIT_WAIT


# -- item 13: deregistration (RFC 7641 §3.6, draft §5.5) -----------------------------------------


def test_get_with_observe_1_lowers_count_and_keeps_the_group_observation():
    from mcobserve.engine.client import GroupObservationClient

    e = ServerEngine(SRV, GRP)
    e.add_resource(("r",), GroupPolicy())
    rng = random.Random(3)
    for i in range(3):
        e.on_registration(("r",), f"c{i}", registration(("r",)), T0, rng)
    obs = e.observation(("r",))
    e.rendered(obs, Message(code=CONTENT, payload=b"x"), T0)
    assert obs.count == 3
    assert e.on_deregistration(("r",), "c1") is obs
    assert obs.count == 2 and not obs.cancelled
    for _ in range(5):
        e.on_deregistration(("r",), "c1")
    assert obs.count == 0 and not obs.cancelled  # never negative; rough counting decides the rest
    assert e.on_deregistration(("other",), "c1") is None
    # The client side forgets: later notifications with T are dropped.
    client = GroupObservationClient(registration(("r",)))
    client.join(InformativeResponse.decode(e.informative_payload(obs, registration(("r",)), T0)), T0)
    client.leave()
    assert not client.joined and client.silence_deadline() is None


# -- item 14: critical options and format errors (RFC 7252 §5.4.1, §3) ---------------------------


def test_server_answers_unknown_critical_option_with_4_02():
    from aiocoap import BAD_OPTION, CON, NON
    from aiocoap.optiontypes import OpaqueOption

    from mcobserve.engine.common import bad_option_response

    req = registration(("r",))
    req.mtype = CON
    assert bad_option_response(req) is None
    req.opt.add_option(OpaqueOption(65001, b"\x01"))
    resp = bad_option_response(req)
    assert resp.code == BAD_OPTION and b"65001" in resp.payload and resp.opt.no_response is None
    req.mtype = NON  # a NON request is rejected: nothing on the wire
    assert bad_option_response(req).opt.no_response == 26
    elective = registration(("r",))
    elective.opt.add_option(OpaqueOption(65000, b"\x01"))
    assert bad_option_response(elective) is None


def _wire_notification(obs, observe: int, payload: bytes, *extra) -> bytes:
    from aiocoap import NON

    m = Message(code=CONTENT, payload=payload, observe=observe)
    for option in extra:
        m.opt.add_option(option)
    m.mtype, m.mid, m.token = NON, 0x77, obs.token
    return m.encode()


def test_client_drops_unknown_critical_option_and_empty_payload_marker_keeping_the_baseline():
    from aiocoap.optiontypes import OpaqueOption

    from mcobserve.engine.client import Accepted, Dropped

    _, _, obs, client = _joined_client()
    base = obs.observe
    # An unknown critical option: dropped, and the genuine notification with the same Observe is not lost.
    raw = _wire_notification(obs, base + 1, b"forged", OpaqueOption(65001, b"\x01"))
    verdict = client.on_multicast(Message.decode(raw), SRV, T0 + 1, raw=raw)
    assert isinstance(verdict, Dropped) and "critical" in verdict.reason
    # A payload marker followed by no payload: a format error (aiocoap's decoder accepts it).
    raw = _wire_notification(obs, base + 1, b"") + b"\xff"
    assert Message.decode(raw).payload == b""
    verdict = client.on_multicast(Message.decode(raw), SRV, T0 + 1, raw=raw)
    assert isinstance(verdict, Dropped) and "payload marker" in verdict.reason
    raw = _wire_notification(obs, base + 1, b"genuine")
    verdict = client.on_multicast(Message.decode(raw), SRV, T0 + 1, raw=raw)
    assert isinstance(verdict, Accepted) and verdict.notification.payload == b"genuine"


# -- item 7: the shift never loses the informative response (draft §4.2) --------------------------


def test_notification_buffer_never_overwrites_the_informative_response():
    """aiocoap's iterator keeps only the latest event: the 5.03 that shifts a slow reader was
    replaced by the end of the observation. The buffer coalesces only successful notifications."""
    from aiocoap import SERVICE_UNAVAILABLE

    from mcobserve.engine.client import NotificationBuffer, informative_response_payload

    b = NotificationBuffer()
    for i in range(5):
        b.push(Message(code=CONTENT, payload=f"n{i}".encode(), observe=i))
    assert len(b) == 1 and b.coalesced == 4  # observe is lossy: the latest state is kept
    shift = Message(code=SERVICE_UNAVAILABLE, content_format=65000, max_age=0, payload=b"\xa0")
    b.push(shift)
    end = RuntimeError("observation cancelled")
    b.push(end)
    b.push(Message(code=CONTENT, payload=b"late", observe=9))
    first = b.pop()
    assert first.payload == b"n4"
    assert informative_response_payload(b.pop()) == b"\xa0"
    assert b.pop() is end
    assert b.pop().payload == b"late" and b.pop() is None


# -- item 11: stale state after a late informative response ---------------------------------------


def test_late_informative_response_asks_for_revalidation_and_newer_state_wins():
    from aiocoap import NON, VALID

    from mcobserve.engine.client import REVALIDATE_AFTER, GroupObservationClient, Via

    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    d = Driver(e)
    obs = d.start(("r",), b"old")
    payload = e.informative_payload(obs, registration(("r",)), T0)  # composed, then lost once
    d.change(("r",), b"new", T0 + 1)  # the group hears it; the client has not joined yet

    prompt = GroupObservationClient(registration(("r",)))
    prompt.join(InformativeResponse.decode(payload), T0 + 0.05, requested_at=T0)
    assert not prompt.needs_revalidation  # answered within REVALIDATE_AFTER: nothing extra

    late = GroupObservationClient(registration(("r",)))
    first = late.join(InformativeResponse.decode(payload), T0 + 2.5, requested_at=T0)
    assert first.payload == b"old" and late.needs_revalidation and 2.5 > REVALIDATE_AFTER
    fresh = late.revalidated(Message(code=CONTENT, payload=b"new"), T0 + 2.51)
    assert fresh.payload == b"new" and fresh.via is Via.REVALIDATED
    assert not late.needs_revalidation

    # Unchanged (2.03, or the same representation): nothing to deliver.
    again = GroupObservationClient(registration(("r",)))
    again.join(InformativeResponse.decode(payload), T0 + 3, requested_at=T0)
    assert again.revalidated(Message(code=VALID), T0 + 3.1) is None
    again.join(InformativeResponse.decode(payload), T0 + 3, requested_at=T0)
    assert again.revalidated(Message(code=CONTENT, payload=b"old"), T0 + 3.1) is None
    # A multicast notification accepted meanwhile is at least as new: the GET's answer is dropped.
    again.join(InformativeResponse.decode(payload), T0 + 3, requested_at=T0)
    m = Message(code=CONTENT, payload=b"newest", observe=obs.observe + 5)
    m.mtype, m.token = NON, obs.token
    again.on_multicast(m, SRV, T0 + 3.05)
    assert again.revalidated(Message(code=CONTENT, payload=b"new"), T0 + 3.1) is None


# -- item 12: Block2, Uri-Host and ETag on the registration (draft §4.2, RFC 7959) ---------------


def test_registration_with_small_block2_gets_a_traditional_observation():
    from mcobserve.engine.server import Kind

    e = ServerEngine(SRV, GRP)
    e.add_resource(("r",), GroupPolicy())
    rng = random.Random(5)
    small = registration(("r",), block2=(0, False, 2))  # 64-byte blocks
    assert e.on_registration(("r",), "b64", small, T0, rng).kind is Kind.TRADITIONAL
    assert e.observation(("r",)) is None
    # The group observation starts for a client without Block2 ...
    d = Driver(e)
    obs = d.start(("r",), b"x" * 500, key="plain")
    # ... and a later small-block client still stays traditional: the informative response
    # (with a 500-byte 'last_notif') would not come in 64-byte blocks.
    assert len(e.informative_payload(obs, small, T0)) > 64
    assert e.on_registration(("r",), "b64b", small, T0, rng).kind is Kind.TRADITIONAL
    assert e.on_registration(("r",), "b64b", small, T0, rng).observation is None
    # Blocks as large as anything the server sends (1024 < 1232: no; szx 7 is BERT, not UDP).
    big = registration(("r",), block2=(0, False, 6))
    assert e.on_registration(("r",), "b1024", big, T0, rng).kind is Kind.TRADITIONAL
    e2 = ServerEngine(SRV, GRP, max_message_size=1024)
    e2.add_resource(("r",), GroupPolicy())
    assert e2.on_registration(("r",), "b1024", big, T0, rng).kind is Kind.GROUP
    later_block = registration(("r",), block2=(1, False, 6))
    assert e2.on_registration(("r",), "n1", later_block, T0, rng).kind is Kind.TRADITIONAL


def test_uri_host_and_etag_registrations_join_with_ph_req():
    from mcobserve.engine.client import GroupObservationClient
    from mcobserve.engine.server import Kind

    e = ServerEngine(SRV, GRP)
    e.add_resource(("r",), GroupPolicy())
    d = Driver(e)
    obs = d.start(("r",), b"v")
    rng = random.Random(6)
    for opts in ({"uri_host": "sensor.example"}, {"etag": b"\x01\x02"}):
        req = registration(("r",), **opts)
        reg = e.on_registration(("r",), str(opts), req, T0, rng)
        assert reg.kind is Kind.GROUP and reg.observation is obs
        ir = InformativeResponse.decode(e.informative_payload(obs, req, T0))
        assert ir.ph_req is not None  # differs from the phantom request: 'ph_req' MUST be there (§4.2)
        client = GroupObservationClient(req)
        first = client.join(ir, T0)  # step 3: Uri-Host and ETag do not select another representation
        assert client.joined and first.payload == b"v"


# -- item 2: the client stops using expired self-managed keying material (App. C) -----------------


def test_client_stops_accepting_notifications_under_expired_material():
    import os

    from aiocoap import NON

    from mcobserve.engine.client import Accepted, Dropped, GroupObservationClient
    from mcobserve.oscore import SelfManagedGroup
    from mcobserve.oscore.groupobs import ClientGroupSecurity, SelfManagedGroupSecurity

    security = SelfManagedGroupSecurity(SelfManagedGroup.create(os.urandom), lifetime=50, now=T0)
    e = ServerEngine(SRV, GRP, security=security, congestion=UNLIMITED, renew_margin=0.0)
    e.add_resource(("r",), GroupPolicy(min_interval=0, counting=None))
    obs = e.on_registration(
        ("r",), "c", registration(("r",)), T0, random.Random(2), protected=True
    ).observation
    e.rendered(obs, Message(code=CONTENT, payload=b"init", max_age=600), T0)
    payload = e.informative_payload(obs, registration(("r",)), T0 + 10)
    ir = InformativeResponse.decode(payload)
    assert ir.exi == 40 and ir.exp == int(T0 + 50)

    def wire(m: Message) -> Message:
        out = Message(code=m.code, payload=m.payload)
        for option in m.opt.option_list():
            out.opt.add_option(option)
        out.mtype, out.mid, out.token = NON, 0x99, m.token
        return Message.decode(out.encode())

    # 'exi' counts from the client's own clock at reception (here 5 s late: expiry at T0 + 45).
    c = GroupObservationClient(registration(("r",)), security=ClientGroupSecurity())
    c.join(c.parse(payload), T0 + 5, protected_channel=True)
    assert c.material_expires == pytest.approx(T0 + 45)
    assert c.silence_deadline() == pytest.approx(T0 + 45)  # earlier than Max-Age 600 + margin
    e.on_change(("r",), T0 + 20)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"ok", max_age=600), T0 + 20)
    assert isinstance(c.on_multicast(wire(send.message), SRV, T0 + 20), Accepted)
    e.on_change(("r",), T0 + 46)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"late", max_age=600), T0 + 46)
    verdict = c.on_multicast(wire(send.message), SRV, T0 + 46)
    assert isinstance(verdict, Dropped) and "expired" in verdict.reason
    assert c.material_expired(T0 + 46)
    # With a synchronised clock, 'exp' is the expiry (App. C: MUST).
    synced = GroupObservationClient(
        registration(("r",)), security=ClientGroupSecurity(), clock_synchronized=True
    )
    synced.join(synced.parse(payload), T0 + 5, protected_channel=True)
    assert synced.material_expires == T0 + 50
    # Unprotected group observations have no keying material to expire.
    plain = GroupObservationClient(registration(("r",)))
    plain_ir = InformativeResponse.decode(payload)
    plain_ir.gp_material = None
    assert plain._expiry(plain_ir, T0) is None


# -- item 3: an announced 'ending' is kept (App. A, App. C, §4.2) ---------------------------------


def _secured_engine(lifetime: float, duration: float | None, renew_keys: bool = True):
    import os

    from mcobserve.oscore import SelfManagedGroup
    from mcobserve.oscore.groupobs import SelfManagedGroupSecurity

    security = SelfManagedGroupSecurity(SelfManagedGroup.create(os.urandom), lifetime=lifetime, now=T0)
    e = ServerEngine(SRV, GRP, security=security, congestion=UNLIMITED, renew_keys=renew_keys)
    e.add_resource(("r",), GroupPolicy(min_interval=0, counting=None, duration=duration))
    reg = e.on_registration(("r",), "c", registration(("r",)), T0, random.Random(2), protected=True)
    e.rendered(reg.observation, Message(code=CONTENT, payload=b"x", max_age=600), T0)
    return e, reg.observation


def _wire(m: Message) -> Message:
    from aiocoap import NON

    out = Message(code=m.code, payload=m.payload)
    for option in m.opt.option_list():
        out.opt.add_option(option)
    out.mtype, out.mid, out.token = NON, 0x99, m.token
    return Message.decode(out.encode())


def test_keying_material_is_renewed_in_place_and_the_ending_kept():
    """The old engine announced ending = start + duration (T0 + 1000) and cancelled at T0 + 90,
    when the keying material (lifetime 100, renew margin 10) ran out. Now the server sends the next
    material in a protected multicast 5.03 (App. C) and keeps the group observation to its ending."""
    from mcobserve.engine.client import Accepted, GroupObservationClient, Renewed
    from mcobserve.engine.server import Cancelled, SendMulticast
    from mcobserve.oscore.groupobs import ClientGroupSecurity

    e, obs = _secured_engine(lifetime=100, duration=1000)
    first = e.informative_payload(obs, registration(("r",)), T0)
    ir = InformativeResponse.decode(first)
    assert ir.ending == int(T0 + 1000) and ir.exp == int(T0 + 100)
    early = GroupObservationClient(registration(("r",)), security=ClientGroupSecurity())
    early.join(early.parse(first), T0, protected_channel=True)
    assert early.material_expires == pytest.approx(T0 + 100)
    assert e.next_deadline() == pytest.approx(T0 + 90)
    (renewal,) = e.poll(T0 + 90)
    assert isinstance(renewal, SendMulticast) and renewal.kind == "renewal"
    m = renewal.message
    assert m.token == obs.token and m.opt.observe is None and m.opt.oscore  # protected, own PIV
    assert m.code.dotted == "2.04" and obs.renewals == 1 and not obs.cancelled  # 5.03 inside OSCORE
    verdict = early.on_multicast(_wire(m), SRV, T0 + 90.1)
    assert verdict == Renewed(True)
    assert early.material_expires == pytest.approx(T0 + 90.1 + 100, abs=1)
    # Notifications under the new material reach the early client after the old material expired.
    e.on_change(("r",), T0 + 150)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"after", max_age=600), T0 + 150)
    verdict = early.on_multicast(_wire(send.message), SRV, T0 + 150)
    assert isinstance(verdict, Accepted) and verdict.notification.payload == b"after"
    # A client joining after the renewal verifies the same phantom request and 'last_notif'.
    late_payload = e.informative_payload(obs, registration(("r",)), T0 + 151)
    late_ir = InformativeResponse.decode(late_payload)
    assert late_ir.gp_material[6] != ir.gp_material[6]  # new Gid
    late = GroupObservationClient(registration(("r",)), security=ClientGroupSecurity())
    got = late.join(late.parse(late_payload), T0 + 151, protected_channel=True)
    assert got.payload == b"after"
    e.on_change(("r",), T0 + 160)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"both", max_age=600), T0 + 160)
    for c in (early, late):
        verdict = c.on_multicast(_wire(send.message), SRV, T0 + 160)
        assert isinstance(verdict, Accepted) and verdict.notification.payload == b"both"
    # Renewed again every lifetime, and ended exactly at the announced ending.
    d = Driver(e, max_age=600, values={("r",): b"x"})
    d.now = T0 + 160
    d.advance(T0 + 999.9)
    assert not obs.cancelled and obs.renewals >= 9
    cancelled = [a for a in e.poll(T0 + 1000) if isinstance(a, Cancelled)]
    assert [c.reason for c in cancelled] == ["ending reached"]


def test_without_renewal_the_announced_ending_is_what_the_material_can_keep():
    from mcobserve.engine.server import Cancelled

    e, obs = _secured_engine(lifetime=100, duration=1000, renew_keys=False)
    ir = InformativeResponse.decode(e.informative_payload(obs, registration(("r",)), T0))
    assert ir.ending == int(T0 + 90) and ir.exp == int(T0 + 100)
    d = Driver(e)
    d.advance(T0 + 89.9)
    assert not obs.cancelled
    (cancelled,) = [a for a in e.poll(T0 + 90) if isinstance(a, Cancelled)]
    assert cancelled.reason == "ending reached"
    e2, obs2 = _secured_engine(lifetime=100, duration=30, renew_keys=False)
    assert InformativeResponse.decode(e2.informative_payload(obs2, None, T0)).ending == int(T0 + 30)


def test_introspection_commits_only_what_the_keying_material_can_keep():
    e, obs = _secured_engine(lifetime=100, duration=None, renew_keys=False)
    ir = InformativeResponse.decode(e.introspect(obs.token, T0 + 5))
    assert ir.ending == int(T0 + 90)  # not T0 + 5 + 3600
    d = Driver(e)
    d.advance(T0 + 89.9)
    assert not obs.cancelled
    d.advance(T0 + 90)
    assert obs.cancelled
    # With renewal the full commitment is kept.
    e2, obs2 = _secured_engine(lifetime=100, duration=None)
    ir2 = InformativeResponse.decode(e2.introspect(obs2.token, T0 + 5))
    assert ir2.ending == int(T0 + 5 + 3600)
    Driver(e2, max_age=600, values={("r",): b"x"}).advance(T0 + 3000)
    assert not obs2.cancelled and obs2.renewals >= 30
