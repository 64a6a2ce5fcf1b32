"""A forged informative response announcing a huge ``last_notif`` through Block2 (RFC 7959): the client
stops before fetching past its limit (issue 8, item 4). Unicast on loopback only."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import ACK, CON, SERVICE_UNAVAILABLE, Message
from aiocoap.optiontypes import BlockOption

from mcobserve.aio.client import Observer
from mcobserve.errors import ResponseTooLargeError
from mcobserve.wire import MAX_INFORMATIVE_RESPONSE_SIZE

pytestmark = pytest.mark.asyncio

BLOCK = 1024


class EndlessBlocks(asyncio.DatagramProtocol):
    """Answers every request with the next 1024-byte block of a body that never ends (more = 1)."""

    def __init__(self, size2: int | None) -> None:
        self.size2 = size2
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        req = Message.decode(data)
        self.requests += 1
        num = req.opt.block2.block_number if req.opt.block2 is not None else 0
        resp = Message(code=SERVICE_UNAVAILABLE, content_format=65000, payload=b"\xa0" * BLOCK)
        resp.opt.block2 = BlockOption.BlockwiseTuple(num, True, 6)
        if num == 0 and self.size2 is not None:
            resp.opt.size2 = self.size2
        resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
        if req.mtype == CON:
            self.transport.sendto(resp.encode(), addr)


async def run(size2: int | None) -> EndlessBlocks:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: EndlessBlocks(size2), local_addr=("127.0.0.1", 0))
    port = proto.transport.get_extra_info("socket").getsockname()[1]
    observer = Observer(f"coap://127.0.0.1:{port}/r")
    try:
        with pytest.raises(ResponseTooLargeError):
            async with asyncio.timeout(20):
                async for _ in observer:
                    pass
    finally:
        proto.transport.close()
    return proto


async def test_size2_over_the_limit_stops_before_the_second_block():
    proto = await run(4_000_000)
    assert proto.requests == 1


async def test_without_size2_at_most_the_limit_is_fetched():
    proto = await run(None)
    assert proto.requests == MAX_INFORMATIVE_RESPONSE_SIZE // BLOCK  # 64 blocks of 1 KiB, not 4,080


async def test_the_cli_says_one_line():
    import subprocess
    import sys

    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: EndlessBlocks(None), local_addr=("127.0.0.1", 0))
    port = proto.transport.get_extra_info("socket").getsockname()[1]
    try:
        p = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mcobserve.cli.main",
            "observe",
            f"coap://127.0.0.1:{port}/r",
            "--timeout",
            "20",
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(p.communicate(), 30)
    finally:
        proto.transport.close()
    lines = err.decode().strip().splitlines()
    assert p.returncode == 1 and lines == [
        f"mcobserve: coap://127.0.0.1:{port}/r: the response goes on past 65536 bytes (Block2)"
    ]
