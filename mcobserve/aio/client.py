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
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
from aiocoap import GET, SERVICE_UNAVAILABLE, UNAUTHORIZED, Message

from ..constants import DEFAULT_CODE_POINTS, CodePoints
from ..engine.client import (
    SILENCE_MARGIN,
    Accepted,
    Dropped,
    Ended,
    GroupObservationClient,
    Notification,
    NotificationBuffer,
    NotificationSecurity,
    Renewed,
    Via,
    hostnames,
    informative_response_payload,
    needs_group_security,
    registration_target_problem,
)
from ..engine.common import Endpoint, IPAddress, host_address
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


#: Seconds Observer.cancel() waits for the deregistration to leave (no response is expected).
DEREGISTRATION_GRACE = 0.5


class _Reregister(Exception):
    """Internal: the group went silent; register again (issue 13 item 10)."""


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


Heard = tuple[Message, Endpoint, float, bytes]


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
            queue.put_nowait((message, source, now, data))

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


#: Plain 5.03 answers in a row after which the registration fails (the server stays busy).
BUSY_RETRIES = 10
#: Up to this many seconds are added at random to a busy server's Max-Age, so that the clients it
#: turned away do not all come back at the same instant.
BUSY_JITTER = 1.0


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
        silence_margin: float = SILENCE_MARGIN,
        clock_synchronized: bool = False,
        busy_retries: int = BUSY_RETRIES,
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
        #: Registrations sent again because the group stayed silent beyond Max-Age (draft §4.3).
        self.silences = 0
        self.silence_margin = silence_margin
        #: The clock is synchronised to UTC: self-managed material then expires at 'exp' (App. C).
        self.clock_synchronized = clock_synchronized
        #: Registrations sent again because the group keying material expired (App. C).
        self.expirations = 0
        #: Keying material renewed in place by the server's multicast 5.03 (App. C).
        self.renewals = 0
        self.deregistrations_sent = 0
        #: Late informative responses whose 'last_notif' a GET replaced with newer state (item 11).
        self.revalidations = 0
        #: A plain 5.03 (the server is busy, e.g. its cap of informative responses in flight) is
        #: followed by a new registration after its Max-Age, at most this many times in a row.
        self.busy_retries = busy_retries
        #: Registrations sent again after such a 5.03 (RFC 7252 §5.9.3.4).
        self.busy_waits = 0
        self._wake_busy = asyncio.Event()
        self._cancelled = False
        self._queue: asyncio.Queue[Heard | None] | None = None
        self._pending: aiocoap.protocol.Request | None = None
        self._wake_traditional: asyncio.Event | None = None

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

    async def cancel(self) -> None:
        """Stop following the observation (draft §5.5, RFC 7641 §3.6); the iteration ends.

        In a group observation the server is told when it can be: a NON GET with Observe 1
        (deregistration) and No-Response 26 to the original URI, over the same (OSCORE) context as the
        registration, so that it lowers its observer counter without answering. Nothing is sent when
        the server already ended the group observation or none was joined; a traditional observation
        is simply forgotten (RFC 7641 §3.6), aiocoap rejects later notifications with RST.
        """
        if self._cancelled:
            return
        self._cancelled = True
        client = self.group_client
        if client is not None and client.joined and self._ctx is not None:
            client.leave()
            request = Message(
                code=GET, uri=self.uri, observe=1, no_response=26, transport_tuning=aiocoap.Unreliable
            )
            try:
                pending = self._ctx.request(request, handle_blockwise=False)
            except Exception as e:  # the deregistration is a courtesy: never fail the cancel on it
                log.info("deregistration not sent: %s", e)
            else:
                self.deregistrations_sent += 1
                # No response is expected (No-Response 26); give the request time to leave before the
                # exchange is dropped (cancelling at once can abort it before it is sent).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(pending.response, DEREGISTRATION_GRACE)
        if self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # wake the iteration
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending.observation.cancel()
        if self._wake_traditional is not None:
            self._wake_traditional.set()
        self._wake_busy.set()

    async def aclose(self) -> None:
        pending = list(self._confirmations)
        for task in pending:
            task.cancel()
        # Let the cancelled confirmations finish (their exchanges dropped) before the context shuts
        # down: aiocoap would otherwise fail a request future that is being cancelled.
        await asyncio.gather(*pending, return_exceptions=True)
        if self._own_ctx and self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None
            self._own_ctx = False

    async def _run(self) -> AsyncIterator[Notification]:
        request = self._request()
        address = host_address(request.remote.hostinfo) if request.remote is not None else None
        problem = registration_target_problem(address) if address is not None else None
        if problem is not None:  # draft §5.1: never register at a link-local server address
            raise GroupObservationError(problem)
        ctx = await self._context()
        retries = self.malformed_retries
        busy = self.busy_retries
        try:
            while not self._cancelled:
                request = self._request()
                self.registrations += 1
                requested_at = self.clock()
                # Block2 bound (issue 8 item 4)
                pending = self._pending = _glue.request_limited(ctx, request, MAX_INFORMATIVE_RESPONSE_SIZE)
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
                if busy > 0 and _busy(response, self.code_points):
                    busy -= 1
                    self.busy_waits += 1
                    delay = _retry_after(response) + self.rng.uniform(0.0, BUSY_JITTER)
                    log.info("server busy (5.03); registering again in %.1f s", delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake_busy.wait(), delay)
                    continue
                busy = self.busy_retries
                try:
                    async for n in self._follow(pending, request, response, requested_at):
                        yield n
                    return
                except _Reregister:
                    continue
                except MalformedError as e:
                    if retries <= 0:
                        raise GroupObservationError(f"malformed informative response: {e}") from e
                    retries -= 1
                    log.warning("malformed informative response (%s); registering again", e)
        finally:
            await self.aclose()

    async def _follow(
        self,
        pending: aiocoap.protocol.Request,
        request: Message,
        response: Message,
        requested_at: float | None = None,
    ) -> AsyncIterator[Notification]:
        while True:
            payload = informative_response_payload(response, self.code_points)
            if payload is not None:
                protected = _glue.is_oscore_protected(response)
                async for n in self._follow_group(request, payload, protected, requested_at):
                    yield n
                return
            if not response.code.is_successful():
                raise ResponseError(response)
            # Subscribe before the first yield: a slow reader must not miss the shift (item 7).
            buffer = self._subscribe(pending) if response.opt.observe is not None else None
            yield Notification(response, Via.UNICAST, self.clock())
            if buffer is None:
                return  # not observable: one response (RFC 7641 §3.2)
            shifted = None
            if self._cancelled:
                return
            async for m in self._traditional(buffer):
                if informative_response_payload(m, self.code_points) is not None:
                    shifted = m  # the server moved us into a group observation (draft §4.2)
                    break
                if not m.code.is_successful():
                    raise ResponseError(m)
                yield Notification(m, Via.UNICAST, self.clock())
            if shifted is None:
                if self._cancelled:
                    return
                raise GroupObservationError("the server ended the observation")
            response = shifted
            requested_at = None  # the age of a shifting 5.03 is unknown

    def _subscribe(self, pending: aiocoap.protocol.Request) -> NotificationBuffer:
        """Collect the traditional observation's events from now on, losing none that matters.

        aiocoap's own iterator keeps only the latest event, so the informative response that shifts
        a slow reader into the group observation was overwritten by the end of the observation that
        follows it (draft §4.2). :class:`NotificationBuffer` coalesces only successful notifications.
        """
        buffer = NotificationBuffer()
        ready = self._wake_traditional = asyncio.Event()

        def push(item: Message | BaseException) -> None:
            buffer.push(item)
            ready.set()

        with warnings.catch_warnings():  # the callback interface is public, only marked deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            pending.observation.register_callback(push)
            pending.observation.register_errback(push)
        return buffer

    async def _traditional(self, buffer: NotificationBuffer) -> AsyncIterator[Message]:
        """Read what :meth:`_subscribe` collected; ends with the observation."""
        ready = self._wake_traditional
        assert ready is not None
        try:
            while True:
                item = buffer.pop()
                if item is None:
                    if self._cancelled:
                        return
                    ready.clear()
                    await ready.wait()
                    continue
                if isinstance(item, Message):
                    yield item
                elif isinstance(item, aiocoap.error.ObservationCancelled | aiocoap.error.NotObservable):
                    return
                else:
                    raise item
        finally:
            self._wake_traditional = None

    def _security_for(self, informative: InformativeResponse) -> NotificationSecurity | None:
        """The configured group security, or a default one when the server protects (draft §9.3)."""
        if self.group_security is not None:
            return self.group_security
        protected_phantom = False
        if informative.ph_req is not None:
            with contextlib.suppress(MalformedError):
                protected_phantom = parse_message(informative.ph_req).opt.oscore is not None
        if needs_group_security(informative, protected_phantom):  # 'sec_gp' alone is ignored (§9.1)
            return ClientGroupSecurity()
        return None

    async def _follow_group(
        self,
        request: Message,
        payload: bytes,
        protected_channel: bool = False,
        requested_at: float | None = None,
    ) -> AsyncIterator[Notification]:
        informative = InformativeResponse.decode(payload)
        if informative.tp_info is not None and not informative.tp_info.has_details:
            # 'tpi_server' names a reverse proxy standing in for the server (proxy draft §10).
            from ..proxy.client import follow_stand_in

            async for n in follow_stand_in(self, request, informative, protected_channel):
                yield n
            return
        client = GroupObservationClient(
            request,
            code_points=self.code_points,
            security=self._security_for(informative),
            silence_margin=self.silence_margin,
            clock_synchronized=self.clock_synchronized,
        )
        resolved = await _resolve_names(hostnames(informative))
        first = client.join(
            informative,
            self.clock(),
            resolved,
            protected_channel=protected_channel,
            requested_at=requested_at,
        )
        self.group_client = client
        assert client.group is not None and client.token is not None
        listener = await self.pool.acquire(client.group, self.ifindex)
        queue = listener.subscribe(client.token)
        self._queue = queue  # type: ignore[assignment]
        log.info(
            "joined group observation: token %s, group %s, server %s",
            client.token.hex(),
            client.group,
            client.server,
        )
        revalidation = None
        if client.needs_revalidation:
            revalidation = asyncio.create_task(self._revalidate(client, queue))
        try:
            if first is not None and first.message.code.is_successful():
                yield first
            while True:
                deadline = client.silence_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    if client.material_expired(self.clock()):
                        # App. C: stop using expired keying material; register again for new one.
                        self.expirations += 1
                        log.warning("group keying material expired; registering again")
                        raise _Reregister from None
                    # Nothing for longer than Max-Age + margin although the server MUST refresh
                    # (draft §4.3): a lost cancellation, a restarted or dead server. Register again.
                    self.silences += 1
                    log.warning(
                        "no notification on %s for %.0f s (Max-Age %.0f s); registering again",
                        client.group,
                        self.clock() - (client.last_heard or 0.0),
                        client.max_age,
                    )
                    raise _Reregister from None
                if item is None or self._cancelled:
                    return
                if isinstance(item, Message):  # the answer to the re-validation GET (item 11)
                    fresh = client.revalidated(item, self.clock())
                    if fresh is not None:
                        self.revalidations += 1
                        yield fresh
                    continue
                message, source, now, raw = item
                verdict = client.on_multicast(message, source, now, self.rng, self.leisure, raw=raw)
                if isinstance(verdict, Accepted):
                    if verdict.confirm_in is not None:
                        self._schedule_confirmation(verdict.confirm_in)
                    yield verdict.notification
                elif isinstance(verdict, Dropped):
                    self.dropped.append(verdict.reason)
                    log.info("dropped a datagram on %s: %s", client.group, verdict.reason)
                elif isinstance(verdict, Renewed):
                    if not verdict.ok:
                        log.warning(
                            "group keying material not renewed (%s); registering again", verdict.reason
                        )
                        raise _Reregister
                    self.renewals += 1
                    log.info("group keying material renewed (token %s)", client.token.hex())
                elif isinstance(verdict, Ended):
                    self.ended_by_server = verdict.message
                    log.info("server cancelled the group observation (token %s)", client.token.hex())
                    return
        finally:
            if revalidation is not None:
                revalidation.cancel()
            self._queue = None
            listener.unsubscribe(client.token, queue)
            self.pool.release(listener)

    async def _revalidate(self, client: GroupObservationClient, queue: asyncio.Queue[Any]) -> None:
        """One GET (conditional when 'last_notif' has an ETag) after a late informative response."""
        ctx = self._ctx
        if ctx is None:
            return
        request = Message(code=GET, uri=self.uri)
        etag = client.revalidation_etag()
        if etag is not None:
            request.opt.etag = etag  # answered 2.03 Valid when unchanged (RFC 7252 §5.10.6)
        try:
            response = await asyncio.wait_for(ctx.request(request).response, 30)
        except Exception as e:  # a courtesy: the group observation goes on without it
            log.info("re-validation GET failed: %s", e)
            return
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(response)

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
        # No response is expected; cancelling at once could abort the request before it leaves.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(pending.response, DEREGISTRATION_GRACE)


def _busy(response: Message, code_points: CodePoints) -> bool:
    """A 5.03 that is not an informative response: come back after Max-Age (RFC 7252 §5.9.3.4), as a
    server answers when too many informative responses wait for their ACK (docs/security.md)."""
    return (
        response.code == SERVICE_UNAVAILABLE
        and response.opt.observe is None
        and informative_response_payload(response, code_points) is None
    )


def _retry_after(response: Message) -> float:
    """Max-Age of a 5.03, 60 s when absent (RFC 7252 §5.10.5)."""
    max_age = response.opt.max_age
    return 60.0 if max_age is None else float(max_age)


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
