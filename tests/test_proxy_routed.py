"""A routed topology: the server and the proxy on one link (the only one with multicast), three legacy
clients on another link behind the proxy (proxy draft §1: clients that cannot listen to multicast)."""

from __future__ import annotations

import subprocess

from mcobserve import netlab
from mcobserve.capture import Capture

from .conftest import require_netns
from .livekit import GROUP6, put, server, start

LINK_A = "fd00:db8:a::"  # server <-> proxy, multicast here
LINK_B = "fd00:db8:b::"  # proxy <-> clients, no multicast notification ever


class Routed(netlab._Lab):
    """srv --(link A)-- prx (router) --(bridge, link B)-- c1, c2, c3."""

    def __init__(self, clients: int = 3) -> None:
        super().__init__()
        self.n = clients
        self.server: netlab.Host
        self.proxy_a: netlab.Host  # the proxy seen on link A
        self.proxy_b: netlab.Host  # the proxy seen on link B (same namespace)
        self.clients: list[netlab.Host] = []

    def _build(self) -> None:
        import os

        from pyroute2 import IPRoute

        srv, prx, br = self._new_ns("srv"), self._new_ns("prx"), self._new_ns("br")
        netlab._ns_sysctls(prx, {"net.ipv6.conf.all.forwarding": "1"})
        fd = {n: os.open(os.path.join(netlab.NETNS_DIR, n), os.O_RDONLY) for n in (prx, br)}
        try:
            with IPRoute(netns=srv) as ipr:
                ipr.link("set", index=netlab._ifindex(ipr, "lo"), state="up")
                ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd[prx]})
                i = netlab._ifindex(ipr, "eth0")
                ipr.addr("add", index=i, address=LINK_A + "1", prefixlen=64, flags=netlab.IFA_F_NODAD)
                ipr.link("set", index=i, state="up")
                ipr.route("add", dst=LINK_B, dst_len=64, gateway=LINK_A + "2", oif=i)
                self.server = netlab.Host(srv, "srv", "eth0", LINK_A + "1", "", i)
            with IPRoute(netns=br) as bipr:
                bipr.link("set", index=netlab._ifindex(bipr, "lo"), state="up")
                bipr.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
                bri = netlab._ifindex(bipr, "br0")
                bipr.link("set", index=bri, state="up")
            with IPRoute(netns=prx) as ipr:
                ipr.link("set", index=netlab._ifindex(ipr, "lo"), state="up")
                a = netlab._ifindex(ipr, "eth0")
                ipr.addr("add", index=a, address=LINK_A + "2", prefixlen=64, flags=netlab.IFA_F_NODAD)
                ipr.link("set", index=a, state="up")
                ipr.link("add", ifname="eth1", kind="veth", peer={"ifname": "p-prx", "net_ns_fd": fd[br]})
                b = netlab._ifindex(ipr, "eth1")
                ipr.addr("add", index=b, address=LINK_B + "1", prefixlen=64, flags=netlab.IFA_F_NODAD)
                ipr.link("set", index=b, state="up")
                self.proxy_a = netlab.Host(prx, "prx", "eth0", LINK_A + "2", "", a)
                self.proxy_b = netlab.Host(prx, "prx", "eth1", LINK_B + "1", "", b)
            ports = ["p-prx"]
            for k in range(1, self.n + 1):
                name = self._new_ns(f"c{k}")
                with IPRoute(netns=name) as ipr:
                    ipr.link("set", index=netlab._ifindex(ipr, "lo"), state="up")
                    ipr.link(
                        "add", ifname="eth0", kind="veth", peer={"ifname": f"p-c{k}", "net_ns_fd": fd[br]}
                    )
                    i = netlab._ifindex(ipr, "eth0")
                    addr = f"{LINK_B}{k + 1:x}"
                    ipr.addr("add", index=i, address=addr, prefixlen=64, flags=netlab.IFA_F_NODAD)
                    ipr.link("set", index=i, state="up")
                    ipr.route("add", dst=LINK_A, dst_len=64, gateway=LINK_B + "1", oif=i)
                    self.clients.append(netlab.Host(name, f"c{k}", "eth0", addr, "", i))
                ports.append(f"p-c{k}")
            with IPRoute(netns=br) as bipr:
                for p in ports:
                    pi = netlab._ifindex(bipr, p)
                    bipr.link("set", index=pi, master=bri)
                    bipr.link("set", index=pi, state="up")
        finally:
            for f in fd.values():
                os.close(f)
        self.hosts = [self.server, self.proxy_a, *self.clients]


def test_three_legacy_clients_on_another_link(tools, tmp_path):
    """Each libcoap client gets every change by unicast from the proxy; multicast stays on link A."""
    require_netns()
    with Routed(3) as lab:
        srv = server(lab.server, f"[{lab.server.addr6}]", GROUP6)
        prx = start(
            lab.proxy_a,
            "proxy",
            ["proxy", "--bind", "[::]", "--interface", lab.proxy_a.ifname, "--json"],
        )
        prx.wait_event(lambda e: e.get("event") == "started")
        values = ["5678", "9abc"]
        uri = f"coap://[{lab.server.addr6}]/r"
        try:
            with Capture(lab.clients[0], "eth0", "udp", tmp_path / "b.pcapng") as cap:
                legacy = [
                    c.popen(
                        [
                            "coap-client-notls",
                            "-P",
                            f"coap://[{lab.proxy_b.addr6}]",
                            "-s",
                            "15",
                            "-B",
                            "15",
                            uri,
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    for c in lab.clients
                ]
                prx.wait_count(lambda e: e.get("event") == "client_registered", 3, timeout=15)
                put(lab.clients[0], uri, values, 0.5)  # routed, straight to the server
                prx.wait_count(
                    lambda e: e.get("event") == "notification_forwarded" and e["via"] == "multicast", 2, 15
                )
                outs = []
                for p in legacy:
                    p.terminate()
                    outs.append(p.communicate(timeout=10))
            events = prx.stop()
        finally:
            srv_events = srv.stop()
    for out, err in outs:
        assert out.strip() == "1234" + "".join(values), (out, err)
    regs = [e for e in srv_events if e.get("event") == "registration" and e["kind"] != "confirmation"]
    assert len(regs) == 1 and regs[0]["remote"].startswith(f"[{LINK_A}2]"), regs
    assert len([e for e in srv_events if e.get("event") == "notification_sent"]) == len(values)
    fwd = [e for e in events if e.get("event") == "notification_forwarded" and e["via"] == "multicast"]
    assert [e["clients"] for e in fwd] == [3, 3]
    packets = cap.decode(ports=[5683, 61616])
    assert not [p for p in packets if (p["ipv6.dst"] or "").startswith("ff")]  # no multicast on link B
    to_me = [p for p in packets if p["ipv6.dst"] == lab.clients[0].addr6 and p["coap.opt.observe"]]
    assert [p["udp.srcport"] for p in to_me] == ["5683"] * 3  # from the proxy: cache, then 2 changes
    assert {p["ipv6.src"] for p in to_me} == {lab.proxy_b.addr6}
