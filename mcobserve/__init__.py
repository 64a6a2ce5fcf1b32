"""mcobserve: Observe notifications as CoAP multicast responses.

Implements draft-ietf-core-observe-multicast-notifications (editor's copy -15) on aiocoap 0.4.17.
Layers: :mod:`mcobserve.wire` (bytes), :mod:`mcobserve.engine` (pure protocol engine: ``engine.server``,
``engine.client``, ``engine.counting``), :mod:`mcobserve.oscore` (Group OSCORE), :mod:`mcobserve.aio`
(aiocoap adapter), :mod:`mcobserve.cli` (command line), :mod:`mcobserve.bench` (benchmarks),
:mod:`mcobserve.netlab` (namespace LANs), :mod:`mcobserve.dissector` (Wireshark dissector).
"""

__version__ = "0.1.0"
