"""The server engine schedules with a deadline heap: no per-event walk over every group observation.

DESIGN.md ("the engine schedules with a deadline heap") and issue 13: ``poll``, ``next_deadline`` and
``on_change`` must cost O(log n) in the number of group observations, so that a broker with thousands
of idle topics pays per event what a server with one resource pays.
"""

from __future__ import annotations

import random

import pytest
from aiocoap import CONTENT, GET, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcobserve.engine.common import Endpoint
from mcobserve.engine.counting import ObserverCounter
from mcobserve.engine.server import (
    CongestionControl,
    GroupObservation,
    GroupPolicy,
    Render,
    RenderReason,
    ServerEngine,
)

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
T0 = 1_700_000_000.0


def _request(path: tuple[str, ...]) -> Message:
    m = Message(code=GET, observe=0, uri_path=path)
    m.token = b"\x4a"
    return m


def _engine_with(n: int, policy: GroupPolicy, **kw) -> tuple[ServerEngine, list[GroupObservation]]:
    e = ServerEngine(SRV, GRP, token_length=4, **kw)
    rng = random.Random(3)
    observations = []
    for i in range(n):
        path = (f"r{i}",)
        e.add_resource(path, policy)
        reg = e.on_registration(path, ("c", i), _request(path), T0, rng)
        e.rendered(reg.observation, Message(code=CONTENT, payload=b"x", max_age=600), T0)
        observations.append(reg.observation)
    return e, observations


class _Counting:
    """Counts calls of the per-observation methods a walk over all observations would make."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for cls, name in ((GroupObservation, "next_deadline"), (ObserverCounter, "finish")):
            original = getattr(cls, name)

            def wrapped(self_, *a, _original=original, **kw):
                self.calls += 1
                return _original(self_, *a, **kw)

            monkeypatch.setattr(cls, name, wrapped)

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def test_poll_next_deadline_and_on_change_do_not_walk_idle_observations(monkeypatch):
    e, observations = _engine_with(2000, GroupPolicy(min_interval=3.0))
    counting = _Counting(monkeypatch)
    assert e.next_deadline() == pytest.approx(T0 + 600)
    assert e.poll(T0 + 10) == []
    assert counting.take() <= 4  # the old engine walked all 2,000 observations here
    obs = observations[1234]
    (render,) = e.on_change(obs.path, T0 + 10)
    assert render == Render(obs, RenderReason.CHANGE)
    e.rendered(obs, Message(code=CONTENT, payload=b"y", max_age=600), T0 + 10)
    assert e.on_change(obs.path, T0 + 11) == []  # coalesced, due at T0 + 13
    assert e.next_deadline() == pytest.approx(T0 + 13)
    assert counting.take() <= 8
    (render,) = e.poll(T0 + 13)
    assert render.observation is obs and render.reason is RenderReason.CHANGE
    assert counting.take() <= 4
    # Cancelling one does not touch the others either.
    e.cancel(observations[7], T0 + 14, "operator")
    assert e.next_deadline() == pytest.approx(T0 + 600)
    assert counting.take() <= 4


@pytest.mark.parametrize("interval", [0.0, 3.0])
def test_heap_agrees_with_a_walk_over_all_observations(interval):
    """Random events on 40 resources: the heap's next deadline is the minimum over all observations
    and the group's congestion-control budget (draft §4.4)."""
    rng = random.Random(11)
    e, observations = _engine_with(
        40, GroupPolicy(min_interval=2.0, duration=500.0), congestion=CongestionControl(interval=interval)
    )
    now = T0
    rendering: list[GroupObservation] = []
    for _ in range(3000):
        now += rng.random() * 3
        op = rng.random()
        live = [o for o in observations if not o.cancelled]
        if op < 0.5 and live:
            for a in e.on_change(rng.choice(live).path, now):
                if isinstance(a, Render):
                    rendering.append(a.observation)
        elif op < 0.8 and rendering:
            obs = rendering.pop(rng.randrange(len(rendering)))
            e.rendered(obs, Message(code=CONTENT, payload=b"v", max_age=rng.choice([5, 30, 60])), now)
        elif op < 0.81 and live:
            e.cancel(rng.choice(live), now, "test")
        else:
            for a in e.poll(now):
                if isinstance(a, Render):
                    rendering.append(a.observation)
        walk = [d for o in e.observations() if (d := o.next_deadline()) is not None]
        walk += [b._due for b in e._budgets.values() if b._due is not None]
        assert e.next_deadline() == (min(walk) if walk else None)
        if not live:
            break
    assert len(e._heap) <= 64 + 4 * max(1, len(list(e.observations())))


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["register", "change", "render", "poll", "cancel", "dereg", "refuse"]),
        st.integers(0, 5),
        st.floats(0, 40, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, interval=st.sampled_from([0.0, 3.0]))
def test_life_cycle_under_any_event_order(ops, interval):
    """Any order of registrations, changes, renders, polls, cancellations and deregistrations
    (issue 13: started, shifting, counting, cancelling, quarantined Token): the engine raises
    nothing, live Tokens stay unique and never quarantined, the heap agrees with a walk, and no
    observation stays dirty forever without a deadline."""
    e = ServerEngine(SRV, GRP, token_length=1, congestion=CongestionControl(interval=interval))
    paths = [(f"r{i}",) for i in range(6)]
    for p in paths:
        e.add_resource(p, GroupPolicy(min_interval=1.0, group_after=2))
    rng = random.Random(0)
    now = T0
    rendering: list[GroupObservation] = []
    for op, i, dt in ops:
        now += dt
        path = paths[i]
        if op == "register":
            reg = e.on_registration(path, ("c", i, int(dt)), _request(path), now, rng)
            if reg.started:
                rendering.append(reg.observation)
        elif op == "change":
            rendering += [a.observation for a in e.on_change(path, now) if isinstance(a, Render)]
        elif op == "render" and rendering:
            obs = rendering.pop(0)
            e.rendered(obs, Message(code=CONTENT, payload=b"v" * int(dt * 40), max_age=int(dt)), now)
        elif op == "refuse" and rendering:
            e.render_failed(rendering.pop(0), now, "test")
        elif op == "poll":
            rendering += [a.observation for a in e.poll(now) if isinstance(a, Render)]
        elif op == "cancel":
            e.cancel_path(path, now)
        elif op == "dereg":
            e.on_deregistration(path, ("c", i, 0))
        live = list(e.observations())
        tokens = [o.token for o in live]
        assert len(set(tokens)) == len(tokens)
        assert all(t in e.tokens for t in tokens)
        assert not any(e.tokens.quarantined(t, now) for t in tokens)
        walk = [d for o in live if (d := o.next_deadline()) is not None]
        walk += [b._due for b in e._budgets.values() if b._due is not None]
        assert e.next_deadline() == (min(walk) if walk else None)
        for o in live:
            if o.dirty and o.rendering is None:
                assert o.next_deadline() is not None or o._queued
