"""Group OSCORE over real multicast in private namespaces (draft §9, Appendix C)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from mcobserve.capture import Capture, coap_options
from mcobserve.cli.credentials import write_credentials

from .livekit import GROUP6, PY, Proc, notifications, observer, put, server

OSCORE = 9


def secured_observer(host, uri: str, creds, i: int, count: int, *extra: str, timeout: float = 20) -> Proc:
    """An observer with the unicast OSCORE identity client-i (see mcobserve.cli.credentials)."""
    creds_file = str(creds / f"client-{i}.json")
    return observer(host, uri, count, timeout, f"observer{i}", ("--credentials", creds_file, *extra))


def oscore_value(udp_payload_hex: str) -> bytes | None:
    opts = dict(coap_options(udp_payload_hex))
    return opts.get(OSCORE)


def test_self_managed_group_end_to_end(lan, tools, tmp_path):
    """Secured registration, informative response and notifications; tshark sees OSCORE with the
    group flag on every multicast notification and no plaintext anywhere (draft §9, App. C)."""
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
        "--no-counting",
    )
    try:
        with Capture(lan.clients[0], lan.clients[0].ifname, "udp", tmp_path / "s.pcapng") as cap:
            obs = [secured_observer(h, f"{base}/r", creds, i + 1, 3) for i, h in enumerate(lan.clients)]
            for o in obs:
                o.wait_event(lambda e: e.get("via") == "last_notif")
            put(
                lan.clients[0],
                f"{base}/r",
                ["secret-alpha", "secret-beta"],
                0.3,
                "--credentials",
                str(creds / "client-4.json"),
            )
            for o in obs:
                o.collect(20)
        plain = lan.clients[0].run(
            [*PY, "observe", f"{base}/r", "--count", "1", "--timeout", "5"], timeout=20
        )
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
    finally:
        srv.stop()
    for o in obs:
        got = notifications(o)
        assert [(n["via"], n["payload"]) for n in got] == [
            ("last_notif", "1234"),
            ("multicast", "secret-alpha"),
            ("multicast", "secret-beta"),
        ]
        assert o.popen.returncode == 0
    assert plain.returncode == 1 and "4.01" in plain.stderr  # unprotected registrations are refused

    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    assert len(mcast) == 2
    pivs = set()
    for p in mcast:
        assert p["coap.type"] == "1" and p["coap.token"] == token and p["udp.srcport"] == "5683"
        value = oscore_value(p["udp.payload"])
        assert value is not None and value[0] & 0x20  # the group flag (GO §15.1)
        assert p["coap.opt.object_security_piv"] and p["coap.opt.object_security_kid"]
        pivs.add(p["coap.opt.object_security_piv"])
    assert len(pivs) == 2  # each notification its own Partial IV
    for p in packets:
        raw = bytes.fromhex(p["udp.payload"] or "")
        assert b"secret-alpha" not in raw and b"secret-beta" not in raw and b"1234" not in raw
    # Each protected registration got an empty ACK first, then its (protected) informative response as a
    # separate Confirmable message (draft §4.2: CON, separate, also under OSCORE).
    registrations = [
        p
        for p in packets
        if p["ipv6.dst"] == lan.server.addr6
        and p["coap.type"] == "0"
        and p["coap.code"] == "5"
        and oscore_value(p["udp.payload"]) is not None
    ]
    assert registrations
    for reg in registrations:
        later = [
            p
            for p in packets
            if float(p["frame.time_relative"]) >= float(reg["frame.time_relative"])
            and p["ipv6.src"] == lan.server.addr6
        ]
        ack = next(p for p in later if p["coap.type"] == "2" and p["coap.mid"] == reg["coap.mid"])
        assert ack["coap.code"] == "0", "the informative response was piggybacked"
        resp = next(p for p in later if p["coap.token"] == reg["coap.token"] and p["coap.code"] != "0")
        assert resp["coap.type"] == "0" and oscore_value(resp["udp.payload"]) is not None
    # The informative responses travelled inside OSCORE: no plain 5.03 on the wire for them.
    from_server = [
        p for p in packets if p["ipv6.src"] == lan.server.addr6 and p["ipv6.dst"] != "ff35:30:2001:db8::23"
    ]
    protected = [
        p for p in from_server if p["coap.code"] != "0" and oscore_value(p["udp.payload"]) is not None
    ]
    assert protected and not any(
        p["coap.code"] == "163" and oscore_value(p["udp.payload"]) is not None for p in from_server
    )


def test_pre_arranged_group_survives_sigkill_without_reusing_a_partial_iv(onehost, tools, tmp_path):
    """Kill the server with SIGKILL mid-run and restart it on the same group: every Partial IV on the
    wire stays unique (the SSN ceiling is persisted before use, RFC 8613 App. B.1.1)."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{onehost.addr6}]", 4)
    base = f"coap://[{onehost.addr6}]"
    args = (
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        str(creds / "group.toml"),
        "--no-counting",
    )
    with Capture(
        onehost.host if hasattr(onehost, "host") else onehost,
        onehost.ifname,
        "udp port 61616",
        tmp_path / "k.pcapng",
    ) as cap:
        srv = server(onehost, f"[{onehost.addr6}]", GROUP6, *args)
        o1 = secured_observer(
            onehost, f"{base}/r", creds, 1, 4, "--group-oscore", str(creds / "group-client.toml")
        )
        o1.wait_event(lambda e: e.get("via") == "last_notif")
        put(onehost, f"{base}/r", ["k1", "k2", "k3"], 0.3, "--credentials", str(creds / "client-3.json"))
        o1.wait_count(lambda e: e.get("via") == "multicast", 3)
        srv.popen.send_signal(signal.SIGKILL)
        srv.collect(5)
        assert (creds / "server.ssn").exists()
        srv2 = server(onehost, f"[{onehost.addr6}]", GROUP6, *args)
        try:
            o2 = secured_observer(
                onehost, f"{base}/r", creds, 2, 3, "--group-oscore", str(creds / "group-client.toml")
            )
            o2.wait_event(lambda e: e.get("via") == "last_notif")
            put(onehost, f"{base}/r", ["r1", "r2"], 0.3, "--credentials", str(creds / "client-3.json"))
            o2.collect(15)
        finally:
            srv2.stop()
        o1.stop()
    assert [(n["via"], n["payload"]) for n in notifications(o2)] == [
        ("last_notif", "1234"),
        ("multicast", "r1"),
        ("multicast", "r2"),
    ]
    packets = [p for p in cap.decode(ports=[61616]) if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    pivs = [int(p["coap.opt.object_security_piv"], 16) for p in packets]
    assert len(pivs) >= 6  # 3 before the crash, 2 after, plus the cancellation at shutdown
    assert len(set(pivs)) == len(pivs), pivs
    before = pivs[:3]
    after = pivs[3:]
    assert min(after) > max(before)


ATTACKER = r"""
import json, socket, struct, sys, time
from aiocoap import Message
srv, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
listen = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
listen.bind((group, port))
mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", 0)
listen.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
listen.settimeout(10)
print("ready", flush=True)
data, _ = listen.recvfrom(4096)            # one genuine notification
send = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
send.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
send.bind((srv, 5683))                     # spoof SRV_ADDR:SRV_PORT from the server host
time.sleep(0.2)
flipped = bytearray(data); flipped[-5] ^= 0x01
heard = Message.decode(data)
raised = Message(code=heard.code, payload=heard.payload)
for opt in heard.opt.option_list():
    raised.opt.add_option(opt)
raised.opt.observe = (heard.opt.observe or 0) + 1000   # a replay dressed up as newer
raised.mtype, raised.mid, raised.token = heard.mtype, heard.mid, heard.token
for attack in (bytes(data), bytes(flipped), raised.encode()):
    send.sendto(attack, (group, port))
    time.sleep(0.1)
send.close()
print("sent", flush=True)
"""


def test_forged_and_replayed_notifications_are_dropped_live(onehost, tools, tmp_path):
    """An attacker on the link replays a genuine notification, flips a byte and re-labels the Observe
    number, all from SRV_ADDR:SRV_PORT: none is delivered, the legitimate traffic goes on (§9.3.2)."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{onehost.addr6}]", 2)
    base = f"coap://[{onehost.addr6}]"
    srv = server(
        onehost,
        f"[{onehost.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        "self-managed",
        "--no-counting",
    )
    try:
        o = secured_observer(onehost, f"{base}/r", creds, 1, 3, "-v")
        o.wait_event(lambda e: e.get("via") == "last_notif")
        attacker = onehost.popen(
            [sys.executable, "-c", ATTACKER, onehost.addr6, "ff35:30:2001:db8::23", "61616"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert attacker.stdout.readline().strip() == "ready"
        put(onehost, f"{base}/r", ["genuine-1"], 0.3, "--credentials", str(creds / "client-2.json"))
        assert attacker.stdout.readline().strip() == "sent", attacker.stderr.read()
        attacker.wait(10)
        time.sleep(0.5)
        put(onehost, f"{base}/r", ["genuine-2"], 0.3, "--credentials", str(creds / "client-2.json"))
        o.collect(15)
    finally:
        srv.stop()
    got = [(n["via"], n["payload"]) for n in notifications(o)]
    assert got == [("last_notif", "1234"), ("multicast", "genuine-1"), ("multicast", "genuine-2")]
    log = o.read_stderr()
    assert log.count("rejected by Group OSCORE") >= 3, log[-2000:]
    assert json.loads(json.dumps(got))  # delivered nothing else


RELAY = r"""
import socket, sys, select
host, listen_port, target_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
front = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); front.bind((host, listen_port))
back = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); back.bind((host, 0))
client, tampered = None, 0
print("ready", flush=True)
for _ in range(200):
    ready, _, _ = select.select([front, back], [], [], 15)
    if not ready:
        break
    for s in ready:
        data, addr = s.recvfrom(4096)
        if s is front:
            client = addr
            back.sendto(data, (host, target_port))
        elif client is not None:
            if tampered == 0 and len(data) > 20 and data[1] in (0x44, 0x45):   # first OSCORE response
                data = data[:-3] + bytes([data[-3] ^ 0x10]) + data[-2:]
                tampered += 1
                print("tampered", flush=True)
            front.sendto(data, client)
"""


def test_informative_response_altered_in_transit_is_rejected(onehost, tools, tmp_path):
    """An on-path attacker flips a byte of the protected informative response: the client rejects it,
    registers once more and follows the group observation with the genuine one (draft §9, §13.2)."""
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{onehost.addr6}]:5700", 2)
    srv = server(
        onehost,
        f"[{onehost.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        "self-managed",
        "--no-counting",
    )
    relay = onehost.popen(
        [sys.executable, "-c", RELAY, onehost.addr6, "5700", "5683"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert relay.stdout.readline().strip() == "ready"
        o = secured_observer(onehost, f"coap://[{onehost.addr6}]:5700/r", creds, 1, 2, "-v", timeout=40)
        o.wait_event(lambda e: e.get("via") == "last_notif", timeout=40)
        assert relay.stdout.readline().strip() == "tampered"
        # unprotected writes are refused (4.01): client-2 writes directly, not through the relay
        client2 = json.loads((creds / "client-2.json").read_text())
        direct = creds / "client-2-direct.json"
        direct.write_text(json.dumps({f"coap://[{onehost.addr6}]/*": next(iter(client2.values()))}))
        put(onehost, f"coap://[{onehost.addr6}]/r", ["after-tamper"], 0.3, "--credentials", str(direct))
        o.collect(15)
    finally:
        srv.stop()
        relay.kill()
    assert [(n["via"], n["payload"]) for n in notifications(o)] == [
        ("last_notif", "1234"),
        ("multicast", "after-tamper"),
    ]
    regs = [e for e in srv.seen if e.get("event") == "registration"]
    assert len(regs) >= 2  # the rejected informative response led to one more registration
