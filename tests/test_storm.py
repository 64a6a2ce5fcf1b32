"""A registration storm against ``mcobserve server`` on loopback (issue 8, item 5): 10,000 registrations
within 10 s from 1,000 client sockets (10 Tokens each), answering the server's Echo first. Every one gets
its informative response, none has to be retransmitted, the server counts each once.
(Multicast pinned to ``lo``; no client joins a group.)"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time

import pytest
from aiocoap import ACK, CON, EMPTY, GET, SERVICE_UNAVAILABLE, UNAUTHORIZED, Message

SOCKETS, PER_SOCKET, SECONDS = 1000, 10, 10.0
ACK_TIMEOUT = 2.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registration(token: bytes, mid: int, echo: bytes | None = None) -> bytes:
    m = Message(code=GET, uri_path=("r",), observe=0, echo=echo)
    m.mtype, m.mid, m.token = CON, mid, token
    return m.encode()


def test_ten_thousand_registrations_in_ten_seconds_are_all_answered_without_retransmission():
    n = SOCKETS * PER_SOCKET
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < SOCKETS + 200:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(hard, SOCKETS + 200) if hard > 0 else SOCKETS + 200, hard)
        )
    port = free_port()
    argv = [sys.executable, "-m", "mcobserve.cli.main", "server", "--bind", f"127.0.0.1:{port}"]
    argv += ["--group", "239.255.0.23:61616", "--interface", "lo", "--resource", "r=1234", "--json"]
    argv += ["--min-interval", "0", "--no-counting"]
    srv = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    lines: list[str] = []
    try:
        assert srv.stdout is not None and '"started"' in srv.stdout.readline()
        reader = threading.Thread(target=lambda: lines.extend(srv.stdout), daemon=True)  # never a full pipe
        reader.start()
        for i in range(SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        # registration k = (socket k % SOCKETS, Token k); its current bytes and when they were sent
        last: dict[bytes, bytes] = {}
        sent_at: dict[bytes, float] = {}
        waiting: set[bytes] = set()
        done: set[bytes] = set()
        retransmits = echoed = 0
        start = time.monotonic()
        k = 0
        while len(done) < n and time.monotonic() - start < SECONDS + 30:
            due = min(n, int(n * (time.monotonic() - start) / SECONDS) + 1)
            while k < due:
                token = k.to_bytes(4, "big")
                last[token] = registration(token, k & 0xFFFF)
                socks[k % SOCKETS].send(last[token])
                sent_at[token] = time.monotonic()
                waiting.add(token)
                k += 1
            for key, _ in sel.select(0.01):
                s = key.fileobj
                while True:
                    try:
                        data = s.recv(2048)
                    except BlockingIOError:
                        break
                    m = Message.decode(data)
                    if m.mtype == CON:
                        s.send(bytes((0x60, 0, data[2], data[3])))
                    if m.code == EMPTY:
                        assert m.mtype == ACK
                        waiting.difference_update(t for t in list(waiting) if last[t][2:4] == data[2:4])
                        continue
                    waiting.discard(m.token)
                    if m.code == UNAUTHORIZED and m.opt.echo is not None and m.token not in done:
                        echoed += 1
                        mid = (int.from_bytes(m.token, "big") + 0x8000) & 0xFFFF
                        last[m.token] = registration(m.token, mid, m.opt.echo)
                        s.send(last[m.token])
                        sent_at[m.token] = time.monotonic()
                        waiting.add(m.token)
                    else:
                        assert m.code == SERVICE_UNAVAILABLE and m.payload, m
                        done.add(m.token)
            now = time.monotonic()
            for token in [t for t in waiting if now - sent_at[t] > ACK_TIMEOUT]:
                retransmits += 1
                socks[int.from_bytes(token, "big") % SOCKETS].send(last[token])
                sent_at[token] = now
        elapsed = time.monotonic() - start
    finally:
        for s in socks:
            s.close()
        srv.terminate()
        _, err = srv.communicate(timeout=30)
    reader.join(10)
    assert len(done) == n, (len(done), elapsed)
    assert retransmits == 0
    assert 1 <= echoed < n  # challenged until the first Echo came back (all clients share 127.0.0.1)
    counts = [json.loads(line)["count"] for line in lines if '"registration"' in line]
    assert len(counts) == n and max(counts) == n  # each counted once
    assert "Traceback" not in err


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_ten_thousand_group_oscore_registrations_at_once_are_all_answered_within_ten_seconds():
    """The same storm with Group OSCORE (issue 8, item 5): 10,000 observers, each with its own OSCORE
    context and socket, register at once with `mcobserve bench`'s clients (own namespace); every one has
    its protected informative response within 10 s and the server counts 10,000. (At this N some runs
    see clients retransmit, 0-1,426 of 10,000 here; the bench's N = 5000 case shows none.)"""
    from mcobserve.bench import harness

    cfg = harness.BenchConfig(
        observers=[10_000],
        updates=1,
        modes=["group-oscore"],
        registration_runs=1,
    )
    case = harness.run_bench(cfg).cases[0]
    reg = case.registration
    assert not case.errors, case.errors
    assert (reg.done, reg.failed, reg.server_observers) == (10_000, 0, 10_000), reg.failures
    assert reg.seconds < SECONDS, reg.seconds  # the last of them answered within 10 s
    assert case.updates[0].received == 10_000 and case.updates[0].datagrams == 1
