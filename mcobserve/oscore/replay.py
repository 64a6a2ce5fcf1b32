"""Replay protection: the request Replay Window (RFC 8613 §7.4) and the Response Number (GO §5.3.1).

Both are checked before any cryptographic work and updated only after a message verified; the
check-and-update pair is done without yielding (the engine is synchronous), so it is atomic (GO §5.4).
"""

from __future__ import annotations

from typing import Final

from mcobserve.oscore.errors import ReplayError

#: Default Replay Window size (RFC 8613 §7.4: at least 32 is the default).
DEFAULT_REPLAY_WINDOW_SIZE: Final = 32


class ReplayWindow:
    """Sliding anti-replay window over request Partial IVs of one Recipient Context (RFC 8613 §7.4).

    ``highest`` is the highest accepted sequence number (None before the first), ``bitmap`` bit i marks
    ``highest - i`` as seen. A window created ``valid=False`` (lost state, GO §2.6.1.2) rejects every
    request until :meth:`reset` is called (e.g. after an Echo exchange, GO §9 / RFC 9175).
    """

    __slots__ = ("_bitmap", "_highest", "size", "valid")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW_SIZE, *, valid: bool = True) -> None:
        if type(size) is not int or size < 1:
            raise ValueError("the Replay Window size must be a positive integer")
        self.size = size
        self.valid = valid
        self._highest: int | None = None
        self._bitmap = 0

    @property
    def highest(self) -> int | None:
        """The highest accepted sequence number, None if none yet."""
        return self._highest

    def is_fresh(self, seq: int) -> bool:
        """Whether ``seq`` would be accepted now (valid window, not seen, not below the window)."""
        if not self.valid:
            return False
        if self._highest is None or seq > self._highest:
            return True
        offset = self._highest - seq
        if offset >= self.size:
            return False
        return not (self._bitmap >> offset) & 1

    def check(self, seq: int) -> None:
        """Raise :class:`ReplayError` unless ``seq`` is fresh (RFC 8613 §8.2 step 3)."""
        if not self.valid:
            raise ReplayError("the Replay Window is invalid (lost state, GO §2.6.1.2)")
        if not self.is_fresh(seq):
            raise ReplayError(f"request Partial IV {seq} replayed or older than the Replay Window")

    def accept(self, seq: int) -> None:
        """Mark ``seq`` as seen (after successful verification, RFC 8613 §8.2 step 6); re-checks first."""
        self.check(seq)
        if self._highest is None:
            self._highest, self._bitmap = seq, 1
        elif seq > self._highest:
            shift = seq - self._highest
            self._bitmap = ((self._bitmap << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._highest = seq
        else:
            self._bitmap |= 1 << (self._highest - seq)

    def reset(self, highest: int | None = None) -> None:
        """Make the window valid again; optionally with every number up to ``highest`` marked as seen."""
        self.valid = True
        self._highest = highest
        self._bitmap = 0 if highest is None else (1 << self.size) - 1

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, valid={self.valid}, highest={self._highest})"


class ResponseNumber:
    """Highest accepted Partial IV of responses from one server in one long exchange (GO §5.3.1).

    This is the "Notification Number" of RFC 8613 §7.4.1 for an observation. The client keeps one per
    group observation (MN §9.3.2). A response is accepted only with a Partial IV greater than every one
    accepted before; at most one response without a Partial IV is accepted, and only as the oldest (before
    any with a Partial IV). Update only after successful verification.
    """

    __slots__ = ("_accepted_without_piv", "_value")

    def __init__(self) -> None:
        self._value: int | None = None
        self._accepted_without_piv = False

    @property
    def value(self) -> int | None:
        """The Response Number: the highest accepted Partial IV (None before the first)."""
        return self._value

    def check(self, seq: int | None) -> None:
        """Raise :class:`ReplayError` if a response with Partial IV ``seq`` (None: absent) is not fresh."""
        if seq is None:
            if self._accepted_without_piv or self._value is not None:
                raise ReplayError("a response without Partial IV is accepted at most once, as the oldest")
        elif self._value is not None and seq <= self._value:
            raise ReplayError(f"response Partial IV {seq} is not above the Response Number {self._value}")

    def update(self, seq: int | None) -> None:
        """Record an accepted response (call after verification succeeded); re-checks first."""
        self.check(seq)
        if seq is None:
            self._accepted_without_piv = True
        else:
            self._value = seq

    def __repr__(self) -> str:
        return f"ResponseNumber(value={self._value})"
