"""A secured server attacked from the same network (issue 8), in private namespaces.

Unprotected requests of every method get 4.01 and nothing reaches the group; a publishers list restricts
writes to named OSCORE identities (4.03 for the others).
"""

from __future__ import annotations

from mcobserve.capture import Capture
from mcobserve.cli.credentials import write_credentials

from .livekit import GROUP6, PY, notifications, put, server
from .test_live_secured import secured_observer


def test_unprotected_requests_get_401_and_nothing_reaches_the_group(lan, tools, tmp_path):
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 4)
    base = f"coap://[{lan.server.addr6}]"
    srv = server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        "self-managed",
        "--publishers",
        "client-1",
        "--no-counting",
    )
    attacker = lan.clients[1]
    try:
        obs = secured_observer(lan.clients[0], f"{base}/r", creds, 2, 2, timeout=30)
        obs.wait_event(lambda e: e.get("via") == "last_notif", timeout=15)
        with Capture(attacker, attacker.ifname, "udp", tmp_path / "a.pcapng") as cap:
            answers = {}
            for method in ("get", "put", "post", "delete"):
                res = attacker.run(
                    ["coap-client-notls", "-m", method, "-e", "attacker", "-B", "3", f"{base}/r"], timeout=20
                )
                answers[method] = res.stdout + res.stderr
            res = attacker.run(["coap-client-notls", "-s", "2", "-B", "3", f"{base}/r"], timeout=20)
            answers["observe"] = res.stdout + res.stderr
            # an authenticated client that is not a publisher: 4.03, exit 1
            client3 = str(creds / "client-3.json")
            argv = [*PY, "publish", f"{base}/r", "--count", "1", "--values", "nope", "--credentials", client3]
            denied = attacker.run(argv, timeout=30)
            put(attacker, f"{base}/r", ["from-publisher"], 0.1, "--credentials", str(creds / "client-1.json"))
            obs.collect(20)
    finally:
        srv.stop()
    for method, text in answers.items():
        assert "4.01" in text, (method, text)
        assert "1234" not in text
    assert denied.returncode == 1 and "4.03" in denied.stderr
    got = [(n["via"], n["payload"]) for n in notifications(obs)]
    assert got == [("last_notif", "1234"), ("multicast", "from-publisher")]
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    assert len(mcast) == 1  # the publisher's value only: nothing the attacker sent reached the group
    refusals = [
        p
        for p in packets
        if p["ipv6.src"] == lan.server.addr6 and p.get("coap.code") == "129"  # 4.01
    ]
    assert len(refusals) >= 5
