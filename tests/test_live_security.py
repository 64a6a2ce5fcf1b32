"""A secured server attacked from the same network (issue 8), in private namespaces.

Unprotected requests of every method get 4.01 and nothing reaches the group; a publishers list restricts
writes to named OSCORE identities (4.03 for the others).
"""

from __future__ import annotations

import subprocess
import sys

from mcobserve.capture import Capture
from mcobserve.cli.credentials import write_credentials

from .livekit import GROUP6, PY, notifications, observer, put, server
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


SPOOFER = r"""
import socket, sys, time
from aiocoap import GET, NON, Message
from mcobserve.wire.feedback import set_feedback_divider
host, path, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
for i in range(n):
    m = Message(code=GET, uri_path=(path,), observe=0, no_response=26)
    set_feedback_divider(m, 0)
    m.mtype, m.mid, m.token = NON, i & 0xFFFF, i.to_bytes(4, "big")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:  # a new source port each time
        s.sendto(m.encode(), (host, 5683))
    delay = start + seconds * (i + 1) / n - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print("sent", n, flush=True)
"""


def test_spoofed_confirmations_from_one_prefix_are_bounded_live(lan):
    """5,000 Feedback-Divider 0 confirmations from distinct ports during one round: the estimate for
    one real observer stays below 1 + (4 M - 1) / D = 8.75 (it was 8,379 for 50,000 in the issue)."""
    base = f"coap://[{lan.server.addr6}]"
    srv = server(
        lan.server, f"[{lan.server.addr6}]", GROUP6, "--confirmation-wait", "3", "--count-every", "0"
    )
    spoofer = lan.clients[1].popen(
        [sys.executable, "-c", SPOOFER, lan.server.addr6, "r", "5000", "2.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        obs = observer(lan.clients[0], f"{base}/r", 3, timeout=30)
        obs.wait_event(lambda e: e.get("via") == "last_notif", timeout=15)
        assert spoofer.stdout.readline().strip() == "ready"
        put(lan.clients[2], f"{base}/r", ["v1"])  # carries Feedback-Divider Q = 0: the round starts
        spoofer.stdin.write("go\n")
        spoofer.stdin.flush()
        assert spoofer.stdout.readline().strip() == "sent 5000"
        count = srv.wait_event(lambda e: e.get("event") == "count", timeout=15)
    finally:
        spoofer.kill()
        srv.stop()
    assert count["Q"] == 0
    assert 4 * 8 <= count["R"] <= 4 * 8 + 1  # the spoofer's /64 gave its full share, no more
    assert count["estimate"] <= 1 + (4 * 8 + 1 - 1) / 4
