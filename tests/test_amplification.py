"""Amplification bound over real UDP (RFC 7252 §11.3, RFC 9175 §2.4; issue 8, item 1).

Raw clients that never ACK, each from its own fresh loopback address, against a GroupServer on
127.0.0.1 (multicast pinned to ``lo``; no client here ever joins a group). Every byte that comes back
to each address is counted against the bytes it sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import pytest
from aiocoap import CON, CONTENT, EMPTY, GET, NON, SERVICE_UNAVAILABLE, UNAUTHORIZED, Message

from mcobserve.aio.resources import TextResource
from mcobserve.aio.server import GroupServer
from mcobserve.aio.sourceguard import GuardLimits
from mcobserve.engine.common import Endpoint

pytestmark = pytest.mark.asyncio

GROUP = Endpoint(ipaddress.ip_address("239.255.0.23"), 61616)
BIG = "x" * 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start(**kw) -> tuple[GroupServer, int]:
    port = free_port()
    server = await GroupServer.create(
        Endpoint(ipaddress.ip_address("127.0.0.1"), port), GROUP, interface="lo", **kw
    )
    server.add_resource(["r"], TextResource("1234"))
    server.add_resource(["big"], TextResource(BIG))
    return server, port


def request(mtype: int, mid: int, path: tuple[str, ...], **kw) -> bytes:
    m = Message(code=GET, uri_path=path, **kw)
    m.mtype, m.mid, m.token = mtype, mid, mid.to_bytes(2, "big")
    return m.encode()


class Raw:
    """A UDP socket on its own loopback address that counts everything it gets and never ACKs."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.sent = 0
        self.got: list[tuple[float, bytes]] = []

    def send(self, data: bytes, port: int) -> None:
        self.sent += len(data)
        self.sock.sendto(data, ("127.0.0.1", port))

    async def listen(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while (left := until - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), left)
            except TimeoutError:
                break
            self.got.append((time.monotonic(), data))

    @property
    def received(self) -> int:
        return sum(len(d) for _, d in self.got)

    def messages(self) -> list[Message]:
        return [Message.decode(d) for _, d in self.got]


CASES = {
    "CON registration, small": (CON, ("r",), {"observe": 0}),
    "NON registration, small": (NON, ("r",), {"observe": 0}),
    "CON registration, 1000 B": (CON, ("big",), {"observe": 0}),
    "NON registration, 1000 B": (NON, ("big",), {"observe": 0}),
    "introspection": (CON, (".well-known", "core", "mc-sender"), {"uri_query": ["token=0001"]}),
    "GET 1000 B": (CON, ("big",), {}),
    "discovery": (CON, (".well-known", "core"), {}),
}


async def test_unverified_sources_never_get_more_than_three_times_their_bytes():
    server, port = await start()
    try:
        clients = {name: Raw(f"127.0.0.{10 + i}") for i, name in enumerate(CASES)}
        for i, (name, (mtype, path, kw)) in enumerate(CASES.items()):
            clients[name].send(request(mtype, 0x100 + i, path, **kw), port)
        until = time.monotonic() + 3.5  # past the first retransmission time (ACK_TIMEOUT 2-3 s)
        await asyncio.gather(*(c.listen(until) for c in clients.values()))
    finally:
        await server.shutdown()
    for name, c in clients.items():
        assert c.got, name
        assert c.received <= 3 * c.sent, (name, c.sent, c.received)
        answers = c.messages()
        assert len(answers) == 1, (name, answers)  # no retransmission, no separate response
        assert answers[0].code == UNAUTHORIZED and answers[0].opt.echo is not None, name
    assert not list(server.engine.observations())  # nothing started
    assert server.datagrams_sent == 0


async def test_echo_round_trip_then_the_bound_covers_retransmissions():
    """A source answers the Echo and registers, never ACKs the CON 5.03; once its verification ends
    (1 s here), not one retransmission reaches it."""
    server, port = await start(guard_limits=GuardLimits(verified_lifetime=1.0))
    c = Raw("127.0.0.40")
    try:
        c.send(request(CON, 0x200, ("r",), observe=0), port)
        await c.listen(time.monotonic() + 1.0)
        challenge = c.messages()[0]
        assert challenge.code == UNAUTHORIZED and challenge.opt.echo is not None
        assert c.received <= 3 * c.sent
        c.send(request(CON, 0x201, ("r",), observe=0, echo=challenge.opt.echo), port)
        t0 = time.monotonic()
        await c.listen(t0 + 3.5)  # the first retransmission is due at 2-3 s (ACK_TIMEOUT)
    finally:
        await server.shutdown()
    answers = c.messages()[1:]
    kinds = [(m.mtype, m.code) for m in answers]
    # the informative response once, then its request's empty ACK (ready at once: RFC 7252 §5.2.2 note)
    assert kinds == [(CON, SERVICE_UNAVAILABLE), (2, EMPTY)], kinds
    assert all(t - t0 < 1.0 for t, _ in c.got[1:])
    assert server.guard is not None and server.guard.stats.dropped >= 1  # the retransmission was held back


async def test_a_verified_source_is_served_as_usual():
    server, port = await start()
    c = Raw("127.0.0.50")
    try:
        c.send(request(CON, 0x300, ("big",)), port)
        await c.listen(time.monotonic() + 1.0)
        echo = c.messages()[0].opt.echo
        c.send(request(CON, 0x301, ("big",), echo=echo), port)
        await c.listen(time.monotonic() + 1.0)
        c.send(request(CON, 0x302, ("big",)), port)  # remembered: no Echo needed any more
        await c.listen(time.monotonic() + 1.0)
    finally:
        await server.shutdown()
    answers = c.messages()
    assert [m.code for m in answers] == [UNAUTHORIZED, CONTENT, CONTENT]
    assert answers[1].payload == answers[2].payload == BIG.encode()


async def test_trusted_network_turns_the_bound_off():
    server, port = await start(trusted_network=True)
    c = Raw("127.0.0.60")
    try:
        c.send(request(CON, 0x400, ("big",)), port)
        await c.listen(time.monotonic() + 1.0)
    finally:
        await server.shutdown()
    assert [m.code for m in c.messages()] == [CONTENT]


async def test_a_late_retransmission_of_a_challenged_registration_is_not_a_second_observer():
    server, port = await start()
    c = Raw("127.0.0.70")
    try:
        first = request(CON, 0x600, ("r",), observe=0)
        c.send(first, port)
        await c.listen(time.monotonic() + 0.5)
        echo = c.messages()[0].opt.echo
        c.send(request(CON, 0x601, ("r",), observe=0, echo=echo), port)
        await c.listen(time.monotonic() + 0.5)
        c.send(first, port)  # the first registration again, now that the address is verified
        await c.listen(time.monotonic() + 0.5)
        obs = server.engine.observation(("r",))
    finally:
        await server.shutdown()
    codes = [m.code for m in c.messages() if m.code != EMPTY]
    assert codes == [UNAUTHORIZED, SERVICE_UNAVAILABLE, UNAUTHORIZED]
    assert obs is not None and obs.count == 1
