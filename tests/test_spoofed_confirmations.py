"""Spoofed confirmations (draft §13; issue 8, item 7): one source prefix gives at most 4 M confirmations
to a round, a round records at most 64 M."""

from __future__ import annotations

import ipaddress

import pytest

from mcobserve.engine.common import Endpoint
from mcobserve.engine.counting import CountingPolicy, ObserverCounter, new_estimate, source_prefix

POLICY = CountingPolicy(confirmations=8, dampener=4, confirmation_wait=10.0)


def started(count: float, policy: CountingPolicy = POLICY) -> tuple[ObserverCounter, int]:
    c = ObserverCounter(policy, count=count)
    q = c.feedback_divider(0.0)
    assert q is not None
    return c, q


def ep(host: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(host), port)


def test_fifty_thousand_confirmations_from_one_address_count_as_at_most_4m():
    c, q = started(1)
    for port in range(1024, 1024 + 50_000):
        c.confirmation(ep("2001:db8:1:2::66", port))
    result = c.finish(10.0)
    assert result is not None and result.r == 32 and c.capped == 50_000 - 32
    # unbounded, the estimate would have been 1 + (50,000 - 1) / 4 = 12,500.75 (8,379 in the run)
    assert result.estimate == pytest.approx(new_estimate(1, 32 << q, result.n, 4)) == 8.75


def test_the_prefix_is_a_64_or_a_24_and_other_endpoints_are_not_grouped():
    assert source_prefix(ep("2001:db8:1:2::66", 1)) == ipaddress.ip_network("2001:db8:1:2::/64")
    assert source_prefix(ep("192.0.2.77", 1)) == ipaddress.ip_network("192.0.2.0/24")
    assert source_prefix(("opaque", 1)) is None
    c, _ = started(100)
    for i in range(200):  # opaque endpoints (e.g. a test's tuples) are counted as before
        assert c.confirmation(("opaque", i))
    assert len(c.round.confirmers) == 200


def test_a_lan_of_real_confirmers_in_one_prefix_is_counted_in_full():
    c, q = started(160)  # N = 160, M = 8: Q = 5, about 5 of 160 confirm
    assert q == 5
    real = [ep(f"fd00:db8::{i:x}", 5683) for i in range(1, 21)]  # 20 distinct clients on one /64
    assert all(c.confirmation(e) for e in real)
    assert c.finish(10.0).r == 20 and c.capped == 0


def test_spoofers_spread_over_prefixes_are_bounded_per_round():
    c, _ = started(1)
    for i in range(100_000):
        c.confirmation(ep(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1", 5683))  # 100,000 distinct /64s
    assert len(c.round.confirmers) == 64 * 8 and c.capped == 100_000 - 512  # memory stays bounded
    assert c.finish(10.0).r == 512


def test_limits_are_configurable_and_checked():
    p = CountingPolicy(confirmations=8, max_per_prefix=2, max_confirmers=3)
    assert (p.prefix_limit, p.confirmer_limit) == (2, 3)
    c, _ = started(1, p)
    counted = [c.confirmation(ep("10.0.0.1", port)) for port in range(5)]
    assert counted == [True, True, False, False, False]
    assert c.confirmation(ep("10.0.1.1", 1)) and not c.confirmation(ep("10.0.2.1", 1))
    with pytest.raises(ValueError):
        CountingPolicy(max_per_prefix=0)
