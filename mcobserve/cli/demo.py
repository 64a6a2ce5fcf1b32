"""``mcobserve demo``: a live group observation on a private LAN of network namespaces.

A server host, a sensor host that PUTs a new temperature every second, and N observer hosts on one
bridge. Every observer registers, gets the informative response (draft §4.2) and then prints the
same multicast notifications. The closing line compares datagrams against traditional observe.
Everything runs inside namespaces this command creates and removes; nothing touches the host's
interfaces.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape

from .common import RuntimeFailure, UsageError, reason

COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="live demo: one server, a sensor and N observers on a private namespace LAN",
        description="Builds a private LAN of network namespaces (needs root or unprivileged user "
        "namespaces), runs a group observation on it and removes everything afterwards.",
    )
    p.add_argument("--observers", type=int, default=3, help="observer hosts (default 3)")
    p.add_argument(
        "--updates", type=int, default=8, help="value changes, one per --every seconds (default 8)"
    )
    p.add_argument("--every", type=float, default=1.0, help="seconds between changes (default 1)")
    p.add_argument("--ipv4", action="store_true", help="use IPv4 multicast instead of IPv6")
    p.set_defaults(func=_cmd_demo)


def _reader(name: str, proc: subprocess.Popen[str], out: queue.Queue[tuple[str, str]]) -> threading.Thread:
    def run() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put((name, line.rstrip("\n")))
        out.put((name, ""))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..netlab import Lan, can_use_netns

    if not 1 <= args.observers <= 50:
        raise UsageError("--observers must be within 1..50")
    if args.updates < 1 or not args.every > 0:
        raise UsageError("--updates must be at least 1 and --every a positive number of seconds")
    console = Console(highlight=False, soft_wrap=True)
    ok, why = can_use_netns()
    if not ok:
        raise RuntimeFailure(
            "the demo cannot run here: it builds a private network of namespaces and needs root or "
            f"unprivileged user namespaces ({why})"
        )
    py = [sys.executable, "-m", "mcobserve.cli.main"]
    with Lan(clients=args.observers + 1) as lan:
        srv, sensor, observers = lan.server, lan.clients[-1], lan.clients[:-1]
        if args.ipv4:
            srv_addr, group = srv.addr4, "239.255.0.23:61616"
        else:
            srv_addr, group = f"[{srv.addr6}]", "[ff35:30:2001:db8::23]:61616"
        uri = f"coap://{srv_addr}/temperature"
        console.print(
            f"[bold]LAN ready[/] in {lan.setup_seconds:.2f} s: server {srv.name} ({escape(srv_addr)}), "
            "a sensor, "
            f"{len(observers)} observers; multicast group {escape(group)}"
        )
        lines: queue.Queue[tuple[str, str]] = queue.Queue()
        server = srv.popen(
            [
                *py,
                "server",
                "--bind",
                srv_addr,
                "--group",
                group,
                "--interface",
                srv.ifname,
                "--resource",
                "temperature=21.0 C",
                "--min-interval",
                str(min(0.5, args.every)),
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        _reader("server", server, lines)
        events: list[dict[str, Any]] = []
        if not _pump(lines, events, console, 10.0, until=lambda e: e.get("event") == "started"):
            raise RuntimeFailure("the demo's server did not start within 10 s (mcobserve -v demo shows why)")
        procs = {}
        for i, host in enumerate(observers):
            name = f"observer{i + 1}"
            procs[name] = host.popen(
                [
                    *py,
                    "observe",
                    uri,
                    "--json",
                    "--count",
                    str(args.updates + 1),
                    "--timeout",
                    str(args.updates * args.every + 15),
                    "--interface",
                    host.ifname,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            _reader(name, procs[name], lines)
        colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(procs)}
        first_seen: set[str] = set()
        done: set[str] = set()
        received: dict[str, int] = dict.fromkeys(procs, 0)
        publisher = None
        deadline = time.monotonic() + args.updates * args.every + 30
        while len(done) < len(procs) and time.monotonic() < deadline:
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if name == "server":
                _server_line(line, events, console)
                continue
            if not line:
                done.add(name)
                continue
            n = json.loads(line)
            received[name] += 1
            console.print(
                f"[{colour[name]}]{name:<10}[/] {n['code']} observe={n['observe']:<3} "
                f"via={n['via']:<10} token={n['token']}  {escape(str(n['payload']))}"
            )
            first_seen.add(name)
            if publisher is None and first_seen == set(procs):
                console.print(
                    f"[bold]all observers joined; the sensor starts publishing every {args.every} s[/]"
                )
                publisher = sensor.popen(
                    [*py, "publish", uri, "--every", str(args.every), "--count", str(args.updates)]
                )
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        _pump(lines, events, console, 2.0)
        sent = [e for e in events if e.get("event") == "notification_sent"]
        cancels = [e for e in events if e.get("event") == "cancelled"]
        registrations = [e for e in events if e.get("event") == "registration"]
        joined = [e for e in registrations if e.get("kind") == "group"]
        confirmations = sum(e.get("kind") == "confirmation" for e in registrations)
        k = len(observers)
        updates = len(sent)
        confirmed = f"; {confirmations} confirmations for rough counting (§8)" if confirmations else ""
        console.print(
            f"\n[bold]Done.[/] {len(joined)} registrations answered with informative responses{confirmed}; "
            f"observers received {', '.join(str(v) for v in received.values())} notifications."
        )
        console.print(
            f"[bold green]Datagrams for {updates} changes: {updates} multicast notifications "
            f"(+{len(cancels)} cancellation) with group observation, against {k} x {updates} = {k * updates} "
            f"unicast notifications with traditional observe ({k}x fewer).[/]"
        )
        short = {name: v for name, v in received.items() if v != args.updates + 1}
        if short:
            missing = ", ".join(f"{name} {v}" for name, v in short.items())
            reason(f"not every observer got all {args.updates + 1} notifications ({missing}); try --every 2")
            return 1
        return 0


def _server_line(line: str, events: list[dict[str, Any]], console: Console) -> None:
    if not line:
        return
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return
    events.append(event)
    kind = event.get("event")
    if kind == "group_observation_started":
        console.print(
            f"[bold]server    [/] group observation of {escape(event['resource'])} started, "
            f"token {event['token']}"
        )
    elif kind == "notification_sent":
        console.print(f"[bold]server    [/] one multicast notification, observe={event['observe']}")
    elif kind == "registration":
        console.print(f"[dim]server     registration from {escape(event['remote'])}: {event['kind']}[/]")


def _pump(
    lines: queue.Queue[tuple[str, str]],
    events: list[dict[str, Any]],
    console: Console,
    timeout: float,
    until: Any = None,
) -> bool:
    """Handle server lines for up to ``timeout`` s; True as soon as an event satisfies ``until``.

    Without ``until`` it drains: it stops at the first quiet moment.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            name, line = lines.get(timeout=0.2)
        except queue.Empty:
            if until is None:
                return False
            continue
        if name == "server":
            _server_line(line, events, console)
            if until is not None and events and until(events[-1]):
                return True
    return False
