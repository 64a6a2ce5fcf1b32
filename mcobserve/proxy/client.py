"""Our client behind a proxy: ``mcobserve observe URI --proxy coap://PROXY`` (RFC 7252 §5.7.2).

The registration goes to the proxy with Proxy-Uri set to the target; everything else is
:class:`~mcobserve.aio.client.Observer`: a proxy without end-to-end security answers with a
traditional observation (draft-ietf-core-multicast-notifications-proxy §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiocoap
from aiocoap import GET, NON, Message

from ..aio.client import Observer, ResponseError, _echo_request
from ..engine.client import (
    Accepted,
    Dropped,
    Ended,
    GroupObservationClient,
    Notification,
    Via,
    informative_response_payload,
)
from ..errors import GroupObservationError, ProxyError, StandInError
from ..wire import InformativeResponse, parse_message
from ..wire.feedback import set_feedback_divider
from .engine import parse_uri, ticket_request

log = logging.getLogger(__name__)

#: Seconds a confirmation request gets to leave before its (never coming) response is given up.
CONFIRMATION_SEND_WAIT = 0.5


def proxy_hostport(proxy: str) -> str:
    """``coap://HOST[:PORT]`` of a proxy as aiocoap's ``host[:port]``; :class:`ProxyError` otherwise."""
    target = parse_uri(proxy)
    if target.path or target.query:
        raise ProxyError(None, f"the proxy URI {proxy!r} must not have a path or query")
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port is None else f"{host}:{target.port}"


class ProxiedObserver(Observer):
    """An :class:`Observer` whose requests go through a forward proxy with Proxy-Uri."""

    def __init__(self, uri: str, *, proxy: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self.proxy = proxy_hostport(proxy)
        parse_uri(uri)  # only coap:// targets are proxied

    def _request(self) -> Message:
        request = Message(code=GET, observe=0, proxy_uri=self.uri)
        request.unresolved_remote = self.proxy
        return request


class SecuredProxiedObserver(ProxiedObserver):
    """Group OSCORE end to end through a proxy (proxy draft §5, example §8).

    The registration is protected with the client's OSCORE context and relayed by the proxy as it is.
    A protected informative response is verified like without a proxy (observe draft §9.3.1); then,
    instead of listening to the group, the client sends the *ticket request* (the phantom request with
    Proxy-Scheme, Uri-Host and Listen-To-Multicast-Responses) to the proxy, which listens for it and
    forwards every protected notification unchanged. Each one is verified end to end against the
    phantom request; anything the proxy altered is dropped (:attr:`dropped`) and logged.
    """

    def __init__(self, uri: str, *, proxy: str, **kwargs: Any) -> None:
        super().__init__(uri, proxy=proxy, **kwargs)
        self.target = parse_uri(uri)
        self.ticket_requests = 0
        self._secctx: Any = None

    async def _run(self) -> AsyncIterator[Notification]:
        ctx = await self._context()
        try:
            inner = Message(code=GET, uri=self.uri, observe=0)
            try:
                secctx = ctx.client_credentials.credentials_from_request(inner)
                protected, request_id = secctx.protect(inner)
            except Exception as e:  # aiocoap's credential and protection errors have many types
                raise GroupObservationError(f"cannot protect the registration for {self.uri}: {e}") from e
            self._secctx = secctx
            self._via_proxy(protected)
            self.registrations += 1
            pending = ctx.request(protected, handle_blockwise=False)
            outer = await pending.response
            plain = self._unprotect(secctx, outer, request_id)
            payload = informative_response_payload(plain, self.code_points)
            if payload is None:  # a traditional observation, protected end to end (RFC 8613 §4.1.3.5)
                if not plain.code.is_successful():
                    raise ResponseError(plain)
                yield Notification(plain, Via.UNICAST, self.clock())
                if outer.opt.observe is None:
                    return
                async for m in pending.observation:
                    yield Notification(self._unprotect(secctx, m, request_id), Via.UNICAST, self.clock())
                return
            async for n in self._follow_ticket(ctx, inner, payload):
                yield n
        finally:
            await self.aclose()

    def _via_proxy(self, protected: Message) -> None:
        """Outer Proxy-Scheme + Uri-Host (+ Uri-Port), sent to the proxy (RFC 8613 §4.1.3.3)."""
        protected.opt.proxy_scheme = self.target.scheme
        protected.opt.uri_host = self.target.host
        if self.target.port is not None:
            protected.opt.uri_port = self.target.port
        protected.unresolved_remote = self.proxy

    async def _confirm(self, delay: float) -> None:
        """The confirmation of rough counting (observe draft §8.2), protected, through the proxy (§6).

        Feedback-Divider is inside the ciphertext, so only the clients see it and answer.
        """
        await asyncio.sleep(delay)
        ctx = self._ctx
        if ctx is None or self._secctx is None:
            return
        inner = Message(
            code=GET, uri=self.uri, observe=0, no_response=26, transport_tuning=aiocoap.Unreliable
        )
        set_feedback_divider(inner, 0, self.code_points)
        try:
            protected, _ = self._secctx.protect(inner)
        except Exception as e:  # aiocoap protection errors
            log.warning("cannot protect a confirmation: %s", e)
            return
        self._via_proxy(protected)
        protected.mtype = NON
        pending = ctx.request(protected, handle_blockwise=False)
        self.confirmations_sent += 1
        # No response is expected; give the request time to be resolved and sent before dropping it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(pending.response), CONFIRMATION_SEND_WAIT)
        pending.response.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending.response

    @staticmethod
    def _unprotect(secctx: Any, message: Message, request_id: Any) -> Message:
        try:
            plain, _ = secctx.unprotect(message, request_id)
        except Exception as e:  # aiocoap's ProtectionInvalid / DecodeError
            raise GroupObservationError(f"protected response rejected: {e}") from e
        return plain

    async def _follow_ticket(
        self, ctx: aiocoap.Context, request: Message, payload: bytes
    ) -> AsyncIterator[Notification]:
        informative = InformativeResponse.decode(payload)
        security = self._security_for(informative)
        if security is None or informative.ph_req is None or informative.tp_info is None:
            raise GroupObservationError(
                "an unprotected group observation behind a proxy: the proxy should have taken it (§4)"
            )
        client = GroupObservationClient(request, code_points=self.code_points, security=security)
        first = client.join(informative, self.clock(), {}, protected_channel=True)
        self.group_client = client
        assert client.token is not None and client.server is not None
        if first is not None and first.message.code.is_successful():
            yield first
        ticket = ticket_request(
            parse_message(informative.ph_req), informative.tp_info, self.target, self.code_points
        )
        ticket.unresolved_remote = self.proxy
        self.ticket_requests += 1
        log.info("sending the ticket request for token %s to %s", client.token.hex(), self.proxy)
        pending = ctx.request(ticket, handle_blockwise=False)
        response = await pending.response
        if _echo_request(response):
            # The proxy verifies our address first (RFC 9175 §2.4): a plain GET returns its Echo, then
            # the same ticket request goes again (its bytes must stay those of the phantom request).
            await prove_address(ctx, response, self.proxy, ())
            again = ticket_request(
                parse_message(informative.ph_req), informative.tp_info, self.target, self.code_points
            )
            again.unresolved_remote = self.proxy
            self.ticket_requests += 1
            pending = ctx.request(again, handle_blockwise=False)
            response = await pending.response
        if response.opt.oscore is None:
            raise ResponseError(response)  # the proxy refused it (e.g. 4.02 without LTMR support)

        async def responses() -> AsyncIterator[Message]:
            yield response
            async for m in pending.observation:
                yield m

        async for m in responses():
            m.token = client.token  # as sent to the group, for the binding check (§9.3.2)
            m.mtype = NON
            verdict = client.on_multicast(m, client.server, self.clock(), self.rng, self.leisure)
            if isinstance(verdict, Accepted):
                if verdict.confirm_in is not None:
                    self._schedule_confirmation(verdict.confirm_in)
                yield verdict.notification
            elif isinstance(verdict, Dropped):
                self.dropped.append(verdict.reason)
                log.warning("dropped a notification forwarded by the proxy: %s", verdict.reason)
            elif isinstance(verdict, Ended):
                self.ended_by_server = verdict.message
                return


class DeterministicObserver(Observer):
    """Observe with a Deterministic phantom request (observe draft App. D; proxy draft §9, §10).

    The client computes the phantom request itself (every member of the group gets the same bytes;
    no registration, no OSCORE identity of its own) and sends it to ``proxy`` (forward proxy, with
    Proxy-Scheme + Uri-Host) or, without ``proxy``, to the URI's host, which may be the server or a
    reverse proxy standing in for it.

    * An unprotected informative response (the server recognized its phantom request): the client
      verifies 'ph_req' by recomputing it and listens to the group itself (App. D).
    * Protected notifications (a proxy answered from its cache or forwards the group's): each one is
      verified end to end, the server's signature, a fresh Partial IV, Request-Hash as Class I.
    """

    def __init__(self, uri: str, *, deterministic: Any, proxy: str | None = None, **kwargs: Any) -> None:
        from ..oscore.deterministic import DeterministicClientSecurity

        super().__init__(uri, **kwargs)
        self.target = parse_uri(uri)
        self.proxy = proxy_hostport(proxy) if proxy else None
        self.deterministic = deterministic  # a DeterministicConfig
        if self.group_security is None:
            self.group_security = DeterministicClientSecurity(
                deterministic.context,
                deterministic.dc,
                server_kid=deterministic.server_id,
                code_points=self.code_points,
            )

    def _plain(self) -> Message:
        return Message(code=GET, observe=0, uri_path=self.target.path, uri_query=self.target.query)

    def _phantom(self) -> tuple[Message, Any]:
        from ..oscore.deterministic import protect_deterministic

        return protect_deterministic(
            self.deterministic.context, self._plain(), self.deterministic.dc, self.code_points
        )

    async def _register(self, ctx: Any) -> tuple[Message, Any, Any, Message]:
        """Send the deterministic phantom request (to the proxy or the server); its first response."""
        request, binding = self._phantom()
        if self.proxy is not None:
            request.opt.proxy_scheme = self.target.scheme
            request.opt.uri_host = self.target.host
            if self.target.port is not None:
                request.opt.uri_port = self.target.port
            request.unresolved_remote = self.proxy
        else:
            host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
            request.unresolved_remote = host if self.target.port is None else f"{host}:{self.target.port}"
        self.registrations += 1
        pending = ctx.request(request, handle_blockwise=False)
        return request, binding, pending, await pending.response

    async def _run(self) -> AsyncIterator[Notification]:
        ctx = await self._context()
        try:
            binding = None

            async def register() -> tuple[Message, Any, Message]:
                nonlocal binding
                request, binding, pending, first = await self._register(ctx)
                return request, pending, first

            request, pending, first = await register()
            assert binding is not None
            async for n in _follow_deterministic(
                self,
                ctx,
                request,
                pending,
                first,
                register,
                self.deterministic.context,
                binding,
                self.deterministic.server_id,
                self._plain(),
            ):
                yield n
        finally:
            await self.aclose()


async def prove_address(ctx: aiocoap.Context, challenge: Message, remote: Any, uri_path: Any) -> None:
    """Return the Echo value of a 4.01 ``challenge`` on a plain GET to ``remote`` (RFC 9175 §2.4): the
    peer then counts our address as verified. Its answer does not matter."""
    proof = Message(code=GET, echo=challenge.opt.echo, uri_path=uri_path)
    proof.unresolved_remote = remote
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ctx.request(proof).response, 30)


async def _follow_deterministic(
    observer: Observer,
    ctx: aiocoap.Context,
    request: Message,
    pending: Any,
    first: Message,
    register: Callable[[], Awaitable[tuple[Message, Any, Message]]],
    context: Any,
    binding: Any,
    server_kid: bytes,
    plain: Message,
    *,
    via_stand_in: bool = False,
) -> AsyncIterator[Notification]:
    """Follow the answers to a Deterministic phantom request sent to a proxy or the server (App. D;
    proxy draft §9, §10): protected notifications are verified end to end (the server's signature and
    kid, a fresh Partial IV, Request-Hash as Class I); an unprotected informative response means the
    server itself answered, and the client listens to the group (only with tpi_details)."""
    from ..oscore.errors import OscoreError
    from ..oscore.protect import unprotect_notification
    from ..oscore.replay import ResponseNumber

    if _echo_request(first):
        # The server (or proxy) verifies our address first (RFC 9175 §2.4). The deterministic request
        # must stay byte for byte what every client computes, so the Echo goes back on a plain GET;
        # once the address is verified, the same deterministic request is sent again.
        await prove_address(ctx, first, request.unresolved_remote, request.opt.uri_path)
        request, pending, first = await register()
    response_number = ResponseNumber()

    async def responses() -> AsyncIterator[Message]:
        yield first
        async for m in pending.observation:
            yield m

    async for m in responses():
        if m.opt.oscore is None:
            payload = informative_response_payload(m, observer.code_points)
            if payload is None:
                raise ResponseError(m)
            if via_stand_in:
                tp = InformativeResponse.decode(payload).tp_info
                if tp is None or not tp.has_details:
                    raise StandInError("the stand-in answered with another 'tp_info' naming a stand-in")
            # The server itself answered: join the group directly (App. D).
            async for n in observer._follow_group(plain, payload):
                yield n
            return
        try:
            result = unprotect_notification(context, m, binding, response_number, expected_kid=server_kid)
        except OscoreError as e:
            observer.dropped.append(str(e))
            log.warning("dropped a notification forwarded by the proxy: %s", e)
            continue
        message = result.message
        if not message.code.is_successful():
            observer.ended_by_server = message
            return
        yield Notification(message, Via.MULTICAST, observer.clock())


async def follow_stand_in(
    observer: Observer, request: Message, informative: InformativeResponse, protected_channel: bool
) -> AsyncIterator[Notification]:
    """'tp_info' names only a stand-in (a reverse proxy, no tpi_details): send the Deterministic
    phantom request PH_REQ there and verify what comes back (proxy draft §10.1 step 1, §10.2 step e).

    Used by :meth:`mcobserve.aio.client.Observer._follow_group`; raises
    :class:`~mcobserve.errors.StandInError` when there is no Deterministic 'ph_req' it can verify.
    """
    from ..aio.client import _resolve_names
    from ..engine.client import hostnames

    client = GroupObservationClient(
        request, code_points=observer.code_points, security=observer._security_for(informative)
    )
    resolved = await _resolve_names(hostnames(informative))
    stand = client.stand_in(informative, resolved, protected_channel=protected_channel)
    ctx = await observer._context()
    host = f"[{stand.target.host}]" if stand.target.host.version == 6 else str(stand.target.host)
    destination = f"{host}:{stand.target.port}"
    state = stand.state
    log.info("'tp_info' names a stand-in: sending the Deterministic phantom request to %s", destination)

    async def register() -> tuple[Message, Any, Message]:
        parsed = parse_message(stand.ph_req)  # as it is; aiocoap sets type, MID and Token
        ph_req = Message(code=parsed.code, payload=parsed.payload)
        ph_req.opt = parsed.opt
        ph_req.unresolved_remote = destination
        observer.registrations += 1
        pending = ctx.request(ph_req, handle_blockwise=False)
        return ph_req, pending, await pending.response

    sent, pending, first = await register()
    async for n in _follow_deterministic(
        observer,
        ctx,
        sent,
        pending,
        first,
        register,
        state.context,
        state.binding,
        state.server_kid,
        request,
        via_stand_in=True,
    ):
        yield n


#: The name used before reverse proxies and direct use were added.
DeterministicProxiedObserver = DeterministicObserver


def observer_for(args: Any, code_points: Any) -> tuple[Any, Any]:
    """The Observer class (or factory) and group security for ``mcobserve observe``'s ``args``.

    A ``--group-oscore`` file with a ``[deterministic]`` table and no ``--credentials`` picks
    :class:`DeterministicObserver` (with or without ``--proxy``); otherwise ``--proxy`` picks
    :class:`ProxiedObserver`, with ``--credentials`` :class:`SecuredProxiedObserver`. Returns
    (None, security) when the plain :class:`Observer` applies.
    """
    from functools import partial

    from ..oscore.deterministic import DeterministicClientSecurity, load_deterministic

    det = load_deterministic(args.group_oscore, server=False) if args.group_oscore else None
    security = (
        DeterministicClientSecurity(det.context, det.dc, server_kid=det.server_id, code_points=code_points)
        if det is not None
        else None
    )
    proxy = getattr(args, "proxy", None)
    if proxy:
        proxy_hostport(proxy)
    if det is not None and not args.credentials:
        # No OSCORE identity of its own: send the Deterministic phantom request (App. D), to the
        # proxy or to the URI's host (the server, or a reverse proxy standing in for it).
        return partial(DeterministicObserver, proxy=proxy, deterministic=det), security
    if not proxy:
        return None, security
    if args.credentials:
        return partial(SecuredProxiedObserver, proxy=proxy), security
    return partial(ProxiedObserver, proxy=proxy), security
