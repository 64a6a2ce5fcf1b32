"""The Observer against servers that do not run group observations, and against hostile informative
responses (draft §5.2, last paragraphs). Unicast on loopback only: no group is ever joined here."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiocoap
import aiocoap.resource
import pytest
from aiocoap import ACK, CON, CONTENT, NOT_FOUND, SERVICE_UNAVAILABLE, Message

from mcobserve.aio.client import Observer, ResponseError
from mcobserve.engine.client import Via
from mcobserve.errors import GroupObservationError, WithdrawnError
from mcobserve.wire import CRI, InformativeResponse, TpInfo, cbor_encode

pytestmark = pytest.mark.asyncio


class FakeServer(asyncio.DatagramProtocol):
    """Answers every CON request with a piggybacked 5.03 carrying the next of ``payloads``."""

    def __init__(self, payloads: list[bytes], content_format: int = 65000) -> None:
        self.payloads = payloads
        self.content_format = content_format
        self.requests: list[Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        req = Message.decode(data)
        self.requests.append(req)
        payload = self.payloads[min(len(self.requests), len(self.payloads)) - 1]
        resp = Message(
            code=SERVICE_UNAVAILABLE, content_format=self.content_format, max_age=0, payload=payload
        )
        resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
        self.transport.sendto(resp.encode(), addr)


async def fake(payloads: list[bytes], **kw) -> tuple[FakeServer, int]:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: FakeServer(payloads, **kw), local_addr=("127.0.0.1", 0)
    )
    return proto, proto.transport.get_extra_info("socket").getsockname()[1]


async def first(observer: Observer) -> list:
    out = []
    async for n in observer:
        out.append(n)
    return out


LOCAL = ipaddress.ip_address("127.0.0.1")
GROUP = ipaddress.ip_address("239.255.0.23")
GOOD_TP = TpInfo(CRI(-1, LOCAL), CRI(-1, GROUP, 61616), b"\x7b")


def tp(server: bytes, group: bytes, token: object = b"\x7b") -> list:
    return [[-1, [server]], [-1, [group, 61616]], token]


HOSTILE = {
    "not CBOR": b"\xff\x00",
    "not a map": cbor_encode([1, 2, 3]),
    "tp_info not an array": cbor_encode({0: 1}),
    "no tp_info": InformativeResponse(last_notif=bytes.fromhex("456105ff31")).encode(),
    "trailing bytes": InformativeResponse(tp_info=GOOD_TP).encode() + b"\x00",
    "duplicate keys": bytes.fromhex("a203010302"),
    "link-local server": cbor_encode({0: tp(ipaddress.ip_address("fe80::1").packed, GROUP.packed)}),
    "unicast group": cbor_encode({0: tp(LOCAL.packed, ipaddress.ip_address("10.0.0.1").packed)}),
    "token too long": cbor_encode({0: tp(LOCAL.packed, GROUP.packed, b"123456789")}),
    "no tpi_details": cbor_encode({0: [[-1, [LOCAL.packed]]]}),
    "last_notif garbage": InformativeResponse(tp_info=GOOD_TP, last_notif=b"\x45\xf0").encode(),
    "last_notif without Observe": InformativeResponse(tp_info=GOOD_TP, last_notif=b"\x45\xff1").encode(),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_malformed_informative_response_registers_once_more_then_fails(case):
    server, port = await fake([HOSTILE[case]])
    with pytest.raises(GroupObservationError, match="malformed informative response"):
        await asyncio.wait_for(first(Observer(f"coap://127.0.0.1:{port}/r")), 20)
    assert len(server.requests) == 2  # one new registration, then a clear error
    assert all(r.opt.observe == 0 and r.mtype == CON for r in server.requests)
    server.transport.close()


async def test_withdraws_when_the_phantom_request_serves_another_resource():
    ph_req = bytes.fromhex("0160556f74686572")  # GET, Observe 0, Uri-Path "other"
    payload = InformativeResponse(
        tp_info=GOOD_TP, ph_req=ph_req, last_notif=bytes.fromhex("456105ff31")
    ).encode()
    server, port = await fake([payload])
    with pytest.raises(WithdrawnError, match="uri-path"):
        await asyncio.wait_for(first(Observer(f"coap://127.0.0.1:{port}/r")), 20)
    assert len(server.requests) == 1
    server.transport.close()


async def test_other_content_format_is_an_ordinary_error():
    server, port = await fake([b"busy"], content_format=0)
    with pytest.raises(ResponseError, match=r"5\.03"):
        await asyncio.wait_for(first(Observer(f"coap://127.0.0.1:{port}/r")), 20)
    server.transport.close()


class Counter(aiocoap.resource.ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    async def render_get(self, request: Message) -> Message:
        return Message(code=CONTENT, payload=str(self.value).encode())


class Plain(aiocoap.resource.Resource):
    async def render_get(self, request: Message) -> Message:
        return Message(code=CONTENT, payload=b"static")


@pytest.fixture
async def plain_server():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = aiocoap.resource.Site()
    counter = Counter()
    site.add_resource(["c"], counter)
    site.add_resource(["s"], Plain())
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    yield port, counter
    await ctx.shutdown()


async def test_traditional_observation_of_a_plain_aiocoap_server(plain_server):
    """The client also works against servers that do not use group observation."""
    port, counter = plain_server
    got = []

    async def run() -> None:
        async for n in Observer(f"coap://127.0.0.1:{port}/c"):
            got.append(n)
            if len(got) == 4:
                return

    task = asyncio.create_task(run())
    for i in range(1, 4):
        while len(got) < i:
            await asyncio.sleep(0.01)
        counter.value = i
        counter.updated_state()
    await asyncio.wait_for(task, 10)
    assert [n.payload for n in got] == [b"0", b"1", b"2", b"3"]
    assert {n.via for n in got} == {Via.UNICAST}
    assert [n.observe for n in got] == sorted(n.observe for n in got)


async def test_not_observable_resource_yields_one_response(plain_server):
    port, _ = plain_server
    got = await asyncio.wait_for(first(Observer(f"coap://127.0.0.1:{port}/s")), 10)
    assert [(n.payload, n.via) for n in got] == [(b"static", Via.UNICAST)]


async def test_not_found_raises_response_error(plain_server):
    port, _ = plain_server
    with pytest.raises(ResponseError) as e:
        await asyncio.wait_for(first(Observer(f"coap://127.0.0.1:{port}/missing")), 10)
    assert e.value.response.code == NOT_FOUND
