"""Three sites, one broker node each, and a NATS backbone, all in private namespaces.

Topology (built with mcobserve.netlab and pyroute2):

* site k (k = 1..3): a :class:`netlab.Lan` of its own (bridge, broker host ``server``, ``clients``), with
  the usual addresses ``fd00:db8::/64`` (each site is a separate L2 segment, so the same addresses
  repeat and multicast never leaves a site);
* the backbone: one namespace where the three nats-servers run (routes on its loopback, clients on
  0.0.0.0), with one veth per site to the site's broker host: backbone ``10.79.k.1/24``, broker
  ``10.79.k.2/24`` (``nats0`` in the broker host). Brokers at site k use ``nats://10.79.k.1:PORT``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from mcobserve import netlab
from mcobserve.cluster.natsrun import NatsCluster

from .livekit import GROUP6, Proc, start


class Sites:
    """Three site LANs plus the NATS backbone; a context manager that tears everything down."""

    def __init__(self, workdir: Path, sites: int = 3, clients: int = 1) -> None:
        self.workdir = workdir
        self.lans = [netlab.Lan(clients=clients) for _ in range(sites)]
        self.backbone = netlab.OneHost()
        self.nats: NatsCluster | None = None

    def __enter__(self) -> Sites:
        try:
            self.backbone.start()
            for lan in self.lans:
                lan.start()
            self._wire()
            self.nats = NatsCluster(
                self.workdir / "nats",
                3,
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
        if self.nats is not None:
            with contextlib.suppress(Exception):
                self.nats.stop()
        for lab in [*self.lans, self.backbone]:
            with contextlib.suppress(Exception):
                lab.close()

    def _wire(self) -> None:
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

    def broker(self, k: int, *extra: str, store: str | None = None) -> Proc:
        """Start the broker node of site k (JSON events), wait for broker_started."""
        host = self.lans[k - 1].server
        proc = start(
            host,
            f"broker{k}",
            [
                "broker",
                "--bind",
                f"[{host.addr6}]",
                "--interface",
                host.ifname,
                "--store",
                store or str(self.workdir / f"site{k}.sqlite"),
                "--group",
                GROUP6,
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
            ],
        )
        proc.wait_event(lambda e: e.get("event") == "broker_started", timeout=30)
        return proc

    def base(self, k: int) -> str:
        """The broker URI as seen from site k's clients."""
        return f"coap://[{self.lans[k - 1].server.addr6}]"

    def client(self, k: int, i: int = 0) -> Any:
        """Client host i of site k."""
        return self.lans[k - 1].clients[i]


#: Counts the datagrams one host receives on a multicast group and port: one line per datagram with its
#: CoAP Token in hex (a listener of the group, as a subscriber's kernel delivers them).
COUNTER = r"""
import socket, struct, sys, time, ipaddress
group, port, ifindex, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("::", port))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
             ipaddress.IPv6Address(group).packed + struct.pack("@I", ifindex))
print("ready", flush=True)
s.settimeout(0.2)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    tkl = data[0] & 0x0F
    print(data[4 : 4 + tkl].hex(), flush=True)
"""

#: PUTs values to a topic-data URI; after a 5.03 it waits and tries again (bounded); one JSON line
#: per response: {"value", "code", "max_age"}.
PUBLISHER = r"""
import asyncio, json, sys, time, aiocoap
async def main():
    uri, values, every, patience = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), float(sys.argv[4])
    ctx = await aiocoap.Context.create_client_context()
    for v in values:
        end = time.monotonic() + patience
        while True:
            msg = aiocoap.Message(code=aiocoap.PUT, uri=uri, payload=v.encode(), content_format=0)
            r = await ctx.request(msg).response
            print(json.dumps({"value": v, "code": r.code.dotted, "max_age": r.opt.max_age,
                              "t": time.time()}), flush=True)
            if r.code.is_successful() or time.monotonic() > end:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(every)
    await ctx.shutdown()
asyncio.run(main())
"""

#: GET a URI once: prints "<code> <payload>".
GETTER = r"""
import asyncio, sys, aiocoap
async def main():
    ctx = await aiocoap.Context.create_client_context()
    r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=sys.argv[1])).response
    print(r.code.dotted, r.payload.decode(errors="replace"))
    await ctx.shutdown()
asyncio.run(main())
"""

#: The leader of a JetStream stream, from a server's monitoring endpoint (run in the backbone).
LEADER = r"""
import json, sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/jsz?accounts=true&streams=true"
d = json.loads(urllib.request.urlopen(url, timeout=2).read())
for acc in d.get("account_details", []):
    for st in acc.get("stream_detail", []):
        if st["name"] == sys.argv[2]:
            print(st.get("cluster", {}).get("leader", ""))
"""
