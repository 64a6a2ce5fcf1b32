"""Run inside a lab namespace by tests/test_live_conformance.py (issue 13).

``linklocal SERVER6 IFNAME``: a raw client registers from a link-local address (fe80::99) and prints
what the server answered; then a CON GET with an unknown critical option from the global address.
``silence ADDR6 IFNAME``: a fake server hands out a group observation and then stays silent; the
Observer must register again after Max-Age + margin (items 10, 15).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from aiocoap import ACK, CON, CONTENT, GET, SERVICE_UNAVAILABLE, Message
from aiocoap.optiontypes import OpaqueOption

from mcobserve.aio.client import Observer
from mcobserve.wire import CRI, InformativeResponse, TpInfo, serialize_message

GROUP = "ff35:30:2001:db8::23"


def _echoed(m: Message) -> bool:
    """A 4.01 with an Echo option: the server verifies the address first (RFC 9175 §2.4)."""
    return m.code.dotted == "4.01" and m.opt.echo is not None


def ask(sock: socket.socket, req: Message, dest: tuple) -> Message:
    """Send ``req`` and return the answer, answering the server's Echo challenge once."""
    sock.sendto(req.encode(), dest)
    answer = Message.decode(sock.recvfrom(2048)[0])
    if _echoed(answer):
        req.opt.echo = answer.opt.echo
        req.mid += 0x100
        sock.sendto(req.encode(), dest)
        answer = Message.decode(sock.recvfrom(2048)[0])
    return answer


def linklocal(server6: str, ifname: str) -> None:
    ifindex = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("fe80::99", 0, 0, ifindex))
    s.settimeout(0.2)
    req = Message(code=GET, observe=0, uri_path=("r",))
    req.mtype, req.mid, req.token = CON, 0x4242, b"\x11\x22"
    s.sendto(req.encode(), (server6, 5683, 0, 0))
    got = []
    end = time.monotonic() + float(sys.argv[4])
    while time.monotonic() < end:
        try:
            data, addr = s.recvfrom(2048)
        except TimeoutError:
            continue
        m = Message.decode(data)
        if _echoed(m) and m.token == req.token and req.opt.echo is None:  # verify, then register
            req.opt.echo, req.mid = m.opt.echo, req.mid + 1
            s.sendto(req.encode(), (server6, 5683, 0, 0))
            continue
        got.append(
            {
                "type": int(m.mtype),
                "code": m.code.dotted,
                "observe": m.opt.observe,
                "payload": m.payload.decode(errors="replace"),
                "src": addr[0],
            }
        )
        if m.mtype == CON:
            ack = Message(code=0)
            ack.mtype, ack.mid = ACK, m.mid
            s.sendto(ack.encode(), (*addr[:2], 0, ifindex))
    # A Confirmable request with an unknown critical option, from the global address.
    g = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    g.settimeout(3)
    bad = Message(code=GET, uri_path=("r",))
    bad.opt.add_option(OpaqueOption(65001, b"\x01"))
    bad.mtype, bad.mid, bad.token = CON, 0x4343, b"\x33"
    answer = ask(g, bad, (server6, 5683, 0, 0))
    bad_obs = Message(code=GET, observe=0, uri_path=("r",))
    bad_obs.opt.add_option(OpaqueOption(65001, b"\x01"))
    bad_obs.mtype, bad_obs.mid, bad_obs.token = CON, 0x4344, b"\x34"
    answer_obs = ask(g, bad_obs, (server6, 5683, 0, 0))
    # A registration asking for 64-byte blocks (RFC 7959): a traditional observation, block-wise.
    blk = Message(code=GET, observe=0, uri_path=("r",), block2=(0, False, 2))
    blk.mtype, blk.mid, blk.token = CON, 0x4345, b"\x35"
    answer_blk = ask(g, blk, (server6, 5683, 0, 0))
    if answer_blk.code == 0:  # empty ACK first: the response comes separately
        answer_blk = Message.decode(g.recvfrom(2048)[0])
    print(
        json.dumps(
            {
                "got": got,
                "bad_option": [answer.code.dotted, answer.payload.decode(errors="replace")],
                "bad_option_registration": [answer_obs.code.dotted, int(answer_obs.mtype)],
                "block2_registration": [
                    answer_blk.code.dotted,
                    answer_blk.opt.observe is not None,
                    answer_blk.opt.block2.size if answer_blk.opt.block2 else None,
                ],
            }
        )
    )


class SilentServer(asyncio.DatagramProtocol):
    """Answers each registration with an informative response (Max-Age 1 in 'last_notif'); no more."""

    def __init__(self, addr6: str) -> None:
        self.addr6 = addr6
        self.registrations: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        req = Message.decode(data)
        if req.mtype != CON or req.code != GET:
            return
        self.registrations.append(time.monotonic())
        token = bytes([len(self.registrations)])
        last = Message(code=CONTENT, payload=f"v{len(self.registrations)}".encode(), observe=5, max_age=1)
        ir = InformativeResponse(
            tp_info=TpInfo(
                tpi_server=CRI(scheme_id=-1, host=self.addr6, port=5699),
                tpi_client=CRI(scheme_id=-1, host=GROUP, port=61616),
                tpi_token=token,
            ),
            last_notif=serialize_message(last),
        )
        resp = Message(code=SERVICE_UNAVAILABLE, content_format=65000, max_age=0, payload=ir.encode())
        resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
        self.transport.sendto(resp.encode(), addr)


async def silence(addr6: str, ifname: str) -> None:
    import ipaddress

    loop = asyncio.get_running_loop()
    _, fake = await loop.create_datagram_endpoint(
        lambda: SilentServer(str(ipaddress.ip_address(addr6))), local_addr=(addr6, 5699)
    )
    observer = Observer(f"coap://[{addr6}]:5699/r", interface=ifname, silence_margin=0.5)
    payloads = []
    t0 = time.monotonic()
    async for n in observer:
        payloads.append((n.payload.decode(), n.via.value))
        if observer.registrations >= 3:
            break
    elapsed = time.monotonic() - t0
    await observer.aclose()
    gaps = [b - a for a, b in zip(fake.registrations, fake.registrations[1:], strict=False)]
    print(json.dumps({"payloads": payloads, "silences": observer.silences, "gaps": gaps, "elapsed": elapsed}))


async def cancel(addr6: str, ifname: str) -> None:
    """Item 13: Observer.cancel() tells the server (COUNT - 1, no answer); an RST to a multicast
    notification does not end the group observation for the others."""
    from mcobserve.aio.client import open_group_socket
    from mcobserve.aio.resources import TextResource
    from mcobserve.aio.server import GroupServer
    from mcobserve.engine.common import Endpoint
    from mcobserve.engine.server import CongestionControl, GroupPolicy

    group = Endpoint.parse(f"[{GROUP}]:61616")
    srv = await GroupServer.create(
        Endpoint.parse(f"[{addr6}]"), group, interface=ifname, congestion=CongestionControl(interval=0)
    )
    res = TextResource("v0")
    srv.add_resource(["r"], res, GroupPolicy(min_interval=0, counting=None))
    uri = f"coap://[{addr6}]/r"
    observers = [Observer(uri, interface=ifname) for _ in range(2)]
    got: list[list[str]] = [[], []]
    joined = [asyncio.Event(), asyncio.Event()]

    async def follow(i: int) -> None:
        async for n in observers[i]:
            got[i].append(n.payload.decode())
            joined[i].set()

    tasks = [asyncio.create_task(follow(i)) for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*(j.wait() for j in joined)), 10)
    obs = srv.engine.observation(("r",))
    count_before = obs.count
    listener = open_group_socket(group, socket.if_nametoindex(ifname))
    listener.settimeout(5)
    await observers[0].cancel()
    await asyncio.wait_for(tasks[0], 5)  # the iteration ended
    await asyncio.sleep(0.5)
    count_after = obs.count
    res.set("v1")
    data, _ = await asyncio.get_running_loop().run_in_executor(None, listener.recvfrom, 2048)
    heard = Message.decode(data)
    rst = Message(code=0)
    rst.mtype, rst.mid = 3, heard.mid
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendto(rst.encode(), (addr6, 5683))  # an RST in answer to the multicast notification
    await asyncio.sleep(0.5)
    res.set("v2")
    for _ in range(50):
        if got[1][-1:] == ["v2"]:
            break
        await asyncio.sleep(0.1)
    result = {
        "count_before": count_before,
        "count_after": count_after,
        "deregistrations": observers[0].deregistrations_sent,
        "cancelled_first": got[0],
        "second": got[1],
        "still_running": not obs.cancelled and srv.engine.observation(("r",)) is obs,
    }
    await observers[1].cancel()
    await asyncio.wait_for(tasks[1], 5)
    await srv.shutdown()
    print(json.dumps(result))


async def slow(addr6: str, ifname: str) -> None:
    """Item 7: a slow reader of a traditional observation still follows the shift (5.03)."""
    from mcobserve.aio.resources import TextResource
    from mcobserve.aio.server import GroupServer
    from mcobserve.engine.common import Endpoint
    from mcobserve.engine.server import CongestionControl, GroupPolicy

    srv = await GroupServer.create(
        Endpoint.parse(f"[{addr6}]"),
        Endpoint.parse(f"[{GROUP}]:61616"),
        interface=ifname,
        congestion=CongestionControl(interval=0),
    )
    res = TextResource("t0")
    srv.add_resource(["r"], res, GroupPolicy(min_interval=0, counting=None, group_after=2))
    uri = f"coap://[{addr6}]/r"
    slow_got: list[tuple[str, str]] = []
    first = asyncio.Event()
    error: list[str] = []

    async def slow_reader() -> None:
        try:
            async for n in Observer(uri, interface=ifname):
                slow_got.append((n.payload.decode(), n.via.value))
                first.set()
                if len(slow_got) >= 4:
                    return
                await asyncio.sleep(1.5)  # the application reads slowly
        except Exception as e:
            error.append(f"{type(e).__name__}: {e}")
            first.set()

    task = asyncio.create_task(slow_reader())
    await asyncio.wait_for(first.wait(), 10)
    res.set("t1")  # a unicast notification the slow reader has not read yet
    await asyncio.sleep(0.2)
    fast = Observer(uri, interface=ifname)  # the second observer starts the group observation
    fast_it = fast.__aiter__()
    await asyncio.wait_for(fast_it.__anext__(), 10)
    for _ in range(100):  # the slow reader reaches the informative response at its own pace
        if len(slow_got) >= 3 or error:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    res.set("g1")
    try:
        await asyncio.wait_for(task, 15)
    except TimeoutError:
        error.append("timeout")
    await fast_it.aclose()
    await srv.shutdown()
    print(json.dumps({"slow": slow_got, "error": error}))


if __name__ == "__main__":
    if sys.argv[1] == "linklocal":
        linklocal(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "slow":
        asyncio.run(slow(sys.argv[2], sys.argv[3]))
    elif sys.argv[1] == "cancel":
        asyncio.run(cancel(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(silence(sys.argv[2], sys.argv[3]))
