"""Statistics of rough counting through the real server counter (draft §8.3, Appendix B).

Expected spread, one round from an accurate start (COUNT = N >= 1), D = 1, no joins: the new count is
COUNT' + (E - N) / 1 = E = R * 2**Q, with R ~ Binomial(A, p), p = (1 - P) * 2**-Q (each of the A active
clients confirms with 2**-Q, the confirmation survives loss P). Hence

    mean(E) = 2**Q * A * p = (1 - P) * A
    var(E)  = 2**(2Q) * A * p * (1 - p)
    sd(E) / mean(E) = sqrt((1 - p) / (A * p))       = sqrt((2**Q - 1) / A) without loss

and since N / M <= 2**Q < 2 N / M (Q = ceil(log2(N / M))), with p = 2**-Q the relative spread is
about 1 / sqrt(E[R]) = 1 / sqrt(A / 2**Q), between sqrt(N / (M A)) and sqrt(2 N / (M A)): it shrinks
like 1 / sqrt(M).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import numpy as np
import pytest

from mcobserve.engine.counting import CountingPolicy, ObserverCounter, divider, respond_to
from mcobserve.sim import RoundRecord, play_round, simulate


def _counter(count: int, m: int = 8, d: int = 1) -> ObserverCounter:
    counter = ObserverCounter(policy=CountingPolicy(confirmations=m, dampener=d))
    for _ in range(count):
        counter.registration()
    return counter


def _expected_rel_sd(n: int, a: int, m: int, loss: float = 0.0) -> float:
    _, q = divider(n, m)
    p = (1.0 - loss) * 2.0**-q
    return math.sqrt((1.0 - p) / (a * p))


# -- the draft's worked example (§8.3.3) --------------------------------------------------------------


def test_worked_example_of_section_8_3_3():
    counter = _counter(32, m=8, d=1)
    assert counter.feedback_divider(now=0.0) == 2  # N = COUNT = 32, M = 8: Q = 2
    # 18 active clients, 5 confirm, one is lost: 4 distinct endpoints reach the server.
    result = play_round(counter, 0.0, ["c1", "c2", "c3", "c4"])
    assert (result.n, result.q, result.r, result.e) == (32, 2, 4, 16)
    assert result.count_prime == 32 and result.estimate == 16 == counter.count  # 32 + (16 - 32)
    assert not counter.should_cancel(result)


def test_worked_example_with_joins_during_the_wait():
    counter = _counter(32, m=8, d=1)
    assert counter.feedback_divider(now=0.0) == 2
    result = play_round(counter, 0.0, [1, 2, 3, 4], joins=3)
    assert result.count_before == 32 and result.count_prime == 35  # COUNT' includes the joins
    assert result.estimate == 19  # 35 + (16 - 32)


def test_repeated_confirmations_from_one_endpoint_count_once():
    counter = _counter(32, m=8, d=1)
    counter.feedback_divider(now=0.0)
    result = play_round(counter, 0.0, [7, 7, 7, 8])
    assert result.r == 2 and counter.duplicates == 2


def test_play_round_needs_a_running_round():
    with pytest.raises(ValueError, match="no counting round"):
        play_round(_counter(3), 0.0, [])


# -- one round from an accurate start: mean and spread ---------------------------------------------


def _one_round(n: int, a: int, m: int, seeds: range, loss: float = 0.0, exact: bool = False) -> list[int]:
    policy = CountingPolicy(confirmations=m, dampener=1)
    return [simulate(n, a, policy, 1, loss=loss, seed=s, exact=exact)[0].estimate for s in seeds]


def test_one_round_is_unbiased_with_the_binomial_spread():
    n, a, m = 10_000, 6_000, 64
    estimates = _one_round(n, a, m, range(2000))
    mean, sd = statistics.fmean(estimates), statistics.stdev(estimates)
    assert abs(mean - a) / a < 0.02  # sd of the mean is ~0.5 %
    expected = _expected_rel_sd(n, a, m)  # Q = 8: sqrt(255 / 6000) = 0.206
    assert expected == pytest.approx(math.sqrt(255 / 6000))
    assert sd / a == pytest.approx(expected, rel=0.15)
    # About 1 / sqrt(E[R]), and within the bounds that Q's rounding up leaves.
    assert math.sqrt(n / (m * a)) * 0.99 <= expected <= math.sqrt(2 * n / (m * a))


def test_spread_scales_like_one_over_sqrt_m():
    n, a = 10_000, 6_000
    sd64 = statistics.stdev(_one_round(n, a, 64, range(2000))) / a
    sd16 = statistics.stdev(_one_round(n, a, 16, range(2000))) / a
    assert sd16 == pytest.approx(_expected_rel_sd(n, a, 16), rel=0.15)  # Q = 10: sqrt(1023 / 6000)
    assert sd16 / sd64 == pytest.approx(math.sqrt(64 / 16), rel=0.15)


def test_loss_biases_the_estimate_by_one_minus_p():
    n, a, m, loss = 10_000, 6_000, 64, 0.1
    estimates = _one_round(n, a, m, range(2000), loss=loss)
    assert statistics.fmean(estimates) == pytest.approx((1 - loss) * a, rel=0.02)
    assert statistics.stdev(estimates) / ((1 - loss) * a) == pytest.approx(
        _expected_rel_sd(n, a, m, loss), rel=0.15
    )


def test_joins_count_fully_and_take_part_later():
    n, a, m, j = 10_000, 6_000, 64, 40
    policy = CountingPolicy(confirmations=m, dampener=1)
    runs = [simulate(n, a, policy, 2, joins=j, seed=s) for s in range(1000)]
    first = [r[0] for r in runs]
    assert all(rec.count_prime == n + j and rec.true_active == a + j for rec in first)
    # COUNT' + E - N with mean E = A: the joins are counted once, through COUNT'.
    assert statistics.fmean(rec.estimate for rec in first) == pytest.approx(a + j, rel=0.02)
    assert all(r[1].responders == a + j and r[1].true_active == a + 2 * j for r in runs)


# -- several rounds: convergence and the schedule of Appendix B.3 ----------------------------------


def _check_schedule(records: list[RoundRecord], policy: CountingPolicy) -> None:
    for rec, nxt in itertools.pairwise(records):
        disagree = rec.r == 0 or max(rec.e / rec.n, rec.n / rec.e) > policy.retry_threshold
        assert rec.next_round_in == (0 if disagree else policy.count_every)
        assert nxt.notification == rec.notification + 1 + rec.next_round_in
        assert nxt.n == max(rec.estimate, 1) and nxt.count_before == rec.estimate


def test_converges_from_a_wrong_start_with_dampener_4():
    n, a = 10_000, 2_500
    policy = CountingPolicy(confirmations=64, dampener=4)
    finals = []
    for seed in range(20):
        records = simulate(n, a, policy, 30, seed=seed)
        assert len(records) == 30 and not records[-1].cancelled
        _check_schedule(records, policy)
        tail = statistics.fmean(r.estimate for r in records[-5:])
        assert abs(tail - a) / a < 0.15
        finals.append(records[-1].estimate)
    assert statistics.fmean(finals) == pytest.approx(a, rel=0.05)


def test_rounds_follow_at_once_while_e_and_n_disagree():
    policy = CountingPolicy(confirmations=64, dampener=4)
    records = simulate(10_000, 1_000, policy, 12, seed=5)  # E / N ~ 0.1: far beyond the threshold 4
    _check_schedule(records, policy)
    assert records[0].next_round_in == 0 and records[1].notification == 2
    assert records[-1].next_round_in == policy.count_every  # agreement reached: every 10 notifications


def test_cancelled_when_nobody_is_left():
    policy = CountingPolicy(confirmations=8, dampener=1)
    records = simulate(100, 0, policy, 10, seed=1)
    assert len(records) == 1  # stops at the cancellation
    last = records[-1]
    assert last.r == 0 and last.estimate == 0 < policy.cancel_below and last.cancelled
    assert last.next_round_in == 0


def test_cancelled_when_nobody_is_left_with_the_default_dampener():
    """With B.3's literal integer division an empty group stalls at COUNT = 3 for D = 4; the engine's
    real-valued estimate keeps decaying and the group is cancelled."""
    records = simulate(10_000, 0, CountingPolicy(confirmations=8, dampener=4), 200, seed=1)
    assert records[-1].cancelled


# -- exact client draws agree with the binomial shortcut -------------------------------------------


def _binomial_pmf(a: int, p: float, k: int) -> float:
    log = math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1)
    return math.exp(log + k * math.log(p) + (a - k) * math.log1p(-p))


def _chi2_gof(samples: list[int], a: int, p: float) -> tuple[float, int]:
    """Pearson's statistic against Binomial(a, p), bins merged to >= 5 expected each; (chi2, dof)."""
    total = len(samples)
    counts = np.bincount(samples, minlength=a + 1)
    bins: list[tuple[float, int]] = []
    exp_acc, obs_acc, cdf = 0.0, 0, 0.0
    for k in range(a + 1):
        pk = _binomial_pmf(a, p, k)
        cdf += pk
        exp_acc += total * pk
        obs_acc += int(counts[k])
        if total * (1 - cdf) < 5:  # the upper tail goes into the last bin
            break
        if exp_acc >= 5:
            bins.append((exp_acc, obs_acc))
            exp_acc, obs_acc = 0.0, 0
    bins.append((total - sum(e for e, _ in bins), total - sum(o for _, o in bins)))
    chi2 = sum((o - e) ** 2 / e for e, o in bins)
    return chi2, len(bins) - 1


def _chi2_critical(dof: int, z: float = 3.09) -> float:
    """Upper 0.1 % point of chi-square (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_respond_to_confirms_with_probability_two_to_minus_q():
    rng = random.Random(1)
    for q, trials in ((0, 1000), (1, 20_000), (3, 40_000), (33, 1000)):
        hits = sum(respond_to(q, rng) for _ in range(trials))
        p = 2.0**-q
        assert abs(hits - trials * p) <= 4 * math.sqrt(trials * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_exact_and_binomial_modes_agree_in_distribution(loss):
    n, a, m = 4_000, 3_000, 32  # Q = 7: E[R] = 3000 / 128 * (1 - P)
    policy = CountingPolicy(confirmations=m, dampener=1)
    _, q = divider(n, m)
    p = (1 - loss) * 2.0**-q
    seeds = range(400)
    exact = [simulate(n, a, policy, 1, loss=loss, seed=s, exact=True)[0].r for s in seeds]
    fast = [simulate(n, a, policy, 1, loss=loss, seed=s)[0].r for s in seeds]
    mean, var = a * p, a * p * (1 - p)
    for sample in (exact, fast):
        assert abs(statistics.fmean(sample) - mean) < 4 * math.sqrt(var / len(sample))
        assert statistics.variance(sample) == pytest.approx(var, rel=0.25)
        chi2, dof = _chi2_gof(sample, a, p)
        assert chi2 < _chi2_critical(dof)
    # The two samples against each other: difference of means within 4 standard errors.
    assert abs(statistics.fmean(exact) - statistics.fmean(fast)) < 4 * math.sqrt(2 * var / len(seeds))


def test_exact_mode_reports_the_real_draws():
    records = simulate(300, 200, CountingPolicy(confirmations=8, dampener=1), 3, loss=0.3, seed=2, exact=True)
    for rec in records:
        assert rec.sent - rec.lost == rec.r and rec.e == rec.r << rec.q


# -- scale ---------------------------------------------------------------------------------------------


def test_a_million_observers_for_30_rounds():
    policy = CountingPolicy(confirmations=32, dampener=4)
    records = simulate(1_000_000, 600_000, policy, 30, seed=1)
    assert len(records) == 30 and records[0].q == 15  # 10**6 / 32 = 31250 -> Q = 15
    assert all(r.responders == 600_000 for r in records)
    assert abs(records[-1].estimate - 600_000) / 600_000 < 0.5


def test_arguments_are_checked():
    policy = CountingPolicy()
    for kwargs, msg in (
        ({"observers": 5, "active": 6}, "active"),
        ({"observers": 5, "active": 1, "rounds": 0}, "round"),
        ({"observers": 5, "active": 1, "loss": 1.0}, "loss"),
        ({"observers": 5, "active": 1, "joins": -1}, "joins"),
    ):
        args = {"rounds": 1, **kwargs}
        with pytest.raises(ValueError, match=msg):
            simulate(policy=policy, **args)
