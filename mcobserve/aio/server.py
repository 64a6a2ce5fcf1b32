"""aiocoap server side: group-observable resources and the actions of the server engine (draft §4, §6).

:class:`GroupServer` owns an aiocoap server context and a :class:`~mcobserve.engine.server.ServerEngine`.
Resources derived from :class:`GroupObservableResource` ask the engine what to do with every Observe
registration; the server renders the phantom request, sends multicast notifications from its own
socket and answers registrations with informative responses. Protocol rules stay in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiocoap
import aiocoap.credentials
import aiocoap.resource
from aiocoap import (
    BAD_REQUEST,
    CON,
    CONTENT,
    FETCH,
    GET,
    INTERNAL_SERVER_ERROR,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    Code,
    Message,
)

from ..constants import DEFAULT_CODE_POINTS, NO_RESPONSE_5XX, CodePoints
from ..engine.common import Endpoint, bad_option_response, host_address
from ..engine.server import (
    Action,
    Cancelled,
    CongestionControl,
    Counted,
    GroupObservation,
    GroupPolicy,
    GroupSecurity,
    Kind,
    NotificationRefused,
    Path,
    Render,
    RenderReason,
    SendMulticast,
    ServerEngine,
)
from ..errors import AddressInUseError
from ..wire.feedback import get_feedback_divider
from . import _glue
from .authz import Authorize, Policy, refusal
from .guard import RequestGuard, suppress_response
from .sourceguard import ChallengeMemory, DropLog, GuardLimits, SourceGuard, bounded_send

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]


class GroupObservableResource(aiocoap.resource.ObservableResource):
    """An observable resource whose observers may be served by a group observation (draft §4).

    Subclass it like :class:`aiocoap.resource.ObservableResource`: implement ``render_get`` and call
    :meth:`updated_state` on change. Attached to a :class:`GroupServer` it follows the server's
    policy; unattached it behaves as a plain RFC 7641 resource.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mc_server: GroupServer | None = None
        self._mc_path: Path = ()

    def registration_needs_verification(self, request: Message) -> bool:
        """Would a registration get a large answer (RFC 9175 §2.4)? False: the answer is small (e.g. a
        4.04 within 3x of the request) and the resource answers it without an Echo round trip."""
        return True

    async def add_observation(
        self, request: Message, serverobservation: aiocoap.protocol.ServerObservation
    ) -> None:
        """A traditional observation is accepted (RFC 7641); the server keeps track for a later shift."""
        self._observations.add(serverobservation)
        key = _observer_key(request)
        as_sent = request.copy(uri_path=self._mc_path)

        def _cancel() -> None:
            self._observations.discard(serverobservation)
            self.update_observation_count(len(self._observations))
            if self._mc_server is not None:
                self._mc_server._traditional_ended(self._mc_path, key, serverobservation)

        serverobservation.accept(_cancel)
        self.update_observation_count(len(self._observations))
        if self._mc_server is not None:
            self._mc_server._traditional_started(self._mc_path, key, serverobservation, as_sent)

    def updated_state(self, response: Message | None = None) -> None:
        """Notify traditional observers and the group observation, if any (draft §4.3)."""
        super().updated_state(response)
        if self._mc_server is not None:
            self._mc_server._changed(self._mc_path)

    def get_link_description(self) -> dict[str, Any]:
        """Adds the valueless ``gp-obs`` target attribute when group observation is possible (draft §6)."""
        link = super().get_link_description()
        if self._mc_server is not None:
            link["gp-obs"] = None
        return link

    def authorize(self, request: Message, method: Code) -> Code | None:
        """Decide this request: None to serve it, or the error code to answer (see :mod:`.authz`).

        Override it to decide per request; the default asks the server's hook (``authorize=`` of
        :meth:`GroupServer.create`), and allows everything while the resource is not attached.
        """
        if self._mc_server is None:
            return None
        return self._mc_server.authorize(request, self._mc_path, method)

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        request = pipe.request
        refused = self.authorize(request, request.code)
        if refused is not None:  # before anything reaches the resource, its observers or the group
            pipe.add_response(refusal(refused), is_last=True)
            return
        if self._mc_server is not None and request.code == GET and request.opt.observe == 1:
            # Deregistration (RFC 7641 §3.6): COUNT - 1; answered as a plain GET (or not: No-Response).
            self._mc_server.engine.on_deregistration(self._mc_path, _observer_key(request))
        if self._mc_server is None or request.code != GET or request.opt.observe != 0:
            return await super().render_to_pipe(pipe)
        await self._mc_server._registration(self, pipe)


class IntrospectionResource(aiocoap.resource.Resource):
    """``/.well-known/core/mc-sender?token=HEX``: the group observation of a Token (draft App. A.2)."""

    PATH = (".well-known", "core", "mc-sender")

    def __init__(self, server: GroupServer) -> None:
        super().__init__()
        self._server = server

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        refused = self._server.authorize(pipe.request, self.PATH, pipe.request.code)
        if refused is not None:  # it discloses the phantom request and the latest notification
            pipe.add_response(refusal(refused), is_last=True)
            return
        challenge = self._server.echo_challenge(pipe.request)  # about 25x the request (issue 8)
        if challenge is not None:
            pipe.add_response(challenge, is_last=True)
            return
        await super().render_to_pipe(pipe)

    async def render_get(self, request: Message) -> Message:
        tokens = [q[len("token=") :] for q in request.opt.uri_query if q.startswith("token=")]
        if len(tokens) != 1:
            return Message(code=BAD_REQUEST, payload=b"exactly one token=HEX query parameter expected")
        try:
            token = bytes.fromhex(tokens[0])
        except ValueError:
            return Message(code=BAD_REQUEST, payload=b"token is not hexadecimal")
        payload = self._server.engine.introspect(token, self._server.clock())
        if payload is None:
            return Message(code=NOT_FOUND, payload=b"no group observation with this token")
        return Message(code=CONTENT, content_format=self._server.code_points.content_format, payload=payload)


def _observer_key(request: Message) -> tuple[Any, bytes]:
    return (request.remote, request.token)


class GroupServer:
    """A CoAP server that serves group-observable resources with group observations (draft §4)."""

    def __init__(
        self,
        ctx: aiocoap.Context,
        engine: ServerEngine,
        site: aiocoap.resource.Site,
        *,
        ifindex: int = 0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_event: EventSink | None = None,
        authorize: Authorize | None = None,
        guard: SourceGuard | None = None,
    ) -> None:
        self.ctx = ctx
        #: Source verification and the amplification bound; None on a trusted network (:mod:`.guard`).
        self.guard = guard
        #: Rate-limited log of dropped datagrams (:class:`.guard.DropLog`).
        self.drops = DropLog(log)
        #: Bounds against load and abuse (:class:`.guard.GuardLimits`).
        self.limits = guard.limits if guard is not None else GuardLimits()
        #: The authorisation hook every request to a group-observable resource passes (:mod:`.authz`).
        self.authorize: Authorize = authorize or Policy()
        self.engine = engine
        self.site = site
        self.code_points = engine.code_points
        self.ifindex = ifindex
        self.rng = rng or random.SystemRandom()
        self.clock = clock
        self.on_event = on_event
        self._resources: dict[Path, GroupObservableResource] = {}
        self._traditional: dict[tuple[Path, Any], aiocoap.protocol.ServerObservation] = {}
        self._ready: dict[GroupObservation, asyncio.Event] = {}
        self._phantoms: dict[GroupObservation, Message] = {}
        self._remote = _glue.group_remote(ctx, engine.group, engine.server, ifindex)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer = asyncio.create_task(self._run_timers())
        self._closed = False
        self.datagrams_sent = 0
        self._prerendering: set[Path] = set()
        #: Registrations answered with a plain 5.03 because too many CON responses were in flight.
        self.busy = 0
        #: With OSCORE contexts from files: done once their replay-window state is on disk (see
        #: :func:`mcobserve.aio._glue.mark_replay_windows`); its result is how many were marked.
        self.replay_windows_marked: asyncio.Task[int] | None = None

    @classmethod
    async def create(
        cls,
        bind: Endpoint | str | tuple[Any, ...],
        group: Endpoint | str | tuple[Any, ...],
        *,
        interface: str | None = None,
        site: aiocoap.resource.Site | None = None,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        token_length: int = 2,
        hops: int = 1,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_event: EventSink | None = None,
        receive_buffer: int = 4 << 20,
        security: GroupSecurity | None = None,
        server_credentials: aiocoap.credentials.CredentialsMap | None = None,
        congestion: CongestionControl | None = None,
        max_message_size: int | None = None,
        authorize: Authorize | None = None,
        trusted_network: bool = False,
        guard_limits: GuardLimits | None = None,
    ) -> GroupServer:
        """Bind SRV_ADDR:SRV_PORT and prepare to send to GRP_ADDR:GRP_PORT (draft §4.1).

        ``authorize`` decides every request to a group-observable resource (:mod:`.authz`); by default,
        with ``server_credentials`` only OSCORE-protected requests are served (4.01 otherwise).

        Until a source address is verified (Echo, RFC 9175 §2.4, or OSCORE) the server sends it at most
        3x the bytes it received (:mod:`.sourceguard`, ``guard_limits``); ``trusted_network`` turns this off
        for clients that cannot answer Echo. Bad datagrams are dropped with a rate-limited log line.
        """
        bind, group = Endpoint.coerce(bind), Endpoint.coerce(group)  # or "[fd00::1]:5683", (host, port)
        if bind.host.is_unspecified:
            raise ValueError("bind to a specific SRV_ADDR: it is announced in 'tpi_server' (draft §4.2.1.1)")
        _glue.install_backlog_fix()  # N informative responses in flight (draft §4.2) must not cost O(N^2)
        _glue.install_address_cache()  # aiocoap prints the peer's address several times per request
        engine = ServerEngine(
            bind,
            group,
            code_points=code_points,
            token_length=token_length,
            security=security,
            congestion=congestion,
            **({} if max_message_size is None else {"max_message_size": max_message_size}),
        )  # checks SRV_ADDR and GRP_ADDR (draft §3, §4.2) before anything binds
        ensure_unserved(bind)  # one server per address and port (aiocoap sets SO_REUSEPORT)
        if site is None:  # a site of the caller's keeps its own /.well-known/core
            site = _glue.LeanSite()
            wkc = aiocoap.resource.WKCResource(site.get_resources_as_linkheader)
            site.add_resource([".well-known", "core"], wkc)
        bind_host = str(bind.host)
        guard = None if trusted_network else SourceGuard(guard_limits)
        served: Any = RequestGuard(site, code_points)  # 4.02 for unknown critical options (RFC 7252 §5.4.1)
        verifying = _VerifyingSite(served, guard, clock)
        if server_credentials is not None:  # silent answers stay silent under OSCORE too (draft §8.2)
            _glue.index_oscore_contexts(server_credentials)  # O(1) context look-up per request
            served = RequestGuard(
                _glue.oscore_site(verifying, server_credentials),
                code_points,
                outer=True,
            )
        ctx = await aiocoap.Context.create_server_context(
            served,
            bind=(bind_host, bind.port),
            transports=["oscore", "udp6"] if server_credentials else ["udp6"],
            server_credentials=server_credentials,
        )
        _glue.name_tasks_cheaply(ctx)
        ifindex = socket.if_nametoindex(interface) if interface else 0
        _glue.configure_multicast_sender(ctx, ifindex, hops=hops)
        _glue.set_receive_buffer(ctx, receive_buffer)
        if authorize is None:
            authorize = Policy(require_oscore=server_credentials is not None)
        server = cls(
            ctx,
            engine,
            site,
            ifindex=ifindex,
            rng=rng,
            clock=clock,
            on_event=on_event,
            authorize=authorize,
            guard=guard,
        )
        _glue.install_datagram_hooks(ctx, _Hooks(server))
        verifying.ctx = ctx
        limits = guard.limits if guard is not None else (guard_limits or GuardLimits())
        server.limits = limits
        if guard is None:
            _glue.bound_deduplication(ctx, lambda source: True, (limits.dedup_verified, 0))
        else:
            _glue.bound_deduplication(
                ctx,
                lambda source: guard.verified(source, clock()),
                (limits.dedup_verified, limits.dedup_unverified),
            )
        site.add_resource(IntrospectionResource.PATH, IntrospectionResource(server))
        if server_credentials is not None:  # off each client's first request (RFC 8613 App. B.1.2)
            server.replay_windows_marked = server._spawn(_glue.mark_replay_windows(server_credentials))
        server._emit("started", server=str(bind), group=str(group))
        return server

    # -- resources -----------------------------------------------------------------------------

    def add_resource(
        self, path: Sequence[str], resource: aiocoap.resource.Resource, policy: GroupPolicy | None = None
    ) -> None:
        """Serve ``resource`` at ``path``; with a GroupObservableResource it is group-observable."""
        path = tuple(path)
        self.site.add_resource(path, resource)
        if isinstance(resource, GroupObservableResource):
            resource._mc_server = self
            resource._mc_path = path
            self._resources[path] = resource
            self.engine.add_resource(path, policy)
            if self.engine.prepare(path, self.clock(), self.rng):  # T and the signed phantom, ahead
                self._prerender_soon(path)

    def remove_resource(self, path: Sequence[str]) -> None:
        """The resource goes away: its group observation is cancelled (draft §4.5)."""
        path = tuple(path)
        resource = self._resources.pop(path, None)
        self.site.remove_resource(path)
        self._execute(self.engine.remove_resource(path, self.clock()))
        if resource is not None:
            resource._mc_server = None
            for o in list(resource._observations):
                o.trigger(Message(code=NOT_FOUND, payload=b"resource removed"))

    def cancel(self, path: Sequence[str], reason: str = "operator") -> bool:
        """Cancel the group observation of ``path`` now (draft §4.5). False if there is none."""
        actions = self.engine.cancel_path(tuple(path), self.clock(), reason)
        self._execute(actions)
        return bool(actions)

    async def shutdown(self) -> None:
        """Cancel every group observation with a multicast 5.03, then close (draft §4.5)."""
        if self._closed:
            return
        self._closed = True
        self._execute(self.engine.shutdown(self.clock()))  # also wakes the timer loop, which then ends
        try:
            await asyncio.wait_for(asyncio.shield(self._timer), 1.0)
        except TimeoutError:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(self._timer, *self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the cancellations leave
        await self.ctx.shutdown()

    # -- registrations -------------------------------------------------------------------------

    def _endpoint(self, request: Message) -> Any:
        """What the engine counts confirmations by: for Feedback-Divider 0, the UDP endpoint (its prefix
        is bounded per round, draft §13); otherwise the remote as it is (no parsing on the hot path)."""
        if get_feedback_divider(request, self.code_points) == 0:
            return _glue.client_endpoint(request) or request.remote
        return request.remote

    def echo_challenge(self, request: Message) -> Message | None:
        """4.01 with an Echo option if ``request`` comes from a source not verified yet (RFC 9175 §2.4).

        OSCORE-protected requests from a known context are verified by then (:class:`_VerifyingSite`).
        None means: serve the request.
        """
        guard = self.guard
        if guard is None:
            return None
        source = _glue.udp_source(request)
        if source is None:
            return None
        now = self.clock()
        if guard.verified(source, now):
            return None
        return Message(code=UNAUTHORIZED, echo=guard.echo_value(source, now))

    async def _registration(self, resource: GroupObservableResource, pipe: aiocoap.pipe.Pipe) -> None:
        _glue.poll_datagrams(self.ctx)  # in a storm: take in (and ACK) what waits at the socket
        request = pipe.request
        path = resource._mc_path
        if not _answerless(request, self.code_points):
            challenge = self.echo_challenge(request)  # the informative response is CON, about 10x the request
            if challenge is not None:
                pipe.add_response(challenge, is_last=True)
                return
            if _glue.open_exchanges(self.ctx) >= self.limits.max_in_flight:
                # Too many CON responses wait for their ACK: come back later (RFC 7252 §5.9.3.4).
                self.busy += 1
                # Piggybacked if it still can be; else (ACKed on receipt) Non-confirmable: no exchange kept.
                busy = Message(
                    code=SERVICE_UNAVAILABLE,
                    max_age=self.limits.busy_max_age,
                    transport_tuning=aiocoap.Unreliable,
                )
                pipe.add_response(busy, is_last=True)
                return
        key = _observer_key(request)
        # aiocoap's Site strips the matched Uri-Path; the engine compares the request as it was sent.
        # The request is the Site's own copy for this resource: restore the path in place (no deepcopy).
        request.opt.uri_path = path
        as_sent = request
        reg = self.engine.on_registration(
            path,
            key,
            as_sent,
            self.clock(),
            self.rng,
            endpoint=self._endpoint(request),
            protected=_glue.is_oscore_protected(request),
            client_address=host_address(request.remote.hostinfo),  # link-local: traditional (§4.2)
        )
        if self.on_event is not None:  # no work for events nobody reads (a hot path)
            self._emit(
                "registration",
                resource=_path_str(path),
                remote=str(request.remote.hostinfo),
                kind=reg.kind.value,
                count=round(reg.observation.count, 3)
                if reg.observation
                else self.engine.traditional_count(path),
            )
        if reg.kind is Kind.TRADITIONAL:
            await aiocoap.resource.ObservableResource.render_to_pipe(resource, pipe)
            return
        if reg.kind is Kind.REFUSED:
            pipe.add_response(
                Message(code=UNAUTHORIZED, payload=b"register over OSCORE: notifications are protected"),
                is_last=True,
            )
            return
        if reg.kind is Kind.CONFIRMATION:
            # Feedback-Divider 0: counted for R (distinct endpoints), never answered (draft §8.3.3).
            suppress_response()
            pipe.add_response(Message(code=SERVICE_UNAVAILABLE, no_response=26), is_last=True)
            return
        obs = reg.observation
        assert obs is not None
        if reg.started:
            await self._start(obs, reg.shifted)
        else:
            await self._wait_ready(obs)
        if obs.cancelled or not obs.ready:
            pipe.add_response(
                Message(code=INTERNAL_SERVER_ERROR, payload=b"group observation failed"), is_last=True
            )
            return
        if reg.kind is Kind.SILENT:
            # No-Response 16: counted, not answered (draft §5.1).
            suppress_response()
            pipe.add_response(
                Message(code=SERVICE_UNAVAILABLE, no_response=request.opt.no_response), is_last=True
            )
            return
        response = self.engine.informative_response(obs, as_sent, self.clock())
        _glue.respond_separately(pipe, response)  # Confirmable, separate (draft §4.2)

    async def _start(self, obs: GroupObservation, shifted: Sequence[tuple[Any, Message]]) -> None:
        ready = self._ready[obs] = asyncio.Event()
        try:
            if not obs.ready:  # else INIT_NOTIF was prepared for the current state
                await self._render(obs, RenderReason.INIT)
        finally:
            ready.set()
        if obs.cancelled:
            return
        if self.on_event is not None:
            self._emit(
                "group_observation_started",
                resource=_path_str(obs.path),
                token=obs.token.hex(),
                group=str(obs.group),
                server=str(obs.server),
                shifted=len(shifted),
            )
        now = self.clock()
        for key, request in shifted:
            servobs = self._traditional.pop((obs.path, key), None)
            if servobs is None:
                continue
            response = self.engine.informative_response(obs, request, now)
            response.mtype = CON
            servobs.trigger(response)  # CON 5.03 on the observer's own Token, ends it (draft §4.2)

    async def _wait_ready(self, obs: GroupObservation) -> None:
        event = self._ready.get(obs)
        if event is not None and not obs.ready:
            await event.wait()

    def _traditional_started(
        self, path: Path, key: Any, servobs: aiocoap.protocol.ServerObservation, request: Message
    ) -> None:
        self._traditional[(path, key)] = servobs

    def _traditional_ended(self, path: Path, key: Any, servobs: aiocoap.protocol.ServerObservation) -> None:
        if self._traditional.get((path, key)) is servobs:
            del self._traditional[(path, key)]
            self.engine.traditional_ended(path, key)

    # -- actions -------------------------------------------------------------------------------

    def _changed(self, path: Path) -> None:
        self._execute(self.engine.on_change(path, self.clock()))
        if self.engine.wants_init(path):  # the prepared INIT_NOTIF showed the old state
            self._prerender_soon(path, PRERENDER_DELAY)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Render):
                self._spawn(self._render(action.observation, action.reason))
            elif isinstance(action, SendMulticast):
                self._send(action)
            elif isinstance(action, Counted):
                r = action.result
                self._emit(
                    "count",
                    resource=_path_str(action.observation.path),
                    token=action.observation.token.hex(),
                    estimate=round(r.estimate, 3),
                    Q=r.q,
                    R=r.r,
                    N=round(r.n, 3),
                    E=r.e,
                    count_prime=round(r.count_prime, 3),
                    next_round_in=r.next_round_in,
                )
            elif isinstance(action, NotificationRefused):  # too large for one datagram (draft §4.4)
                log.error("%s", action.error)
                self._emit(
                    "notification_refused",
                    resource=_path_str(action.observation.path),
                    reason=str(action.error),
                )
            elif isinstance(action, Cancelled):
                self._ready.pop(action.observation, None)
                self._phantoms.pop(action.observation, None)
                if action.observation.path in self._resources and not self._closed:
                    self._timer.get_loop().call_soon(self._prepare, action.observation.path)
                self._emit(
                    "cancelled",
                    resource=_path_str(action.observation.path),
                    token=action.observation.token.hex(),
                    reason=action.reason,
                )
        self._wake.set()

    def _prepare(self, path: Path) -> None:
        """The next group observation's Token and signed phantom request, made while nobody waits."""
        if path in self._resources and not self._closed and self.engine.prepare(path, self.clock(), self.rng):
            self._prerender_soon(path)

    def _prerender_soon(self, path: Path, delay: float = 0.0) -> None:
        """Render and sign INIT_NOTIF of the prepared group observation in ``delay`` s (one pending per
        resource), so that the registration starting it only answers (draft §4.1 step 6)."""
        if self._closed or path in self._prerendering:
            return
        self._prerendering.add(path)
        self._timer.get_loop().call_later(delay, lambda: self._spawn(self._prerender(path)))

    async def _prerender(self, path: Path) -> None:
        try:
            resource = self._resources.get(path)
            pending = self.engine.prepared_phantom(path)
            if self._closed or resource is None or pending is None or not self.engine.wants_init(path):
                return
            phantom, version = pending
            try:
                response = await resource.render(_glue.incoming(phantom.copy(), self._remote))
            except Exception:  # the registration renders again and reports it
                return
            if not self.engine.prepare_init(path, response, self.clock(), version):
                return
            init = self.engine.prepared_init(path)
            if init is not None:  # made again after half its Max-Age while nobody registers
                self._timer.get_loop().call_later(init.latest_max_age / 2, self._reprepare_init, path, init)
        finally:
            self._prerendering.discard(path)

    def _reprepare_init(self, path: Path, init: GroupObservation) -> None:
        if self.engine.drop_init(path, init):
            self._prerender_soon(path)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _render(self, obs: GroupObservation, reason: RenderReason) -> None:
        """Process the phantom request inside the server, never on the wire (draft §4.1, steps 3-6)."""
        resource = self._resources.get(obs.path)
        if resource is None:
            self._execute(self.engine.render_failed(obs, self.clock(), "resource is gone"))
            return
        phantom = self._phantoms.get(obs)
        if phantom is None:  # built once per group observation; rendering only reads it
            phantom = self._phantoms[obs] = _glue.incoming(obs.phantom.copy(), self._remote)
        try:
            response = await resource.render(phantom)
        except Exception as e:  # the application's render failed
            log.exception("rendering %s for the phantom request failed", _path_str(obs.path))
            self._execute(self.engine.render_failed(obs, self.clock(), type(e).__name__))
            return
        self._execute(self.engine.rendered(obs, response, self.clock()))

    def _send(self, action: SendMulticast) -> None:
        message = action.message  # a fresh message per action; sending only sets its MID and remote
        try:
            _glue.send_unsolicited(self.ctx, message, self._remote)
        except OSError as e:
            log.error("sending the multicast %s failed: %s", action.kind, e)
            return
        self.datagrams_sent += 1
        obs = action.observation
        if action.kind == "notification" and self.on_event is not None:
            self._emit(
                "notification_sent",
                resource=_path_str(obs.path),
                token=obs.token.hex(),
                observe=message.opt.observe,
                how="multicast",
                size=len(message.payload),
                feedback_divider=action.feedback_divider,
            )

    async def _run_timers(self) -> None:
        """Wake up for coalesced changes, Max-Age refreshes and scheduled endings (draft §4.3, §4.5)."""
        while not self._closed:
            deadline = self.engine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._closed:
                return
            actions = self.engine.poll(self.clock())
            if actions:
                self._execute(actions)

    def _emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event({"event": event, "time": round(self.clock(), 3), **fields})
            except Exception:
                log.exception("event sink failed")


class _VerifyingSite(aiocoap.interfaces.Resource):
    """Inside aiocoap's OSCORE site wrapper: a request that reaches it was unprotected by a known context,
    so its source address counts as verified (issue 8, item 1)."""

    def __init__(
        self, site: aiocoap.interfaces.Resource, guard: SourceGuard | None, clock: Callable[[], float]
    ):
        self._site = site
        self._guard = guard
        self._clock = clock
        self.ctx: aiocoap.Context | None = None  # set once the context exists

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        if self.ctx is not None:
            _glue.poll_datagrams(self.ctx)  # unprotecting took a while: take in (and ACK) what waits
        if self._guard is not None and _glue.is_oscore_protected(pipe.request):
            source = _glue.udp_source(pipe.request)
            if source is not None:
                self._guard.verify(source, self._clock(), by="oscore")
        await self._site.render_to_pipe(pipe)

    def get_resources_as_linkheader(self) -> Any:
        return self._site.get_resources_as_linkheader()

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return await self._site.needs_blockwise_assembly(request)

    async def render(self, request: Message) -> Message:
        return await self._site.render(request)


class _Hooks:
    """The server's answers to :class:`mcobserve.aio._glue.DatagramHooks` (issue 8, items 1 and 4)."""

    def __init__(self, server: GroupServer) -> None:
        self.server = server
        self.guard = server.guard
        #: (address, port, MID) of requests answered with a 4.01 + Echo, oldest first (bounded).
        self.challenged = ChallengeMemory(CHALLENGED_MAX)
        self.drops = server.drops
        self.clock = server.clock

    def on_datagram(self, source: str, size: int) -> None:
        if self.guard is not None:
            self.guard.received(source, size, self.clock())

    def on_dropped(self, source: str, reason: str) -> None:
        self.drops.drop(reason, source, self.clock())

    def on_message(self, source: str, message: Message) -> bool | Message:
        guard = self.guard
        if guard is None or not message.code.is_request():
            return True
        now = self.clock()
        key = _glue.exchange_key(message)
        if key in self.challenged:  # a retransmission of a challenged request: challenged again
            return self.challenged.challenge(guard, source, None, now)
        if guard.verified(source, now):
            return True
        echo = message.opt.echo
        if echo is not None and guard.check_echo(source, echo, now):
            return True
        if not self._needs_verification(message):
            return True
        # Answered here, before aiocoap's pipeline and without per-request state (but this MID, so that
        # a late retransmission is not taken as a new registration once the source is verified).
        return self.challenged.challenge(guard, source, key, now)

    def _needs_verification(self, message: Message) -> bool:
        """A registration to a group-observable resource, or a request to the introspection resource."""
        if message.opt.oscore is not None:
            return False  # verified once unprotected
        path = tuple(message.opt.uri_path)
        if path == IntrospectionResource.PATH:
            return True
        resource = self.server._resources.get(path)
        if message.opt.observe != 0 or resource is None:
            return False
        if not resource.registration_needs_verification(message):
            return False
        return not _answerless(message, self.server.code_points)

    def may_ack_early(self, source: str, message: Message) -> bool:
        # Not to unverified sources (their answer is a small 4.01 + Echo, better piggybacked), except for
        # OSCORE requests, which verify their source once unprotected.
        if self.guard is None or message.opt.oscore is not None:
            return True
        return self.guard.verified(source, self.clock())

    def ack_at_once(self, source: str, message: Message) -> bool:
        """A registration for a group observation: its informative response is a separate CON (draft
        §4.2), so when other datagrams wait (the adapter checks) its empty ACK leaves on receipt, not after
        the request waited its turn in a storm (the client would retransmit after ACK_TIMEOUT). Under
        OSCORE the path is encrypted: every protected registration (Observe 0) counts, when the server
        has group-observable resources."""
        if message.opt.observe != 0 or message.code not in (GET, FETCH):
            return False
        server = self.server
        if _glue.open_exchanges(server.ctx) >= server.limits.max_in_flight:
            return False  # it may get the plain 5.03 "come back later", piggybacked: nothing kept for it
        if _link_local(source):
            return False  # served as a traditional observation, piggybacked (draft §4.2)
        if bad_option_response(message, server.code_points) is not None:
            return False  # answered 4.02 at once, piggybacked (RFC 7252 §5.4.1)
        if message.opt.oscore is not None:
            return bool(server._resources)
        path = tuple(message.opt.uri_path)
        if path not in server._resources or _answerless(message, server.code_points):
            return False
        if message.opt.uri_query or message.opt.accept is not None or message.opt.block2 is not None:
            return False  # may be served traditionally (ServerEngine._compatible, _fits_blocks)
        policy = server.engine.policy(path)
        return server.engine.observation(path) is not None or (policy is not None and policy.group_after <= 1)

    def on_send(self, source: str, message: Message, size: int) -> Message | None:
        guard = self.guard
        if guard is None:
            return message
        return bounded_send(guard, self.drops, source, message, size, self.clock())


#: After a change of a resource without group observation, its next INIT_NOTIF is prepared this many
#: seconds later at the earliest (one render and one signature per resource and delay, at most).
PRERENDER_DELAY = 1.0
#: Challenged requests remembered at most (about 150 bytes each).
CHALLENGED_MAX = 16384


@functools.lru_cache(maxsize=4096)
def _link_local(source: str) -> bool:
    """Is the UDP source address link-local (fe80::/10, 169.254/16, also as v4-mapped)?"""
    address = host_address(source)
    return address is not None and address.is_link_local


def _answerless(request: Message, code_points: CodePoints) -> bool:
    """Would the registration get no response at all (a confirmation, or No-Response suppressing 5.03)?"""
    if get_feedback_divider(request, code_points) == 0:
        return True
    return bool((request.opt.no_response or 0) & NO_RESPONSE_5XX)


def ensure_unserved(bind: Endpoint) -> None:
    """Refuse SRV_ADDR:SRV_PORT when another socket already serves it (issue 8, item 3).

    aiocoap sets SO_REUSEPORT, so a second server would start silently and the kernel would split the
    requests between the two. A probe socket without SO_REUSEPORT cannot bind an address and port that a
    socket of another process holds (same address, or the wildcard without SO_REUSEADDR); the probe
    sets SO_REUSEADDR so that observers' group sockets (SO_REUSEADDR, bound to the group) do not count.
    """
    if bind.port == 0:
        return
    host = str(bind.host) if bind.is_v6 else f"::ffff:{bind.host}"
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((host, bind.port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise AddressInUseError(
                f"another process already serves udp {bind}: stop it or choose another port"
            ) from None
        raise
    finally:
        probe.close()


def _path_str(path: Path) -> str:
    return "/" + "/".join(path)
