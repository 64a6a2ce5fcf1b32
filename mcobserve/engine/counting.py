"""Rough counting of the observers of a group observation with Feedback-Divider (draft §8, Appendix B).

Pure arithmetic and a small state machine per group observation: no clock, no randomness of its own.
The server side (:class:`ObserverCounter`) decides when a notification carries Feedback-Divider Q,
collects confirmations from distinct endpoints for MAX_CONFIRMATION_WAIT and computes the new
estimate COUNT' + (E - N) / D at once. The client side is :func:`respond_to` (Appendix B.2).

Spoofed confirmations (draft §13; issue 8, item 7): without Group OSCORE anyone can send
Feedback-Divider 0 re-registrations from made-up ports and addresses. Confirmations from
:class:`~mcobserve.engine.common.Endpoint` sources are grouped by prefix (IPv6 /64, IPv4 /24) and one
prefix contributes at most ``max_per_prefix`` (default 4 M) confirmations to a round; a round records
at most ``max_confirmers`` (default 64 M) confirmations in all.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Hashable
from dataclasses import dataclass, field

from .common import Endpoint

#: RFC 7252 §4.8.2 MAX_RTT and groupcomm-bis MAX_SERVER_RESPONSE_DELAY, the draft's defaults (§8.3.2).
MAX_RTT = 202.0
MAX_CLIENT_REQUEST_DELAY = 250.0
#: RFC 7252 §8.2 DEFAULT_LEISURE, the client's default wait before confirming.
DEFAULT_LEISURE = 5.0
#: Largest Q the option can carry (uint of 0-1 bytes, draft §8.1).
MAX_Q = 255
#: Prefix lengths by which confirmations are grouped: one LAN, one site (draft §13).
PREFIX_V6 = 64
PREFIX_V4 = 24


def source_prefix(endpoint: Hashable) -> Hashable | None:
    """The network a confirmation came from (IPv6 /64, IPv4 /24), or None for other endpoint types."""
    if not isinstance(endpoint, Endpoint):
        return None
    length = PREFIX_V6 if endpoint.host.version == 6 else PREFIX_V4
    return ipaddress.ip_network((endpoint.host, length), strict=False)


def max_confirmation_wait(rtt: float = MAX_RTT, leisure: float = MAX_CLIENT_REQUEST_DELAY) -> float:
    """MAX_CONFIRMATION_WAIT = MAX_RTT + MAX_CLIENT_REQUEST_DELAY, 452 s by default (draft §8.3.2).

    Deployments that know their round trip time and the clients' largest leisure pass those instead.
    """
    if rtt < 0 or leisure < 0:
        raise ValueError("rtt and leisure must not be negative")
    return rtt + leisure


def divider(count: float, confirmations: int) -> tuple[float, int]:
    """(N, Q): N = max(COUNT, 1), Q = max(ceil(log2(N / M)), 0), computed exactly (draft §8.3.1).

    Q is the smallest q >= 0 with M * 2**q >= N; as M * 2**q is an integer this equals the smallest
    q with 2**q >= ceil(ceil(N) / M), found with integer bit lengths (no floating-point log2).
    """
    if confirmations < 1:
        raise ValueError("M must be at least 1")
    n = max(count, 1)
    ratio = -(-math.ceil(n) // confirmations)
    return n, min((ratio - 1).bit_length(), MAX_Q)


def new_estimate(count_prime: float, e: int, n: float, dampener: int) -> float:
    """COUNT' + (E - N) / D (draft §8.3.3), in real numbers.

    Appendix B.3 writes it with C integers, where the division truncates; then an empty group with
    N < D never moves (R = 0 gives (0 - N) / D = 0) and is never cancelled, although its threshold
    CANCEL_THRESHOLD = 0.2 is a real number. The estimate is therefore kept real-valued.
    """
    if dampener < 1:
        raise ValueError("the dampener D must be a positive integer")
    return count_prime + (e - n) / dampener


def response_probability(q: int) -> float:
    """Probability that one client confirms a notification with Feedback-Divider Q: 2**-Q (draft §8.2)."""
    return math.ldexp(1.0, -q)


def respond_to(q: int, rng: random.Random, word_bits: int = 32) -> bool:
    """Draw I uniformly from [0, 2**Q) and confirm iff I == 0, in ``word_bits`` chunks (Appendix B.2).

    A large Q never builds a 2**Q-sized number: each full word must come out 0, then the remaining
    bits are masked, exactly as the optimized pseudo-code does.
    """
    if q < 0:
        raise ValueError("Q must not be negative")
    while q >= word_bits:
        if rng.getrandbits(word_bits) != 0:
            return False
        q -= word_bits
    return q == 0 or rng.getrandbits(q) == 0


@dataclass(frozen=True)
class CountingPolicy:
    """Knobs of rough counting (draft §8.3, Appendix B.3, §13.1)."""

    #: M, the number of confirmations wanted per round.
    confirmations: int = 8
    #: D, the dampener of the update.
    dampener: int = 4
    #: MAX_CONFIRMATION_WAIT in seconds; None means the draft's default (452 s).
    confirmation_wait: float | None = None
    #: Next round at the next notification when R = 0 or max(E/N, N/E) exceeds this (Appendix B.3).
    retry_threshold: float = 4.0
    #: Otherwise the next round starts after this many multicast notifications (Appendix B.3).
    count_every: int = 10
    #: Cancel the group observation when the estimate falls below this (Appendix B.3).
    cancel_below: float = 0.2
    #: Never more multicast notifications than this without a completed counting round (§13.1).
    max_unconfirmed: int = 50
    #: Confirmations one source prefix (IPv6 /64, IPv4 /24) may contribute to a round; None: 4 M.
    max_per_prefix: int | None = None
    #: Confirmations a round records at most; None: 64 M (memory bound; E then saturates).
    max_confirmers: int | None = None

    def __post_init__(self) -> None:
        if self.confirmations < 1 or self.dampener < 1:
            raise ValueError("M and D must be at least 1")
        if self.count_every < 0 or self.max_unconfirmed < 1:
            raise ValueError("count_every must be >= 0 and max_unconfirmed >= 1")
        if self.count_every >= self.max_unconfirmed:
            raise ValueError("count_every must be below max_unconfirmed (§13.1)")
        if self.confirmation_wait is not None and not (0 <= self.confirmation_wait < math.inf):
            raise ValueError("confirmation_wait must be a finite number >= 0")
        if self.retry_threshold < 1:
            raise ValueError("retry_threshold must be at least 1")
        if (self.max_per_prefix is not None and self.max_per_prefix < 1) or (
            self.max_confirmers is not None and self.max_confirmers < 1
        ):
            raise ValueError("max_per_prefix and max_confirmers must be at least 1")

    @property
    def prefix_limit(self) -> int:
        return 4 * self.confirmations if self.max_per_prefix is None else self.max_per_prefix

    @property
    def confirmer_limit(self) -> int:
        return 64 * self.confirmations if self.max_confirmers is None else self.max_confirmers

    @property
    def wait(self) -> float:
        return max_confirmation_wait() if self.confirmation_wait is None else self.confirmation_wait


@dataclass(frozen=True)
class RoundResult:
    """One finished counting round (draft §8.3.3)."""

    n: float
    q: int
    r: int
    e: int
    count_before: float  # COUNT when the round started
    count_prime: float  # COUNT' when it ended (joins in between included)
    estimate: float
    next_round_in: int  # multicast notifications until the next round
    started_at: float
    ended_at: float


@dataclass
class CountingRound:
    """A round in progress: started by the notification that carried Feedback-Divider Q."""

    n: float
    q: int
    count_before: float
    started_at: float
    ends_at: float
    confirmers: set[Hashable] = field(default_factory=set)
    per_prefix: dict[Hashable, int] = field(default_factory=dict)


@dataclass
class ObserverCounter:
    """COUNT of one group observation and its counting rounds (draft §4, §8.3)."""

    #: None: COUNT is kept but no rounds run.
    policy: CountingPolicy | None = None
    #: COUNT: +1 per registration, replaced by the (real-valued) estimate after each round.
    count: float = 0
    round: CountingRound | None = None
    #: Multicast notifications to send before the next round; 0: the next one carries the option.
    countdown: int = 0
    #: Multicast notifications sent since the last completed round (or the start) (§13.1).
    unconfirmed: int = 0
    history: list[RoundResult] = field(default_factory=list)
    duplicates: int = 0
    stray: int = 0
    #: Confirmations not counted because their prefix or the round had given its share (draft §13).
    capped: int = 0

    def registration(self) -> None:
        """A new client takes part: COUNT + 1 (draft §4.2), No-Response 16 ones included."""
        self.count += 1

    def confirmation(self, endpoint: Hashable) -> bool:
        """A re-registration with Feedback-Divider 0 (draft §8.3.3). True when it counts for R.

        Only distinct client endpoints count; outside a round, or repeated, it is ignored. It never
        counts as a new observer. One source prefix counts at most ``policy.prefix_limit`` times per
        round, and a round at most ``policy.confirmer_limit`` times (module docstring).
        """
        rnd = self.round
        if rnd is None:
            self.stray += 1
            return False
        if endpoint in rnd.confirmers:
            self.duplicates += 1
            return False
        if self.policy is not None:
            if len(rnd.confirmers) >= self.policy.confirmer_limit:
                self.capped += 1
                return False
            prefix = source_prefix(endpoint)
            if prefix is not None:
                seen = rnd.per_prefix.get(prefix, 0)
                if seen >= self.policy.prefix_limit:
                    self.capped += 1
                    return False
                rnd.per_prefix[prefix] = seen + 1
        rnd.confirmers.add(endpoint)
        return True

    def feedback_divider(self, now: float) -> int | None:
        """Q for the multicast notification about to be sent, starting a round, or None (§8.3.1).

        Only the first notification of a burst carries the option: none while a round runs.
        """
        if self.policy is None or self.round is not None or self.countdown > 0:
            return None
        n, q = divider(self.count, self.policy.confirmations)
        self.round = CountingRound(
            n=n, q=q, count_before=self.count, started_at=now, ends_at=now + self.policy.wait
        )
        return q

    def notification_sent(self) -> None:
        self.unconfirmed += 1
        if self.round is None and self.countdown > 0:
            self.countdown -= 1

    def may_send(self) -> bool:
        """§13.1: hold notifications while a round runs and the unconfirmed budget is spent."""
        return self.round is None or self.policy is None or self.unconfirmed < self.policy.max_unconfirmed

    def deadline(self) -> float | None:
        return self.round.ends_at if self.round is not None else None

    def finish(self, now: float) -> RoundResult | None:
        """After MAX_CONFIRMATION_WAIT: R, E = R * 2**Q, COUNT' + (E - N) / D, next round (§8.3.3).

        Done in one step, so no registration can slip in between reading COUNT' and storing the
        new value (the draft's atomicity requirement).
        """
        rnd = self.round
        if rnd is None or self.policy is None or now < rnd.ends_at:
            return None
        r = len(rnd.confirmers)
        e = r << rnd.q
        count_prime = self.count
        estimate = max(new_estimate(count_prime, e, rnd.n, self.policy.dampener), 0.0)
        if r == 0 or max(e / rnd.n, rnd.n / e) > self.policy.retry_threshold:
            next_in = 0
        else:
            next_in = self.policy.count_every
        result = RoundResult(
            n=rnd.n,
            q=rnd.q,
            r=r,
            e=e,
            count_before=rnd.count_before,
            count_prime=count_prime,
            estimate=estimate,
            next_round_in=next_in,
            started_at=rnd.started_at,
            ended_at=now,
        )
        self.count = estimate
        self.round = None
        self.countdown = next_in
        self.unconfirmed = 0
        self.history.append(result)
        return result

    def should_cancel(self, result: RoundResult) -> bool:
        """Appendix B.3: cancel when the new estimate is below the threshold."""
        return self.policy is not None and result.estimate < self.policy.cancel_below
