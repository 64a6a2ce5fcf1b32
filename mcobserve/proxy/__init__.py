"""Proxies for group observations (draft-ietf-core-multicast-notifications-proxy).

:mod:`.engine` holds the forwarding rules (pure); :mod:`.aio` runs them on aiocoap.
"""

from .engine import Fanout, ProxyEngine, Registered, Target, forward_request, parse_uri, target_of

__all__ = ["Fanout", "ProxyEngine", "Registered", "Target", "forward_request", "parse_uri", "target_of"]
