"""Rough counting in the server and client engines (draft §8, Appendix B), with a fake clock."""

from __future__ import annotations

import random

import pytest
from aiocoap import CONTENT, GET, NON, Message
from aiocoap.optiontypes import OpaqueOption

from mcobserve.engine.client import Accepted, GroupObservationClient
from mcobserve.engine.common import Endpoint
from mcobserve.engine.counting import (
    CountingPolicy,
    ObserverCounter,
    divider,
    max_confirmation_wait,
    new_estimate,
    respond_to,
    response_probability,
)
from mcobserve.engine.server import (
    Cancelled,
    CongestionControl,
    Counted,
    GroupPolicy,
    Kind,
    SendMulticast,
    ServerEngine,
)
from mcobserve.wire import InformativeResponse, parse_message
from mcobserve.wire.feedback import get_feedback_divider, set_feedback_divider

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
UNLIMITED = CongestionControl(interval=0)  # draft §4.4 budget off: these tests are about other rules
T0 = 1_700_000_000.0
WAIT = 10.0


def reg(**opts) -> Message:
    return Message(code=GET, observe=0, uri_path=["r"], **opts)


def confirmation() -> Message:
    m = Message(code=GET, observe=0, uri_path=["r"], no_response=26)
    set_feedback_divider(m, 0)
    return m


def engine_with(count: int, **policy) -> tuple[ServerEngine, object]:
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    counting = CountingPolicy(confirmation_wait=WAIT, **policy)
    e.add_resource(("r",), GroupPolicy(min_interval=0, counting=counting))
    rng = random.Random(1)
    obs = e.on_registration(("r",), "c0", reg(), T0, rng).observation
    e.rendered(obs, Message(code=CONTENT, payload=b"x"), T0)
    for i in range(1, count):
        assert e.on_registration(("r",), f"c{i}", reg(), T0, rng).kind is Kind.GROUP
    assert obs.count == count
    return e, obs


def notify(e: ServerEngine, obs, now: float) -> Message:
    assert len(e.on_change(("r",), now)) == 1  # one render, no coalescing at min_interval 0
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"v"), now)
    assert isinstance(send, SendMulticast)
    return send.message


def test_worked_example_of_the_draft():
    """N = COUNT = 32, M = 8 -> Q = 2; 4 confirmations arrive; D = 1 -> 32 + (16 - 32) = 16 (§8.3.3)."""
    e, obs = engine_with(32, confirmations=8, dampener=1)
    m = notify(e, obs, T0 + 1)
    assert get_feedback_divider(m) == 2
    rng = random.Random(0)
    for i in range(4):
        r = e.on_registration(("r",), ("k", i), confirmation(), T0 + 2, rng, endpoint=("10.0.0.9", 4000 + i))
        assert r.kind is Kind.CONFIRMATION and r.observation is obs
    assert obs.count == 32  # confirmations never count as new observers
    assert e.next_deadline() == pytest.approx(T0 + 1 + WAIT, abs=1e-6)
    assert e.poll(T0 + 1 + WAIT - 0.01) == []
    (counted,) = e.poll(T0 + 1 + WAIT)
    assert isinstance(counted, Counted)
    r = counted.result
    assert (r.n, r.q, r.r, r.e, r.estimate) == (32, 2, 4, 16, 16)
    assert obs.count == 16 and not obs.cancelled


def test_joins_during_the_wait_are_applied_atomically():
    e, obs = engine_with(32, confirmations=8, dampener=1)
    notify(e, obs, T0 + 1)
    rng = random.Random(0)
    for i in range(4):
        e.on_registration(("r",), ("k", i), confirmation(), T0 + 2, rng, endpoint=i)
    for i in range(3):  # new clients join while the server collects
        assert e.on_registration(("r",), f"new{i}", reg(), T0 + 3, rng).kind is Kind.GROUP
    (counted,) = e.poll(T0 + 1 + WAIT)
    assert counted.result.count_before == 32 and counted.result.count_prime == 35
    assert counted.result.estimate == 35 + (16 - 32)


def test_distinct_endpoints_only():
    """Duplicates and spoofed repeats from one endpoint do not inflate R (§8.3.3)."""
    e, obs = engine_with(8, confirmations=8, dampener=1)
    assert get_feedback_divider(notify(e, obs, T0 + 1)) == 0
    rng = random.Random(0)
    for token in range(50):  # one endpoint, many tokens
        e.on_registration(("r",), ("ep", token), confirmation(), T0 + 2, rng, endpoint=("10.0.0.1", 5683))
    e.on_registration(("r",), "x", confirmation(), T0 + 2, rng, endpoint=("10.0.0.2", 5683))
    (counted,) = e.poll(T0 + 1 + WAIT)
    assert counted.result.r == 2 and counted.result.estimate == 2
    assert obs.counter.duplicates == 49


def test_confirmation_outside_a_round_is_ignored():
    e, obs = engine_with(5)
    r = e.on_registration(("r",), "late", confirmation(), T0, random.Random(), endpoint="late")
    assert r.kind is Kind.CONFIRMATION and obs.count == 5 and obs.counter.stray == 1
    # Without any group observation: still a confirmation, never answered, never a new observer.
    e2 = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e2.add_resource(("r",), GroupPolicy())
    assert e2.on_registration(("r",), "x", confirmation(), T0, random.Random()).kind is Kind.CONFIRMATION
    assert e2.observation(("r",)) is None


def test_only_the_first_notification_of_a_round_carries_the_option_and_scheduling():
    e, obs = engine_with(20, confirmations=20, dampener=1, count_every=3)
    assert get_feedback_divider(notify(e, obs, T0 + 1)) == 0
    assert get_feedback_divider(notify(e, obs, T0 + 2)) is None  # burst: round still running
    for i in range(20):
        e.on_registration(("r",), i, confirmation(), T0 + 3, random.Random(), endpoint=i)
    (counted,) = e.poll(T0 + 1 + WAIT)
    assert counted.result.estimate == 20 and counted.result.next_round_in == 3  # agreement: every K
    assert [get_feedback_divider(notify(e, obs, T0 + 20 + i)) for i in range(4)] == [None, None, None, 0]


@pytest.mark.parametrize(("confirmers", "expect_next"), [(0, 0), (2, 0), (10, 10), (20, 10)])
def test_next_round_at_next_notification_when_r_is_zero_or_far_off(confirmers, expect_next):
    e, obs = engine_with(20, confirmations=20, dampener=8)
    notify(e, obs, T0 + 1)
    for i in range(confirmers):
        e.on_registration(("r",), i, confirmation(), T0 + 2, random.Random(), endpoint=i)
    actions = e.poll(T0 + 1 + WAIT)
    counted = next(a for a in actions if isinstance(a, Counted))
    assert counted.result.next_round_in == expect_next  # max(E/N, N/E) > 4 -> at once (App. B.3)


def test_cancel_below_threshold_unless_committed():
    e, obs = engine_with(4, confirmations=8, dampener=1)
    notify(e, obs, T0 + 1)
    actions = e.poll(T0 + 1 + WAIT)
    assert [type(a) for a in actions] == [Counted, SendMulticast, Cancelled]
    assert actions[0].result.estimate == 0 and obs.cancelled
    # An observation revealed through introspection is kept until the committed time (App. A).
    e2, obs2 = engine_with(4, confirmations=8, dampener=1)
    e2.introspect(obs2.token, T0)
    notify(e2, obs2, T0 + 1)
    actions = e2.poll(T0 + 1 + WAIT)
    assert [type(a) for a in actions] == [Counted] and not obs2.cancelled


def test_unconfirmed_budget_holds_notifications_until_the_round_ends():
    """§13.1: never more than max_unconfirmed multicast notifications without a counting round."""
    e, obs = engine_with(3, confirmations=8, dampener=1, count_every=1, max_unconfirmed=3)
    notify(e, obs, T0 + 1)  # starts a round
    notify(e, obs, T0 + 2)
    notify(e, obs, T0 + 3)
    assert e.on_change(("r",), T0 + 4) == []  # held: budget spent while the round runs
    assert e.poll(T0 + 5) == []
    for i in range(3):
        e.on_registration(("r",), i, confirmation(), T0 + 5, random.Random(), endpoint=i)
    actions = e.poll(T0 + 1 + WAIT)
    assert [type(a).__name__ for a in actions] == ["Counted", "Render"]


def test_init_notif_and_last_notif_carry_no_option():
    e, obs = engine_with(3)
    assert get_feedback_divider(parse_message(obs.latest_bytes)) is None  # INIT_NOTIF
    last_notif = InformativeResponse.decode(e.informative_payload(obs, reg(), T0)).last_notif
    assert get_feedback_divider(parse_message(last_notif)) is None


def test_counting_disabled_keeps_count_only():
    e = ServerEngine(SRV, GRP, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0, counting=None))
    obs = e.on_registration(("r",), "a", reg(), T0, random.Random()).observation
    e.rendered(obs, Message(code=CONTENT, payload=b"x"), T0)
    assert get_feedback_divider(notify(e, obs, T0 + 1)) is None and obs.count == 1


@pytest.mark.parametrize(
    ("count", "m", "n", "q"),
    [
        (0, 8, 1, 0),
        (1, 8, 1, 0),
        (8, 8, 8, 0),
        (9, 8, 9, 1),
        (16, 8, 16, 1),
        (17, 8, 17, 2),
        (32, 8, 32, 2),
        (1_000_000, 32, 1_000_000, 15),
        (2**300, 1, 2**300, 255),
    ],
)
def test_divider(count, m, n, q):
    assert divider(count, m) == (n, q)


def test_new_estimate_is_real_valued():
    assert new_estimate(32, 16, 32, 1) == 16
    assert new_estimate(32, 16, 32, 4) == 28
    assert new_estimate(3, 0, 3, 4) == pytest.approx(2.25)  # truncation would leave 3 for ever
    assert new_estimate(10, 17, 10, 2) == 13.5
    assert max_confirmation_wait() == 452.0 and max_confirmation_wait(0.5, 5) == 5.5


def test_respond_to_large_q_and_probability():
    rng = random.Random(3)
    assert not any(respond_to(1000, rng) for _ in range(1000))  # no overflow, practically never
    assert all(respond_to(0, rng) for _ in range(100))
    hits = sum(respond_to(3, rng) for _ in range(80_000))
    assert abs(hits / 80_000 - 1 / 8) < 0.006
    assert response_probability(3) == 0.125

    class Zeros(random.Random):
        def getrandbits(self, k: int) -> int:
            return 0

    assert respond_to(70, Zeros())  # 32 + 32 + 6 bits, all zero: I == 0


def test_client_confirms_with_probability_and_ignores_last_notif():
    e, obs = engine_with(1, confirmations=1)
    c = GroupObservationClient(reg())
    first = c.join(c.parse(e.informative_payload(obs, reg(), T0)), T0)
    assert first is not None  # INIT_NOTIF carries no option; nothing to confirm
    m = notify(e, obs, T0 + 1)
    assert get_feedback_divider(m) == 0
    wire = Message.decode(_encode(m))
    v = c.on_multicast(wire, SRV, T0 + 1, random.Random(5), leisure=2.0)
    assert isinstance(v, Accepted) and v.confirm_in is not None and 0 <= v.confirm_in < 2.0
    # Without a random source the client never confirms (e.g. a passive listener).
    m2 = Message.decode(_encode(notify_with_q(obs, 0, obs.observe + 1)))
    assert c.on_multicast(m2, SRV, T0 + 2).confirm_in is None
    # Q = 40: practically never.
    m3 = Message.decode(_encode(notify_with_q(obs, 40, obs.observe + 2)))
    assert c.on_multicast(m3, SRV, T0 + 3, random.Random(1)).confirm_in is None


def notify_with_q(obs, q: int, observe: int) -> Message:
    m = Message(code=CONTENT, observe=observe, payload=b"q")
    m.mtype, m.token = NON, obs.token
    set_feedback_divider(m, q)
    return m


def _encode(m: Message) -> bytes:
    out = Message(code=m.code, payload=m.payload)
    for option in m.opt.option_list():
        out.opt.add_option(option)
    out.mtype, out.mid, out.token = m.mtype, 1, m.token
    return out.encode()


def test_feedback_divider_option_values():
    m = Message(code=GET)
    m.opt.add_option(OpaqueOption(18, b""))
    assert get_feedback_divider(m) == 0  # empty value is 0 (§8.1)
    m = Message(code=GET)
    m.opt.add_option(OpaqueOption(18, b"\x01\x00"))
    assert get_feedback_divider(m) is None  # too long: ignored like an unknown elective option
    with pytest.raises(ValueError):
        set_feedback_divider(Message(code=GET), 256)


def test_empty_group_with_dampener_is_cancelled_eventually():
    """With D = 4 and nobody left, the real-valued estimate decays below 0.2 and the group ends."""
    e, obs = engine_with(3, confirmations=8, dampener=4, count_every=0)
    t = T0
    for _ in range(40):
        t += 1
        notify(e, obs, t)
        t += WAIT
        if any(isinstance(a, Cancelled) for a in e.poll(t)):
            break
    assert obs.cancelled and obs.counter.history[-1].estimate < 0.2


def test_policy_validation():
    with pytest.raises(ValueError):
        CountingPolicy(count_every=60, max_unconfirmed=50)
    with pytest.raises(ValueError):
        CountingPolicy(confirmations=0)
    assert ObserverCounter().feedback_divider(T0) is None  # no policy, no rounds
