"""mcobserve: Observe notifications as CoAP multicast responses.

Implements draft-ietf-core-observe-multicast-notifications (editor's copy -15) on aiocoap 0.4.17.
Layers: :mod:`mcobserve.wire` (bytes), :mod:`mcobserve.server` / :mod:`mcobserve.client` (pure protocol
engine), :mod:`mcobserve.aio` (aiocoap adapter), :mod:`mcobserve.cli` (command line).
"""

__version__ = "0.1.0"
