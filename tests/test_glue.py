"""One test per aiocoap 0.4.17 internal used by mcobserve.aio._glue (unicast on loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiocoap
import aiocoap.resource
import pytest
from aiocoap import CON, CONTENT, GET, NON, Message

from mcobserve.aio import _glue
from mcobserve.engine.common import Endpoint

pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe(aiocoap.resource.Resource):
    """Records what the glue functions say about each request."""

    def __init__(self) -> None:
        super().__init__()
        self.acked: list[bool] = []
        self.local: list[Endpoint | None] = []

    async def render_get(self, request: Message) -> Message:
        self.local.append(_glue.local_endpoint(request))
        self.acked.append(_glue.acknowledge_now(request))
        await asyncio.sleep(0.02)
        return Message(code=CONTENT, payload=b"hi")


@pytest.fixture
async def server():
    port = free_port()
    site = aiocoap.resource.Site()
    probe = Probe()
    site.add_resource(["p"], probe)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    yield ctx, port, probe
    await ctx.shutdown()


def raw_client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def recv(sock: socket.socket, timeout: float = 2.0) -> tuple[Message, tuple]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), timeout)
    return Message.decode(data), addr


def request_bytes(mtype: int, mid: int, token: bytes) -> bytes:
    m = Message(code=GET, uri_path=["p"])
    m.mtype, m.mid, m.token = mtype, mid, token
    return m.encode()


async def test_udp_message_manager_and_server_socket(server):
    ctx, port, _ = server
    mman = _glue.udp_message_manager(ctx)
    assert mman.message_interface.__class__.__name__ == "MessageInterfaceUDP6"
    sock = _glue.server_socket(ctx)
    assert sock.getsockname()[1] == port and sock.family == socket.AF_INET6


async def test_send_unsolicited_leaves_from_the_server_socket_with_pinned_source(server):
    ctx, port, _ = server
    rx = raw_client()
    target = Endpoint.of("127.0.0.1", rx.getsockname()[1])
    remote = _glue.group_remote(ctx, target, Endpoint.of("127.0.0.1", port))
    assert remote.pktinfo is not None and len(remote.pktinfo) == 20
    m = Message(code=CONTENT, payload=b"n", observe=7)
    m.mtype, m.token = NON, b"\x7b"
    _glue.send_unsolicited(ctx, m, remote)
    got, addr = await recv(rx)
    assert addr == ("127.0.0.1", port)  # same address and port as the unicast traffic (draft §4.3)
    assert got.mtype == NON and got.token == b"\x7b" and got.opt.observe == 7 and got.payload == b"n"
    rx.close()


async def test_acknowledge_now_makes_the_response_separate(server):
    _, port, probe = server
    c = raw_client()
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(c, request_bytes(CON, 0x1111, b"\x01\x02"), ("127.0.0.1", port))
    ack, _ = await recv(c)
    assert ack.mtype == aiocoap.ACK and ack.code == aiocoap.EMPTY and ack.mid == 0x1111
    response, _ = await recv(c)
    assert response.mtype == CON and response.code == CONTENT and response.token == b"\x01\x02"
    assert probe.acked == [True]
    assert probe.local == [Endpoint.of("127.0.0.1", port)]
    # A NON request has nothing to acknowledge.
    await loop.sock_sendto(c, request_bytes(NON, 0x2222, b"\x03"), ("127.0.0.1", port))
    response, _ = await recv(c)
    assert response.code == CONTENT and probe.acked == [True, False]
    c.close()


async def test_configure_multicast_sender_and_receive_buffer(server):
    ctx, _, _ = server
    _glue.configure_multicast_sender(ctx, socket.if_nametoindex("lo"), hops=3, loop=False)
    sock = _glue.server_socket(ctx)
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 3
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP) == 0
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF) == socket.if_nametoindex("lo")
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 3
    assert _glue.set_receive_buffer(ctx, 1 << 20) >= 1 << 20


async def test_incoming_marks_direction_and_remote(server):
    ctx, port, _ = server
    remote = _glue.group_remote(ctx, Endpoint.parse("[ff05::4242]:61616"), Endpoint.of("::1", port))
    m = _glue.incoming(Message(code=GET, uri_path=["p"]), remote)
    assert m.direction is aiocoap.message.Direction.INCOMING and m.remote is remote
    assert remote.hostinfo_local.startswith("[::1]")  # pktinfo is what Site dispatch reads


async def test_oscore_rejections_are_aiocoaps_unprotect_errors():
    from aiocoap import oscore

    assert set(_glue.oscore_rejections()) == {oscore.ProtectionInvalid, oscore.DecodeError}
    assert all(issubclass(e, Exception) for e in _glue.oscore_rejections())


async def test_is_oscore_protected_and_oscore_site():
    from aiocoap.credentials import CredentialsMap
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
    from aiocoap.transports.oscore import OSCOREAddress

    m = Message(code=GET)
    assert not _glue.is_oscore_protected(m)
    m.remote = OSCOREAddress(object(), None)
    assert _glue.is_oscore_protected(m)
    site = aiocoap.resource.Site()
    assert isinstance(_glue.oscore_site(site, CredentialsMap()), OscoreSiteWrapper)


class Burst(aiocoap.resource.ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    async def render_get(self, request: Message) -> Message:
        return Message(code=CONTENT, payload=str(self.value).encode())


async def test_backlog_fix_keeps_every_con_notification_in_order():
    """With the O(1) _continue_backlog, CON notifications queued behind an open exchange (NSTART = 1)
    all leave, one after the other, as each ACK arrives."""
    from aiocoap.messagemanager import MessageManager

    _glue.install_backlog_fix()
    assert getattr(MessageManager._continue_backlog, "_mcobserve_o1", False)
    assert _glue.install_backlog_fix() is False  # idempotent
    port = free_port()
    site = aiocoap.resource.Site()
    burst = Burst()
    site.add_resource(["b"], burst)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    c = raw_client()
    loop = asyncio.get_running_loop()
    try:
        req = Message(code=GET, uri_path=["b"], observe=0)
        req.mtype, req.mid, req.token = CON, 0x10, b"\x05"
        await loop.sock_sendto(c, req.encode(), ("127.0.0.1", port))
        first, _ = await recv(c)
        assert first.payload == b"0"
        for i in range(1, 6):  # five changes, no ACK yet: one goes out, four wait in the backlog
            burst.value = i
            burst.updated_state()
            await asyncio.sleep(0.02)
        backlogs = _glue.udp_message_manager(ctx)._backlogs
        assert [len(queued) for queued in backlogs.values()] == [4]  # the path the fix replaces
        seen = []
        for _ in range(5):
            n, _ = await recv(c, timeout=5)
            assert n.mtype == CON
            seen.append(n.payload)
            ack = Message(code=aiocoap.EMPTY)
            ack.mtype, ack.mid, ack.token = aiocoap.ACK, n.mid, b""
            await loop.sock_sendto(c, ack.encode(), ("127.0.0.1", port))
        assert seen[-1] == b"5" and seen == sorted(seen)
        mman = _glue.udp_message_manager(ctx)
        await asyncio.sleep(0.05)
        assert not mman._active_exchanges and not mman._backlogs  # nothing left open or queued
    finally:
        c.close()
        await ctx.shutdown()


class Counting(aiocoap.resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def render_get(self, request: Message) -> Message:
        self.calls += 1
        return Message(code=CONTENT, payload=str(self.calls).encode())


async def counting_server() -> tuple[aiocoap.Context, int, Counting]:
    port = free_port()
    site = aiocoap.resource.Site()
    res = Counting()
    site.add_resource(["c"], res)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    return ctx, port, res


def get_c(mid: int) -> bytes:
    m = Message(code=GET, uri_path=["c"])
    m.mtype, m.mid, m.token = CON, mid, mid.to_bytes(2, "big")
    return m.encode()


async def test_bound_deduplication_keeps_at_most_the_cap_and_resends_stored_responses():
    ctx, port, res = await counting_server()
    _glue.bound_deduplication(ctx, lambda source: False, (100, 3))
    sock = raw_client()
    try:
        for mid in range(10):
            sock.sendto(get_c(mid), ("127.0.0.1", port))
            await recv(sock)
        mman = _glue.udp_message_manager(ctx)
        assert len(mman._recent_messages) == 3
        sock.sendto(get_c(9), ("127.0.0.1", port))  # a duplicate of a remembered one: the old answer
        again, _ = await recv(sock)
        assert again.payload == b"10" and res.calls == 10
        sock.sendto(get_c(0), ("127.0.0.1", port))  # forgotten: processed anew
        fresh, _ = await recv(sock)
        assert fresh.payload == b"11" and res.calls == 11
        assert _glue.open_exchanges(ctx) == 0
    finally:
        sock.close()
        await ctx.shutdown()


class Hooks:
    def __init__(self) -> None:
        self.datagrams: list[tuple[str, int]] = []
        self.dropped: list[str] = []
        self.sent: list[tuple[str, int]] = []
        self.block = False

    def on_datagram(self, source: str, size: int) -> None:
        self.datagrams.append((source, size))

    def on_dropped(self, source: str, reason: str) -> None:
        self.dropped.append(reason)

    def on_message(self, source: str, message: Message) -> bool:
        return True

    def on_send(self, source: str, message: Message, size: int) -> Message | None:
        self.sent.append((source, size))
        return None if self.block else message

    def may_ack_early(self, source: str, message: Message) -> bool:
        return True


async def test_datagram_hooks_count_drop_and_bound(caplog):
    ctx, port, res = await counting_server()
    hooks = Hooks()
    _glue.install_datagram_hooks(ctx, hooks)
    sock = raw_client()
    try:
        bad_path = bytes([0x40, 0x01, 0x00, 0x07]) + bytes([0xB2, 0xC3, 0x28])  # Uri-Path, invalid UTF-8
        for data in (b"\x00", bad_path, bytes([0x60, 0x01, 0x00, 0x08])):  # garbage, bad option, ACK+GET
            sock.sendto(data, ("127.0.0.1", port))
        sock.sendto(get_c(1), ("127.0.0.1", port))
        data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 2048), 2)
        assert Message.decode(data).payload == b"1"
        assert hooks.dropped == [
            "unparsable CoAP message",
            "undecodable option",
            "type and code do not fit (RFC 7252 §4)",
        ]
        assert [s for s, _ in hooks.datagrams] == ["::ffff:127.0.0.1"] * 4
        assert hooks.sent == [("::ffff:127.0.0.1", len(data))]
        hooks.block = True
        sock.sendto(get_c(2), ("127.0.0.1", port))
        with pytest.raises(TimeoutError):
            await recv(sock, 0.5)
        assert res.calls == 2  # rendered, but the answer was held back
        # a multicast destination never reaches on_send
        grp = _glue.group_remote(ctx, Endpoint.parse("239.255.0.99:61616"), Endpoint.parse("127.0.0.1"))
        n = len(hooks.sent)
        m = Message(code=CONTENT, payload=b"x")
        m.mtype = NON
        with contextlib.suppress(OSError):
            _glue.send_unsolicited(ctx, m, grp)
        assert len(hooks.sent) == n
    finally:
        sock.close()
        await ctx.shutdown()
    assert "Traceback" not in caplog.text


async def test_index_oscore_contexts_finds_what_aiocoaps_scan_finds(tmp_path):
    from aiocoap.credentials import CredentialsMap
    from aiocoap.oscore import COSE_KID, COSE_KID_CONTEXT

    from mcobserve.cli.credentials import write_oscore_contexts
    from mcobserve.cli.main import load_credentials

    write_oscore_contexts(tmp_path, "[fd00::1]", 5)
    creds = CredentialsMap()
    creds.load_from_dict(load_credentials(str(tmp_path / "server.json")))
    scan = CredentialsMap.find_oscore
    _glue.index_oscore_contexts(creds)
    for i in range(1, 6):
        unprotected = {COSE_KID: bytes([i])}
        assert creds.find_oscore(unprotected) is scan(creds, unprotected)
    for bad in ({COSE_KID: b"\x09"}, {COSE_KID: b"\x01", COSE_KID_CONTEXT: b"x"}, {}):
        with pytest.raises(KeyError):
            creds.find_oscore(bad)
    write_oscore_contexts(tmp_path / "more", "[fd00::1]", 7)  # the map grows: the index follows
    extra = CredentialsMap()
    extra.load_from_dict(load_credentials(str(tmp_path / "more" / "server.json")))
    creds[":client-7"] = extra[":client-7"]
    assert creds.find_oscore({COSE_KID: b"\x07"}) is extra[":client-7"]


async def test_poll_datagrams_takes_in_a_backlog_and_acks_it_at_once():
    ctx, port, res = await counting_server()
    _glue.install_datagram_hooks(ctx, Hooks())
    sock = raw_client()
    try:
        for mid in range(6):  # waiting at the socket while the loop is busy
            sock.sendto(get_c(0x10 + mid), ("127.0.0.1", port))
        assert _glue.poll_datagrams(ctx, limit=64) == 6  # as from inside a long task step
        loop = asyncio.get_running_loop()
        got = []
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.5)
            except TimeoutError:
                break
            got.append(Message.decode(data))
            if got[-1].mtype == CON:  # NSTART = 1: the next CON to us waits for this ACK
                sock.sendto(bytes((0x60, 0, data[2], data[3])), ("127.0.0.1", port))
        acks = [m for m in got if m.mtype == 2 and m.code == 0]  # empty ACKs
        separate = [m for m in got if m.mtype == CON and m.code == CONTENT]
        assert len(acks) == 6 and len(separate) == 6  # early ACK, then the answer on its own
        assert res.calls == 6
        sock.sendto(get_c(0x30), ("127.0.0.1", port))  # one at a time: piggybacked as usual
        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 2)
        assert Message.decode(data).mtype == 2 and Message.decode(data).code == CONTENT
        assert _glue.poll_datagrams(ctx) == 0
    finally:
        sock.close()
        await ctx.shutdown()
