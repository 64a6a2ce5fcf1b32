"""``mcobserve bench proxy``: N legacy clients behind one ``mcobserve proxy`` against the same N
clients observing the server directly with traditional observe (RFC 7641).

draft-ietf-core-multicast-notifications-proxy §4: per change the server sends one multicast datagram
and the proxy one unicast notification per client. Measured per change, in a private namespace
(:class:`mcobserve.netlab.OneHost`, root), with the real ``mcobserve server`` and ``mcobserve proxy``
processes: server CPU and datagrams, proxy CPU per forwarded notification, and, for the baseline,
the server's (aiocoap's own ObservableResource) CPU per observer notification. CPU is the time every
thread of a process spent on a CPU, from ``/proc/PID/task/*/schedstat`` (nanoseconds; ``/proc/PID/stat``
ticks when schedstat is missing). Writes ``proxy.md`` and ``proxy.json``; the headline is the ratio
proxy per-client forwarding / aiocoap per-observer notification at the largest N (target <= 1.5x).

The clients are plain sockets in one process (``python -m mcobserve.bench.sections.proxy clients
...``), each registering with its own Token, answering the Echo challenge and acknowledging every
Confirmable notification at once.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..procs import JsonLines

PY = [sys.executable, "-m", "mcobserve.cli.main"]
GROUP = "[ff35:30:2001:db8::23]:61616"
SERVER_PORT = 5683
PROXY_PORT = 5690
TICK = os.sysconf("SC_CLK_TCK")
SERVER_ARGS = ("--resource", "r=0", "--min-interval", "0", "--no-counting", "--json")


HELP = (
    "N legacy clients behind mcobserve proxy vs observing the server directly: CPU and datagrams per change"
)
#: The target of issue 11: the proxy's per-client forwarding cost at most this times aiocoap's own.
TARGET_RATIO = 1.5


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process: the sum of ``/proc/PID/task/TID/schedstat``'s first field
    (nanoseconds on a CPU); ``/proc/PID/stat`` user + system ticks when schedstat is not there."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# -- the client process ----------------------------------------------------------------------------


def run_clients(args: argparse.Namespace) -> int:
    """N sockets register (through the proxy or directly), then K PUTs; one JSON line per phase."""
    from aiocoap import ACK, CON, EMPTY, GET, PUT, UNAUTHORIZED, Message

    sel = selectors.DefaultSelector()
    socks = []
    target = f"coap://[{args.server}]/r"
    dest = (args.proxy or args.server, args.port)
    for i in range(args.n):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((dest[0], dest[1], 0, 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
    got: list[str] = [""] * args.n

    mids = [0] * args.n  # per socket: every request a new MID (a repeated one is a duplicate)

    def registration(i: int) -> Message:
        mids[i] += 1
        req = Message(mtype=CON, code=GET, observe=0, mid=mids[i], token=i.to_bytes(4, "big"))
        if args.proxy:
            req.opt.proxy_uri = target
        else:
            req.opt.uri_path = ("r",)
        return req

    received = 0

    def pump(until: float, want: str | None) -> None:
        nonlocal received
        while time.monotonic() < until:
            if want is not None and all(g == want for g in got):
                return
            for key, _ in sel.select(0.05):
                s = key.fileobj
                try:
                    data = s.recv(2048)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                try:
                    m = Message.decode(data)
                except Exception:
                    continue
                if m.mtype == CON:
                    ack = Message(mtype=ACK, code=EMPTY, mid=m.mid)
                    s.send(ack.encode())  # type: ignore[union-attr]
                if m.code == UNAUTHORIZED and m.opt.echo is not None:  # verify first (RFC 9175 §2.4)
                    again = registration(key.data)
                    again.opt.echo = m.opt.echo
                    s.send(again.encode())  # type: ignore[union-attr]
                    continue
                if m.code.is_response() and m.payload:
                    got[key.data] = m.payload.decode()
                    received += 1

    for i, s in enumerate(socks):
        s.send(registration(i).encode())
        if i % 50 == 49:
            pump(time.monotonic() + 0.05, None)
    pump(time.monotonic() + 5, "0")
    for _ in range(3):  # registrations lost in a burst are sent again, as CON would be
        if all(g == "0" for g in got):
            break
        for i, s in enumerate(socks):
            if got[i] != "0":
                s.send(registration(i).encode())
        pump(time.monotonic() + 5, "0")
    print(json.dumps({"ev": "registered", "ok": sum(g == "0" for g in got)}), flush=True)
    sys.stdin.readline()
    received = 0  # from here on: notifications of the changes only
    putter = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    putter.connect((args.server, SERVER_PORT, 0, 0))
    putter.settimeout(5)
    complete = 0
    t0 = time.monotonic()
    for seq in range(1, args.updates + 1):
        put = Message(mtype=CON, code=PUT, mid=60000 + seq, token=b"p", payload=str(seq).encode())
        put.opt.uri_path = ("r",)
        putter.send(put.encode())
        pump(time.monotonic() + 10, str(seq))
        complete += all(g == str(seq) for g in got)
        time.sleep(args.gap)
    print(
        json.dumps(
            {"ev": "done", "complete": complete, "received": received, "seconds": time.monotonic() - t0}
        ),
        flush=True,
    )
    return 0


# -- the driver ---------------------------------------------------------------------------------


_readers: dict[int, JsonLines] = {}


def _json_lines(proc: subprocess.Popen[str], pred: Any, timeout: float) -> dict[str, Any]:
    """The next event line of ``proc`` for which ``pred`` holds (stdout read by a thread from the start)."""
    lines = _readers.get(proc.pid)
    if lines is None:
        lines = _readers[proc.pid] = JsonLines(proc)
    return lines.wait_json(pred, timeout, rescan=False)


def _case(lab: Any, mode: str, n: int, updates: int, gap: float) -> dict[str, Any]:
    """One measurement: ``proxy`` (N clients behind the proxy) or ``direct`` (traditional observe)."""
    host = lab
    group_after = "1" if mode == "proxy" else str(n + 10)
    srv = host.popen(
        [
            *PY,
            "server",
            "--bind",
            f"[{host.addr6}]",
            "--group",
            GROUP,
            "--interface",
            host.ifname,
            *SERVER_ARGS,
            "--group-after",
            group_after,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs = [srv]
    try:
        _json_lines(srv, lambda e: e.get("event") == "started", 20)
        prx = None
        if mode == "proxy":
            prx = host.popen(
                [*PY, "proxy", "--bind", f"[{host.addr6}]:{PROXY_PORT}", "--interface", host.ifname],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(prx)
            time.sleep(1.5)
        argv = [sys.executable, "-m", __name__, "clients", "--server", host.addr6, "-n", str(n)]
        argv += ["--updates", str(updates), "--gap", str(gap)]
        if prx is not None:
            argv += ["--proxy", host.addr6, "--port", str(PROXY_PORT)]
        else:
            argv += ["--port", str(SERVER_PORT)]
        cli = host.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        procs.append(cli)
        reg = _json_lines(cli, lambda e: e.get("ev") == "registered", 60)
        time.sleep(0.5)
        before = {"server": cpu_seconds(srv.pid), "proxy": cpu_seconds(prx.pid) if prx else 0.0}
        assert cli.stdin is not None
        cli.stdin.write("go\n")
        cli.stdin.flush()
        done = _json_lines(cli, lambda e: e.get("ev") == "done", 30 + updates * 12)
        after = {"server": cpu_seconds(srv.pid), "proxy": cpu_seconds(prx.pid) if prx else 0.0}
        srv.terminate()
        stopped = _json_lines(srv, lambda e: e.get("event") == "stopped", 20)
        # The multicast datagrams (the shutdown's multicast 5.03 is one of them, draft §4.5).
        multicast = int(stopped.get("datagrams_sent") or 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    server_ms = (after["server"] - before["server"]) * 1000 / updates
    proxy_ms = (after["proxy"] - before["proxy"]) * 1000 / updates
    return {
        "mode": mode,
        "n": n,
        "updates": updates,
        "registered": reg["ok"],
        "complete_updates": done["complete"],
        "server_cpu_ms_per_change": round(server_ms, 3),
        # Per change: one multicast datagram (proxy mode), or one unicast notification per observer.
        "server_datagrams_per_change": round(
            (multicast - 1) / updates if mode == "proxy" else done["received"] / updates, 2
        ),
        "client_notifications_per_change": round(done["received"] / updates, 2),
        "proxy_cpu_ms_per_change": round(proxy_ms, 3),
        "cpu_us_per_client_notification": round(1000 * (proxy_ms if mode == "proxy" else server_ms) / n, 1),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument(
        "--observers", metavar="N,N,...", help="clients behind the proxy (default 10,100,300; --quick 5,50)"
    )
    p.add_argument("--updates", type=int, help="changes measured per case (default 40; --quick 10)")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between changes (default 0.05)")


def run(args: argparse.Namespace, out: Path) -> int:
    """Run the section; the headline (the forwarding-cost ratio at the largest N) is the last line."""
    from ...cli.common import RuntimeFailure, UsageError
    from ...netlab import NetlabError, can_use_netns

    quick = bool(getattr(args, "quick", False))
    try:
        observers = [
            int(x) for x in (args.observers or ("5,50" if quick else "10,100,300")).split(",") if x.strip()
        ]
        if not observers or min(observers) < 1 or max(observers) > 2000:
            raise ValueError
    except ValueError:
        raise UsageError("--observers takes integers within 1..2000, e.g. 10,100,300") from None
    updates = args.updates if args.updates is not None else (10 if quick else 40)
    if updates < 1 or not 0 <= args.gap <= 10:
        raise UsageError("--updates must be >= 1 and --gap within 0..10 seconds")
    ok, why = can_use_netns()
    if not ok:
        raise RuntimeFailure(f"the proxy benchmark needs network namespaces: {why}")
    try:
        rows = measure(observers, updates, args.gap)
    except (RuntimeError, NetlabError) as e:
        raise RuntimeFailure(str(e)) from None
    except KeyboardInterrupt:
        return 130
    text = report(rows)
    print(text, flush=True)
    (out / "proxy.md").write_text(text)
    (out / "proxy.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(headline(rows), flush=True)
    return 0


def measure(observers: list[int], updates: int, gap: float) -> list[dict[str, Any]]:
    """Both modes for each N in one namespace (the baseline in the same run)."""
    from ...netlab import OneHost

    rows: list[dict[str, Any]] = []
    with OneHost() as lab:
        for n in observers:
            for mode in ("proxy", "direct"):
                row = _case(lab, mode, n, updates, gap)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[int, float | None]:
    """Per N: proxy µs per client notification / direct (aiocoap) µs per observer notification."""
    by = {(r["n"], r["mode"]): r for r in rows}
    out: dict[int, float | None] = {}
    for n in sorted({r["n"] for r in rows}):
        p, d = by.get((n, "proxy")), by.get((n, "direct"))
        if p and d:
            base = d["cpu_us_per_client_notification"]
            out[n] = round(p["cpu_us_per_client_notification"] / base, 2) if base else None
    return out


def headline(rows: list[dict[str, Any]]) -> str:
    """The last line on stdout."""
    r = ratios(rows)
    if not r:
        return "proxy: no complete pair of cases"
    n = max(r)
    value = r[n]
    text = "n/a (no CPU measured)" if value is None else f"{value}x"
    return (
        f"proxy per-client forwarding / aiocoap per-observer notification at N={n}: {text} "
        f"(target <= {TARGET_RATIO}x)"
    )


def report(rows: list[dict[str, Any]]) -> str:
    """``proxy.md``."""
    lines = [
        "# Benchmark section `proxy`",
        "",
        "N legacy clients behind `mcobserve proxy` (one registration at the server, one multicast per "
        "change) against the same N clients observing the server directly (aiocoap's RFC 7641 "
        "ObservableResource, CON notifications). CPU per change of each process from "
        "/proc/PID/task/*/schedstat, averaged over the changes.",
        "",
        "| N | mode | server CPU ms/change | proxy CPU ms/change | µs per client notification | "
        "changes complete | server datagrams/change | notifications received/change |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['mode']} | {r['server_cpu_ms_per_change']} | {r['proxy_cpu_ms_per_change']} | "
            f"{r['cpu_us_per_client_notification']} | {r['complete_updates']}/{r['updates']} | "
            f"{r['server_datagrams_per_change']} | {r['client_notifications_per_change']} |"
        )
    lines.append("")
    for n, ratio in ratios(rows).items():
        if ratio is None:
            lines.append(f"* N={n}: too little CPU to compare; use more --updates")
        else:
            lines.append(
                f"* N={n}: proxy per-client forwarding / aiocoap per-observer notification = {ratio:.2f} "
                f"(target <= {TARGET_RATIO})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m mcobserve.bench.sections.proxy clients ...``: the client process of a case."""
    p = argparse.ArgumentParser(prog=f"python -m {__name__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clients")
    c.add_argument("--server", required=True)
    c.add_argument("--proxy")
    c.add_argument("--port", type=int, default=SERVER_PORT)
    c.add_argument("-n", type=int, required=True)
    c.add_argument("--updates", type=int, default=20)
    c.add_argument("--gap", type=float, default=0.05)
    return run_clients(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
