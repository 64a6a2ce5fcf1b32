"""Real multicast inside private namespaces (mcobserve.netlab) and tshark decoding (mcobserve.capture)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mcobserve import capture, netlab
from mcobserve.netlab import Host, Lan, OneHost

GROUP6 = "ff05::4242"
GROUP4 = "239.255.0.1"
OTHER6 = "ff05::4343"
OTHER4 = "239.255.0.2"
PORT = 61616
READY_TIMEOUT = 10.0
RESULT_TIMEOUT = 30.0

# Listener, run inside a namespace: opens the sockets of the JSON spec, prints READY, then collects
# datagrams until every socket has "expect" datagrams (+ a short linger for extras), or "idle"
# seconds pass without traffic after the first datagram, or the hard "timeout". Prints JSON.
LISTEN = r"""
import json, select, socket, struct, sys, time
spec = json.loads(sys.argv[1])
ifindex = socket.if_nametoindex(spec["ifname"])
socks = []
for s in spec["sockets"]:
    if s["family"] == 6:
        so = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        so.setsockopt(socket.IPPROTO_IPV6, 29, 0)  # IPV6_MULTICAST_ALL = 0
    else:
        so = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        so.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL = 0
    so.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    so.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    so.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if s["family"] == 6:
        so.bind(("::", s["port"]))
        mreq = socket.inet_pton(socket.AF_INET6, s["group"]) + struct.pack("@I", ifindex)
        so.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        so.bind(("0.0.0.0", s["port"]))
        mreqn = socket.inet_aton(s["group"]) + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)
        so.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    so.setblocking(False)
    socks.append(so)
print("READY", flush=True)
got = [[] for _ in socks]
expect = spec["expect"]
start = time.monotonic()
deadline = start + spec["timeout"]
last = None
done_at = None
while True:
    now = time.monotonic()
    if now >= deadline or (last is not None and now - last > spec["idle"]):
        break
    if done_at is None and all(len(g) >= e for g, e in zip(got, expect) if e is not None):
        done_at = now
    if done_at is not None and now - done_at > spec["linger"]:
        break
    ready, _, _ = select.select(socks, [], [], 0.05)
    for so in ready:
        for _ in range(1000):
            try:
                data, src = so.recvfrom(65535)
            except BlockingIOError:
                break
            got[socks.index(so)].append([data.hex(), src[0], src[1]])
            last = time.monotonic()
print(json.dumps(got), flush=True)
"""

# Sender, run inside a namespace: sends each payload (hex) of the JSON spec to its group.
SEND = r"""
import json, socket, struct, sys, time
spec = json.loads(sys.argv[1])
ifindex = socket.if_nametoindex(spec["ifname"])
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
              socket.inet_aton("0.0.0.0") * 2 + struct.pack("@i", ifindex))
s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
if spec.get("sport"):
    s6.bind(("::", spec["sport"]))
    s4.bind(("0.0.0.0", spec["sport"]))
n = 0
for item in spec["sends"]:
    sock = s6 if item["family"] == 6 else s4
    for h in item["payloads"]:
        sock.sendto(bytes.fromhex(h), (item["group"], item["port"]))
        n += 1
        if n % 10 == 0:
            time.sleep(0.002)
print(n)
"""


def _listen(host: Host, sockets: list[dict[str, Any]], expect: list[int | None], **opts: float) -> Any:
    """Start a listener process in ``host`` and return it once its sockets are joined."""
    spec = {
        "ifname": host.ifname,
        "sockets": sockets,
        "expect": expect,
        "timeout": opts.get("timeout", 10.0),
        "idle": opts.get("idle", 1.5),
        "linger": opts.get("linger", 0.3),
    }
    proc = host.python(LISTEN, json.dumps(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "READY":
        proc.kill()
        _, err = proc.communicate(timeout=RESULT_TIMEOUT)
        raise AssertionError(f"listener in {host.name} did not start: {line!r} {err}")
    return proc


def _result(proc: Any) -> list[list[list[Any]]]:
    """Wait (bounded) for a listener's JSON result."""
    out, err = proc.communicate(timeout=RESULT_TIMEOUT)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _send(host: Host, sends: list[dict[str, Any]], sport: int = 0) -> None:
    """Run the sender in ``host`` to completion."""
    spec = {"ifname": host.ifname, "sends": sends, "sport": sport}
    res = host.run([sys.executable, "-c", SEND, json.dumps(spec)], timeout=RESULT_TIMEOUT)
    assert res.returncode == 0, res.stderr


def _payloads(tag: str, n: int) -> list[str]:
    """n distinct payloads (hex)."""
    return [f"{tag}-{i}".encode().hex() for i in range(n)]


def _coap_non(mid: int, token: int, observe: int) -> bytes:
    """NON 2.05 with a 1-byte token, Observe and Content-Format 60, CBOR payload [1, 2]."""
    return bytes([0x51, 0x45, mid >> 8, mid & 0xFF, token, 0x61, observe, 0x61, 60, 0xFF, 0x82, 0x01, 0x02])


def _ours_exist(names: list[str]) -> list[str]:
    """Which of ``names`` still exist in /run/netns."""
    return [n for n in names if os.path.exists(os.path.join(netlab.NETNS_DIR, n))]


# --- topology -----------------------------------------------------------------------------------


def test_can_use_netns_reports_ok(lan: Lan) -> None:
    ok, reason = netlab.can_use_netns()
    assert ok, reason
    assert isinstance(reason, str) and reason


def test_lan_layout(lan: Lan) -> None:
    assert lan.server.addr6 == "fd00:db8::1" and lan.server.addr4 == "10.77.0.1"
    assert [c.addr6 for c in lan.clients] == ["fd00:db8::2", "fd00:db8::3", "fd00:db8::4"]
    assert [c.addr4 for c in lan.clients] == ["10.77.0.2", "10.77.0.3", "10.77.0.4"]
    names = [h.name for h in lan.hosts]
    assert len(set(names)) == 4 and all(n.startswith(f"mco-{os.getpid()}-") for n in names)
    assert _ours_exist([*names, lan.bridge_ns]) == [*names, lan.bridge_ns]
    for h in lan.hosts:
        res = h.run(["ip", "-o", "addr", "show", "dev", "eth0"], timeout=10)
        assert f"{h.addr6}/64" in res.stdout and f"{h.addr4}/16" in res.stdout
        assert "tentative" not in res.stdout
        route = h.run(["ip", "route", "show", "224.0.0.0/4"], timeout=10).stdout
        assert "dev eth0" in route
        idx = h.run(["cat", "/sys/class/net/eth0/ifindex"], timeout=10).stdout.strip()
        assert int(idx) == h.ifindex
    br = subprocess.run(
        ["ip", "-n", lan.bridge_ns, "-d", "link", "show", "br0"], capture_output=True, text=True, timeout=10
    )
    assert "mcast_snooping 0" in br.stdout


UNICAST_ECHO = r"""
import socket, sys
fam, addr = (socket.AF_INET6, sys.argv[1]) if ":" in sys.argv[1] else (socket.AF_INET, sys.argv[1])
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(10)
s.bind((addr, 7777))
print("READY", flush=True)
data, src = s.recvfrom(100)
s.sendto(data.upper(), src)
"""

UNICAST_ASK = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"ping", (sys.argv[1], 7777))
print(s.recvfrom(100)[0].decode())
"""


@pytest.mark.parametrize("family", [6, 4])
def test_lan_unicast_between_namespaces(lan: Lan, family: int) -> None:
    addr = lan.server.addr6 if family == 6 else lan.server.addr4
    echo = lan.server.python(UNICAST_ECHO, addr, stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    ready, _, _ = select.select([echo.stdout], [], [], READY_TIMEOUT)
    assert ready and echo.stdout.readline().strip() == "READY"
    res = lan.clients[2].run([sys.executable, "-c", UNICAST_ASK, addr], timeout=RESULT_TIMEOUT)
    assert res.stdout.strip() == "PING", res.stderr
    echo.wait(timeout=RESULT_TIMEOUT)


def test_lan_multicast_reaches_every_client(lan: Lan) -> None:
    socks = [{"family": 6, "group": GROUP6, "port": PORT}, {"family": 4, "group": GROUP4, "port": PORT}]
    procs = [_listen(c, socks, [5, 5]) for c in lan.clients]
    p6, p4 = _payloads("v6", 5), _payloads("v4", 5)
    _send(
        lan.server,
        [
            {"family": 6, "group": GROUP6, "port": PORT, "payloads": p6},
            {"family": 4, "group": GROUP4, "port": PORT, "payloads": p4},
        ],
    )
    for client, proc in zip(lan.clients, procs, strict=True):
        got6, got4 = _result(proc)
        assert [d for d, _, _ in got6] == p6, client
        assert [d for d, _, _ in got4] == p4, client
        assert {src for _, src, _ in got6} == {lan.server.addr6}
        assert {src for _, src, _ in got4} == {lan.server.addr4}


@pytest.mark.netns
def test_lan_20_clients_fast_and_complete() -> None:
    with Lan(clients=20) as lab:
        assert lab.setup_seconds < 5.0, lab.setup_seconds
        assert len(lab.clients) == 20 and lab.clients[-1].addr6 == "fd00:db8::15"
        socks = [{"family": 6, "group": GROUP6, "port": PORT}, {"family": 4, "group": GROUP4, "port": PORT}]
        procs = [_listen(c, socks, [2, 2]) for c in lab.clients]
        _send(
            lab.server,
            [
                {"family": 6, "group": GROUP6, "port": PORT, "payloads": _payloads("a", 2)},
                {"family": 4, "group": GROUP4, "port": PORT, "payloads": _payloads("b", 2)},
            ],
        )
        counts = [[len(g) for g in _result(p)] for p in procs]
        assert counts == [[2, 2]] * 20
        names = [*lab.namespaces]
    assert lab.teardown_seconds < 5.0
    assert _ours_exist(names) == []


# --- one host, many sockets ---------------------------------------------------------------------


def test_onehost_layout(onehost: OneHost) -> None:
    out = onehost.run(["ip", "-o", "addr", "show", "dev", "vm0"], timeout=10).stdout
    assert "fd00:db8:1::1/64" in out and "10.78.0.1/24" in out and "tentative" not in out
    assert "vm1" in onehost.run(["ip", "-o", "link", "show", "up"], timeout=10).stdout
    assert "dev vm0" in onehost.run(["ip", "route", "show", "224.0.0.0/4"], timeout=10).stdout
    assert onehost.ifname == "vm0" and onehost.host.ifindex == onehost.ifindex


def test_onehost_every_listener_gets_every_datagram(onehost: OneHost) -> None:
    socks = (
        [{"family": 6, "group": GROUP6, "port": PORT}] * 4
        + [{"family": 6, "group": OTHER6, "port": PORT}]
        + [{"family": 4, "group": GROUP4, "port": PORT}] * 4
        + [{"family": 4, "group": OTHER4, "port": PORT}]
    )
    expect: list[int | None] = [3, 3, 3, 3, None, 3, 3, 3, 3, None]
    proc = _listen(onehost.host, socks, expect, linger=0.5)
    p6, p4 = _payloads("v6", 3), _payloads("v4", 3)
    _send(
        onehost.host,
        [
            {"family": 6, "group": GROUP6, "port": PORT, "payloads": p6},
            {"family": 4, "group": GROUP4, "port": PORT, "payloads": p4},
        ],
    )
    got = _result(proc)
    for i in range(4):
        assert [d for d, _, _ in got[i]] == p6, i
        assert [d for d, _, _ in got[5 + i]] == p4, i
        assert {s for _, s, _ in got[i]} == {onehost.addr6}
        assert {s for _, s, _ in got[5 + i]} == {onehost.addr4}
    assert got[4] == [] and got[9] == [], "a socket of another group must get nothing (MULTICAST_ALL=0)"


# --- loss emulation -----------------------------------------------------------------------------


def test_nft_loss_drops_a_plausible_share(lan: Lan) -> None:
    lossy, clean = lan.clients[0], lan.clients[1]
    lossy.nft(netlab.loss_ruleset(50, PORT))
    socks = [{"family": 6, "group": GROUP6, "port": PORT}]
    procs = [_listen(c, socks, [200], idle=1.0) for c in (lossy, clean)]
    _send(lan.server, [{"family": 6, "group": GROUP6, "port": PORT, "payloads": _payloads("x", 200)}])
    (got_lossy,), (got_clean,) = (_result(p) for p in procs)
    assert 60 <= len(got_lossy) <= 140, len(got_lossy)
    assert len(got_clean) == 200
    rules = lossy.run(["nft", "list", "ruleset"], timeout=10).stdout
    assert "numgen random mod 100 < 50" in rules and "counter packets" in rules

    lossy.clear_nft()
    assert lossy.run(["nft", "list", "ruleset"], timeout=10).stdout.strip() == ""
    proc = _listen(lossy, socks, [20])
    _send(lan.server, [{"family": 6, "group": GROUP6, "port": PORT, "payloads": _payloads("y", 20)}])
    assert len(_result(proc)[0]) == 20


def test_loss_ruleset_validates() -> None:
    assert "udp dport 5683 numgen random mod 100 < 10 counter drop" in netlab.loss_ruleset(10, 5683)
    with pytest.raises(ValueError):
        netlab.loss_ruleset(101, 5683)
    with pytest.raises(ValueError):
        netlab.loss_ruleset(10, 0)


# --- lifecycle ----------------------------------------------------------------------------------


@pytest.mark.netns
def test_teardown_leaves_no_namespace_and_no_process() -> None:
    with Lan(clients=2) as lab:
        names = list(lab.namespaces)
        sleeper = lab.clients[0].popen(["sleep", "60"])
        assert len(names) == 4 and _ours_exist(names) == names
    assert _ours_exist(names) == []
    assert sleeper.poll() is not None

    with OneHost() as one:
        names = list(one.namespaces)
    assert _ours_exist(names) == []

    with pytest.raises(RuntimeError, match="boom"), Lan(clients=1) as lab:
        names = list(lab.namespaces)
        raise RuntimeError("boom")
    assert _ours_exist(names) == []

    with pytest.raises(KeyboardInterrupt), OneHost() as one:
        names = list(one.namespaces)
        raise KeyboardInterrupt
    assert _ours_exist(names) == []
    assert not [n for n in netlab.list_ours() if n.startswith(f"mco-{os.getpid()}-")]


@pytest.mark.netns
def test_sweep_stale_removes_only_dead_owners() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    stale = f"mco-{pid_max + 1}-1-srv"  # a pid that cannot exist
    netlab._create_ns(stale)
    try:
        with Lan(clients=1) as lab:
            removed = netlab.sweep_stale()
            # (another test run on this machine may sweep it first: then it is gone all the same)
            assert _ours_exist([stale]) == []
            assert _ours_exist(lab.namespaces) == lab.namespaces
            assert not any(n.startswith(f"mco-{os.getpid()}-") for n in removed)
            pids = {int(n.split("-")[1]) for n in removed}
            assert all(not Path(f"/proc/{p}").exists() for p in pids)
    finally:
        netlab._remove_ns(stale)
    assert _ours_exist([stale]) == []


def test_lan_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        Lan(clients=0)
    assert Lan.addresses(1) == ("fd00:db8::1", "10.77.0.1")
    assert Lan.addresses(255) == ("fd00:db8::ff", "10.77.1.1")


# --- capture + decode ---------------------------------------------------------------------------


def test_capture_decodes_coap_non_to_group(lan: Lan, tools: dict[str, str], tmp_path: Path) -> None:
    msg6 = _coap_non(0x1234, 0xAB, 7)
    msg4 = _coap_non(0x1235, 0xAC, 8)
    path = tmp_path / "c2.pcapng"
    with capture.Capture(lan.clients[1], "eth0", f"udp port {PORT}", path) as cap:
        _send(
            lan.server,
            [
                {"family": 6, "group": GROUP6, "port": PORT, "payloads": [msg6.hex()]},
                {"family": 4, "group": GROUP4, "port": PORT, "payloads": [msg4.hex()]},
            ],
            sport=5683,
        )
    assert cap.captured == 2, cap.stderr
    pkts = capture.decode(path, ports=[PORT])
    assert len(pkts) == 2
    v6, v4 = pkts
    for p in pkts:
        assert p["coap.type"] == "1" and p["coap.code"] == "69"
        assert p["udp.srcport"] == "5683" and p["udp.dstport"] == str(PORT)
        assert p["coap.opt.ctype"] == "application/cbor"
    assert v6["coap.token"] == "ab" and v6["coap.opt.observe"] == "7" and v6["coap.mid"] == str(0x1234)
    assert v6["ipv6.src"] == lan.server.addr6 and v6["ipv6.dst"] == GROUP6 and v6["ip.dst"] is None
    assert v6["udp.payload"] == msg6.hex()
    assert v4["coap.token"] == "ac" and v4["coap.opt.observe"] == "8"
    assert v4["ip.src"] == lan.server.addr4 and v4["ip.dst"] == GROUP4 and v4["ipv6.dst"] is None
    assert capture.coap_options(v6["udp.payload"] or "") == [(6, b"\x07"), (12, b"\x3c")]


def test_capture_start_failure_is_reported(onehost: OneHost, tools: dict[str, str], tmp_path: Path) -> None:
    cap = capture.Capture(onehost.host, "nosuchif0", "udp", tmp_path / "x.pcapng", start_timeout=10)
    t0 = time.monotonic()
    with pytest.raises(capture.CaptureError):
        cap.start()
    assert time.monotonic() - t0 < 10.5


def test_decode_hex_messages_offline(tools: dict[str, str]) -> None:
    fd = bytes([0x51, 0x45, 0, 1, 0x5A, 0x61, 0x09, 0x61, 0x3C, 0x61, 0x01, 0xFF, 0xA0])  # Obs, CF, opt 18
    pkts = capture.decode_hex_messages([_coap_non(1, 0x11, 3), fd], "fd00:db8::1", GROUP6, 5683, PORT)
    assert [p["coap.token"] for p in pkts] == ["11", "5a"]
    assert pkts[0]["ipv6.dst"] == GROUP6 and pkts[0]["udp.dstport"] == str(PORT)
    assert "Unknown Option (18)" in (pkts[1]["coap.opt.name"] or "")
    assert pkts[1]["coap.opt.unknown"] == "01"
    assert capture.coap_options(pkts[1]["udp.payload"] or "") == [(6, b"\x09"), (12, b"\x3c"), (18, b"\x01")]
    v4 = capture.decode_hex_messages([_coap_non(2, 0x22, 4)], "10.77.0.1", GROUP4)
    assert v4[0]["ip.dst"] == GROUP4 and v4[0]["coap.opt.observe"] == "4"
    assert capture.decode_hex_messages([]) == []


def test_coap_options_parser() -> None:
    # Option 258 = 13 + 245 (nibble 13, 1-byte ext), then delta 270 = 269 + 1 (nibble 14, 2-byte ext).
    msg = bytes([0x40, 0x01, 0, 1, 0xD1, 245, 0x1A, 0xE0, 0x00, 0x01])
    assert capture.coap_options(msg) == [(258, b"\x1a"), (258 + 270, b"")]
    assert capture.coap_options("40010001") == []
    for bad in (b"\x40\x01", b"\x40\x01\x00\x01\xf0", b"\x40\x01\x00\x01\x12\x00", b"\x40\x01\x00\x01\xd0"):
        with pytest.raises(ValueError):
            capture.coap_options(bad)


def test_tools_present(tools: dict[str, str]) -> None:
    assert {"tshark", "text2pcap", "coap-client-notls", "nft", "ip"} <= set(tools)
    res = subprocess.run([tools["coap-client-notls"], "-h"], capture_output=True, text=True, timeout=10)
    assert "coap-client" in res.stdout + res.stderr
