"""aiocoap server side: group-observable resources and the actions of the server engine (draft §4, §6).

:class:`GroupServer` owns an aiocoap server context and a :class:`~mcobserve.engine.server.ServerEngine`.
Resources derived from :class:`GroupObservableResource` ask the engine what to do with every Observe
registration; the server renders the phantom request, sends multicast notifications from its own
socket and answers registrations with informative responses. Protocol rules stay in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    GET,
    INTERNAL_SERVER_ERROR,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    Message,
)

from ..constants import DEFAULT_CODE_POINTS, CodePoints
from ..engine.common import Endpoint
from ..engine.server import (
    Action,
    Cancelled,
    Counted,
    GroupObservation,
    GroupPolicy,
    GroupSecurity,
    Kind,
    Path,
    Render,
    RenderReason,
    SendMulticast,
    ServerEngine,
)
from . import _glue

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

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        request = pipe.request
        if self._mc_server is None or request.code != GET or request.opt.observe != 0:
            return await super().render_to_pipe(pipe)
        await self._mc_server._registration(self, pipe)


class IntrospectionResource(aiocoap.resource.Resource):
    """``/.well-known/core/mc-sender?token=HEX``: the group observation of a Token (draft App. A.2)."""

    def __init__(self, server: GroupServer) -> None:
        super().__init__()
        self._server = server

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
    ) -> None:
        self.ctx = ctx
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer = asyncio.create_task(self._run_timers())
        self._closed = False
        self.datagrams_sent = 0

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
    ) -> GroupServer:
        """Bind SRV_ADDR:SRV_PORT and prepare to send to GRP_ADDR:GRP_PORT (draft §4.1)."""
        bind, group = Endpoint.coerce(bind), Endpoint.coerce(group)  # or "[fd00::1]:5683", (host, port)
        if bind.host.is_unspecified:
            raise ValueError("bind to a specific SRV_ADDR: it is announced in 'tpi_server' (draft §4.2.1.1)")
        _glue.install_backlog_fix()  # N informative responses in flight (draft §4.2) must not cost O(N^2)
        engine = ServerEngine(
            bind, group, code_points=code_points, token_length=token_length, security=security
        )
        if site is None:  # a site of the caller's keeps its own /.well-known/core
            site = aiocoap.resource.Site()
            wkc = aiocoap.resource.WKCResource(site.get_resources_as_linkheader)
            site.add_resource([".well-known", "core"], wkc)
        bind_host = str(bind.host)
        served = _glue.oscore_site(site, server_credentials) if server_credentials is not None else site
        ctx = await aiocoap.Context.create_server_context(
            served,
            bind=(bind_host, bind.port),
            transports=["oscore", "udp6"] if server_credentials else ["udp6"],
            server_credentials=server_credentials,
        )
        ifindex = socket.if_nametoindex(interface) if interface else 0
        _glue.configure_multicast_sender(ctx, ifindex, hops=hops)
        _glue.set_receive_buffer(ctx, receive_buffer)
        server = cls(ctx, engine, site, ifindex=ifindex, rng=rng, clock=clock, on_event=on_event)
        site.add_resource([".well-known", "core", "mc-sender"], IntrospectionResource(server))
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

    async def _registration(self, resource: GroupObservableResource, pipe: aiocoap.pipe.Pipe) -> None:
        request = pipe.request
        path = resource._mc_path
        key = _observer_key(request)
        # aiocoap's Site strips the matched Uri-Path; the engine compares the request as it was sent.
        as_sent = request.copy(uri_path=path)
        reg = self.engine.on_registration(
            path,
            key,
            as_sent,
            self.clock(),
            self.rng,
            endpoint=request.remote,
            protected=_glue.is_oscore_protected(request),
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
            pipe.add_response(
                Message(code=SERVICE_UNAVAILABLE, no_response=request.opt.no_response), is_last=True
            )
            return
        response = self.engine.informative_response(obs, as_sent, self.clock())
        response.mtype = CON
        _glue.acknowledge_now(request)  # Confirmable, separate (draft §4.2)
        pipe.add_response(response, is_last=True)

    async def _start(self, obs: GroupObservation, shifted: Sequence[tuple[Any, Message]]) -> None:
        ready = self._ready[obs] = asyncio.Event()
        try:
            await self._render(obs, RenderReason.INIT)
        finally:
            ready.set()
        if obs.cancelled:
            return
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
            elif isinstance(action, Cancelled):
                self._ready.pop(action.observation, None)
                self._phantoms.pop(action.observation, None)
                self._emit(
                    "cancelled",
                    resource=_path_str(action.observation.path),
                    token=action.observation.token.hex(),
                    reason=action.reason,
                )
        self._wake.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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


def _path_str(path: Path) -> str:
    return "/" + "/".join(path)
