"""Source verification and the amplification bound (RFC 7252 §11.3, RFC 9175 §2.4); quiet drops.

Pure bookkeeping (time is an argument, no sockets); :mod:`mcobserve.aio.server` feeds it from the
datagram hooks of :mod:`mcobserve.aio._glue`.

* A *source* is an IP address (the port does not matter: an attacker spoofing a victim needs to receive
  at the victim's address, whatever the port).
* Until a source is **verified** the server sends it at most ``factor`` (3) times the bytes it received
  from it, counting every datagram, retransmissions and empty ACKs included. What would exceed the budget
  is replaced by a small 4.01 Unauthorized carrying an Echo option (RFC 9175 §2.4) when that fits, and
  dropped otherwise.
* A source becomes verified when it returns an Echo value the server made for it (a MAC over the
  address and a timestamp, valid ``echo_validity`` seconds: stateless), or when it sends an
  OSCORE-protected request that a known security context accepts. It stays verified ``verified_lifetime``
  seconds after the last such proof; at most ``max_verified`` sources are remembered (the oldest goes).
* Byte counts of unverified sources live at most ``unverified_idle`` seconds after their last datagram;
  at most ``max_unverified`` are kept (the oldest goes; a forgotten source has no budget left).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GuardLimits:
    """The documented bounds of :class:`SourceGuard` (docs/security.md)."""

    #: Bytes sent per byte received until a source is verified (RFC 9175 §2.4: 3).
    factor: int = 3
    #: Seconds a verified source stays verified after its last proof.
    verified_lifetime: float = 300.0
    #: Verified sources remembered at most (about 100 bytes each).
    max_verified: int = 65536
    #: Seconds an Echo value is accepted after it was made.
    echo_validity: float = 60.0
    #: Seconds the byte counts of an unverified source are kept after its last datagram.
    unverified_idle: float = 120.0
    #: Unverified sources whose byte counts are kept at most.
    max_unverified: int = 16384
    #: Requests remembered for deduplication (RFC 7252 §4.5, 247 s) from verified sources, at most.
    dedup_verified: int = 32768
    #: ... and from unverified sources (a flood of spoofed requests stays within this).
    dedup_unverified: int = 2048
    #: Confirmable exchanges in flight (informative responses waiting for their ACK) before new
    #: registrations are answered with a plain 5.03 and Max-Age instead (issue 8, item 5).
    max_in_flight: int = 4096
    #: Max-Age of that 5.03: when the client may try again.
    busy_max_age: int = 5


_TS = struct.Struct(">I")
ECHO_LENGTH = _TS.size + 8


@dataclass
class _Counts:
    received: int = 0
    sent: int = 0
    last: float = 0.0


@dataclass
class GuardStats:
    """What the guard did (for tests, ``--json`` events and docs/security.md)."""

    echo_made: int = 0
    verified_by_echo: int = 0
    verified_by_oscore: int = 0
    bad_echo: int = 0
    replaced: int = 0
    dropped: int = 0
    sent_unverified: dict[str, int] = field(default_factory=dict)


class SourceGuard:
    """Amplification bookkeeping per source address (module docstring)."""

    def __init__(self, limits: GuardLimits | None = None, key: bytes | None = None) -> None:
        self.limits = limits or GuardLimits()
        self._key = key or os.urandom(32)
        self._verified: OrderedDict[str, float] = OrderedDict()  # source -> expiry, oldest first
        self._counts: OrderedDict[str, _Counts] = OrderedDict()  # least recently seen first
        self.stats = GuardStats()

    # -- verification ----------------------------------------------------------------------------

    def verified(self, source: str, now: float) -> bool:
        """Is ``source`` verified at ``now``?"""
        self._expire(now)
        expiry = self._verified.get(source)
        return expiry is not None and expiry > now

    def verify(self, source: str, now: float, *, by: str = "echo") -> None:
        """``source`` proved it receives at its address (Echo returned, or OSCORE from a known context)."""
        self._verified[source] = now + self.limits.verified_lifetime
        self._verified.move_to_end(source)
        while len(self._verified) > self.limits.max_verified:
            self._verified.popitem(last=False)
        self._counts.pop(source, None)
        if by == "oscore":
            self.stats.verified_by_oscore += 1
        else:
            self.stats.verified_by_echo += 1

    def echo_value(self, source: str, now: float) -> bytes:
        """A fresh Echo value for ``source`` (RFC 9175 §2.2): timestamp and a MAC over it and the address."""
        ts = _TS.pack(int(now) & 0xFFFFFFFF)
        self.stats.echo_made += 1
        return ts + self._mac(ts, source)

    def check_echo(self, source: str, value: bytes, now: float) -> bool:
        """Verify ``source`` if ``value`` is an Echo value made for it within ``echo_validity`` seconds."""
        if len(value) != ECHO_LENGTH:
            self.stats.bad_echo += 1
            return False
        ts = value[: _TS.size]
        age = (int(now) - _TS.unpack(ts)[0]) & 0xFFFFFFFF
        if age > self.limits.echo_validity or not hmac.compare_digest(
            value[_TS.size :], self._mac(ts, source)
        ):
            self.stats.bad_echo += 1
            return False
        self.verify(source, now)
        return True

    def _mac(self, ts: bytes, source: str) -> bytes:
        return hmac.new(self._key, ts + source.encode(), hashlib.sha256).digest()[:8]

    # -- the byte budget -------------------------------------------------------------------------

    def received(self, source: str, nbytes: int, now: float) -> None:
        """A datagram of ``nbytes`` (UDP payload) arrived from ``source``."""
        if source in self._verified and self.verified(source, now):
            return
        c = self._counts.get(source)
        if c is None:
            c = self._counts[source] = _Counts()
            while len(self._counts) > self.limits.max_unverified:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(source)
        c.received += nbytes
        c.last = now

    def budget(self, source: str, now: float) -> int | None:
        """Bytes that may still be sent to ``source`` (None: verified, no bound)."""
        if self.verified(source, now):
            return None
        c = self._counts.get(source)
        if c is None:
            return 0
        return max(0, self.limits.factor * c.received - c.sent)

    def allow(self, source: str, nbytes: int, now: float) -> bool:
        """May ``nbytes`` go to ``source`` now? If so, they are counted as sent."""
        left = self.budget(source, now)
        if left is None:
            return True
        if nbytes > left:
            return False
        self._counts[source].sent += nbytes
        sent = self.stats.sent_unverified
        if len(sent) < 1024 or source in sent:
            sent[source] = sent.get(source, 0) + nbytes
        return True

    def _expire(self, now: float) -> None:
        """Forget expired verifications and idle byte counts (oldest first: amortised O(1))."""
        v = self._verified
        while v:
            expiry = next(iter(v.values()))
            if expiry > now:
                break
            v.popitem(last=False)
        c = self._counts
        idle = self.limits.unverified_idle
        while c:
            counts = next(iter(c.values()))
            if now - counts.last <= idle:
                break
            c.popitem(last=False)


class DropLog:
    """One log line per reason and interval for dropped input (never a traceback, never a flood)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.log = logger
        self.interval = interval
        self.counts: dict[str, int] = {}  # per reason, since the last line
        self.total: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def drop(self, reason: str, source: str, now: float) -> None:
        """Count a dropped datagram; log at most one line per ``reason`` per ``interval``."""
        self.total[reason] = self.total.get(reason, 0) + 1
        n = self.counts[reason] = self.counts.get(reason, 0) + 1
        last = self._last.get(reason)
        if last is None or now - last >= self.interval:
            self._last[reason] = now
            self.counts[reason] = 0
            self.log.warning("dropped %d datagram(s): %s (latest from %s)", n, reason, source)


def bounded_send(guard: SourceGuard, drops: DropLog, source: str, message: Any, size: int, now: float) -> Any:
    """What may go to ``source`` (RFC 9175 §2.4): ``message`` within its budget; a response too large for
    an unverified source becomes a small 4.01 with Echo; otherwise nothing (None, one rate-limited line)."""
    if guard.allow(source, size, now):
        return message
    if message.code.is_response():
        from aiocoap import UNAUTHORIZED, Message

        alt = Message(code=UNAUTHORIZED, echo=guard.echo_value(source, now))
        alt.mtype, alt.mid, alt.token, alt.remote = message.mtype, message.mid, message.token, message.remote
        if guard.allow(source, len(alt.encode()), now):
            guard.stats.replaced += 1
            return alt
    guard.stats.dropped += 1
    drops.drop("amplification bound: source not verified (RFC 9175 §2.4)", source, now)
    return None


#: Seconds a challenged request's (address, port, MID) is remembered (EXCHANGE_LIFETIME, RFC 7252 §4.8.2).
CHALLENGE_MEMORY = 247.0


class ChallengeMemory:
    """Requests answered with a 4.01 + Echo, by (address, port, MID), oldest first and bounded: a late
    retransmission of one is challenged again instead of counting as a new request once the source is
    verified (a registration would count a second observer)."""

    def __init__(self, cap: int, lifetime: float = CHALLENGE_MEMORY) -> None:
        self.cap = cap
        self.lifetime = lifetime
        self._seen: OrderedDict[tuple[Any, int], float] = OrderedDict()

    def __contains__(self, key: tuple[Any, int]) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def challenge(self, guard: SourceGuard, source: str, key: tuple[Any, int] | None, now: float) -> Any:
        """The 4.01 + Echo for ``source`` (RFC 9175 §2.4); ``key`` is remembered unless None."""
        from aiocoap import UNAUTHORIZED, Message

        if key is not None:
            seen = self._seen
            seen[key] = now + self.lifetime
            while seen and (len(seen) > self.cap or next(iter(seen.values())) <= now):
                seen.popitem(last=False)
        return Message(code=UNAUTHORIZED, echo=guard.echo_value(source, now))
