"""aiocoap client side: observe a URI and follow the server into a group observation (draft §5).

``async for n in Observer(uri):`` yields :class:`~mcobserve.engine.client.Notification` objects, each
marked with how it arrived (``unicast``, ``multicast``, ``last_notif``), whether the server answers
with a traditional observation (RFC 7641) or a group observation. Multicast datagrams are heard on
plain sockets shared per (group, port, interface) and judged by the pure client engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
from aiocoap import GET, UNAUTHORIZED, Message

from ..constants import DEFAULT_CODE_POINTS, CodePoints
from ..engine.client import (
    Accepted,
    Dropped,
    Ended,
    GroupObservationClient,
    Notification,
    NotificationSecurity,
    Via,
    hostnames,
    informative_response_payload,
)
from ..engine.common import Endpoint, IPAddress
from ..engine.counting import DEFAULT_LEISURE
from ..errors import GroupObservationError, MalformedError, McObserveError
from ..oscore.groupobs import ClientGroupSecurity
from ..wire import MAX_INFORMATIVE_RESPONSE_SIZE, InformativeResponse, parse_message
from ..wire.feedback import set_feedback_divider
from . import _glue

log = logging.getLogger(__name__)

IPV6_MULTICAST_ALL = 29
IP_MULTICAST_ALL = 49
#: Datagrams queued per subscriber before the oldest are dropped (a flood must not eat memory).
QUEUE_LIMIT = 256


class ResponseError(McObserveError):
    """The server answered the registration with an error code."""

    def __init__(self, response: Message) -> None:
        self.response = response
        text = response.payload.decode("utf-8", "replace")[:200]
        super().__init__(f"server answered {response.code.dotted}" + (f": {text}" if text else ""))


def open_group_socket(group: Endpoint, ifindex: int = 0) -> socket.socket:
    """A socket hearing GRP_ADDR:GRP_PORT only, shareable by many processes (draft §5.2 step 1).

    SO_REUSEADDR + SO_REUSEPORT let many observers on one host bind the port; binding the group
    address and IPV6_MULTICAST_ALL / IP_MULTICAST_ALL = 0 keep out unicast and groups joined by others.
    """
    host = str(group.host)
    if group.is_v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if group.is_v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            s.bind((host, group.port, 0, ifindex))
            mreq = group.host.packed + struct.pack("@I", ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            s.bind((host, group.port))
            mreqn = group.host.packed + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


Heard = tuple[Message, Endpoint, float]


class GroupListener(asyncio.DatagramProtocol):
    """One joined socket; hands each datagram to the subscribers of its Token (draft §5.3)."""

    def __init__(self, group: Endpoint, ifindex: int, clock: Callable[[], float]) -> None:
        self.group = group
        self.ifindex = ifindex
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self._subscribers: dict[bytes, set[asyncio.Queue[Heard]]] = {}
        self.received = 0

    def subscribe(self, token: bytes) -> asyncio.Queue[Heard]:
        queue: asyncio.Queue[Heard] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.setdefault(token, set()).add(queue)
        return queue

    def unsubscribe(self, token: bytes, queue: asyncio.Queue[Heard]) -> None:
        subs = self._subscribers.get(token)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[token]

    @property
    def idle(self) -> bool:
        return not self._subscribers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received += 1
        try:
            message = Message.decode(data)
        except Exception as e:  # aiocoap raises several types for garbage
            log.info("dropped a datagram from %s on %s: not CoAP (%s)", addr[0], self.group, e)
            return
        subs = self._subscribers.get(message.token)
        if not subs:
            log.debug("ignored a datagram with unknown token %s on %s", message.token.hex(), self.group)
            return
        source = Endpoint.of(str(addr[0]).split("%", 1)[0], addr[1])
        now = self.clock()
        for queue in subs:
            if queue.full():
                queue.get_nowait()
                log.warning("notification queue of %s overflowed; dropped the oldest", self.group)
            queue.put_nowait((message, source, now))

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error on %s: %s", self.group, exc)


class ListenerPool:
    """Group listeners of this process, one per (GRP_ADDR, GRP_PORT, interface), shared by observations."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._listeners: dict[tuple[Endpoint, int], GroupListener] = {}

    async def acquire(self, group: Endpoint, ifindex: int = 0) -> GroupListener:
        key = (group, ifindex)
        listener = self._listeners.get(key)
        if listener is None:
            sock = open_group_socket(group, ifindex)
            loop = asyncio.get_running_loop()
            _, listener = await loop.create_datagram_endpoint(
                lambda: GroupListener(group, ifindex, self.clock), sock=sock
            )
            self._listeners[key] = listener
        return listener

    def release(self, listener: GroupListener) -> None:
        if listener.idle:
            self._listeners.pop((listener.group, listener.ifindex), None)
            if listener.transport is not None:
                listener.transport.close()

    def close(self) -> None:
        for listener in self._listeners.values():
            if listener.transport is not None:
                listener.transport.close()
        self._listeners.clear()


_default_pool: ListenerPool | None = None


def default_pool() -> ListenerPool:
    global _default_pool
    if _default_pool is None:
        _default_pool = ListenerPool()
    return _default_pool


async def _resolve_names(names: list[str]) -> dict[str, IPAddress]:
    loop = asyncio.get_running_loop()
    out: dict[str, IPAddress] = {}
    for name in names:
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except OSError as e:
            raise MalformedError(f"host name {name!r} in 'tp_info' does not resolve: {e}") from None
        addrs = {ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos}
        if not addrs:
            raise MalformedError(f"host name {name!r} in 'tp_info' does not resolve")
        out[name] = sorted(addrs, key=lambda a: (a.version, a.packed))[0]
    return out


class Observer:
    """Observe ``uri``; follow the server into a group observation when it answers with one (draft §5).

    Iterate it to get notifications. A malformed informative response leads to one new registration,
    then to :class:`GroupObservationError`. A multicast 5.03 from the server ends the iteration
    (:attr:`ended_by_server` is then set).
    """

    def __init__(
        self,
        uri: str,
        *,
        context: aiocoap.Context | None = None,
        interface: str | None = None,
        pool: ListenerPool | None = None,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        clock: Callable[[], float] = time.time,
        malformed_retries: int = 1,
        leisure: float = DEFAULT_LEISURE,
        rng: random.Random | None = None,
        credentials: dict[str, Any] | None = None,
        group_security: NotificationSecurity | None = None,
    ) -> None:
        self.uri = uri
        self._ctx = context
        self._own_ctx = False
        self.ifindex = socket.if_nametoindex(interface) if interface else 0
        self.pool = pool or default_pool()
        self.code_points = code_points
        self.clock = clock
        self.malformed_retries = malformed_retries
        self.group_client: GroupObservationClient | None = None
        self.registrations = 0
        self.ended_by_server: Message | None = None
        self.dropped: list[str] = []
        self.leisure = leisure
        self.rng = rng or random.SystemRandom()
        self.confirmations_sent = 0
        #: aiocoap credentials (its JSON format) for unicast OSCORE to the server (RFC 8613).
        self.credentials = credentials
        #: Group OSCORE for the notifications (draft §9.3); a self-managed group's material is accepted
        #: by default when it comes over OSCORE (App. C).
        self.group_security = group_security
        self._confirmations: set[asyncio.Task[None]] = set()

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self._run()

    def _request(self) -> Message:
        return Message(code=GET, uri=self.uri, observe=0)

    async def _context(self) -> aiocoap.Context:
        if self._ctx is None:
            self._ctx = await aiocoap.Context.create_client_context()
            self._own_ctx = True
            if self.credentials:
                self._ctx.client_credentials.load_from_dict(self.credentials)
        return self._ctx

    async def aclose(self) -> None:
        for task in list(self._confirmations):
            task.cancel()
        if self._own_ctx and self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None
            self._own_ctx = False

    async def _run(self) -> AsyncIterator[Notification]:
        ctx = await self._context()
        retries = self.malformed_retries
        try:
            while True:
                request = self._request()
                self.registrations += 1
                pending = _glue.request_limited(ctx, request, MAX_INFORMATIVE_RESPONSE_SIZE)  # Block2 bound
                try:
                    response = await pending.response
                    if _echo_request(response):  # the server verifies our address first (RFC 9175 §2.4)
                        retry = self._request()  # a new message: new MID and Token
                        retry.opt.echo = response.opt.echo
                        pending = _glue.request_limited(ctx, retry, MAX_INFORMATIVE_RESPONSE_SIZE)
                        response = await pending.response
                except _glue.oscore_rejections() as e:
                    # Altered in transit, or not from the server: reject it, register once more (§9).
                    if retries <= 0:
                        raise GroupObservationError(f"protected response rejected: {e}") from e
                    retries -= 1
                    log.warning("protected response rejected (%s); registering again", e)
                    continue
                try:
                    async for n in self._follow(pending, request, response):
                        yield n
                    return
                except MalformedError as e:
                    if retries <= 0:
                        raise GroupObservationError(f"malformed informative response: {e}") from e
                    retries -= 1
                    log.warning("malformed informative response (%s); registering again", e)
        finally:
            await self.aclose()

    async def _follow(
        self, pending: aiocoap.protocol.Request, request: Message, response: Message
    ) -> AsyncIterator[Notification]:
        while True:
            payload = informative_response_payload(response, self.code_points)
            if payload is not None:
                async for n in self._follow_group(request, payload, _glue.is_oscore_protected(response)):
                    yield n
                return
            if not response.code.is_successful():
                raise ResponseError(response)
            yield Notification(response, Via.UNICAST, self.clock())
            if response.opt.observe is None:
                return  # not observable: one response (RFC 7641 §3.2)
            shifted = None
            async for m in pending.observation:
                if informative_response_payload(m, self.code_points) is not None:
                    shifted = m  # the server moved us into a group observation (draft §4.2)
                    break
                if not m.code.is_successful():
                    raise ResponseError(m)
                yield Notification(m, Via.UNICAST, self.clock())
            if shifted is None:
                raise GroupObservationError("the server ended the observation")
            response = shifted

    def _security_for(self, informative: InformativeResponse) -> NotificationSecurity | None:
        """The configured group security, or a default one when the server protects (draft §9.3)."""
        if self.group_security is not None:
            return self.group_security
        protected_phantom = False
        if informative.ph_req is not None:
            with contextlib.suppress(MalformedError):
                protected_phantom = parse_message(informative.ph_req).opt.oscore is not None
        if informative.gp_material is not None or protected_phantom or informative.sec_gp is not None:
            return ClientGroupSecurity()
        return None

    async def _follow_group(
        self, request: Message, payload: bytes, protected_channel: bool = False
    ) -> AsyncIterator[Notification]:
        informative = InformativeResponse.decode(payload)
        client = GroupObservationClient(
            request, code_points=self.code_points, security=self._security_for(informative)
        )
        resolved = await _resolve_names(hostnames(informative))
        first = client.join(informative, self.clock(), resolved, protected_channel=protected_channel)
        self.group_client = client
        assert client.group is not None and client.token is not None
        listener = await self.pool.acquire(client.group, self.ifindex)
        queue = listener.subscribe(client.token)
        log.info(
            "joined group observation: token %s, group %s, server %s",
            client.token.hex(),
            client.group,
            client.server,
        )
        try:
            if first is not None and first.message.code.is_successful():
                yield first
            while True:
                message, source, now = await queue.get()
                verdict = client.on_multicast(message, source, now, self.rng, self.leisure)
                if isinstance(verdict, Accepted):
                    if verdict.confirm_in is not None:
                        self._schedule_confirmation(verdict.confirm_in)
                    yield verdict.notification
                elif isinstance(verdict, Dropped):
                    self.dropped.append(verdict.reason)
                    log.info("dropped a datagram on %s: %s", client.group, verdict.reason)
                elif isinstance(verdict, Ended):
                    self.ended_by_server = verdict.message
                    log.info("server cancelled the group observation (token %s)", client.token.hex())
                    return
        finally:
            listener.unsubscribe(client.token, queue)
            self.pool.release(listener)

    def _schedule_confirmation(self, delay: float) -> None:
        task = asyncio.create_task(self._confirm(delay))
        self._confirmations.add(task)
        task.add_done_callback(self._confirmations.discard)

    async def _confirm(self, delay: float) -> None:
        """NON GET, Observe 0, No-Response 26, Feedback-Divider 0, to the original target (draft §8.2)."""
        await asyncio.sleep(delay)
        ctx = self._ctx
        if ctx is None:
            return
        request = Message(
            code=GET, uri=self.uri, observe=0, no_response=26, transport_tuning=aiocoap.Unreliable
        )
        set_feedback_divider(request, 0, self.code_points)
        pending = ctx.request(request, handle_blockwise=False)
        self.confirmations_sent += 1
        await asyncio.sleep(0)  # let it leave; no response is expected
        pending.response.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending.response


def _echo_request(response: Message) -> bool:
    """A plain 4.01 carrying an Echo option: repeat the request with that Echo value (RFC 9175 §2.4)."""
    if response.code != UNAUTHORIZED or response.opt.echo is None:
        return False
    return not _glue.is_oscore_protected(response)  # aiocoap answers an OSCORE Echo itself


@contextlib.asynccontextmanager
async def observing(uri: str, **kwargs: Any) -> AsyncIterator[AsyncIterator[Notification]]:
    """``async with observing(uri) as notifications: async for n in notifications: ...``"""
    observer = Observer(uri, **kwargs)
    gen = observer._run()
    try:
        yield gen
    finally:
        await gen.aclose()
