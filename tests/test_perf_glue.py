"""The registration-path shortcuts in mcobserve.aio._glue give what aiocoap 0.4.17 itself gives."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiocoap.resource
import pytest
from aiocoap import ACK, CON, EMPTY, GET, Message
from aiocoap.transports.udp6 import UDP6EndpointAddress

from mcobserve.aio import _glue


def request() -> Message:
    m = Message(code=GET, uri_path=("a", "b"), observe=0, uri_query=("x=1",), echo=b"12", payload=b"p")
    m.mtype, m.mid, m.token = CON, 0x1234, b"tk"
    return m


def test_path_stripped_equals_aiocoaps_copy_and_is_independent():
    m = request()
    lean, deep = _glue.path_stripped(m), m.copy(uri_path=())
    assert lean.encode() == deep.encode()
    assert (lean.mtype, lean.mid, lean.token, lean.remote, lean.direction) == (
        m.mtype,
        m.mid,
        m.token,
        m.remote,
        m.direction,
    )
    assert lean.opt.uri_path == () and m.opt.uri_path == ("a", "b")
    lean.opt.observe = 1
    lean.opt.uri_path = ("z",)
    assert m.opt.observe == 0 and m.opt.uri_path == ("a", "b")  # the original is untouched


class Echo(aiocoap.resource.Resource):
    async def render_get(self, request: Message) -> Message:
        return Message(payload=f"{request.opt.uri_path}|{request.get_request_uri()}".encode())


@pytest.mark.parametrize("site_class", [aiocoap.resource.Site, _glue.LeanSite])
def test_lean_site_gives_resources_what_aiocoaps_site_gives(site_class):
    site = site_class()
    site.add_resource(("a", "b"), Echo())
    sub = aiocoap.resource.Site()
    sub.add_resource(("c",), Echo())
    site.add_resource(("s",), sub)
    m = request()
    m.remote = _remote()
    child, stripped = site._find_child_and_pathstripped_message(m)
    assert isinstance(child, Echo) and stripped.opt.uri_path == ()
    assert stripped.get_request_uri() == m.get_request_uri()
    m2 = Message(code=GET, uri_path=("s", "c"))
    m2.remote = m.remote
    child, stripped = site._find_child_and_pathstripped_message(m2)  # through a sub-site
    assert stripped.opt.uri_path == ("c",)
    m3 = Message(code=GET, uri_path=("nothing",))
    m3.remote = m.remote
    with pytest.raises(KeyError):
        site._find_child_and_pathstripped_message(m3)


def test_stripped_request_builds_its_uri_only_when_asked_and_keeps_the_first(monkeypatch):
    m = request()
    m.remote = _remote()
    expected = m.get_request_uri()
    calls = []
    real = Message.get_request_uri

    def counting(self: Message, *a: object, **kw: object) -> str:
        calls.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Message, "get_request_uri", counting)
    site = _glue.LeanSite()
    site.add_resource(("a", "b"), Echo())
    _child, stripped = site._find_child_and_pathstripped_message(m)
    assert calls == []  # not built while the request is routed
    assert stripped.get_request_uri() == expected  # built from the original request when asked
    again = _glue.path_stripped(stripped)  # stripped twice (a site inside a site): still the first URI
    assert again.get_request_uri() == expected
    assert again.copy().opt.uri_path == ()  # aiocoap's own copy of it works as for any message


def test_is_multicast_locally_answers_what_aiocoap_answers():
    _glue.install_address_cache()

    class Interface:
        pass

    iface = Interface()  # the address keeps only a weak reference
    for local, expected in (("ff02::fd", True), ("ff35:30:2001:db8::23", True), ("fd00::1", False),
                            ("::ffff:224.0.1.187", True), ("::ffff:10.0.0.1", False)):
        pktinfo = socket.inet_pton(socket.AF_INET6, local) + struct.pack("I", 1)
        a = UDP6EndpointAddress(("fd00::2", 5683, 0, 0), iface, pktinfo=pktinfo)
        assert a.is_multicast_locally is expected
        assert (a.as_response_address() is a) is (not expected)


@pytest.mark.asyncio
async def test_requests_are_served_without_printing_them(monkeypatch):
    """aiocoap names each rendering task with repr(request); after name_tasks_cheaply nothing prints it."""
    site = _glue.LeanSite()
    site.add_resource(("a", "b"), Echo())
    ctx = await aiocoap.Context.create_server_context(site, bind=("::1", 0))
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        _glue.name_tasks_cheaply(ctx)
        port = _glue.server_socket(ctx).getsockname()[1]

        def refuse(self: Message) -> str:
            raise AssertionError("a request was printed")

        monkeypatch.setattr(Message, "__repr__", refuse)
        sock.setblocking(False)
        sock.connect(("::1", port))
        req = Message(code=GET, uri_path=("a", "b"))
        req.mtype, req.mid, req.token = CON, 7, b"t7"
        sock.send(req.encode())
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(sock, 1500), 5)
        resp = Message.decode(data)
        assert resp.mid == 7 and resp.payload.startswith(b"()|coap://[::1]:")
    finally:
        monkeypatch.undo()
        sock.close()
        await ctx.shutdown()


def _remote() -> UDP6EndpointAddress:
    class Interface:
        pass

    return UDP6EndpointAddress(("::ffff:127.0.0.1", 40000, 0, 0), Interface())


def test_address_cache_prints_the_same_strings():
    before = {a: UDP6EndpointAddress._strip_v4mapped(a) for a in ("::ffff:10.1.2.3", "fd00:0:0:0::1", "::1")}
    _glue.install_address_cache()
    assert not _glue.install_address_cache()  # once per process
    after = {a: UDP6EndpointAddress._strip_v4mapped(a) for a in before}
    assert after == before == {"::ffff:10.1.2.3": "10.1.2.3", "fd00:0:0:0::1": "fd00::1", "::1": "::1"}
    remote = _remote()
    assert remote.hostinfo == "127.0.0.1:40000"


async def _loopback_group_server(**kw):
    """A GroupServer on 127.0.0.1 (trusted network) with a group-observable /r; returns it and its port."""
    import ipaddress

    from mcobserve.aio.resources import TextResource
    from mcobserve.aio.server import GroupServer
    from mcobserve.engine.common import Endpoint
    from mcobserve.engine.server import GroupPolicy

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = await GroupServer.create(
        Endpoint(ipaddress.ip_address("127.0.0.1"), port),
        Endpoint.parse("239.255.0.23:61616"),
        trusted_network=True,
        **kw,
    )
    server.add_resource(("r",), TextResource("v"), GroupPolicy(min_interval=0, counting=None))
    return server, port


#: IPV6_PKTINFO of a datagram that reached the server at 127.0.0.1 (v4-mapped).
PKTINFO_LO = [
    (
        socket.IPPROTO_IPV6,
        socket.IPV6_PKTINFO,
        struct.pack("16sI", socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1"), 0),
    )
]


@pytest.mark.asyncio
async def test_group_registration_is_acked_on_receipt_when_others_wait_else_after_its_5_03():
    """In a storm a registration waits behind thousands of others; its answer is a separate CON 5.03
    anyway (draft §4.2), so when more datagrams wait at the socket its empty ACK leaves while it is
    received (no retransmission). With nothing waiting the 5.03 is ready at once and leaves first, the
    ACK right after it (RFC 7252 §5.2.2 lets the response come first): the client has its answer one
    datagram earlier."""
    from aiocoap import CON as TYPE_CON
    from aiocoap import SERVICE_UNAVAILABLE

    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second.bind(("127.0.0.1", 0))
    server, port = await _loopback_group_server()
    try:
        mif = _glue.udp_message_manager(server.ctx).message_interface
        sent: list[bytes] = []
        real = mif.transport.sendmsg
        mif.transport.sendmsg = lambda data, anc, flags, addr: (
            sent.append(data),
            real(data, anc, flags, addr),
        )
        address = ("::ffff:127.0.0.1", client.getsockname()[1], 0, 0)
        pktinfo = PKTINFO_LO

        def registration(mid: int, path: str = "r", observe: int | None = 0) -> bytes:
            m = Message(code=GET, uri_path=(path,), observe=observe)
            m.mtype, m.mid, m.token = CON, mid, bytes([mid])
            return m.encode()

        # 1. others wait at the socket (the loop has not read them yet): ACKed on receipt
        client.sendto(b"\x40\x00\x00\x01", ("127.0.0.1", port))  # waits: an empty CON ping
        for mid, observe, path in ((0x10, 0, "r"), (0x11, None, "r"), (0x12, 0, "other")):
            sent.clear()
            mif.datagram_msg_received(registration(mid, path, observe), pktinfo, 0, address)  # no loop turn
            acks = [d for d in sent if d[:2] == b"\x60\x00"]
            if path == "r" and observe == 0:
                assert acks == [bytes((0x60, 0, 0, mid))]  # the empty ACK of that registration, at once
            else:
                assert acks == []  # a plain GET, or no group-observable resource: piggybacked later
        await asyncio.sleep(0.3)
        assert server.engine.observation(("r",)).count == 1

        # 2. nothing waits: nothing before the rendering; the separate CON 5.03 first, then its empty ACK
        # (another client: the first one's 5.03 waits for its ACK, and NSTART 1 holds the next back)
        other = ("::ffff:127.0.0.1", second.getsockname()[1], 0, 0)
        sent.clear()
        mif.datagram_msg_received(registration(0x20), pktinfo, 0, other)
        assert sent == []
        await asyncio.sleep(0.05)  # far below aiocoap's EMPTY_ACK_DELAY
        kinds = [Message.decode(d) for d in sent]
        assert [(k.mtype, k.code) for k in kinds][:2] == [(TYPE_CON, SERVICE_UNAVAILABLE), (ACK, EMPTY)]
        assert kinds[1].mid == 0x20 and kinds[0].token == bytes([0x20])
        assert server.engine.observation(("r",)).count == 2
    finally:
        client.close()
        second.close()
        await server.shutdown()


@pytest.mark.asyncio
async def test_registrations_acked_on_receipt_still_respect_the_in_flight_cap():
    """Registrations ACKed on receipt that meet the cap of informative responses in flight when their
    turn comes get the plain 5.03 Non-confirmable: clients that never ACK hold no more exchanges."""
    from aiocoap import NON, SERVICE_UNAVAILABLE

    from mcobserve.aio.sourceguard import GuardLimits

    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    for c in clients:
        c.bind(("127.0.0.1", 0))
        c.setblocking(False)
    server, port = await _loopback_group_server(guard_limits=GuardLimits(max_in_flight=2))
    try:
        mif = _glue.udp_message_manager(server.ctx).message_interface
        pktinfo = PKTINFO_LO
        clients[0].sendto(b"\x40\x00\x00\x01", ("127.0.0.1", port))  # more waits at the socket: a storm
        for k, c in enumerate(clients):  # six observers that never ACK (one exchange each, NSTART 1)
            m = Message(code=GET, uri_path=("r",), observe=0)
            m.mtype, m.mid, m.token = CON, 0x20 + k, bytes([0x20 + k])
            address = ("::ffff:127.0.0.1", c.getsockname()[1], 0, 0)
            mif.datagram_msg_received(m.encode(), pktinfo, 0, address)  # all ACKed before any is served
        await asyncio.sleep(0.5)
        assert _glue.open_exchanges(server.ctx) <= 2 and server.busy >= 1
        answers = []
        for c in clients:
            while True:
                try:
                    answers.append(Message.decode(c.recv(2048)))
                except BlockingIOError:
                    break
        busy = [a for a in answers if a.code == SERVICE_UNAVAILABLE and a.opt.content_format is None]
        assert busy and all(a.mtype is NON and a.opt.max_age == 5 for a in busy)
        assert len([a for a in answers if a.code.dotted == "0.00" and a.mtype is ACK]) == 6  # on receipt
    finally:
        for c in clients:
            c.close()
        await server.shutdown()
