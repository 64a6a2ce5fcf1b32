"""Broker benchmark, fan-out: broker CPU and datagrams per publication to N subscribers.

Three brokers serve the same N subscribers of one topic, in turn, in a private namespace:

* ``group``: ``mcobserve broker`` (one group observation, one multicast datagram per publication);
* ``traditional``: the same broker with ``--group-after`` out of reach (RFC 7641, one notification each);
* ``editor``: the pub-sub draft editor's aiocoap broker (``broker.py`` of aiocoap-pubsub-broker, run from
  its folder as shipped, including its logging), RFC 7641.

Broker CPU is the sum of ``/proc/PID/task/*/schedstat`` run times of the broker process (ns) around each
publication, from the PUT until every subscriber has the new value. Subscribers are raw UDP sockets in
one process (``python -m mcobserve.broker.bench_fanout``): each registers with a CON GET Observe 0 on its
own Token, ACKs Confirmable notifications, and group subscribers hear the multicast notifications on one
group socket for the process (counted once per subscriber it serves).
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PEER = Path("/work/shared/peers/aiocoap-pubsub-broker")
GROUP = "[ff35:30:2001:db8::77]:61616"
MODES = ("group", "traditional", "editor")


def _schedstat_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


class _Line:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith("{"):
                    return json.loads(line)
        raise RuntimeError(f"no answer from the subscriber process (exit {self.proc.poll()})")


def run_fanout(
    lab: Any, ns: list[int], publications: int, modes: tuple[str, ...] = MODES
) -> list[dict[str, Any]]:
    """Every (mode, N) case inside ``lab`` (a :class:`~mcobserve.netlab.OneHost`); one row per case."""
    py = [sys.executable, "-m", "mcobserve.cli.main"]
    rows = []
    port = 5683
    for mode in modes:
        if mode == "editor" and not (PEER / "broker.py").exists():
            rows.append({"mode": mode, "n": 0, "error": f"the editor's broker is not at {PEER}"})
            continue
        for n in ns:
            port += 1
            base = f"coap://[{lab.addr6}]:{port}"
            if mode == "editor":
                argv = [sys.executable, str(PEER / "broker.py"), "--host", lab.addr6, "--port", str(port)]
                broker = lab.popen(argv, cwd=PEER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                argv = [*py, "broker", "--bind", f"[{lab.addr6}]:{port}", "--group", GROUP, "--interface"]
                argv += [lab.ifname, "--store", ":memory:", "--min-interval", "0", "--no-counting"]
                argv += ["--publish-rate", "1000000", "--publish-burst", "1000000", "--trusted-network"]
                if mode == "traditional":
                    argv += ["--group-after", str(10**9)]
                broker = lab.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subs = None
            try:
                created = None
                for _ in range(100):
                    res = lab.run(
                        [*py, "topic", "create", f"{base}/ps", "bench", "--content-format", "0", "--json"], 20
                    )
                    if res.returncode == 0:
                        created = json.loads(res.stdout.strip().splitlines()[-1])
                        break
                    time.sleep(0.1)
                if created is None:
                    raise RuntimeError(f"{mode}: the broker did not come up")
                data = "/" + str(created["topic_data"]).lstrip("/")
                subs_argv = [
                    sys.executable,
                    "-m",
                    "mcobserve.broker.bench_fanout",
                    lab.addr6,
                    str(port),
                    data,
                ]
                subs_argv += [str(n), lab.ifname]
                subs = _Line(
                    lab.popen(
                        subs_argv,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )
                subs.send(op="publish", seq=0, wait=False)
                subs.read()
                subs.send(op="register")
                reg = subs.read(timeout=120)
                if reg.get("ok", 0) < n:
                    raise RuntimeError(
                        f"{mode} N={n}: only {reg.get('ok')} of {n} subscribers registered ({reg})"
                    )
                samples, datagrams, complete = [], [], True
                for seq in range(1, publications + 1):
                    t0 = _schedstat_ns(broker.pid)
                    subs.send(op="publish", seq=seq, wait=True)
                    done = subs.read(timeout=60)
                    samples.append((_schedstat_ns(broker.pid) - t0) / 1e6)
                    datagrams.append(done["datagrams"])
                    complete = complete and done["got"] == n
                samples.sort()
                rows.append(
                    {
                        "mode": mode,
                        "n": n,
                        "cpu_ms_p50": samples[len(samples) // 2],
                        "cpu_ms_mean": sum(samples) / len(samples),
                        "datagrams_p50": sorted(datagrams)[len(datagrams) // 2],
                        "group": reg.get("group", 0),
                        "all_delivered": complete,
                    }
                )
            finally:
                if subs is not None:
                    subs.proc.kill()
                    subs.proc.wait(10)
                broker.terminate()
                try:
                    broker.wait(10)
                except subprocess.TimeoutExpired:
                    broker.kill()
                    broker.wait(5)
    return rows


def fanout_report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "broker: publication to N subscribers of one topic (broker process CPU, p50 over the publications)",
        "",
        "| mode | N | CPU ms/publication | datagrams/publication | group subscribers | all delivered |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | - | {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['mode']} | {r['n']} | {r['cpu_ms_p50']:.3f} | {r['datagrams_p50']} | {r['group']} | "
            f"{'yes' if r['all_delivered'] else 'NO'} |"
        )
    by = {(r["mode"], r["n"]): r for r in rows if "error" not in r}
    ns = sorted({r["n"] for r in rows if "error" not in r})
    if ns:
        n = max(ns)
        g = by.get(("group", n))
        for other in ("traditional", "editor"):
            o = by.get((other, n))
            if g and o and g["cpu_ms_p50"] > 0:
                lines.append(f"\ncpu ratio {other}/group at N={n}: {o['cpu_ms_p50'] / g['cpu_ms_p50']:.1f}x")
    return "\n".join(lines)


# -- the subscriber process ----------------------------------------------------------------------


def _registration(token: bytes, mid: int, path: str) -> bytes:
    from aiocoap import CON, GET, Message

    m = Message(
        code=GET, uri_path=[p for p in path.split("/") if p], observe=0, mtype=CON, mid=mid, token=token
    )
    return m.encode()


def _subscribers(addr: str, port: int, path: str, n: int, ifname: str) -> int:
    from aiocoap import ACK, CON, EMPTY, PUT, Message

    from ..aio.client import open_group_socket
    from ..engine.common import Endpoint
    from ..wire import InformativeResponse

    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    except (ValueError, OSError):
        pass
    server = (addr, port)
    rng = random.Random(7)
    socks: list[socket.socket] = []
    by_fd: dict[int, int] = {}
    got: list[int] = [-1] * n
    is_group = [False] * n
    group_sock: socket.socket | None = None
    poller = select.epoll()
    ctl = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    ctl.connect(server)

    def out(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    def value(payload: bytes) -> int | None:
        text = payload.decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None

    datagrams = 0

    def handle(i: int, data: bytes) -> None:
        nonlocal group_sock, datagrams
        try:
            m = Message.decode(data)
        except Exception:
            return
        s = socks[i]
        if m.mtype == CON:
            s.send(Message(mtype=ACK, code=EMPTY, mid=m.mid).encode())
        if m.code == EMPTY:
            return
        datagrams += 1
        if m.code.dotted == "5.03" and m.opt.content_format == 65000 and m.payload:
            info = InformativeResponse.decode(m.payload)
            assert info.tp_info is not None and info.tp_info.tpi_client is not None
            tpc = info.tp_info.tpi_client
            if group_sock is None:
                import ipaddress

                group = Endpoint(ipaddress.ip_address(tpc.host), tpc.effective_port())
                group_sock = open_group_socket(group, socket.if_nametoindex(ifname))
                poller.register(group_sock.fileno(), select.EPOLLIN)
            is_group[i] = True
            got[i] = max(got[i], 0)
            return
        if m.code.is_successful():
            v = value(m.payload)
            if v is not None:
                got[i] = max(got[i], v)

    def pump(timeout: float) -> None:
        nonlocal datagrams
        for fd, _ in poller.poll(timeout):
            if group_sock is not None and fd == group_sock.fileno():
                try:
                    data = group_sock.recv(4096)
                except BlockingIOError:
                    continue
                try:
                    m = Message.decode(data)
                except Exception:
                    continue
                datagrams += 1
                v = value(m.payload)
                if v is not None:
                    for j in range(n):
                        if is_group[j]:
                            got[j] = max(got[j], v)
                continue
            i = by_fd.get(fd)
            if i is None:
                continue
            while True:
                try:
                    data = socks[i].recv(4096)
                except BlockingIOError:
                    break
                handle(i, data)

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "register":
            for i in range(n):
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.connect(server)
                s.setblocking(False)
                socks.append(s)
                by_fd[s.fileno()] = i
                poller.register(s.fileno(), select.EPOLLIN)
            for start in range(0, n, 50):
                for i in range(start, min(n, start + 50)):
                    socks[i].send(_registration(i.to_bytes(4, "big"), rng.randrange(65536), path))
                end = time.monotonic() + 2.0
                while time.monotonic() < end and any(got[j] < 0 for j in range(start, min(n, start + 50))):
                    pump(0.05)
            end = time.monotonic() + 10.0
            while time.monotonic() < end and min(got, default=0) < 0:
                pump(0.05)
            out(ev="registered", ok=sum(1 for g in got if g >= 0), group=sum(is_group))
        elif cmd["op"] == "publish":
            seq = int(cmd["seq"])
            before = datagrams
            ctl.send(
                Message(
                    code=PUT,
                    mtype=CON,
                    mid=rng.randrange(65536),
                    token=b"p",
                    uri_path=[p for p in path.split("/") if p],
                    payload=str(seq).encode(),
                    content_format=0,
                ).encode()
            )
            end = time.monotonic() + 10.0
            acked = False
            while time.monotonic() < end:
                r, _, _ = select.select([ctl], [], [], 0)
                if r:
                    ctl.recv(4096)
                    acked = True
                if not cmd.get("wait", True):
                    if acked:
                        break
                    time.sleep(0.01)
                    continue
                pump(0.01)
                if acked and all(g >= seq for g in got):
                    break
            out(ev="done", seq=seq, got=sum(1 for g in got if g >= seq), datagrams=datagrams - before)
        elif cmd["op"] == "quit":
            break
    return 0


if __name__ == "__main__":  # pragma: no cover - runs inside the namespace
    a = sys.argv[1:]
    sys.exit(_subscribers(a[0], int(a[1]), a[2], int(a[3]), a[4]))
