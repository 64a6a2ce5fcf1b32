"""``mcobserve proxy`` with real legacy clients over real multicast in private namespaces.

draft-ietf-core-multicast-notifications-proxy §4, example §7: libcoap and aiocoap observe through the
proxy; the server sends one multicast datagram per change and counts one observer (the proxy); the
proxy forwards each change by unicast to each client with the client's own Token.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mcobserve.capture import Capture

from .livekit import GROUP6, notifications, observer, put, server, start

GROUP_ADDR = "ff35:30:2001:db8::23"

#: An aiocoap observer using aiocoap's own proxy support (ProxyForwarder): prints one payload a line.
AIOCOAP_OBSERVER = textwrap.dedent(
    """
    import asyncio, sys
    import aiocoap
    from aiocoap.proxy.client import ProxyForwarder

    async def main():
        ctx = await aiocoap.Context.create_client_context()
        fwd = ProxyForwarder(sys.argv[1], ctx)
        req = fwd.request(aiocoap.Message(code=aiocoap.GET, uri=sys.argv[2], observe=0))
        first = await req.response
        print("first", first.code, first.opt.observe, first.payload.decode(), flush=True)
        n = 1
        async for m in req.observation:
            print("next", m.code, m.opt.observe, m.payload.decode(), flush=True)
            n += 1
            if n >= int(sys.argv[3]):
                break
        await ctx.shutdown()

    asyncio.run(asyncio.wait_for(main(), 25))
    """
)


def proxy(host, *extra: str):
    p = start(
        host, "proxy", ["proxy", "--bind", f"[{host.addr6}]", "--interface", host.ifname, "--json", *extra]
    )
    p.wait_event(lambda e: e.get("event") == "started")
    return p


def test_legacy_clients_through_the_proxy_one_multicast_per_change(lan, tools, tmp_path):
    """libcoap, aiocoap and our client through the proxy each get every change by unicast; the server
    sends one multicast datagram per change and counts one observer (proxy draft §4, §7)."""
    srv_host, prx_host = lan.server, lan.clients[0]
    base = f"coap://[{srv_host.addr6}]"
    srv = server(srv_host, f"[{srv_host.addr6}]", GROUP6)
    # aiocoap 0.4.17's client does not answer Echo (RFC 9175): this proxy skips address verification
    # (tests/test_proxy_guard.py runs libcoap and ours through a verifying proxy).
    prx = proxy(prx_host, "--trusted-network")
    values = ["a", "b", "c"]
    try:
        with Capture(srv_host, srv_host.ifname, "udp", tmp_path / "srv.pcapng") as cap:
            libcoap = lan.clients[1].popen(
                [
                    "coap-client-notls",
                    "-P",
                    f"coap://[{prx_host.addr6}]",
                    "-s",
                    "20",
                    "-B",
                    "20",
                    f"{base}/r",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            prx.wait_event(lambda e: e.get("event") == "client_registered")
            aio = lan.clients[2].popen(
                [sys.executable, "-c", AIOCOAP_OBSERVER, f"[{prx_host.addr6}]", f"{base}/r", "4"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            ours = observer(
                lan.clients[2],
                f"{base}/r",
                count=4,
                name="ours",
                extra=("--proxy", f"coap://[{prx_host.addr6}]"),
            )
            prx.wait_count(lambda e: e.get("event") == "client_registered", 3, timeout=15)
            ours.wait_event(lambda e: e.get("index") == 1, timeout=15)
            put(lan.clients[1], f"{base}/r", values, 0.5)
            ours.collect(20)
            aio_out, aio_err = aio.communicate(timeout=30)
            # aiocoap-client through the proxy: a plain GET is forwarded, an observation answered
            # from the cache (0.4.17 prints only its first response, upstream issue #395).
            cli = str(Path(sys.executable).parent / "aiocoap-client")
            proxy_uri = f"coap://[{prx_host.addr6}]"
            get = lan.clients[1].run([cli, "--proxy", proxy_uri, f"{base}/r"], timeout=20)
            obs_first = lan.clients[1].popen(
                [sys.executable, "-u", cli, "--proxy", proxy_uri, "--observe", f"{base}/r"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            prx.wait_count(lambda e: e.get("event") == "client_registered", 4, timeout=15)
            assert obs_first.stdout is not None
            first_out = ""
            end = time.monotonic() + 15
            while values[-1] not in first_out and time.monotonic() < end:
                ready, _, _ = select.select([obs_first.stdout], [], [], 0.5)
                if ready:
                    first_out += os.read(obs_first.stdout.fileno(), 4096).decode()
            obs_first.terminate()
            obs_first.communicate(timeout=10)
            libcoap.terminate()
            lib_out, lib_err = libcoap.communicate(timeout=10)
        events = prx.stop()
    finally:
        srv_events = srv.stop()
    # Our client: a traditional observation at the proxy, every value, Observe growing.
    got = notifications(ours)
    assert [n["payload"] for n in got] == ["1234", *values], got
    assert {n["via"] for n in got} == {"unicast"}
    obs = [n["observe"] for n in got]
    assert obs == sorted(obs) and len(set(obs)) == 4
    # aiocoap's own proxy client: first response and every change.
    lines = aio_out.splitlines()
    assert [ln.split()[-1] for ln in lines] == ["1234", *values], (aio_out, aio_err)
    assert get.returncode == 0 and get.stdout.strip() == values[-1], (get.stdout, get.stderr)
    assert first_out.strip().splitlines()[0] == values[-1], first_out
    # libcoap prints the payloads one after the other.
    assert lib_out.strip() == "1234" + "".join(values), (lib_out, lib_err)
    # Server: one registration (the proxy), a group observation, one multicast datagram per change.
    # (A rough-counting confirmation, kind "confirmation", may come from the proxy too: §6.)
    every = [e for e in srv_events if e.get("event") == "registration"]
    assert {e["remote"].rsplit(":", 1)[0] for e in every} == {f"[{prx_host.addr6}]"}
    regs = [e for e in every if e["kind"] != "confirmation"]
    assert len(regs) == 1 and regs[0]["kind"] == "group" and regs[0]["count"] == 1, every
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == GROUP_ADDR]
    assert len(mcast) == len(values), mcast
    assert all(p["coap.type"] == "1" for p in mcast)
    unicast_notifs = [
        p
        for p in packets
        if p["ipv6.src"] == srv_host.addr6 and p["ipv6.dst"] != GROUP_ADDR and p["coap.opt.observe"]
    ]
    assert unicast_notifs == []  # nothing went from the server to a client by unicast as a notification
    # The proxy: one upstream registration, every notification forwarded to the 3 clients.
    assert [e["event"] for e in events if e.get("event") == "upstream_registered"] == ["upstream_registered"]
    late = [e for e in events if e.get("event") == "client_registered"][3]
    assert late["from_cache"] and late["clients"] == 4  # aiocoap-client's observation, from the cache
    fwd = [e for e in events if e.get("event") == "notification_forwarded" and e["via"] == "multicast"]
    assert [e["clients"] for e in fwd] == [3, 3, 3], fwd
    assert events[-1]["event"] == "stopped" and events[-1]["upstream_registrations"] == 1


def test_reverse_proxy_stands_in_for_the_server(lan, tools):
    """``--reverse coap://SERVER``: clients that believe the proxy is the server (RFC 7252 §5.7.3, proxy
    draft §10) observe it with plain URIs; one registration reaches the server."""
    srv_host, prx_host = lan.server, lan.clients[0]
    srv = server(srv_host, f"[{srv_host.addr6}]", GROUP6)
    prx = proxy(prx_host, "--reverse", f"coap://[{srv_host.addr6}]")
    values = ["x", "y"]
    try:
        libcoap = lan.clients[1].popen(
            ["coap-client-notls", "-s", "20", "-B", "20", f"coap://[{prx_host.addr6}]/r"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        prx.wait_event(lambda e: e.get("event") == "client_registered")
        ours = observer(lan.clients[2], f"coap://[{prx_host.addr6}]/r", count=3, name="ours")
        ours.wait_event(lambda e: e.get("index") == 1, timeout=15)
        put(lan.clients[1], f"coap://[{prx_host.addr6}]/r", values, 0.5)  # a PUT through the proxy
        ours.collect(20)
        libcoap.terminate()
        lib_out, lib_err = libcoap.communicate(timeout=10)
        events = prx.stop()
    finally:
        srv_events = srv.stop()
    assert [n["payload"] for n in notifications(ours)] == ["1234", *values]
    assert lib_out.strip() == "1234" + "".join(values), (lib_out, lib_err)
    regs = [e for e in srv_events if e.get("event") == "registration" and e["kind"] != "confirmation"]
    assert len(regs) == 1 and regs[0]["kind"] == "group", regs
    assert len([e for e in srv_events if e.get("event") == "notification_sent"]) == len(values)
    puts = [e for e in events if e.get("event") == "forwarded_request" and e["code"] == "2.04"]
    assert len(puts) == len(values)
