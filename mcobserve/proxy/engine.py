"""Forwarding rules of a proxy for group observations, as a pure state machine.

draft-ietf-core-multicast-notifications-proxy §4 and §6: the proxy is a *client* of the group
observation toward the server (one registration per target resource, whatever the number of its own
clients) and a *server* of traditional observations (RFC 7641 §5) toward its clients. This module
decides; :mod:`mcobserve.proxy.aio` moves the bytes. Time comes in as ``now``; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import random
import urllib.parse
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from aiocoap import (
    BAD_GATEWAY,
    BAD_OPTION,
    BAD_REQUEST,
    NON,
    NOT_FOUND,
    PROXYING_NOT_SUPPORTED,
    Message,
)
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import OpaqueOption

from ..constants import COAP_PORT, DEFAULT_CODE_POINTS, DEFAULT_MAX_AGE, CodePoints
from ..engine.common import Endpoint, observe_is_fresh
from ..errors import MalformedError, ProxyError
from ..wire import InformativeResponse, TpInfo, cbor_decode, cbor_encode, serialize_message

#: Observe numbers are 24-bit (RFC 7641 §4.4).
OBSERVE_MODULO = 1 << 24

#: Options that address the target; the proxy consumes them and rebuilds the URI (RFC 7252 §5.7.2).
_TARGET_OPTIONS = (
    OptionNumber.PROXY_URI,
    OptionNumber.PROXY_SCHEME,
    OptionNumber.URI_HOST,
    OptionNumber.URI_PORT,
    OptionNumber.URI_PATH,
    OptionNumber.URI_QUERY,
)

ClientKey = Hashable


@dataclass(frozen=True)
class Target:
    """The resource a request is for, after the proxy options are resolved (RFC 7252 §5.7.2, §6.4)."""

    scheme: str
    host: str
    port: int | None
    path: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    #: Options that select the representation (part of the cache key, RFC 7252 §5.6).
    accept: int | None = None

    def uri(self) -> str:
        """The absolute URI (RFC 7252 §6.5)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None and self.port != COAP_PORT else ""
        path = "/" + "/".join(urllib.parse.quote(p, safe="") for p in self.path)
        query = ("?" + "&".join(urllib.parse.quote(q, safe="=") for q in self.query)) if self.query else ""
        return f"{self.scheme}://{host}{port}{path}{query}"


def parse_uri(uri: str) -> Target:
    """A ``coap://`` URI as a :class:`Target`; :class:`ProxyError` 4.00 / 5.05 otherwise (RFC 7252 §6.4)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise ProxyError(BAD_REQUEST, f"bad URI {uri!r}: {e}") from None
    if parts.scheme != "coap":
        raise ProxyError(PROXYING_NOT_SUPPORTED, f"scheme {parts.scheme!r} is not proxied (only coap)")
    if not parts.hostname:
        raise ProxyError(BAD_REQUEST, f"URI {uri!r} has no host")
    if parts.fragment:
        raise ProxyError(BAD_REQUEST, "a CoAP URI has no fragment (RFC 7252 §6.4)")
    path = tuple(urllib.parse.unquote(p) for p in parts.path.split("/")[1:]) if parts.path else ()
    if path == ("",):
        path = ()
    query = tuple(urllib.parse.unquote(q) for q in parts.query.split("&")) if parts.query else ()
    return Target("coap", parts.hostname, port, path, query)


def target_of(request: Message, reverse: Target | None = None) -> Target:
    """The target of a request to the proxy (RFC 7252 §5.7.2; draft-...-proxy §4).

    Proxy-Uri, or Proxy-Scheme with Uri-Host / Uri-Port / Uri-Path / Uri-Query (what libcoap sends);
    without either, a reverse proxy maps the request onto its ``reverse`` origin (RFC 7252 §5.7.3).
    Raises :class:`ProxyError` with the code to answer.
    """
    opt = request.opt
    if opt.proxy_uri is not None:
        if opt.proxy_scheme is not None or opt.uri_host is not None or opt.uri_path or opt.uri_query:
            raise ProxyError(BAD_OPTION, "Proxy-Uri together with Proxy-Scheme or Uri-* options")
        target = parse_uri(opt.proxy_uri)
    elif opt.proxy_scheme is not None:
        if opt.proxy_scheme != "coap":
            raise ProxyError(
                PROXYING_NOT_SUPPORTED, f"scheme {opt.proxy_scheme!r} is not proxied (only coap)"
            )
        if not opt.uri_host:
            raise ProxyError(BAD_REQUEST, "Proxy-Scheme without Uri-Host")
        target = Target("coap", opt.uri_host, opt.uri_port, tuple(opt.uri_path), tuple(opt.uri_query))
    elif reverse is not None:
        target = Target(
            reverse.scheme,
            reverse.host,
            reverse.port,
            reverse.path + tuple(opt.uri_path),
            reverse.query + tuple(opt.uri_query),
        )
    else:
        raise ProxyError(NOT_FOUND, "no Proxy-Uri or Proxy-Scheme: this is a forward proxy")
    return Target(target.scheme, target.host, target.port, target.path, target.query, opt.accept)


def forward_request(request: Message, target: Target) -> Message:
    """The request the proxy sends to the origin for ``request`` (RFC 7252 §5.7.2).

    The target options are rebuilt from ``target``; every other option travels unchanged (an unknown
    unsafe option never reaches here, see :func:`check_options`).
    """
    out = Message(code=request.code, payload=request.payload, uri=target.uri())
    for option in request.opt.option_list():
        if option.number in _TARGET_OPTIONS:
            continue
        out.opt.add_option(option)
    return out


def check_options(request: Message, code_points: CodePoints = DEFAULT_CODE_POINTS) -> None:
    """Reject unknown critical options with 4.02 (RFC 7252 §5.4.1).

    Listen-To-Multicast-Responses is only understood where the proxy supports it (the caller
    removes it first); Feedback-Divider is elective and understood (draft-...-proxy §6).
    """
    for option in request.opt.option_list():
        number = OptionNumber(int(option.number))
        if number == code_points.listen_to_multicast_responses:
            raise ProxyError(BAD_OPTION, "Listen-To-Multicast-Responses is not supported here")
        if number.is_critical() and not _known(number):
            raise ProxyError(BAD_OPTION, f"unknown critical option {int(number)}")


#: Options aiocoap knows by name (RFC 7252 §5.10 and later registrations).
_KNOWN = frozenset(int(getattr(OptionNumber, n)) for n in dir(OptionNumber) if n.isupper())


def _known(number: OptionNumber) -> bool:
    return int(number) in _KNOWN


def max_age_of(message: Message) -> int:
    """Max-Age of a response, defaulting to 60 s (RFC 7252 §5.10.5)."""
    value = message.opt.max_age
    return DEFAULT_MAX_AGE if value is None else int(value)


@dataclass(frozen=True)
class Fanout:
    """Send ``message`` to every client in ``clients`` with that client's own Token (proxy §4).

    ``last`` ends the clients' observations (an error or a response without Observe).
    """

    message: Message
    clients: tuple[ClientKey, ...]
    last: bool = False


@dataclass(frozen=True)
class Registered:
    """Outcome of a client's observation request at the proxy (proxy draft §4)."""

    #: The proxy must register itself at the server for this target (first client only).
    register_upstream: bool
    #: The answer now, from the cache; None when nothing is cached (an Empty ACK, then the first
    #: notification).
    answer: Message | None


@dataclass
class _Upstream:
    """One registration of the proxy at the server, serving any number of clients."""

    observe: int
    clients: dict[ClientKey, None] = field(default_factory=dict)
    cached: Message | None = None
    cached_at: float = 0.0
    forwarded: int = 0
    #: Protected notifications of a ticket request: forwarded unchanged (proxy draft §5.2).
    unchanged: bool = False
    last_observe: tuple[int, float] | None = None


class ProxyEngine:
    """Fan-out of one upstream observation per target to many clients (proxy draft §4, §6)."""

    def __init__(self, rng: random.Random, code_points: CodePoints = DEFAULT_CODE_POINTS) -> None:
        self.rng = rng
        self.code_points = code_points
        self._up: dict[Target, _Upstream] = {}
        self._client_target: dict[ClientKey, Target] = {}

    # -- clients ------------------------------------------------------------------------------

    def register(self, target: Hashable, client: ClientKey, now: float) -> Registered:
        """A client asks to observe ``target`` (RFC 7641 §5; proxy draft §4).

        The first client makes the proxy register at the server; later ones are only added to the
        list of observers and answered from the cache when there is a cached notification.
        """
        old = self._client_target.get(client)
        if old is not None and old != target:
            self.deregister(client)
        up = self._up.get(target)
        start = up is None
        if up is None:
            up = _Upstream(
                observe=self.rng.randrange(OBSERVE_MODULO // 2),
                unchanged=isinstance(target, Ticket | DeterministicTarget),
            )
            self._up[target] = up
        up.clients[client] = None
        self._client_target[client] = target
        return Registered(start, self._from_cache(up, now))

    def deregister(self, client: ClientKey) -> Hashable | None:
        """The client lost interest. Returns the target when no client is left: the proxy then
        forgets its own participation (proxy draft §6, as a client would, observe draft §5.4)."""
        target = self._client_target.pop(client, None)
        if target is None:
            return None
        up = self._up.get(target)
        if up is None:
            return None
        up.clients.pop(client, None)
        if up.clients:
            return None
        del self._up[target]
        return target

    def clients(self, target: Hashable) -> int:
        up = self._up.get(target)
        return 0 if up is None else len(up.clients)

    def targets(self) -> Iterable[Target]:
        return self._up.keys()

    def cached(self, target: Target, now: float) -> Message | None:
        """The cached notification with Max-Age reduced by its age (RFC 7252 §5.6.1), or None."""
        up = self._up.get(target)
        return None if up is None else self._from_cache(up, now)

    def _from_cache(self, up: _Upstream, now: float) -> Message | None:
        if up.cached is None:
            return None
        message = _shallow(up.cached)
        if up.unchanged:
            return message  # protected end to end: forwarded as it is (proxy draft §5.2)
        age = max(0, int(now - up.cached_at))
        message.opt.max_age = max(0, max_age_of(up.cached) - age)
        return message

    # -- server side --------------------------------------------------------------------------

    def on_upstream(self, target: Target, notification: Message, now: float) -> Fanout | None:
        """A notification for ``target`` reached the proxy (multicast, 'last_notif', or unicast).

        Feedback-Divider is removed before forwarding (proxy draft §6; the proxy answers the rough
        counting itself as a client, observe draft §8.2). The Observe number is the proxy's own,
        one counter per target, so it grows for each client (RFC 7641 §4.4). An error or a response
        without Observe ends the clients' observations. Returns None when nobody is listening.
        """
        up = self._up.get(target)
        if up is None:
            return None
        message = Message(code=notification.code, payload=notification.payload)
        for option in notification.opt.option_list():
            if option.number in (self.code_points.feedback_divider, OptionNumber.OBSERVE):
                continue
            message.opt.add_option(option)
        last = not notification.code.is_successful() or notification.opt.observe is None
        if not last:
            up.observe = (up.observe + 1) % OBSERVE_MODULO
            message.opt.observe = up.observe
            up.cached, up.cached_at = message, now
        up.forwarded += 1
        clients = tuple(up.clients)
        if last:
            for c in clients:
                self._client_target.pop(c, None)
            del self._up[target]
        return Fanout(message, clients, last)

    def on_protected(
        self, key: Hashable, message: Message, source: Endpoint, now: float, listen: Ticket | None = None
    ) -> Fanout | None:
        """A datagram heard on the group of a ticket request (proxy draft §5.2), or of a Deterministic
        phantom request (§9; then ``listen`` says what its informative response announced).

        The proxy cannot read it (Group OSCORE): it checks only what the client engine checks before
        decryption (Token T, source SRV_ADDR:SRV_PORT, a NON response, a fresh outer Observe, RFC 7641
        §3.4) and forwards it unchanged but for the Token; the client verifies it end to end.
        """
        listen = listen if listen is not None else key if isinstance(key, Ticket) else None
        if listen is None:
            raise TypeError("on_protected needs the Token and server to match")
        if message.token != listen.token or source != listen.server:
            return None
        if not message.code.is_response() or message.mtype != NON:
            return None
        return self.on_unchanged(key, message, now)

    def on_unchanged(self, key: Hashable, message: Message, now: float) -> Fanout | None:
        """Forward a protected response as it is to every client of ``key`` and cache it (§5.2, §9).

        Only the outer Observe is looked at: an older one than the last forwarded is dropped.
        """
        up = self._up.get(key)
        if up is None:
            return None
        observe = message.opt.observe
        if observe is not None:
            if up.last_observe is not None and not observe_is_fresh(
                up.last_observe[0], up.last_observe[1], observe, now
            ):
                return None
            up.last_observe = (observe, now)
        out = _shallow(message)
        up.cached, up.cached_at = out, now
        up.forwarded += 1
        return Fanout(out, tuple(up.clients), False)

    def on_upstream_failed(self, target: Hashable, response: Message | None, reason: str) -> Fanout | None:
        """The proxy's own observation failed or ended: every client gets the error, or 5.02 (RFC 7252
        §5.7.1; proxy draft §6 for an option the proxy cannot handle)."""
        up = self._up.pop(target, None)
        if up is None:
            return None
        if response is None or response.code.is_successful():
            response = Message(code=BAD_GATEWAY, payload=reason.encode()[:200])
        clients = tuple(up.clients)
        for c in clients:
            self._client_target.pop(c, None)
        return Fanout(_shallow(response, observe=False), clients, True)


@dataclass(frozen=True)
class Ticket:
    """A ticket request reduced to what the proxy adjacent to the server needs (proxy draft §5.2).

    Equal for every client of one group observation: the key under which the proxy serves them all.
    """

    #: The rebuilt phantom request (outer code, outer options, protected payload) without Token.
    phantom: bytes
    #: The serialized 'tp_info' from Listen-To-Multicast-Responses.
    tp_info: bytes
    token: bytes
    server: Endpoint
    group: Endpoint


@dataclass(frozen=True)
class DeterministicTarget:
    """An observation request that is a Deterministic Request (proxy draft §9): every client sends the
    same bytes, so the proxy serves them all from one upstream exchange and its cache."""

    target: Target
    #: The request's outer code, outer options (no proxy options) and payload.
    request: bytes


def deterministic_target(
    request: Message, target: Target, code_points: CodePoints = DEFAULT_CODE_POINTS
) -> DeterministicTarget | None:
    """A :class:`DeterministicTarget` for an OSCORE request with Request-Hash and Observe 0, else None
    (cacheable-oscore §3.3: Request-Hash is part of the cache key)."""
    if request.opt.oscore is None or request.opt.observe != 0:
        return None
    if not request.opt.get_option(code_points.request_hash):
        return None
    return DeterministicTarget(target, serialize_message(forward_request(request, target)))


def ticket_of(request: Message, code_points: CodePoints = DEFAULT_CODE_POINTS) -> Ticket | None:
    """The ticket request carried by ``request``, if it has Listen-To-Multicast-Responses (§5.1, §5.2).

    The proxy removes Proxy-Uri / Proxy-Scheme (and the Uri-Host / Uri-Port that went with it) and the
    option itself, and rebuilds the phantom request from what is left. Raises :class:`ProxyError`
    (4.02 / 4.00) for a malformed option or a request that is not an Observe registration.
    """
    values = request.opt.get_option(code_points.listen_to_multicast_responses)
    if not values:
        return None
    if len(values) > 1:
        raise ProxyError(BAD_OPTION, "Listen-To-Multicast-Responses is not repeatable")
    raw = bytes(values[0].value)
    if not 3 <= len(raw) <= 1024:
        raise ProxyError(BAD_OPTION, f"Listen-To-Multicast-Responses of {len(raw)} bytes (3-1024)")
    try:
        tp = TpInfo.from_cbor_obj(cbor_decode(raw))
    except MalformedError as e:
        raise ProxyError(BAD_OPTION, f"Listen-To-Multicast-Responses: {e}") from None
    if tp.tpi_client is None or tp.tpi_token is None:
        raise ProxyError(BAD_OPTION, "Listen-To-Multicast-Responses lacks tpi_details (draft §4.2.1.1)")
    if (
        tp.tpi_server.scheme_id != -1
        or not isinstance(tp.tpi_server.host, ipaddress.IPv4Address | ipaddress.IPv6Address)
        or not isinstance(tp.tpi_client.host, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ):
        raise ProxyError(BAD_OPTION, "Listen-To-Multicast-Responses: only coap over UDP with IP addresses")
    group = Endpoint.of(tp.tpi_client.host, tp.tpi_client.effective_port())
    if not group.host.is_multicast:
        raise ProxyError(BAD_OPTION, "Listen-To-Multicast-Responses: tpi_client is not a multicast address")
    if request.opt.observe != 0:
        raise ProxyError(BAD_REQUEST, "a ticket request is an Observe registration (Observe 0)")
    phantom = Message(code=request.code, payload=request.payload)
    for option in request.opt.option_list():
        if option.number in _TARGET_OPTIONS or option.number == code_points.listen_to_multicast_responses:
            continue
        phantom.opt.add_option(option)
    return Ticket(
        serialize_message(phantom),
        cbor_encode(tp.to_cbor_obj()),
        tp.tpi_token,
        Endpoint.of(tp.tpi_server.host, tp.tpi_server.effective_port()),
        group,
    )


def listen_to(informative: InformativeResponse, phantom: bytes) -> Ticket:
    """Where to listen for the group observation an unprotected informative response announces, for
    the Deterministic phantom request ``phantom`` (proxy draft §9; observe draft §5.2 step 1).

    'ph_req', when present, must be the very request sent (observe draft App. D); raises
    :class:`MalformedError` otherwise or when 'tp_info' cannot be listened to.
    """
    tp = informative.tp_info
    if tp is None or tp.tpi_client is None or tp.tpi_token is None:
        raise MalformedError("the informative response lacks 'tp_info' with tpi_details")
    if informative.ph_req is not None and informative.ph_req != phantom:
        raise MalformedError("'ph_req' differs from the Deterministic Request sent (observe draft App. D)")
    hosts = (tp.tpi_server.host, tp.tpi_client.host)
    if tp.tpi_server.scheme_id != -1 or not all(
        isinstance(h, ipaddress.IPv4Address | ipaddress.IPv6Address) for h in hosts
    ):
        raise MalformedError("only coap over UDP with IP addresses in 'tp_info'")
    group = Endpoint.of(tp.tpi_client.host, tp.tpi_client.effective_port())
    if not group.host.is_multicast:
        raise MalformedError("'tpi_client' is not a multicast address")
    return Ticket(
        phantom,
        cbor_encode(tp.to_cbor_obj()),
        tp.tpi_token,
        Endpoint.of(tp.tpi_server.host, tp.tpi_server.effective_port()),
        group,
    )


def ticket_request(
    phantom: Message, tp_info: TpInfo, target: Target, code_points: CodePoints = DEFAULT_CODE_POINTS
) -> Message:
    """The ticket request a client builds from a verified informative response (proxy draft §5.2).

    Outer code, outer options and protected payload of the phantom request, outer Observe 0,
    Proxy-Scheme + Uri-Host (+ Uri-Port) for the original target, and Listen-To-Multicast-Responses
    with the serialized 'tp_info'. The Token is the client's own.
    """
    out = Message(code=phantom.code, payload=phantom.payload)
    for option in phantom.opt.option_list():
        if option.number in _TARGET_OPTIONS:
            continue
        out.opt.add_option(option)
    out.opt.observe = 0
    out.opt.proxy_scheme = target.scheme
    out.opt.uri_host = target.host
    if target.port is not None:
        out.opt.uri_port = target.port
    out.opt.add_option(
        OpaqueOption(code_points.listen_to_multicast_responses, cbor_encode(tp_info.to_cbor_obj()))
    )
    return out


def _shallow(message: Message, observe: bool = True) -> Message:
    """A new message with the same code, payload and options (one per send: aiocoap sets MIDs)."""
    out = Message(code=message.code, payload=message.payload)
    for option in message.opt.option_list():
        if not observe and option.number == OptionNumber.OBSERVE:
            continue
        out.opt.add_option(option)
    return out


def per_client(message: Message) -> Message:
    """A copy to hand to one client's exchange (the Token and MID are set by the CoAP layer)."""
    return _shallow(message)


__all__ = [
    "Fanout",
    "ProxyEngine",
    "Registered",
    "Target",
    "Ticket",
    "check_options",
    "forward_request",
    "parse_uri",
    "per_client",
    "target_of",
    "ticket_of",
    "ticket_request",
]
