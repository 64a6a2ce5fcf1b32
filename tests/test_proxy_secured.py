"""Group OSCORE end to end through ``mcobserve proxy`` (proxy draft §5, example §8), live in namespaces.

The registration is relayed as it is; the client verifies the protected informative response, sends
the ticket request with Listen-To-Multicast-Responses, and the proxy listens to the group and
forwards each protected notification unchanged; a proxy that alters one is detected by the client.
"""

from __future__ import annotations

import subprocess
import textwrap

from aiocoap import Message

from mcobserve.capture import Capture, coap_options
from mcobserve.cli.credentials import write_credentials
from mcobserve.constants import DEFAULT_CODE_POINTS

from .livekit import GROUP6, PY, Proc, notifications, observer, put, server, start

GROUP_ADDR = "ff35:30:2001:db8::23"
OSCORE = 9
LTMR = DEFAULT_CODE_POINTS.listen_to_multicast_responses

#: A proxy that flips one byte of every protected notification it forwards (a test double).
TAMPERING_PROXY = textwrap.dedent(
    """
    import asyncio, json, sys
    from mcobserve.proxy.aio import Proxy
    from mcobserve.proxy.engine import Fanout

    class Tampering(Proxy):
        def tamper(self, fan):
            m = fan.message
            m.payload = bytes([m.payload[0] ^ 1]) + m.payload[1:]
            return Fanout(m, fan.clients, fan.last)

    async def main():
        p = Tampering(interface=sys.argv[2], on_event=lambda e: print(json.dumps(e), flush=True))
        await p.start((sys.argv[1], 5683))
        await asyncio.sleep(float(sys.argv[3]))
        await p.shutdown()

    asyncio.run(main())
    """
)


def secured_server(lan, creds, *extra: str):
    return server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        "self-managed",
        *(extra or ("--no-counting",)),
    )


def secured_via_proxy(
    host, uri: str, proxy_addr: str, creds, i: int, count: int, timeout: float = 20
) -> Proc:
    extra = ("--credentials", str(creds / f"client-{i}.json"), "--proxy", f"coap://[{proxy_addr}]")
    extra += ("--leisure", "0.05")
    return observer(host, uri, count, timeout, f"observer{i}", extra)


def test_group_oscore_end_to_end_through_the_proxy(lan, tools, tmp_path):
    """Both clients verify every notification end to end; the proxy forwards the multicast ciphertext
    unchanged and serves the second ticket from one listener; no plaintext on any link."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 3)
    base = f"coap://[{lan.server.addr6}]"
    prx_host = lan.clients[0]
    # rough counting on: the first notification carries Feedback-Divider 0 (everybody answers, §8)
    srv = secured_server(lan, creds, "--confirmations", "8")
    prx = start(
        prx_host, "proxy", ["proxy", "--bind", f"[{prx_host.addr6}]", "--interface", "eth0", "--json"]
    )
    prx.wait_event(lambda e: e.get("event") == "started")
    values = ["secret-one", "secret-two"]
    try:
        with Capture(prx_host, prx_host.ifname, "udp", tmp_path / "p.pcapng") as cap:
            obs = [
                secured_via_proxy(h, f"{base}/r", prx_host.addr6, creds, i + 1, 3)
                for i, h in enumerate(lan.clients[1:])
            ]
            for o in obs:
                o.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
            prx.wait_count(lambda e: e.get("event") == "client_registered", 2, timeout=15)
            put(lan.clients[1], f"{base}/r", values, 0.5, "--credentials", str(creds / "client-3.json"))
            for o in obs:
                o.collect(20)
        events = prx.stop()
    finally:
        srv_events = srv.stop()
    for o in obs:
        got = notifications(o)
        assert [(n["via"], n["payload"]) for n in got] == [
            ("last_notif", "1234"),
            ("multicast", values[0]),
            ("multicast", values[1]),
        ], (o.name, got, o.read_stderr())
        assert o.popen.returncode == 0
    # The server counted both clients (their registrations were relayed, protected, proxy draft §5).
    regs = [e for e in srv_events if e.get("event") == "registration" and e["kind"] != "confirmation"]
    assert len(regs) == 2 and all(r["remote"].startswith(f"[{prx_host.addr6}]") for r in regs)
    # Feedback-Divider is hidden from the proxy; each client answered on its own, through the proxy (§6).
    sent = [e for e in srv_events if e.get("event") == "notification_sent"]
    assert sent[0]["feedback_divider"] == 0  # with 2 observers and 8 wanted confirmations (§8.3)
    confirmations = [e for e in srv_events if e.get("kind") == "confirmation"]
    assert len(confirmations) == 2
    assert all(e["remote"].startswith(f"[{prx_host.addr6}]") for e in confirmations)
    # The proxy: two ticket clients on one listener; two notifications forwarded to both.
    listening = [e for e in events if e.get("event") == "ticket_listening"]
    assert len(listening) == 1
    fwd = [e for e in events if e.get("event") == "notification_forwarded"]
    assert [e["clients"] for e in fwd] == [2, 2], fwd
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == GROUP_ADDR]
    assert len(mcast) == 2
    forwarded = [
        p
        for p in packets
        if p["ipv6.src"] == prx_host.addr6
        and p["udp.srcport"] == "5683"
        and p["coap.opt.observe"] is not None
    ]
    assert len(forwarded) == 4
    for m in mcast:
        sent = Message.decode(bytes.fromhex(m["udp.payload"]))
        copies = [Message.decode(bytes.fromhex(p["udp.payload"])) for p in forwarded]
        same = [c for c in copies if c.payload == sent.payload and c.opt.oscore == sent.opt.oscore]
        assert len(same) == 2  # the ciphertext and OSCORE option went to both clients unchanged
        assert all(c.opt.observe == sent.opt.observe for c in same)
    tickets = [
        p
        for p in packets
        if p["ipv6.dst"] == prx_host.addr6 and any(n == LTMR for n, _ in coap_options(p["udp.payload"]))
    ]
    assert len(tickets) == 2  # one ticket request per client, none forwarded to the server
    assert not [
        p
        for p in packets
        if p["ipv6.src"] == prx_host.addr6
        and p["ipv6.dst"] == lan.server.addr6
        and any(n == LTMR for n, _ in coap_options(p["udp.payload"]))
    ]
    for p in packets:
        raw = bytes.fromhex(p["udp.payload"] or "")
        assert b"secret-" not in raw and b"1234" not in raw


def test_a_proxy_altering_notifications_is_detected(lan, tools, tmp_path):
    """A proxy that flips a byte of the protected notifications: the client drops each one (§9.3.2)."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 3)
    base = f"coap://[{lan.server.addr6}]"
    prx_host = lan.clients[0]
    srv = secured_server(lan, creds)
    bad = prx_host.popen(
        [PY[0], "-c", TAMPERING_PROXY, prx_host.addr6, "eth0", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    bad_proc = Proc("tampering-proxy", bad).start()
    bad_proc.wait_event(lambda e: e.get("event") == "started")
    try:
        o = secured_via_proxy(lan.clients[1], f"{base}/r", prx_host.addr6, creds, 1, 3, timeout=8)
        o.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        bad_proc.wait_event(lambda e: e.get("event") == "ticket_listening", timeout=10)
        put(
            lan.clients[2],
            f"{base}/r",
            ["evil-1", "evil-2"],
            0.5,
            "--credentials",
            str(creds / "client-3.json"),
        )
        o.collect(20)
    finally:
        srv.stop()
        bad_proc.stop()
    got = notifications(o)
    assert [(n["via"], n["payload"]) for n in got] == [("last_notif", "1234")]
    assert o.popen.returncode == 2  # timeout before --count: the altered ones were not delivered
    stderr = o.read_stderr()
    assert stderr.count("dropped a notification forwarded by the proxy") == 2, stderr
    fwd = [e for e in bad_proc.seen if e.get("event") == "notification_forwarded"]
    assert len(fwd) >= 2  # they did reach the client (then the server's cancellation at shutdown)


def test_trusted_proxy_with_its_own_credentials_serves_legacy_clients(lan, tools, tmp_path):
    """``mcobserve proxy --credentials``: the proxy registers over OSCORE as itself, verifies the Group
    OSCORE notifications, and serves a legacy client (libcoap) the plaintext (proxy draft §4)."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 3)
    base = f"coap://[{lan.server.addr6}]"
    prx_host = lan.clients[0]
    srv = secured_server(lan, creds)
    own_credentials = ("--credentials", str(creds / "client-1.json"))
    prx = start(
        prx_host,
        "proxy",
        ["proxy", "--bind", f"[{prx_host.addr6}]", "--interface", "eth0", "--json", *own_credentials],
    )
    prx.wait_event(lambda e: e.get("event") == "started")
    values = ["plain-for-legacy-1", "plain-for-legacy-2"]
    try:
        with Capture(prx_host, prx_host.ifname, "udp", tmp_path / "t.pcapng") as cap:
            legacy = lan.clients[1].popen(
                [
                    "coap-client-notls",
                    "-P",
                    f"coap://[{prx_host.addr6}]",
                    "-s",
                    "15",
                    "-B",
                    "15",
                    f"{base}/r",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            prx.wait_event(lambda e: e.get("via") == "last_notif", timeout=15)
            put(lan.clients[2], f"{base}/r", values, 0.5, "--credentials", str(creds / "client-3.json"))
            prx.wait_count(
                lambda e: e.get("event") == "notification_forwarded" and e["via"] == "multicast", 2, 15
            )
            legacy.terminate()
            out, err = legacy.communicate(timeout=10)
        prx.stop()
    finally:
        srv_events = srv.stop()
    assert out.strip() == "1234" + "".join(values), (out, err)
    regs = [e for e in srv_events if e.get("event") == "registration" and e["kind"] != "confirmation"]
    assert len(regs) == 1 and regs[0]["kind"] == "group"
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == GROUP_ADDR]
    assert len(mcast) == 2
    for p in mcast:  # protected on the server's side ...
        assert any(n == OSCORE for n, _ in coap_options(p["udp.payload"]))
        assert b"plain-for-legacy" not in bytes.fromhex(p["udp.payload"])
    to_legacy = [p for p in packets if p["ipv6.dst"] == lan.clients[1].addr6 and p["coap.opt.observe"]]
    assert any(b"plain-for-legacy-2" in bytes.fromhex(p["udp.payload"]) for p in to_legacy)  # ... plain here
