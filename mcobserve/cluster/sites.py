"""Three sites, one broker node each, and a NATS backbone, all in private namespaces (tests, bench).

Topology (built with :mod:`mcobserve.netlab` and pyroute2):

* site k (k = 1..n): a :class:`~mcobserve.netlab.Lan` of its own (bridge, broker host ``server``,
  ``clients``) with the usual addresses ``fd00:db8::/64``; each site is a separate L2 segment, so the
  same addresses repeat and multicast never leaves a site;
* the backbone: one namespace where the three nats-servers run (routes on its loopback, clients on
  0.0.0.0), with one veth per site to the site's broker host: backbone ``10.79.k.1/24``, broker host
  ``10.79.k.2/24`` (interface ``nats0``). The broker at site k uses ``nats://10.79.k.1:PORT``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from .. import netlab
from .natsrun import NatsCluster


class Sites:
    """Three site LANs plus the NATS backbone; a context manager that tears everything down."""

    def __init__(self, workdir: Path, sites: int = 3, clients: int = 1, nats_servers: int = 3) -> None:
        """Describe the lab; :meth:`__enter__` builds it."""
        self.workdir = workdir
        self.lans = [netlab.Lan(clients=clients) for _ in range(sites)]
        self.backbone = netlab.OneHost()
        self.nats: NatsCluster | None = None
        self.n_nats = nats_servers

    def __enter__(self) -> Sites:
        """Build the namespaces, wire the backbone, start NATS; on failure tear down."""
        try:
            self.backbone.start()
            for lan in self.lans:
                lan.start()
            self._wire()
            self.nats = NatsCluster(
                self.workdir / "nats",
                self.n_nats,
                client_host="0.0.0.0",
                route_host="127.0.0.1",
                argv_prefix=["ip", "netns", "exec", self.backbone.name],
            )
            self.nats.start(timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop NATS and remove every namespace (best effort)."""
        if self.nats is not None:
            with contextlib.suppress(Exception):
                self.nats.stop()
        for lab in [*self.lans, self.backbone]:
            with contextlib.suppress(Exception):
                lab.close()

    def _wire(self) -> None:
        """One veth per site between the backbone and the site's broker host."""
        from pyroute2 import IPRoute

        for k, lan in enumerate(self.lans, start=1):
            fd = os.open(os.path.join(netlab.NETNS_DIR, lan.server.name), os.O_RDONLY)
            try:
                with IPRoute(netns=self.backbone.name) as ipr:
                    ipr.link("add", ifname=f"bk{k}", kind="veth", peer={"ifname": "nats0", "net_ns_fd": fd})
                    idx = ipr.link_lookup(ifname=f"bk{k}")[0]
                    ipr.addr("add", index=idx, address=f"10.79.{k}.1", prefixlen=24)
                    ipr.link("set", index=idx, state="up")
            finally:
                os.close(fd)
            with IPRoute(netns=lan.server.name) as ipr:
                idx = ipr.link_lookup(ifname="nats0")[0]
                ipr.addr("add", index=idx, address=f"10.79.{k}.2", prefixlen=24)
                ipr.link("set", index=idx, state="up")

    def urls(self, k: int) -> str:
        """The --cluster value for the broker at site k (1-based)."""
        assert self.nats is not None
        return ",".join(self.nats.urls(f"10.79.{k}.1"))

    def broker_args(self, k: int, store: str, group: str, *extra: str) -> list[str]:
        """``mcobserve`` arguments for the broker node of site k (JSON events, no rate limit on air)."""
        host = self.lans[k - 1].server
        return [
            "broker",
            "--bind",
            f"[{host.addr6}]",
            "--interface",
            host.ifname,
            "--store",
            store,
            "--group",
            group,
            "--min-interval",
            "0",
            "--cluster",
            self.urls(k),
            "--nats-node",
            f"site{k}",
            "--nats-retry-after",
            "2",
            "--json",
            *extra,
        ]

    def base(self, k: int) -> str:
        """The broker URI as seen from site k's clients."""
        return f"coap://[{self.lans[k - 1].server.addr6}]"

    def client(self, k: int, i: int = 0) -> Any:
        """Client host i of site k."""
        return self.lans[k - 1].clients[i]
