"""Forwarding rules of a proxy for group observations, as a pure state machine.

draft-ietf-core-multicast-notifications-proxy §4 and §6: the proxy is a *client* of the group
observation toward the server (one registration per target resource, whatever the number of its own
clients) and a *server* of traditional observations (RFC 7641 §5) toward its clients. This module
decides; :mod:`mcobserve.proxy.aio` moves the bytes. Time comes in as ``now``; nothing here does I/O.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from aiocoap import (
    BAD_GATEWAY,
    BAD_OPTION,
    BAD_REQUEST,
    NOT_FOUND,
    PROXYING_NOT_SUPPORTED,
    Message,
)
from aiocoap.numbers.optionnumbers import OptionNumber

from ..constants import COAP_PORT, DEFAULT_CODE_POINTS, DEFAULT_MAX_AGE, CodePoints
from ..errors import ProxyError

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


class ProxyEngine:
    """Fan-out of one upstream observation per target to many clients (proxy draft §4, §6)."""

    def __init__(self, rng: random.Random, code_points: CodePoints = DEFAULT_CODE_POINTS) -> None:
        self.rng = rng
        self.code_points = code_points
        self._up: dict[Target, _Upstream] = {}
        self._client_target: dict[ClientKey, Target] = {}

    # -- clients ------------------------------------------------------------------------------

    def register(self, target: Target, client: ClientKey, now: float) -> Registered:
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
            up = _Upstream(observe=self.rng.randrange(OBSERVE_MODULO // 2))
            self._up[target] = up
        up.clients[client] = None
        self._client_target[client] = target
        return Registered(start, self._from_cache(up, now))

    def deregister(self, client: ClientKey) -> Target | None:
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

    def clients(self, target: Target) -> int:
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

    def on_upstream_failed(self, target: Target, response: Message | None, reason: str) -> Fanout | None:
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
    "check_options",
    "forward_request",
    "parse_uri",
    "per_client",
    "target_of",
]
