"""Deterministic phantom requests through the proxy, live (observe draft App. D; proxy draft §9).

The server's phantom request is a Deterministic Request. Two clients behind the proxy compute it
themselves from a pre-arranged group with a Deterministic Client; the first one's request is
forwarded once and recognized by the server, which answers the proxy with an unprotected informative
response; the second is answered from the proxy's cache and nothing reaches the server. Both verify
every notification end to end.
"""

from __future__ import annotations

from mcobserve.capture import Capture, coap_options
from mcobserve.cli.credentials import write_credentials
from mcobserve.constants import DEFAULT_CODE_POINTS

from .livekit import GROUP6, notifications, observer, put, server, start

REQUEST_HASH = DEFAULT_CODE_POINTS.request_hash


def deterministic_group(creds) -> tuple[str, str]:
    """The group files of ``mcobserve credentials`` plus an AEAD Algorithm and a Deterministic Client."""
    out = []
    for name in ("group.toml", "group-client.toml"):
        text = (creds / name).read_text()
        det = creds / f"det-{name}"
        det.write_text("aead_alg = 10\n" + text + '\n[deterministic]\nsender_id = "dc"\nhash_alg = -16\n')
        out.append(str(det))
    return out[0], out[1]


def test_second_client_is_served_from_the_proxy_cache(lan, tools, tmp_path):
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 3)
    srv_group, cli_group = deterministic_group(creds)
    base = f"coap://[{lan.server.addr6}]"
    prx_host = lan.clients[0]
    srv = server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        srv_group,
        "--no-counting",
    )
    prx = start(
        prx_host, "proxy", ["proxy", "--bind", f"[{prx_host.addr6}]", "--interface", "eth0", "--json"]
    )
    prx.wait_event(lambda e: e.get("event") == "started")
    values = ["det-one", "det-two"]
    via_proxy = ("--proxy", f"coap://[{prx_host.addr6}]", "--group-oscore", cli_group)
    try:
        # A direct, secured client starts the group observation (its informative response carries the
        # Deterministic phantom request, which it verifies by recomputing it).
        direct = observer(
            prx_host,
            f"{base}/r",
            3,
            20,
            "direct",
            ("--credentials", str(creds / "client-1.json"), "--group-oscore", cli_group),
        )
        direct.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        with Capture(lan.server, lan.server.ifname, "udp", tmp_path / "s.pcapng") as cap:
            first = observer(lan.clients[1], f"{base}/r", 3, 20, "first", via_proxy)
            first.wait_event(lambda e: e.get("index") == 1, timeout=20)
            second = observer(lan.clients[2], f"{base}/r", 3, 20, "second", via_proxy)
            second.wait_event(lambda e: e.get("index") == 1, timeout=20)
            put(lan.clients[1], f"{base}/r", values, 0.5, "--credentials", str(creds / "client-3.json"))
            for o in (direct, first, second):
                o.collect(20)
        events = prx.stop()
    finally:
        srv_events = srv.stop()
    for o in (first, second):
        got = notifications(o)
        assert [n["payload"] for n in got] == ["1234", *values], (o.name, got, o.read_stderr())
        assert o.popen.returncode == 0
    assert [n["payload"] for n in notifications(direct)] == ["1234", *values]
    # The server recognized its phantom request once (the proxy's), and answered it unprotected.
    recognized = [e for e in srv_events if e.get("event") == "phantom_request_recognized"]
    assert len(recognized) == 1 and recognized[0]["remote"].startswith(f"[{prx_host.addr6}]")
    regs = [e for e in srv_events if e.get("event") == "registration"]
    assert len(regs) == 1  # only the direct client registered; the proxy's clients are not counted
    clients = [e for e in events if e.get("event") == "client_registered"]
    assert [c["from_cache"] for c in clients] == [False, True]
    assert len([e for e in events if e.get("event") == "upstream_registered"]) == 1
    # On the server's link: exactly one Deterministic Request arrived, from the proxy; its answer was
    # a plain 5.03 informative response (no OSCORE option).
    packets = cap.decode(ports=[5683, 61616])
    det = [
        p
        for p in packets
        if p["ipv6.dst"] == lan.server.addr6
        and any(n == REQUEST_HASH for n, _ in coap_options(p["udp.payload"]))
    ]
    assert len(det) == 1 and det[0]["ipv6.src"] == prx_host.addr6
    answer = [p for p in packets if p["ipv6.src"] == lan.server.addr6 and p["coap.code"] == "163"]
    assert answer and all(not any(n == 9 for n, _ in coap_options(p["udp.payload"])) for p in answer)


def test_reverse_proxy_and_direct_clients_with_the_deterministic_phantom_request(lan, tools, tmp_path):
    """Clients without an OSCORE identity of their own send the Deterministic phantom request to a
    reverse proxy (proxy draft §10), or straight to the server, which recognizes it and answers with an
    unprotected informative response; that client then listens to the group itself (App. D)."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 3)
    srv_group, cli_group = deterministic_group(creds)
    base = f"coap://[{lan.server.addr6}]"
    prx_host = lan.clients[0]
    srv = server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        srv_group,
        "--no-counting",
    )
    prx = start(
        prx_host,
        "proxy",
        ["proxy", "--bind", f"[{prx_host.addr6}]", "--interface", "eth0", "--json", "--reverse", base],
    )
    prx.wait_event(lambda e: e.get("event") == "started")
    values = ["rev-one", "rev-two"]
    try:
        starter = observer(
            prx_host,
            f"{base}/r",
            3,
            20,
            "starter",
            ("--credentials", str(creds / "client-1.json"), "--group-oscore", cli_group),
        )
        starter.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        behind = observer(
            lan.clients[1], f"coap://[{prx_host.addr6}]/r", 3, 20, "behind", ("--group-oscore", cli_group)
        )
        direct = observer(lan.clients[2], f"{base}/r", 3, 20, "direct", ("--group-oscore", cli_group))
        behind.wait_event(lambda e: e.get("index") == 1, timeout=20)
        direct.wait_event(lambda e: e.get("index") == 1, timeout=20)
        put(lan.clients[1], f"{base}/r", values, 0.5, "--credentials", str(creds / "client-3.json"))
        for o in (starter, behind, direct):
            o.collect(20)
        prx.stop()
    finally:
        srv_events = srv.stop()
    for o in (starter, behind, direct):
        got = notifications(o)
        assert [n["payload"] for n in got] == ["1234", *values], (o.name, got, o.read_stderr())
    assert [n["via"] for n in notifications(direct)] == ["last_notif", "multicast", "multicast"]
    recognized = [e for e in srv_events if e.get("event") == "phantom_request_recognized"]
    # The direct client's first request is recognized and then answered with 4.01 + Echo (its address
    # is verified first, RFC 9175 §2.4); it is recognized again when sent once more.
    assert sorted({e["remote"].rsplit(":", 1)[0] for e in recognized}) == sorted(
        [f"[{prx_host.addr6}]", f"[{lan.clients[2].addr6}]"]
    )
    assert len([e for e in srv_events if e.get("event") == "notification_sent"]) == len(values)


def test_reverse_proxy_named_in_tpi_server_client_initialization(lan, tools, tmp_path):
    """Proxy draft §10 with §10.2: the clients know only PRX. Their protected registration goes through
    PRX; the server's protected informative response names PRX in 'tpi_server' without tpi_details,
    with the Deterministic phantom request as 'ph_req'; each client then sends PH_REQ to PRX. The first
    PH_REQ is forwarded once and answered with the full (unprotected) 'tp_info'; PRX listens to the
    group; the second client is served from PRX's cache; every notification is verified end to end."""
    prx_host = lan.clients[0]
    prx = f"[{prx_host.addr6}]"
    creds = tmp_path / "creds"
    write_credentials(creds, prx, 3)  # the clients' OSCORE contexts are for coap://PRX/*
    srv_group, cli_group = deterministic_group(creds)
    srv = server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        srv_group,
        "--no-counting",
        "--reverse-proxy",
        f"{prx}:5683",
    )
    proxy = start(
        prx_host,
        "proxy",
        [
            "proxy",
            "--bind",
            prx,
            "--interface",
            "eth0",
            "--json",
            "--reverse",
            f"coap://[{lan.server.addr6}]",
        ],
    )
    proxy.wait_event(lambda e: e.get("event") == "started")
    values = ["prx-one", "prx-two"]
    uri = f"coap://{prx}/r"
    try:
        with Capture(lan.server, lan.server.ifname, "udp", tmp_path / "s.pcapng") as cap:
            first = observer(
                lan.clients[1],
                uri,
                3,
                20,
                "first",
                ("--credentials", str(creds / "client-1.json"), "--group-oscore", cli_group),
            )
            first.wait_event(lambda e: e.get("index") == 1, timeout=20)
            second = observer(
                lan.clients[2],
                uri,
                3,
                20,
                "second",
                ("--credentials", str(creds / "client-2.json"), "--group-oscore", cli_group),
            )
            second.wait_event(lambda e: e.get("index") == 1, timeout=20)
            put(lan.clients[1], uri, values, 0.5, "--credentials", str(creds / "client-3.json"))
            for o in (first, second):
                o.collect(20)
        events = proxy.stop()
    finally:
        srv_events = srv.stop()
    for o in (first, second):
        got = notifications(o)
        # Every notification came from PRX (the client does not listen to the group itself) and was
        # verified end to end against the Deterministic phantom request.
        assert [n["payload"] for n in got] == ["1234", *values], (o.name, got, o.read_stderr())
        assert o.popen.returncode == 0
    # Both initialization registrations reached the server through PRX (protected, relayed).
    regs = [e for e in srv_events if e.get("event") == "registration"]
    assert len(regs) == 2
    relayed = [e for e in events if e.get("event") == "relayed_request" and e.get("observe") == 0]
    assert len(relayed) == 2
    # PH_REQ: the first client's was forwarded once; the second was served from PRX's cache.
    clients = [e for e in events if e.get("event") == "client_registered"]
    assert [c["from_cache"] for c in clients] == [False, True]
    assert [c["remote"].rsplit(":", 1)[0] for c in clients] == [
        f"[{lan.clients[1].addr6}]",
        f"[{lan.clients[2].addr6}]",
    ]
    recognized = [e for e in srv_events if e.get("event") == "phantom_request_recognized"]
    assert len(recognized) == 1 and recognized[0]["remote"].startswith(prx)
    packets = cap.decode(ports=[5683, 61616])
    to_server = [p for p in packets if p["ipv6.dst"] == lan.server.addr6]
    det = [p for p in to_server if any(n == REQUEST_HASH for n, _ in coap_options(p["udp.payload"]))]
    assert len(det) == 1 and det[0]["ipv6.src"] == prx_host.addr6
    # Nothing from the clients reached the server directly: they know only PRX.
    assert {p["ipv6.src"] for p in to_server} == {prx_host.addr6}
    # The server's answer to PH_REQ is a plain 5.03 (no OSCORE option) with the full 'tp_info';
    # its protected informative responses (to the registrations) are OSCORE 2.05s.
    answer = [p for p in packets if p["ipv6.src"] == lan.server.addr6 and p["coap.code"] == "163"]
    assert len(answer) == 1 and not any(n == 9 for n, _ in coap_options(answer[0]["udp.payload"]))
