"""The proxy on aiocoap: a CoAP forward (or reverse) proxy that takes part in group observations.

draft-ietf-core-multicast-notifications-proxy §4, §6: toward the server the proxy is an
:class:`~mcobserve.aio.client.Observer` (one per target resource, following the server into the group
observation and answering rough counting itself); toward its clients it is an RFC 7641 server whose
notifications carry each client's own Token. What to forward to whom is decided by
:class:`~mcobserve.proxy.engine.ProxyEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.interfaces
import aiocoap.pipe
from aiocoap import BAD_GATEWAY, GATEWAY_TIMEOUT, GET, NON, Message

from ..aio import _glue
from ..aio.client import ListenerPool, Observer, ResponseError
from ..aio.sourceguard import ChallengeMemory, DropLog, GuardLimits, SourceGuard, bounded_send
from ..constants import DEFAULT_CODE_POINTS, CodePoints
from ..engine.client import informative_response_payload
from ..errors import McObserveError, ProxyError
from ..proxy.engine import (
    ClientKey,
    DeterministicTarget,
    Fanout,
    ProxyEngine,
    Target,
    Ticket,
    check_options,
    deterministic_target,
    forward_request,
    listen_to,
    target_of,
    ticket_of,
)
from ..wire import InformativeResponse, parse_message

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]

#: How long a forwarded non-Observe request may take before the proxy answers 5.04 (RFC 7252 §5.9.2.5).
FORWARD_TIMEOUT = 60.0


#: Receive buffer of the client-facing socket, as the server's (``GroupServer.create``).
RECEIVE_BUFFER = 4 << 20
#: Challenged requests remembered at most.
CHALLENGED_MAX = 4096


class ProxySite(aiocoap.interfaces.Resource):
    """The proxy's whole resource tree: every request is for a target elsewhere (RFC 7252 §5.7)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False

    async def render(self, request: Message) -> Message:
        """One request, one response (what aiocoap's default ``render_to_pipe`` would ask for): the same
        handling as :meth:`render_to_pipe`, returning its first response (an observation through this
        entry point ends after it)."""
        pipe = aiocoap.pipe.Pipe(request, log)
        first: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def take(event: Any) -> bool:
            if not first.done():
                if event.message is not None:
                    first.set_result(event.message)
                else:
                    first.set_exception(event.exception or RuntimeError("no response"))
            return False  # one response is all this entry point returns

        pipe.on_event(take)
        task = asyncio.create_task(self.proxy._handle(pipe))
        try:
            return await first
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        await self.proxy._handle(pipe)


class ClientSideGuard:
    """Source verification and the amplification bound on the proxy's client-facing socket (RFC 9175
    §2.4), with :class:`~mcobserve.aio.sourceguard.SourceGuard` as the server uses it
    (:class:`mcobserve.aio._glue.DatagramHooks`).

    * Until a client address is verified, the proxy sends it at most 3x the bytes it received.
    * Requests that would make the proxy send to an address for a long time (Observe registrations,
      ticket requests, Deterministic phantom requests) from an unverified address are answered with a
      small 4.01 + Echo first. A valid Echo verifies the address and is removed before forwarding (it is
      the proxy's). OSCORE-protected registrations relayed to the server are not challenged: a protected
      response from the server verifies the address, as the server's own OSCORE check does.
    * An address with an observation at the proxy stays unbounded while the observation lasts (it was
      verified when the observation began; RFC 7641 ends it when a Confirmable notification goes
      unacknowledged).
    """

    def __init__(self, proxy: Proxy, guard: SourceGuard | None) -> None:
        self.proxy = proxy
        self.guard = guard
        self.clock = proxy.clock
        self.drops = DropLog(log)
        self.observing = proxy._observing_sources
        #: (address, port, MID) of requests answered with a 4.01 + Echo, oldest first (bounded).
        self.challenged = ChallengeMemory(CHALLENGED_MAX)

    def on_datagram(self, source: str, size: int) -> None:
        if self.guard is not None and source not in self.observing:
            self.guard.received(source, size, self.clock())

    def on_dropped(self, source: str, reason: str) -> None:
        self.drops.drop(reason, source, self.clock())

    def on_message(self, source: str, message: Message) -> bool | Message:
        guard = self.guard
        if guard is None or not message.code.is_request():
            return True
        now = self.clock()
        echo = message.opt.echo
        if echo is not None and guard.check_echo(source, echo, now):
            message.opt.echo = None  # the proxy's own Echo: not forwarded
            return True
        key = _glue.exchange_key(message)
        if key in self.challenged:  # a retransmission of a challenged request: challenged again
            return self.challenged.challenge(guard, source, None, now)
        if source in self.observing or guard.verified(source, now):
            return True
        if not self.needs_verification(message):
            return True
        return self.challenged.challenge(guard, source, key, now)

    def needs_verification(self, message: Message) -> bool:
        """An Observe registration, unless it is an OSCORE request relayed to the server (proxy draft §5:
        ticket requests and Deterministic Requests carry OSCORE too, but are the proxy's to serve)."""
        if message.opt.observe != 0:
            return False
        if message.opt.oscore is None:
            return True
        cp = self.proxy.code_points
        return bool(
            message.opt.get_option(cp.listen_to_multicast_responses)
            or message.opt.get_option(cp.request_hash)
        )

    def may_ack_early(self, source: str, message: Message) -> bool:
        if self.guard is None or message.opt.oscore is not None:
            return True
        return source in self.observing or self.guard.verified(source, self.clock())

    def on_send(self, source: str, message: Message, size: int) -> Message | None:
        guard = self.guard
        if guard is None or source in self.observing:
            return message
        return bounded_send(guard, self.drops, source, message, size, self.clock())


class Proxy:
    """``mcobserve proxy``: serve clients that observe through us with one registration per target."""

    def __init__(
        self,
        *,
        reverse: Target | None = None,
        interface: str | None = None,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        credentials: dict[str, Any] | None = None,
        trusted_network: bool = False,
        guard_limits: GuardLimits | None = None,
    ) -> None:
        self.reverse = reverse
        #: Source verification toward clients (:class:`ClientSideGuard`); None with ``trusted_network``.
        self.guard = None if trusted_network else SourceGuard(guard_limits)
        #: Client addresses with an observation at the proxy, and how many.
        self._observing_sources: dict[str, int] = {}
        #: aiocoap credentials (its JSON format) of the proxy itself toward servers: its own
        #: registrations then travel over OSCORE and Group OSCORE notifications are verified by the
        #: proxy, which serves its clients the plaintext (the proxy is trusted, proxy draft §4).
        self.credentials = credentials
        self.interface = interface
        self.code_points = code_points
        self.on_event = on_event
        self.clock = clock
        self.engine = ProxyEngine(rng or random.SystemRandom(), code_points)
        self.pool = ListenerPool(clock)
        self.server_ctx: aiocoap.Context | None = None
        self.client_ctx: aiocoap.Context | None = None
        self._pipes: dict[ClientKey, tuple[aiocoap.pipe.Pipe, asyncio.Future[None]]] = {}
        self._upstreams: dict[Target, asyncio.Task[None]] = {}
        self._observers: dict[Target, Observer] = {}
        self.upstream_registrations = 0

    async def start(self, bind: tuple[str, int]) -> None:
        """Serve on ``bind`` (address, port); the client side uses its own ephemeral port."""
        _glue.install_backlog_fix()  # N Confirmable notifications in flight must not cost O(N^2)
        self.client_ctx = await aiocoap.Context.create_client_context()
        if self.credentials:
            self.client_ctx.client_credentials.load_from_dict(self.credentials)
        self.server_ctx = await aiocoap.Context.create_server_context(ProxySite(self), bind=bind)
        _glue.install_datagram_hooks(self.server_ctx, ClientSideGuard(self, self.guard))
        # The ACKs of N Confirmable notifications arrive at once: a default buffer drops some, and
        # their notifications are sent again after ACK_TIMEOUT (as the server does, aio/server.py).
        _glue.set_receive_buffer(self.server_ctx, RECEIVE_BUFFER)
        guard = self.guard
        limits = guard.limits if guard is not None else GuardLimits()
        if guard is None:
            _glue.bound_deduplication(self.server_ctx, lambda source: True, (limits.dedup_verified, 0))
        else:
            _glue.bound_deduplication(
                self.server_ctx,
                lambda source: source in self._observing_sources or guard.verified(source, self.clock()),
                (limits.dedup_verified, limits.dedup_unverified),
            )
        self._emit("started", bind=f"[{bind[0]}]:{bind[1]}" if ":" in bind[0] else f"{bind[0]}:{bind[1]}")

    async def shutdown(self) -> None:
        for task in list(self._upstreams.values()):
            task.cancel()
        for task in list(self._upstreams.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.pool.close()
        for ctx in (self.server_ctx, self.client_ctx):
            if ctx is not None:
                await ctx.shutdown()
        self.server_ctx = self.client_ctx = None

    # -- requests from clients ----------------------------------------------------------------

    async def _handle(self, pipe: aiocoap.pipe.Pipe) -> None:
        request = pipe.request
        try:
            ticket = ticket_of(request, self.code_points)
            if ticket is None:
                check_options(request, self.code_points)
            target = target_of(request, self.reverse)
        except ProxyError as e:
            pipe.add_response(Message(code=e.code, payload=str(e).encode()[:200]), is_last=True)
            return
        det = deterministic_target(request, target, self.code_points) if ticket is None else None
        if ticket is not None:
            await self._observe(pipe, ticket)  # never forwarded to the server (proxy draft §5.2)
        elif det is not None:
            await self._observe(pipe, det)  # one exchange upstream for all, then the cache (§9)
        elif request.opt.oscore is not None:
            await self._relay(pipe, request, target)  # protected end to end: one exchange each
        elif request.code == GET and request.opt.observe == 0:
            await self._observe(pipe, target)
        else:
            await self._forward(pipe, request, target)

    async def _observe(self, pipe: aiocoap.pipe.Pipe, target: Target | Ticket | DeterministicTarget) -> None:
        """Add the client to the observers of ``target`` (RFC 7641 §5, proxy draft §4)."""
        request = pipe.request
        key: ClientKey = (request.remote, request.token)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reg = self.engine.register(target, key, self.clock())
        entry = (pipe, done)
        self._pipes[key] = entry
        source = self._observing(request, +1)
        self._emit(
            "client_registered",
            target=_name(target),
            remote=str(request.remote.hostinfo),
            token=request.token.hex(),
            clients=self.engine.clients(target),
            from_cache=reg.answer is not None,
        )
        if reg.register_upstream:
            if isinstance(target, DeterministicTarget):
                self._upstreams[target] = asyncio.create_task(self._deterministic(target))  # type: ignore[index]
                self.upstream_registrations += 1
            elif isinstance(target, Ticket):
                self._upstreams[target] = asyncio.create_task(self._listen(target))  # type: ignore[index]
                self._emit(
                    "ticket_listening",
                    target=_name(target),
                    group=str(target.group),
                    token=target.token.hex(),
                )
            else:
                self._start_upstream(target)
        if reg.answer is not None:
            pipe.add_response(reg.answer, is_last=False)
        try:
            await done  # ended by the last response, or cancelled when the client loses interest
        finally:
            self._observing(request, -1, source)
            if self._pipes.get(key) is entry:
                del self._pipes[key]
                gone = self.engine.deregister(key)
                self._emit("client_left", target=_name(target), remote=str(request.remote.hostinfo))
                if gone is not None:
                    self._stop_upstream(gone)

    def _observing(self, request: Message, delta: int, source: str | None = None) -> str | None:
        """Count an observation of the client at ``request``'s address (:class:`ClientSideGuard`)."""
        source = source if source is not None else _glue.udp_source(request)
        if source is None:
            return None
        n = self._observing_sources.get(source, 0) + delta
        if n > 0:
            self._observing_sources[source] = n
        else:
            self._observing_sources.pop(source, None)
        return source

    async def _forward(self, pipe: aiocoap.pipe.Pipe, request: Message, target: Target) -> None:
        """A non-Observe request: forward it and answer with the response (RFC 7252 §5.7.2)."""
        assert self.client_ctx is not None
        out = forward_request(request, target)
        if out.opt.observe is not None:
            out.opt.observe = None  # a deregistration (Observe 1) is a plain GET upstream (RFC 7641 §3.6)
        try:
            response = await asyncio.wait_for(self.client_ctx.request(out).response, FORWARD_TIMEOUT)
        except TimeoutError:
            pipe.add_response(Message(code=GATEWAY_TIMEOUT), is_last=True)
            return
        except Exception as e:  # aiocoap raises many types for network errors
            pipe.add_response(Message(code=BAD_GATEWAY, payload=str(e).encode()[:200]), is_last=True)
            return
        answer = Message(code=response.code, payload=response.payload)
        for option in response.opt.option_list():
            answer.opt.add_option(option)
        self._emit("forwarded_request", target=target.uri(), code=response.code.dotted)
        pipe.add_response(answer, is_last=True)

    # -- the proxy's own observation at the server -------------------------------------------

    def _start_upstream(self, target: Target) -> None:
        self._upstreams[target] = asyncio.create_task(self._upstream(target))

    def _stop_upstream(self, target: Target | Ticket) -> None:
        task = self._upstreams.pop(target, None)  # type: ignore[arg-type]
        self._observers.pop(target, None)  # type: ignore[arg-type]
        if task is not None:
            task.cancel()
            self._emit("upstream_stopped", target=_name(target))

    async def _relay(self, pipe: aiocoap.pipe.Pipe, request: Message, target: Target) -> None:
        """An OSCORE-protected request: forwarded as it is, every response returned as it is.

        The proxy cannot read it (RFC 8613 §4.1.3); an informative response inside looks like a 2.05
        to it (proxy draft §5), so each client has its own exchange with the server.
        """
        assert self.client_ctx is not None
        out = forward_request(request, target)
        pending = self.client_ctx.request(out, handle_blockwise=False)
        self._emit("relayed_request", target=target.uri(), observe=request.opt.observe)
        source: str | None = None
        try:
            response = await asyncio.wait_for(pending.response, FORWARD_TIMEOUT)
            if response.opt.oscore is not None and self.guard is not None:
                # The server unprotected the request with a known context: the address is verified,
                # as the server's own OSCORE check does it (mcobserve.aio.sourceguard).
                address = _glue.udp_source(request)
                if address is not None:
                    self.guard.verify(address, self.clock(), by="oscore")
            observing = request.opt.observe == 0 and response.opt.observe is not None
            if observing:
                source = self._observing(request, +1)
            pipe.add_response(_copy(response), is_last=not observing)
            if observing:
                async for m in pending.observation:
                    pipe.add_response(_copy(m), is_last=False)
                pipe.add_response(Message(code=BAD_GATEWAY, payload=b"observation ended"), is_last=True)
        except TimeoutError:
            pipe.add_response(Message(code=GATEWAY_TIMEOUT), is_last=True)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                pending.observation.cancel()
            raise
        except Exception as e:  # aiocoap raises many types for network errors
            pipe.add_response(Message(code=BAD_GATEWAY, payload=str(e).encode()[:200]), is_last=True)
        finally:
            if source is not None:
                self._observing(request, -1, source)

    async def _deterministic(self, det: DeterministicTarget) -> None:
        """Forward a Deterministic phantom request once (proxy draft §9): an unprotected informative
        response tells where to listen; anything else is relayed to every client as it is."""
        assert self.client_ctx is not None
        out = forward_request(parse_message(det.request), det.target)
        self._emit("upstream_registered", target=_name(det))
        fan: Fanout | None = None
        try:
            pending = self.client_ctx.request(out, handle_blockwise=False)
            first = await asyncio.wait_for(pending.response, FORWARD_TIMEOUT)
            payload = (
                informative_response_payload(first, self.code_points) if first.opt.oscore is None else None
            )
            if payload is not None:
                listen = listen_to(InformativeResponse.decode(payload), det.request)
                informative = InformativeResponse.decode(payload)
                self._emit(
                    "upstream_group_joined",
                    target=_name(det),
                    group=str(listen.group),
                    token=listen.token.hex(),
                )
                if informative.last_notif is not None:  # populates the cache (proxy draft §4, §9)
                    last = parse_message(informative.last_notif, token=listen.token)
                    last.mtype = NON
                    seeded = self.engine.on_protected(det, last, listen.server, self.clock(), listen)
                    if seeded is not None:
                        self._deliver(det, seeded, "last_notif", last.opt.observe)
                await self._listen(det, listen)
                return
            seeded = self.engine.on_unchanged(det, first, self.clock())
            if seeded is not None:
                self._deliver(det, seeded, "unicast", first.opt.observe)
            if first.opt.observe is not None:
                async for m in pending.observation:
                    relayed = self.engine.on_unchanged(det, m, self.clock())
                    if relayed is not None:
                        self._deliver(det, relayed, "unicast", m.opt.observe)
            fan = self.engine.on_upstream_failed(det, None, "the server ended the observation")
        except asyncio.CancelledError:
            raise
        except McObserveError as e:
            fan = self.engine.on_upstream_failed(det, None, f"unusable informative response: {e}")
        except Exception as e:  # aiocoap's network errors
            fan = self.engine.on_upstream_failed(det, None, f"{type(e).__name__}: {e}")
        finally:
            if self._upstreams.get(det) is asyncio.current_task():  # type: ignore[call-overload]
                del self._upstreams[det]  # type: ignore[arg-type]
        if fan is not None:
            self._deliver(det, fan, "error", None)

    async def _listen(self, ticket: Ticket | DeterministicTarget, listen: Ticket | None = None) -> None:
        """Listen to the group of a ticket request and forward protected notifications (§5.2)."""
        listen = listen if listen is not None else ticket  # type: ignore[assignment]
        assert isinstance(listen, Ticket)
        ifindex = socket.if_nametoindex(self.interface) if self.interface else 0
        listener = await self.pool.acquire(listen.group, ifindex)
        queue = listener.subscribe(listen.token)
        try:
            while True:
                message, source, now, _raw = await queue.get()
                fan = self.engine.on_protected(ticket, message, source, now, listen)
                if fan is None:
                    log.info("dropped a datagram on %s for token %s", listen.group, listen.token.hex())
                    continue
                self._deliver(ticket, self.tamper(fan), "multicast", message.opt.observe)
        finally:
            listener.unsubscribe(listen.token, queue)
            self.pool.release(listener)

    def tamper(self, fan: Fanout) -> Fanout:
        """Identity. A test subclass alters notifications here to show that clients detect it."""
        return fan

    async def _upstream(self, target: Target) -> None:
        """Observe ``target`` once for all clients, following the server into the group (proxy §4)."""
        observer = Observer(
            target.uri(),
            context=self.client_ctx,
            interface=self.interface,
            pool=self.pool,
            code_points=self.code_points,
            clock=self.clock,
        )
        self._observers[target] = observer
        self.upstream_registrations += 1
        self._emit("upstream_registered", target=target.uri())
        reported_group = False
        fan: Fanout | None = None
        try:
            async for n in observer:
                if not reported_group and observer.group_client is not None:
                    reported_group = True
                    g = observer.group_client
                    self._emit(
                        "upstream_group_joined",
                        target=target.uri(),
                        group=str(g.group),
                        token=(g.token or b"").hex(),
                        server=str(g.server),
                    )
                fan = self.engine.on_upstream(target, n.message, self.clock())
                if fan is not None:
                    self._deliver(target, fan, n.via.value, n.observe)
                    if fan.last:
                        return
            fan = self.engine.on_upstream_failed(
                target, observer.ended_by_server, "the server ended the observation"
            )
        except asyncio.CancelledError:
            raise
        except ResponseError as e:
            fan = self.engine.on_upstream_failed(target, e.response, str(e))
        except McObserveError as e:
            fan = self.engine.on_upstream_failed(target, None, str(e))
        except Exception as e:  # network errors from aiocoap
            log.warning("observation of %s failed: %s", target.uri(), e)
            fan = self.engine.on_upstream_failed(target, None, f"{type(e).__name__}: {e}")
        finally:
            if self._upstreams.get(target) is asyncio.current_task():
                del self._upstreams[target]
                self._observers.pop(target, None)
        if fan is not None:
            self._deliver(target, fan, "error", None)

    def _deliver(self, target: Target | Ticket, fan: Fanout, via: str, upstream_observe: int | None) -> None:
        """Send the notification to each client with its own Token (the pipe's exchange sets it)."""
        message = fan.message
        sent = 0
        for key in fan.clients:
            entry = self._pipes.get(key)
            if entry is None:
                continue
            pipe, done = entry
            out = Message(code=message.code, payload=message.payload)
            out.opt = message.opt  # read-only from here on; aiocoap sets Token, MID and type per send
            pipe.add_response(out, is_last=fan.last)
            sent += 1
            if fan.last and not done.done():
                done.set_result(None)
        if self.on_event is not None:
            self._emit(
                "notification_forwarded",
                target=_name(target),
                via=via,
                code=message.code.dotted,
                upstream_observe=upstream_observe,
                observe=message.opt.observe,
                clients=sent,
                last=fan.last,
            )

    def _emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, "time": round(self.clock(), 3), **fields})


def _name(target: Target | Ticket | DeterministicTarget) -> str:
    """How events name a target: its URI, the group and Token of a ticket request, or the URI and
    Request-Hash prefix of a Deterministic Request."""
    if isinstance(target, Ticket):
        return f"ticket:{target.group}/{target.token.hex()}"
    if isinstance(target, DeterministicTarget):
        return f"deterministic:{target.target.uri()}#{hashlib.sha256(target.request).hexdigest()[:12]}"
    return target.uri()


def _copy(message: Message) -> Message:
    """A response as received, to be sent on another exchange (new Token and MID, same options)."""
    out = Message(code=message.code, payload=message.payload)
    for option in message.opt.option_list():
        out.opt.add_option(option)
    return out
