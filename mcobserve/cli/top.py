"""``mcobserve top``: a live terminal view of a running server from its ``--json`` event stream.

``mcobserve server ... --json | mcobserve top``, ``mcobserve top --socket PATH`` (a server started
with ``--control PATH``, :mod:`.control`), or ``mcobserve top events.jsonl`` shows, per group
observation (draft §4): resource, Token, group, the estimated number of observers (the latest
registration count or rough-counting estimate, draft §8), notifications sent and per second (last
10 s), and what the single multicast notification saved against unicast (RFC 7641): datagrams and
payload bytes, ``(observers - 1)`` per notification. It updates in place (rich) on a terminal; with
``--once`` or when stdout is not a terminal it prints one table at the end of the input.

Each event costs O(1): it touches one observation's counters; rendering runs on a timer.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .common import UsageError, describe_os_error

RATE_WINDOW = 10.0


@dataclass
class ObservationStats:
    """What ``top`` knows about one group observation."""

    resource: str
    token: str
    group: str = ""
    started: float = 0.0
    observers: float = 0.0
    notifications: int = 0
    payload_bytes: int = 0
    datagrams_saved: float = 0.0
    bytes_saved: float = 0.0
    rounds: int = 0
    state: str = "active"
    recent: collections.deque[float] = field(default_factory=collections.deque)

    def rate(self, now: float) -> float:
        """Notifications per second over the last :data:`RATE_WINDOW` seconds."""
        while self.recent and self.recent[0] < now - RATE_WINDOW:
            self.recent.popleft()
        span = min(RATE_WINDOW, max(now - self.started, 1e-9))
        return len(self.recent) / span if span >= 1.0 else float(len(self.recent))


class TopState:
    """Folds server events (``mcobserve server --json``) into per-observation counters, O(1) each."""

    def __init__(self) -> None:
        self.server = ""
        self.group = ""
        self.started: float | None = None
        self.stopped = False
        self.events = 0
        self.last = 0.0  # time of the latest event
        self.ignored = 0
        self.registrations = 0
        self.confirmations = 0
        self.observations: dict[tuple[str, str], ObservationStats] = {}
        self._current: dict[str, ObservationStats] = {}  # resource -> its latest group observation
        self._pending_observers: dict[str, float] = {}  # resource -> registrations before it started

    def feed_line(self, line: str) -> None:
        """One line of the stream; lines that are not events are counted and skipped."""
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            self.ignored += 1
            return
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            self.ignored += 1
            return
        self.feed(event)

    def _obs(self, event: dict[str, Any]) -> ObservationStats | None:
        resource = str(event.get("resource", ""))
        token = event.get("token")
        if token is None:
            return self._current.get(resource)
        return self.observations.get((resource, str(token)))

    def feed(self, event: dict[str, Any]) -> None:
        """Apply one event."""
        self.events += 1
        kind = event["event"]
        now = float(event.get("time") or time.time())
        self.last = max(self.last, now)
        resource = str(event.get("resource", ""))
        if kind == "started":
            self.server, self.group = str(event.get("server", "")), str(event.get("group", ""))
            self.started = now
        elif kind == "stopped":
            self.stopped = True
        elif kind == "registration":
            if event.get("kind") == "confirmation":
                self.confirmations += 1
                return
            self.registrations += 1
            count = event.get("count")
            obs = self._current.get(resource)
            if isinstance(count, int | float):
                if obs is not None and obs.state == "active":
                    obs.observers = float(count)
                else:
                    self._pending_observers[resource] = float(count)
        elif kind == "group_observation_started":
            token = str(event.get("token", ""))
            obs = ObservationStats(resource, token, str(event.get("group", self.group)), started=now)
            obs.observers = self._pending_observers.pop(resource, 1.0)
            self.observations[(resource, token)] = obs
            self._current[resource] = obs
        elif kind == "notification_sent":
            obs = self._obs(event)
            if obs is None:
                return
            obs.notifications += 1
            size = int(event.get("size") or 0)
            obs.payload_bytes += size
            extra = max(0.0, obs.observers - 1.0)
            obs.datagrams_saved += extra
            obs.bytes_saved += extra * size
            obs.recent.append(now)
        elif kind == "notifications_so_far":  # a control socket's snapshot (cli/control.py)
            obs = self._obs(event)
            if obs is not None:
                n, size = int(event.get("notifications") or 0), int(event.get("payload_bytes") or 0)
                obs.notifications += n
                obs.payload_bytes += size
                extra = max(0.0, obs.observers - 1.0)
                obs.datagrams_saved += extra * n
                obs.bytes_saved += extra * size
        elif kind == "count":
            obs = self._obs(event)
            if obs is not None:
                obs.rounds += 1
                estimate = event.get("N", event.get("estimate"))
                if isinstance(estimate, int | float):
                    obs.observers = float(estimate)
        elif kind == "cancelled":
            obs = self._obs(event)
            if obs is not None:
                obs.state = f"cancelled ({event.get('reason', '')})"

    def totals(self) -> tuple[int, float, float]:
        """Notifications, datagrams saved and payload bytes saved over all observations."""
        obs = self.observations.values()
        return (
            sum(o.notifications for o in obs),
            sum(o.datagrams_saved for o in obs),
            sum(o.bytes_saved for o in obs),
        )


def render(state: TopState, now: float) -> Any:
    """A rich renderable of the current state."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=None, expand=False, show_lines=False)
    for col, just in (
        ("resource", "left"),
        ("token", "left"),
        ("group", "left"),
        ("observers (est.)", "right"),
        ("notifications", "right"),
        ("per s", "right"),
        ("datagrams saved", "right"),
        ("bytes saved", "right"),
        ("counting rounds", "right"),
        ("state", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for o in state.observations.values():
        cells = (
            o.resource,
            o.token,
            o.group,
            f"{o.observers:.1f}",
            str(o.notifications),
            f"{o.rate(now):.2f}",
            f"{o.datagrams_saved:.0f}",
            f"{o.bytes_saved:.0f}",
            str(o.rounds),
            o.state,
        )
        table.add_row(*(Text(c) for c in cells))  # Text: "[ff35::23]:61616" is no markup
    n, dg, by = state.totals()
    uptime = "" if state.started is None else f", up {max(0.0, now - state.started):.0f} s"
    head = Text(
        f"mcobserve server {state.server or '?'} group {state.group or '?'}{uptime}"
        f"{' (stopped)' if state.stopped else ''}: {len(state.observations)} group observations, "
        f"{n} multicast notifications, {dg:.0f} datagrams and {by:.0f} payload bytes saved against "
        f"unicast; {state.registrations} registrations, {state.confirmations} confirmations",
        style="bold",
    )
    parts: list[Any] = [head, table]
    if state.ignored and not state.events:
        parts.append(Text("no events yet: is the server running with --json?", style="yellow"))
    return Group(*parts)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "top",
        help="live view of a server's --json events: observations, observers, rates, savings",
        description="Reads `mcobserve server --json` events (stdin or FILE) and shows every group "
        "observation with its estimated observers, notifications per second and what multicast saved "
        "against unicast. Example: mcobserve server ... --json | mcobserve top",
    )
    p.add_argument("file", nargs="?", default="-", help="event stream (default: stdin)")
    p.add_argument(
        "--socket", metavar="PATH.sock", help="read a server's control socket (mcobserve server --control)"
    )
    p.add_argument("--once", action="store_true", help="read to the end, then print one table")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between redraws (default 0.5)")
    p.set_defaults(func=run)


def _reader(stream: IO[str], state: TopState, lock: threading.Lock, done: threading.Event) -> None:
    try:
        for line in stream:
            with lock:
                state.feed_line(line)
    finally:
        done.set()


def run(args: argparse.Namespace) -> int:
    """Follow the stream until it ends (or Ctrl-C)."""
    from rich.console import Console

    if not args.interval > 0:
        raise UsageError("--interval must be a positive number of seconds")
    if args.socket:
        if args.file != "-":
            raise UsageError("give FILE or --socket, not both")
        import socket as socketlib

        sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        try:
            sock.connect(args.socket)
        except OSError as e:
            sock.close()
            raise UsageError(
                f"cannot connect to {args.socket}: {describe_os_error(e, name=False)} "
                "(start the server with --control PATH)"
            ) from None
        stream: IO[str] = sock.makefile("r", encoding="utf-8")
        sock.close()  # the file object keeps the connection
    elif args.file == "-":
        stream = sys.stdin
        if stream.isatty() and not args.once:
            raise UsageError("pipe a server's events in: mcobserve server ... --json | mcobserve top")
    else:
        try:
            stream = open(args.file)  # closed below
        except OSError as e:
            raise UsageError(f"cannot read {args.file}: {describe_os_error(e, name=False)}") from None
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=200)
    state, lock, done = TopState(), threading.Lock(), threading.Event()
    try:
        if args.once or not console.is_terminal:
            _reader(stream, state, lock, done)
            console.print(render(state, state.last or time.time()))
            return 0
        from rich.live import Live

        threading.Thread(target=_reader, args=(stream, state, lock, done), daemon=True).start()
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while not done.is_set():
                with lock:
                    live.update(render(state, time.time()), refresh=True)
                done.wait(args.interval)
            with lock:
                live.update(render(state, time.time()), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        if stream is not sys.stdin:
            stream.close()
    return 0
