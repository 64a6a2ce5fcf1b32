"""One authorisation hook for server, broker and proxy (draft §9; DESIGN.md: security in one place).

API (what other packages call)::

    from mcobserve.aio.authz import Authorize, Policy, requester, refusal

    # The hook: a callable deciding one request.  None = allowed; otherwise the CoAP error code to answer.
    class Authorize(Protocol):
        def __call__(self, request: Message, resource_path: tuple[str, ...], method: Code) -> Code | None

    policy = Policy(require_oscore=True, publishers={"client-1"})
    code = policy(request, ("r",), request.code)        # None, UNAUTHORIZED (4.01) or FORBIDDEN (4.03)
    if code is not None:
        return refusal(code)                             # a small Message with a one-line reason

    who = requester(request)   # Requester(protected=..., identities=frozenset({"client-1"}))

The default :class:`Policy`:

* ``require_oscore`` (a server started with ``--credentials``): every request to a protected resource
  that did not come over OSCORE from a known security context gets **4.01 Unauthorized**, whatever its
  method (GET, FETCH, PUT, POST, PATCH, iPATCH, DELETE). So nothing an unauthenticated party sends reaches
  the resource, its observers or the group (draft §9: registrations and informative responses MUST be
  protected; writes are the application's, and protected the same way).
* ``publishers``: when given, only these OSCORE identities may change a resource (PUT, POST, PATCH,
  iPATCH, DELETE); other authenticated clients get **4.03 Forbidden**. When it is None, every
  OSCORE-authenticated client may write. An identity is the name of the client's entry in the server's
  aiocoap credentials file, with or without its leading ``:`` (``":client-1"`` and ``"client-1"`` are
  the same identity).
* without ``require_oscore`` and without ``publishers`` everything is allowed (an open test network).

A resource decides per request by overriding
:meth:`mcobserve.aio.server.GroupObservableResource.authorize` (its default asks the server's hook); a
server, broker or proxy takes any :class:`Authorize` callable as its ``authorize=`` argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiocoap import DELETE, FORBIDDEN, POST, PUT, UNAUTHORIZED, Code, Message

from . import _glue

Path = tuple[str, ...]

#: Methods that change a resource: restricted to ``publishers`` when a list is configured.
WRITE_METHODS: frozenset[Code] = frozenset({PUT, POST, DELETE, Code.PATCH, Code.iPATCH})


class Authorize(Protocol):
    """Decide one request: None to serve it, or the error code to answer instead."""

    def __call__(self, request: Message, resource_path: Path, method: Code) -> Code | None: ...


@dataclass(frozen=True)
class Requester:
    """Who sent a request, as far as the transport can tell."""

    #: Came over (unicast) OSCORE from a security context the server knows (RFC 8613).
    protected: bool
    #: The authenticated identities (aiocoap's claims: credentials entry names, without leading ':').
    identities: frozenset[str]


def _name(identity: str) -> str:
    return identity[1:] if identity.startswith(":") else identity


def requester(request: Message) -> Requester:
    """The :class:`Requester` of an incoming request."""
    if not _glue.is_oscore_protected(request):
        return Requester(False, frozenset())
    return Requester(True, frozenset(_name(str(c)) for c in _glue.authenticated_claims(request)))


class Policy:
    """The default authorisation policy (module docstring); an :class:`Authorize` callable."""

    def __init__(self, *, require_oscore: bool = False, publishers: Iterable[str] | None = None) -> None:
        self.require_oscore = require_oscore
        self.publishers: frozenset[str] | None = (
            None if publishers is None else frozenset(_name(p) for p in publishers)
        )

    def __call__(self, request: Message, resource_path: Path, method: Code) -> Code | None:
        who = requester(request)
        if self.require_oscore and not who.protected:
            return UNAUTHORIZED
        if self.publishers is not None and method in WRITE_METHODS:
            if not who.protected:
                return UNAUTHORIZED
            if not (who.identities & self.publishers):
                return FORBIDDEN
        return None

    def __repr__(self) -> str:
        pubs = None if self.publishers is None else sorted(self.publishers)
        return f"Policy(require_oscore={self.require_oscore}, publishers={pubs})"


#: Allows everything (the library default when a server has no credentials).
ALLOW_ALL: Authorize = Policy()

#: Short on purpose: to an unverified source, a refusal must stay within 3x a small request (RFC 9175 §2.4).
_REASONS: dict[Code, bytes] = {
    UNAUTHORIZED: b"OSCORE required",
    FORBIDDEN: b"not a publisher",
}


def refusal(code: Code, **options: Any) -> Message:
    """The response for a refused request: ``code`` with a one-line diagnostic payload."""
    return Message(code=code, payload=_REASONS.get(code, b"refused"), **options)
