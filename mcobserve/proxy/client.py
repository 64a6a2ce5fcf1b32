"""Our client behind a proxy: ``mcobserve observe URI --proxy coap://PROXY`` (RFC 7252 §5.7.2).

The registration goes to the proxy with Proxy-Uri set to the target; everything else is
:class:`~mcobserve.aio.client.Observer`: a proxy without end-to-end security answers with a
traditional observation (draft-ietf-core-multicast-notifications-proxy §4).
"""

from __future__ import annotations

from typing import Any

from aiocoap import GET, Message

from ..aio.client import Observer
from ..errors import ProxyError
from .engine import parse_uri


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
