"""The server process of one benchmark case, driven over stdin/stdout JSON lines.

Modes: ``group`` is a :class:`~mcobserve.aio.server.GroupServer` with one
:class:`~mcobserve.aio.resources.TextResource` at ``/r`` under ``GroupPolicy(min_interval=0,
counting=None)``; ``traditional-non`` / ``traditional-con`` serve the same text from a plain aiocoap
0.4.17 ``ObservableResource`` (RFC 7641) with NON (``transport_tuning=Unreliable`` on every response)
or CON (aiocoap's default for a CON registration) notifications. Every mode gets the same enlarged
receive buffer (``--rcvbuf``, via SO_RCVBUFFORCE) so ACK bursts are not dropped.

Secured modes (``--credentials DIR``, by :func:`mcobserve.bench.secured.write_credentials`): the server
loads one aiocoap OSCORE context per observer (``server.json``). ``group-oscore`` is the ``group``
server with ``server_credentials`` and a self-managed Group OSCORE group
(:class:`~mcobserve.oscore.groupobs.SelfManagedGroupSecurity`, draft App. C): registrations and the
informative responses go over OSCORE, the phantom request and every multicast notification are
protected in group mode (signed). ``traditional-oscore`` is the ``traditional-non`` resource behind
aiocoap's ``OscoreSiteWrapper``: every NON notification is protected with its observer's own context;
``traditional-oscore-con`` the same with CON notifications (as ``traditional-con``).

Datagrams and bytes (CoAP, i.e. UDP payload) are counted at the socket by wrapping the aiocoap
transport's ``sendmsg``; received datagrams and empty ACKs by wrapping ``datagram_msg_received``.
CPU is ``time.process_time()`` of this process (user + system), with the ``getrusage`` split.

Commands: ``{"op": "stats", "gc": bool}``, ``{"op": "quiesce", "quiet": T, "max_wait": T}``,
``{"op": "update", "seq": S, "expect_sent": D, "expect_acks": A, "timeout": T, "settle": T,
"null": bool, "until_idle": bool}``, ``{"op": "burst", "first_seq": S, "count": K, ...}``,
``{"op": "quit"}``; every reply echoes the command's ``id``.
The first line is ``{"ev": "ready", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import socket
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap import Message
from aiocoap.numbers.contentformat import ContentFormat

from mcobserve.aio import _glue
from mcobserve.engine.common import Endpoint

from . import CON_MODES, GROUP_MODES, MODES, SECURED_MODES, WARMUPS, warmup_path

PATH = ("r",)
#: Resources of the same kind, observed once each by the warm-up client before the measurements.
WARMUP_PATHS = tuple((warmup_path(k),) for k in range(WARMUPS))
#: Self-managed group material lives this long (longer than any case: no rekeying, no cancellation).
KEY_LIFETIME = 24 * 3600.0


def value(seq: int) -> str:
    """The representation after update ``seq``: 8 ASCII digits, so every notification has one size."""
    return f"{seq:08d}"


class PlainResource(aiocoap.resource.ObservableResource):
    """RFC 7641 baseline: aiocoap's own ObservableResource, rendered once per observer by aiocoap."""

    def __init__(self, text: str, reliable: bool) -> None:
        super().__init__()
        self.value = text.encode()
        self.tuning = None if reliable else aiocoap.Unreliable

    async def render_get(self, request: Message) -> Message:
        return Message(payload=self.value, content_format=ContentFormat.TEXT, transport_tuning=self.tuning)

    def set(self, text: str) -> None:
        self.value = text.encode()
        self.updated_state()


class Counters:
    """Datagram counters at the server socket, and the condition an update waits for."""

    def __init__(self) -> None:
        self.sent = 0
        self.sent_bytes = 0
        self.recv = 0
        self.recv_bytes = 0
        self.acks = 0
        self._target: tuple[int, int] | None = None
        self._event: asyncio.Event | None = None
        self._idle: Callable[[], bool] | None = None
        self.hit_at = 0.0
        self.last_tx = 0.0
        self.last_rx = 0.0

    def arm(self, sent: int, acks: int, idle: Callable[[], bool] | None = None) -> asyncio.Event:
        """An event set once ``sent`` more datagrams left, ``acks`` more ACKs came and ``idle()`` holds."""
        self._target = (self.sent + sent, self.acks + acks)
        self._idle = idle
        self._event = asyncio.Event()
        self.check()
        return self._event

    def check(self) -> None:
        target = self._target
        if target is None or self.sent < target[0] or self.acks < target[1]:
            return
        if self._idle is not None and not self._idle():
            return
        self.hit_at = time.time()
        self._target = None
        assert self._event is not None
        self._event.set()

    def snapshot(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "recv": self.recv,
            "recv_bytes": self.recv_bytes,
            "acks": self.acks,
        }


def instrument(ctx: aiocoap.Context, counters: Counters) -> None:
    """Count every datagram the udp6 socket sends and receives (instance attributes shadow methods)."""
    mif = _glue.udp_message_manager(ctx).message_interface
    transport = mif.transport
    send = transport.sendmsg
    received = mif.datagram_msg_received

    def sendmsg(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        send(data, ancdata, flags, address)
        counters.sent += 1
        counters.sent_bytes += len(data)
        counters.last_tx = time.time()
        counters.check()

    def datagram_msg_received(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        counters.recv += 1
        counters.recv_bytes += len(data)
        if len(data) >= 4 and data[0] & 0x30 == 0x20 and data[1] == 0:
            counters.acks += 1  # an empty ACK
        received(data, ancdata, flags, address)
        counters.last_rx = time.time()  # processed
        counters.check()

    transport.sendmsg = sendmsg
    mif.datagram_msg_received = datagram_msg_received


def fix_backlog_scan() -> None:
    """Experiment only (``--fix-backlog``): an O(1) ``MessageManager._continue_backlog`` for aiocoap 0.4.17.

    aiocoap scans every active CON exchange (``any(r == remote for r, mid in _active_exchanges)``) each
    time one ends, so N CON messages in flight cost O(N^2). Under NSTART=1 a remote has a backlog
    entry exactly while it has one active CON exchange, so the scan can be replaced by the backlog itself.
    """
    from aiocoap import CON
    from aiocoap.messagemanager import MessageManager

    def _continue_backlog(self: MessageManager, remote: Any) -> None:
        backlog = self._backlogs.get(remote)
        if backlog is None:
            raise AssertionError("backlogs/active_exchange relation violated (implementation error)")
        while backlog:
            message, monitor = backlog.pop(0)
            self._send_initially(message, monitor)
            if message.mtype is CON:
                return  # it is the remote's active exchange now
        del self._backlogs[remote]

    MessageManager._continue_backlog = _continue_backlog  # type: ignore[method-assign]


class GcClock:
    """Wall time spent in the cyclic garbage collector (``gc.callbacks``), and collections by generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"gc_s": self.seconds, "gc_gen2": self.collections[2], "gc_runs": sum(self.collections)}


GC = GcClock()


def rss_kb() -> int:
    """VmRSS of this process in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_now() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": time.process_time(), "utime": ru.ru_utime, "stime": ru.ru_stime, **GC.snapshot()}


class Bench:
    """One server (group or traditional) plus its counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counters = Counters()
        self.server: Any = None
        self.resource: Any = None
        self.ctx: aiocoap.Context | None = None
        self.rcvbuf = 0

    async def start(self) -> None:
        args = self.args
        bind = Endpoint.parse(args.bind)
        credentials = None
        if args.mode in SECURED_MODES:
            from .secured import server_credentials

            if not args.credentials:
                raise SystemExit(f"--mode {args.mode} needs --credentials")
            credentials = server_credentials(Path(args.credentials))
        if args.mode in GROUP_MODES:
            from mcobserve.aio.resources import TextResource
            from mcobserve.aio.server import GroupServer
            from mcobserve.engine.server import CongestionControl, GroupPolicy

            security = None
            if credentials is not None:
                from mcobserve.oscore import SelfManagedGroup
                from mcobserve.oscore.groupobs import SelfManagedGroupSecurity

                security = SelfManagedGroupSecurity(
                    SelfManagedGroup.create(os.urandom), lifetime=KEY_LIFETIME, now=time.time()
                )
            self.server = await GroupServer.create(
                bind,
                Endpoint.parse(args.group),
                interface=args.ifname,
                receive_buffer=args.rcvbuf,
                security=security,
                server_credentials=credentials,
                congestion=CongestionControl(interval=0),  # the benchmark measures the sender's limits
            )
            if self.server.replay_windows_marked is not None:  # done at start, as a serving process has
                await self.server.replay_windows_marked
            self.resource = TextResource(value(0))
            self.server.add_resource(PATH, self.resource, GroupPolicy(min_interval=0, counting=None))
            for wp in WARMUP_PATHS:
                self.server.add_resource(
                    wp, TextResource(value(0)), GroupPolicy(min_interval=0, counting=None)
                )
            self.ctx = self.server.ctx
        else:
            site: Any = aiocoap.resource.Site()
            self.resource = PlainResource(value(0), reliable=args.mode in CON_MODES)
            site.add_resource(PATH, self.resource)
            for wp in WARMUP_PATHS:
                site.add_resource(wp, PlainResource(value(0), reliable=args.mode in CON_MODES))
            transports = ["udp6"]
            if credentials is not None:
                site = _glue.oscore_site(site, credentials, lean=False)  # aiocoap's own: the baseline
                transports = ["oscore", "udp6"]  # as GroupServer.create does with credentials
            self.ctx = await aiocoap.Context.create_server_context(
                site,
                bind=(str(bind.host), bind.port),
                transports=transports,
                server_credentials=credentials,
            )
            _glue.set_receive_buffer(self.ctx, args.rcvbuf)
        sock = _glue.server_socket(self.ctx)
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        instrument(self.ctx, self.counters)

    def observers(self) -> int:
        if self.args.mode in GROUP_MODES:
            obs = self.server.engine.observation(PATH)
            return obs.count if obs is not None else 0
        return len(self.resource._observations)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
        elif self.ctx is not None:
            await self.ctx.shutdown()

    def stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        out = {**cpu_now(), **self.counters.snapshot(), "observers": self.observers()}
        if cmd.get("gc"):
            gc.collect()  # after reading the clocks: the explicit collection is not part of any phase
            out["after_gc"] = cpu_now()  # where the next phase starts (the collection is not in it)
        out["rss_kb"] = rss_kb()
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot()
            out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
            out["top"] = [(str(st.traceback), st.size, st.count) for st in snap.statistics("filename")[:12]]
        return out

    async def warmed(self) -> dict[str, Any]:
        """The warm-up is over: a group observation of the warm-up resource ends (its one multicast
        5.03 leaves before the measurements start); a traditional one stays, without changes."""
        if self.args.mode in GROUP_MODES:
            for wp in WARMUP_PATHS:
                self.server.remove_resource(wp)
            await asyncio.sleep(0.05)
        return {"ok": True}

    async def quiesce(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until nothing was sent or received for ``quiet`` s and no CON exchange is open (bounded)."""
        quiet = float(cmd.get("quiet", 0.3))
        assert self.ctx is not None
        mman = _glue.udp_message_manager(self.ctx)
        t0 = time.monotonic()
        end = t0 + float(cmd.get("max_wait", 30.0))
        while time.monotonic() < end:
            last = max(self.counters.last_tx, self.counters.last_rx)
            if time.time() - last >= quiet and not mman._active_exchanges:
                break
            await asyncio.sleep(0.05)
        return {
            "waited": time.monotonic() - t0,
            "open_exchanges": len(mman._active_exchanges),
            "last_tx": self.counters.last_tx,
            "last_rx": self.counters.last_rx,
        }

    async def update(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Change the value, wait until the expected datagrams (and ACKs) passed the socket, settle.

        With ``until_idle`` the update also waits until no CON exchange is open (retransmissions and
        their ACKs belong to the update that caused them).
        """
        seq = int(cmd["seq"])
        before = self.counters.snapshot()
        assert self.ctx is not None
        mman = _glue.udp_message_manager(self.ctx)
        idle = (lambda: not mman._active_exchanges) if cmd.get("until_idle") else None
        event = self.counters.arm(int(cmd.get("expect_sent", 0)), int(cmd.get("expect_acks", 0)), idle)
        c0 = cpu_now()
        t0 = time.time()
        if not cmd.get("null"):
            self.resource.set(value(seq))
        ok = True
        try:
            await asyncio.wait_for(event.wait(), float(cmd.get("timeout", 10.0)))
        except TimeoutError:
            ok = False
        hit = self.counters.hit_at if ok else time.time()
        await asyncio.sleep(float(cmd.get("settle", 0.002)))
        c1 = cpu_now()
        after = self.counters.snapshot()
        return {
            "seq": seq,
            "ok": ok,
            "t0": t0,
            "t_hit": hit,
            **{k: c1[k] - c0[k] for k in c0},
            **{k: after[k] - before[k] for k in after},
        }

    async def burst(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Updates back to back, for at most ``budget`` seconds: the CPU of a server kept busy.

        Each update still waits for its datagrams (and ACKs), but nothing settles or pauses in between,
        so the cost of waking up an idle process is left out.
        """
        assert self.ctx is not None
        mman = _glue.udp_message_manager(self.ctx)
        idle = (lambda: not mman._active_exchanges) if cmd.get("until_idle") else None
        first, count = int(cmd["first_seq"]), int(cmd["count"])
        timeout = float(cmd.get("timeout", 10.0))
        end = time.monotonic() + float(cmd.get("budget", 10.0))
        before = self.counters.snapshot()
        cpu: list[float] = []
        c0 = time.process_time()
        ok = True
        for seq in range(first, first + count):
            event = self.counters.arm(int(cmd.get("expect_sent", 0)), int(cmd.get("expect_acks", 0)), idle)
            self.resource.set(value(seq))
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                ok = False
                break
            c1 = time.process_time()
            cpu.append(c1 - c0)
            c0 = c1
            if time.monotonic() > end:
                break
        after = self.counters.snapshot()
        return {"ok": ok, "cpu": cpu, **{k: after[k] - before[k] for k in after}}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    bench = Bench(args)
    await bench.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gc.collect()
    emit({"ev": "ready", "pid": os.getpid(), "rcvbuf": bench.rcvbuf, "rss_kb": rss_kb()})
    try:
        while True:
            line = await reader.readline()
            if not line:
                return  # the harness went away
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "stats":
                reply = bench.stats(cmd)
            elif op == "warmed":
                reply = await bench.warmed()
            elif op == "update":
                reply = await bench.update(cmd)
            elif op == "quiesce":
                reply = await bench.quiesce(cmd)
            elif op == "burst":
                reply = await bench.burst(cmd)
            elif op == "quit":
                emit({"id": cmd.get("id"), "ev": "bye"})
                return
            else:
                reply = {"error": f"unknown op {op!r}"}
            emit({"id": cmd.get("id"), **reply})
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bench.stop(), 3.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--bind", required=True, help="[SRV_ADDR]:SRV_PORT")
    p.add_argument("--group", required=True, help="[GRP_ADDR]:GRP_PORT")
    p.add_argument("--ifname", required=True)
    p.add_argument("--rcvbuf", type=int, default=8 << 20)
    p.add_argument("--cpus", default="", help="comma-separated CPUs to pin this process to")
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--fix-backlog", action="store_true", help="experiment: O(1) aiocoap backlog check")
    p.add_argument("--gc-threshold", type=int, default=0, help="experiment: gc.set_threshold(N) (0: default)")
    p.add_argument("--tracemalloc", action="store_true", help="experiment: stats report traced memory")
    p.add_argument(
        "--credentials", default="", help="folder of mcobserve.bench.secured.write_credentials (*-oscore)"
    )
    args = p.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.credentials:  # aiocoap keeps a lock file open per OSCORE context
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.fix_backlog:
        fix_backlog_scan()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold)
    with contextlib.suppress(TimeoutError):
        asyncio.run(asyncio.wait_for(serve(args), args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
