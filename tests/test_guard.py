"""SourceGuard and DropLog (mcobserve.aio.sourceguard): pure bookkeeping, fake clock."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from mcobserve.aio.sourceguard import ECHO_LENGTH, DropLog, GuardLimits, SourceGuard

A, B = "::ffff:192.0.2.1", "2001:db8::7"


def test_budget_is_three_times_what_was_received_until_verified():
    g = SourceGuard(key=b"k" * 32)
    assert g.budget(A, 0.0) == 0 and not g.allow(A, 1, 0.0)  # never heard of: nothing
    g.received(A, 13, 0.0)
    assert g.budget(A, 0.0) == 39
    assert g.allow(A, 30, 0.1) and g.budget(A, 0.1) == 9
    assert not g.allow(A, 10, 0.2)  # a retransmission of the same 30 bytes would not fit either
    assert g.allow(A, 9, 0.2) and g.budget(A, 0.2) == 0
    g.received(A, 4, 0.3)  # e.g. an empty ACK
    assert g.budget(A, 0.3) == 12
    assert g.budget(B, 0.3) == 0  # per source


def test_echo_verifies_only_its_own_address_and_only_while_fresh():
    lim = GuardLimits(echo_validity=60.0, verified_lifetime=300.0)
    g = SourceGuard(lim, key=b"k" * 32)
    echo = g.echo_value(A, 1000.0)
    assert len(echo) == ECHO_LENGTH
    assert not g.check_echo(B, echo, 1001.0)  # made for A
    assert not g.check_echo(A, echo[:-1] + bytes([echo[-1] ^ 1]), 1001.0)  # altered
    assert not g.check_echo(A, echo, 1061.5)  # too old
    assert not g.verified(A, 1001.0)
    assert g.check_echo(A, echo, 1030.0)
    assert g.verified(A, 1030.0) and g.budget(A, 1030.0) is None and g.allow(A, 10**6, 1030.0)
    assert not g.verified(A, 1330.5)  # verified_lifetime after the proof
    assert g.stats.bad_echo == 3 and g.stats.verified_by_echo == 1


def test_another_servers_echo_is_refused():
    g1, g2 = SourceGuard(key=b"1" * 32), SourceGuard(key=b"2" * 32)
    assert not g2.check_echo(A, g1.echo_value(A, 5.0), 5.0)


def test_oscore_verification_and_forgetting_the_counts():
    g = SourceGuard(key=b"k" * 32)
    g.received(A, 10, 0.0)
    g.verify(A, 1.0, by="oscore")
    assert g.verified(A, 2.0) and g.stats.verified_by_oscore == 1
    g.received(A, 10, 2.0)  # verified sources are not counted
    assert g.budget(A, 2.0) is None


def test_tables_are_bounded():
    lim = GuardLimits(max_verified=3, max_unverified=5, unverified_idle=10.0)
    g = SourceGuard(lim, key=b"k" * 32)
    for i in range(100):
        g.verify(f"v{i}", 0.0)
        g.received(f"u{i}", 10, 0.0)
    assert len(g._verified) == 3 and len(g._counts) == 5
    assert g.verified("v99", 1.0) and not g.verified("v0", 1.0)
    assert g.budget("u99", 1.0) == 30 and g.budget("u0", 1.0) == 0  # forgotten: no budget
    g.received("late", 1, 20.0)  # idle counts go
    assert g.budget("u99", 20.0) == 0 and len(g._counts) == 1


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 2000)), max_size=200))
def test_never_more_than_three_times_what_was_received(events):
    g = SourceGuard(key=b"k" * 32)
    received = sent = 0
    for t, (incoming, size) in enumerate(events):
        if incoming:
            g.received(A, size, float(t))
            received += size
        elif g.allow(A, size, float(t)):
            sent += size
    assert sent <= 3 * received


def test_drop_log_says_one_line_per_reason_and_interval(caplog):
    drops = DropLog(logging.getLogger("t.drops"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="t.drops"):
        for i in range(5000):
            drops.drop("unparsable CoAP message", "::1", i * 0.001)  # 5 s
        drops.drop("unparsable CoAP message", "::1", 12.0)
        drops.drop("undecodable option", "::2", 12.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[1] == "dropped 5000 datagram(s): unparsable CoAP message (latest from ::1)"
    assert drops.total == {"unparsable CoAP message": 5001, "undecodable option": 1}
