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
