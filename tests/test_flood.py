"""Bad input stays quiet and cheap (issue 8, item 4): a flood of random datagrams against ``mcobserve
server`` on loopback. No traceback, a handful of log lines, bounded memory, legitimate requests answered.
(No client joins a group here; multicast is pinned to ``lo``.)"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time

from aiocoap import CON, GET, NON, Message

N = 20_000
SECONDS = 8.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def garbage(rng: random.Random) -> bytes:
    """Random bytes, half of them behind a CoAP-looking header (so options get decoded)."""
    kind = rng.random()
    if kind < 0.3:
        return rng.randbytes(rng.randrange(0, 80))
    if kind < 0.8:  # version 1, CON/NON, token length 0..8, a request code, random options
        head = bytes([0x40 | (rng.randrange(2) << 4) | rng.randrange(9), rng.choice([1, 2, 3, 4, 5, 0x45])])
        return head + rng.randbytes(2) + rng.randbytes(rng.randrange(0, 60))
    m = Message(code=GET, uri_path=(rng.randbytes(4).hex(),), observe=rng.choice([0, None]))
    m.mtype, m.mid, m.token = rng.choice([CON, NON]), rng.randrange(65536), rng.randbytes(2)
    return m.encode()


def legit_get(sock: socket.socket, port: int, mid: int) -> bool:
    m = Message(code=GET, uri_path=("r",))
    m.mtype, m.mid, m.token = CON, mid, mid.to_bytes(2, "big")
    sock.sendto(m.encode(), ("127.0.0.1", port))
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return False
        reply = Message.decode(data)
        if reply.mid == mid:
            return reply.payload == b"1234"
    return False


def test_random_datagram_flood_is_quiet_cheap_and_the_server_keeps_answering():
    port = free_port()
    argv = [sys.executable, "-m", "mcobserve.cli.main", "server", "--bind", f"127.0.0.1:{port}"]
    argv += ["--group", "239.255.0.23:61616", "--interface", "lo", "--resource", "r=1234", "--json"]
    srv = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and '"started"' in srv.stdout.readline()
        legit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        legit.bind(("127.0.0.2", 0))
        assert legit_get(legit, port, 1)
        time.sleep(0.3)
        before = rss_kib(srv.pid)
        rng = random.Random(8)
        senders = []
        for i in range(64):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.9.{i}.{1 + rng.randrange(250)}", 0))
            senders.append(s)
        answered = 0
        start = time.monotonic()
        for i in range(N):
            senders[i % len(senders)].sendto(garbage(rng), ("127.0.0.1", port))
            if i % 500 == 0:
                # pace to about N / SECONDS datagrams per second; ask a legitimate question meanwhile
                delay = start + SECONDS * i / N - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if i % 4000 == 0:
                    answered += legit_get(legit, port, 100 + i // 4000)
        time.sleep(1.0)
        assert legit_get(legit, port, 999)
        after = rss_kib(srv.pid)
        assert answered >= 4, answered  # the server kept answering during the flood
        assert after - before < 10 * 1024, (before, after)  # RSS grew by less than 10 MiB
    finally:
        srv.terminate()
        _, err = srv.communicate(timeout=20)
    assert srv.returncode == 0
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) <= 20, lines[-20:]
    assert any("dropped" in line and "undecodable option" in line for line in lines), lines
