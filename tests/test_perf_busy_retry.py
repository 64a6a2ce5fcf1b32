"""The Observer comes back after Max-Age when the server is busy (plain 5.03, RFC 7252 §5.9.3.4), as a
GroupServer answers when its informative responses in flight are capped (issue 8, item 5). Loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiocoap import ACK, CONTENT, SERVICE_UNAVAILABLE, Message

from mcobserve.aio.client import Observer, ResponseError

pytestmark = pytest.mark.asyncio


class BusyThenContent(asyncio.DatagramProtocol):
    """Answers the first ``busy`` requests with a piggybacked 5.03 Max-Age 1 (no payload), then 2.05."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.requests: list[tuple[float, Message]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        req = Message.decode(data)
        self.requests.append((time.monotonic(), req))
        if len(self.requests) <= self.busy:
            resp = Message(code=SERVICE_UNAVAILABLE, max_age=1)
        else:
            resp = Message(code=CONTENT, payload=b"fine")  # no Observe: not observable, one response
        resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
        self.transport.sendto(resp.encode(), addr)


async def serve(busy: int) -> tuple[BusyThenContent, int]:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: BusyThenContent(busy), local_addr=("127.0.0.1", 0))
    return proto, proto.transport.get_extra_info("socket").getsockname()[1]


async def test_busy_server_is_asked_again_after_max_age() -> None:
    server, port = await serve(busy=1)
    try:
        observer = Observer(f"coap://127.0.0.1:{port}/r")
        got = await asyncio.wait_for(_all(observer), 10)
    finally:
        server.transport.close()
    assert [n.message.payload for n in got] == [b"fine"]
    assert observer.busy_waits == 1 and observer.registrations == 2
    (t0, first), (t1, second) = server.requests
    assert first.opt.observe == 0 and second.opt.observe == 0
    assert first.token != second.token  # a new registration, not a retransmission
    assert 1.0 <= t1 - t0 <= 2.5  # Max-Age 1 plus at most 1 s of jitter


async def test_a_server_that_stays_busy_ends_the_registration() -> None:
    server, port = await serve(busy=100)
    try:
        observer = Observer(f"coap://127.0.0.1:{port}/r", busy_retries=1)
        with pytest.raises(ResponseError) as e:
            await asyncio.wait_for(_all(observer), 10)
    finally:
        server.transport.close()
    assert e.value.response.code == SERVICE_UNAVAILABLE
    assert observer.busy_waits == 1 and len(server.requests) == 2


async def _all(observer: Observer) -> list:
    return [n async for n in observer]
