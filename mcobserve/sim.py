"""Rough counting of observers at scale, without sockets (draft §8, §13.1, Appendix B).

The simulation drives the real server state machine, :class:`~mcobserve.engine.counting.ObserverCounter`
with a :class:`~mcobserve.engine.counting.CountingPolicy`, on a fake clock. Each multicast notification
asks the counter for a Feedback-Divider (``feedback_divider``); when it returns Q a counting round
starts, the confirmations that arrive are handed to ``confirmation(endpoint)`` one distinct endpoint
each, registrations of new clients during MAX_CONFIRMATION_WAIT go to ``registration()``, and
``finish`` computes E = R * 2**Q and COUNT' + (E - N) / D (§8.3.3). The schedule of rounds (App. B.3:
at once when R = 0 or E and N disagree by more than the retry threshold, else after ``count_every``
notifications) is the counter's own: the simulation only sends notifications until it asks again.

The population: ``observers`` registrations (COUNT starts at N), of which ``active`` clients are still
there; the others left silently. ``joins`` new clients register during every confirmation wait: they
count for COUNT' and are active from the next round on. They do not confirm in the round they join
in, since they only see that round's notification as 'last_notif' of their informative response,
whose Feedback-Divider a client MUST ignore (§8.2).

Clients and loss, the binomial shortcut. Each active client confirms independently with probability
2**-Q: that is :func:`~mcobserve.engine.counting.response_probability`, the exact probability of the
client's draw :func:`~mcobserve.engine.counting.respond_to` (I uniform in [0, 2**Q), confirm iff
I == 0, App. B.2). ``loss`` is the probability that one confirmation (the client's NON re-registration
request) is lost on its way; a lost one never reaches the server, and multicast notifications are
assumed delivered (their loss would only scale the same probability). A sum of A independent
Bernoulli(2**-Q) draws is Binomial(A, 2**-Q), and thinning each success independently with 1 - P
gives Binomial(sent, 1 - P), i.e. overall Binomial(A, (1 - P) * 2**-Q). So the default mode draws
``sent ~ Binomial(A, 2**-Q)`` and ``received ~ Binomial(sent, 1 - P)`` with numpy's
``Generator.binomial``: O(1) per round plus O(R) to hand the R confirmations to the counter, whatever
A is (R is about M * A / N: it approaches A only when COUNT is far too low and Q = 0). The mean of
E is therefore (1 - P) * A: loss biases the estimate down by the factor (1 - P), as §8.3.3 says
("skewed by packet loss"). ``exact=True`` instead calls the real client ``respond_to(Q,
rng)`` once per active client (and draws each loss) with a :class:`random.Random`: O(A) per round, for
checking that both modes agree in distribution (tests/test_counting_stats.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .engine.counting import CountingPolicy, ObserverCounter, RoundResult, respond_to, response_probability

#: Seconds between two multicast notifications on the fake clock (only the reported times depend on it).
DEFAULT_INTERVAL = 10.0


#: Record fields renamed in JSON to the draft's letters.
_JSON_NAMES = {"n": "N", "q": "Q", "r": "R", "e": "E"}


@dataclass(frozen=True)
class RoundRecord:
    """One simulated counting round: the counter's :class:`RoundResult` plus the ground truth (§8.3)."""

    round: int  # 1-based
    notification: int  # index (1-based) of the multicast notification that carried Feedback-Divider Q
    time: float  # fake clock when the round finished (MAX_CONFIRMATION_WAIT after that notification)
    n: int  # N = max(COUNT, 1) at the start of the round
    q: int  # Q, the Feedback-Divider value sent
    responders: int  # active clients that received the notification with Q
    sent: int  # confirmations the clients sent (their draw came out 0)
    lost: int  # of those, lost on the way
    r: int  # R, distinct endpoints that confirmed at the server
    e: int  # E = R * 2**Q
    count_before: int  # COUNT when the round started
    joins: int  # registrations during the confirmation wait
    count_prime: int  # COUNT' when the round finished
    estimate: int  # COUNT' + (E - N) / D, the new COUNT
    true_active: int  # active clients after the round: what the estimate estimates
    next_round_in: int  # multicast notifications without the option before the next round (App. B.3)
    cancelled: bool  # the estimate fell below cancel_below: the group observation is cancelled

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object, with the draft's names N, Q, R, E (§8.3)."""
        return {_JSON_NAMES.get(k, k): v for k, v in asdict(self).items()}


def check_arguments(observers: int, active: int, rounds: int, loss: float, joins: int) -> None:
    """Raise ValueError with a one-line reason when the population or the loss make no sense."""
    if observers < 0:
        raise ValueError("the number of observers must not be negative")
    if not 0 <= active <= observers:
        raise ValueError(f"the active observers must be between 0 and the registered ones ({observers})")
    if rounds < 1:
        raise ValueError("run at least one round")
    if not 0.0 <= loss < 1.0:
        raise ValueError("the loss probability must be in [0, 1)")
    if joins < 0:
        raise ValueError("joins per round must not be negative")


def play_round(
    counter: ObserverCounter, now: float, confirmers: Iterable[int], joins: int = 0
) -> RoundResult:
    """Deliver one round to a counter whose round is running: confirmations, joins, then finish (§8.3.3).

    ``confirmers`` are the endpoints whose confirmation reached the server (duplicates count once);
    ``joins`` new clients register during the wait. The round is finished at its deadline.
    """
    deadline = counter.deadline()
    if deadline is None:
        raise ValueError("no counting round is running")
    for endpoint in confirmers:
        counter.confirmation(endpoint)
    for _ in range(joins):
        counter.registration()
    result = counter.finish(max(now, deadline))
    assert result is not None
    return result


def iter_simulation(
    observers: int,
    active: int,
    policy: CountingPolicy,
    rounds: int,
    loss: float = 0.0,
    joins: int = 0,
    seed: int | None = None,
    exact: bool = False,
    interval: float = DEFAULT_INTERVAL,
) -> Iterator[RoundRecord]:
    """One :class:`RoundRecord` per counting round, lazily; it stops after a cancellation (App. B.3).

    The arguments are checked at once (ValueError), before the first round is drawn.
    """
    check_arguments(observers, active, rounds, loss, joins)
    return _rounds(observers, active, policy, rounds, loss, joins, seed, exact, interval)


def _rounds(
    observers: int,
    active: int,
    policy: CountingPolicy,
    rounds: int,
    loss: float,
    joins: int,
    seed: int | None,
    exact: bool,
    interval: float,
) -> Iterator[RoundRecord]:
    counter = ObserverCounter(policy=policy, count=observers)  # as after N registrations (§4.2)
    np_rng = np.random.default_rng(seed)
    py_rng = random.Random(seed)
    now = 0.0
    notifications = 0
    current = active
    for index in range(1, rounds + 1):
        q = counter.feedback_divider(now)
        while q is None:  # notifications without the option until the counter asks again
            counter.notification_sent()
            notifications += 1
            now += interval
            q = counter.feedback_divider(now)
        counter.notification_sent()
        notifications += 1
        if exact:
            confirmed = [i for i in range(current) if respond_to(q, py_rng)]
            sent = len(confirmed)
            if loss:
                confirmed = [i for i in confirmed if py_rng.random() >= loss]
            endpoints: Iterable[int] = confirmed
            received = len(confirmed)
        else:
            sent = int(np_rng.binomial(current, response_probability(q)))
            received = int(np_rng.binomial(sent, 1.0 - loss)) if loss else sent
            endpoints = range(received)
        result = play_round(counter, now, endpoints, joins)
        now = result.ended_at
        responders, current = current, current + joins
        cancelled = counter.should_cancel(result)
        yield RoundRecord(
            round=index,
            notification=notifications,
            time=now,
            n=result.n,
            q=result.q,
            responders=responders,
            sent=sent,
            lost=sent - received,
            r=result.r,
            e=result.e,
            count_before=result.count_before,
            joins=joins,
            count_prime=result.count_prime,
            estimate=result.estimate,
            true_active=current,
            next_round_in=result.next_round_in,
            cancelled=cancelled,
        )
        if cancelled:
            return


def simulate(
    observers: int,
    active: int,
    policy: CountingPolicy,
    rounds: int,
    loss: float = 0.0,
    joins: int = 0,
    seed: int | None = None,
    exact: bool = False,
    interval: float = DEFAULT_INTERVAL,
) -> list[RoundRecord]:
    """Run ``rounds`` counting rounds (fewer if the group observation is cancelled) (§8.3, App. B.3).

    ``observers`` registered clients (COUNT = N at the start), ``active`` of them still listening,
    ``loss`` the probability that a confirmation is lost, ``joins`` registrations per confirmation
    wait, ``seed`` for reproducible draws, ``exact`` to run the real client draw per active client.
    The last record has ``cancelled=True`` when the estimate fell below ``policy.cancel_below``.
    """
    return list(iter_simulation(observers, active, policy, rounds, loss, joins, seed, exact, interval))
