"""A fake-clock driver for the server engine: changes at given times, renders answered at once.

Used by the conformance tests (issue 13) to measure what goes on the group over simulated minutes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiocoap import CONTENT, GET, Message

from mcobserve.engine.common import Endpoint
from mcobserve.engine.server import (
    Action,
    GroupObservation,
    NotificationRefused,
    Render,
    SendMulticast,
    ServerEngine,
)

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
T0 = 1_700_000_000.0


def registration(path: tuple[str, ...], token: bytes = b"\x4a", **opts) -> Message:
    m = Message(code=GET, observe=0, uri_path=path, **opts)
    m.token = token
    return m


@dataclass
class Sent:
    time: float
    path: tuple[str, ...]
    kind: str
    payload: bytes
    observe: int | None


@dataclass
class Driver:
    """Feeds ``engine`` and answers every Render with the resource's current value at once."""

    engine: ServerEngine
    max_age: int | None = None
    values: dict[tuple[str, ...], bytes] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    refused: list[NotificationRefused] = field(default_factory=list)
    now: float = T0
    render: Callable[[tuple[str, ...]], Message] | None = None

    def start(self, path: tuple[str, ...], value: bytes = b"0", key: object = "c1") -> GroupObservation:
        self.values[path] = value
        reg = self.engine.on_registration(
            path, key, registration(path), self.now, random.Random(hash(path) & 0xFFFF)
        )
        assert reg.observation is not None
        self.handle(self.engine.rendered(reg.observation, self._content(path), self.now))
        return reg.observation

    def _content(self, path: tuple[str, ...]) -> Message:
        if self.render is not None:
            return self.render(path)
        opts = {} if self.max_age is None else {"max_age": self.max_age}
        return Message(code=CONTENT, payload=self.values[path], **opts)

    def handle(self, actions: Iterable[Action]) -> None:
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, Render):
                pending += self.engine.rendered(a.observation, self._content(a.observation.path), self.now)
            elif isinstance(a, SendMulticast):
                m = a.message
                self.sent.append(Sent(self.now, a.observation.path, a.kind, m.payload, m.opt.observe))
            elif isinstance(a, NotificationRefused):
                self.refused.append(a)

    def advance(self, until: float) -> None:
        """Run every deadline up to ``until``."""
        while True:
            due = self.engine.next_deadline()
            if due is None or due > until:
                break
            self.now = max(self.now, due)
            self.handle(self.engine.poll(self.now))
        self.now = max(self.now, until)

    def change(self, path: tuple[str, ...], value: bytes, at: float) -> None:
        self.advance(at)
        self.values[path] = value
        self.handle(self.engine.on_change(path, self.now))

    def notifications(self, path: tuple[str, ...] | None = None) -> list[Sent]:
        return [s for s in self.sent if s.kind == "notification" and (path is None or s.path == path)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]
