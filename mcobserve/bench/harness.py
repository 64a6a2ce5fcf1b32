"""Run the benchmark: one private namespace, and per (mode, N) a server process plus client processes.

Everything runs inside a :class:`mcobserve.netlab.OneHost` namespace made for the run (veth pair
``vm0``/``vm1``; the server binds ``fd00:db8:1::1``, the group is ``ff35:30:2001:db8::23``), so no
datagram touches the host's interfaces; the namespace and every process are removed at the end, also
on errors and Ctrl-C. Processes are driven over stdin/stdout JSON lines (see ``server_proc`` and
``clients``). All of them share CLOCK_REALTIME, so arrival times compare with the server's update time.

Per case: start the server and ``min(processes, N)`` client processes; register all N observers at
once; measure a few empty ("null") updates for the measuring overhead; then K updates, each waited for
until the server has sent its datagrams (and, for CON, got its ACKs) and every observer has it.
Secured modes first write one OSCORE context per observer into a temporary folder
(:func:`mcobserve.bench.secured.write_credentials`), removed with the case.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import CON_MODES, DEFAULT_MODES, GROUP_MODES, MODES, SECURED_MODES, WARMUPS, warmup_path

#: The folder holding the ``mcobserve`` package (a checkout or site-packages), for the children.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
GROUP = "[ff35:30:2001:db8::23]:61616"
SERVER_PORT = 5683
NULL_UPDATES = 5
#: Updates measured even when a case runs over its budget.
MIN_UPDATES = 3
#: Back-to-back updates: their sequence numbers, and at most this many seconds of them.
BURST_FIRST_SEQ = 50_000_000
BURST_BUDGET = 10.0
QUICK_OBSERVERS = (1, 20, 200)
QUICK_UPDATES = 5
QUICK_REGISTRATION_RUNS = 3

ProgressFn = Callable[[str, dict[str, Any]], None]


class BenchError(RuntimeError):
    """The benchmark could not run (no namespaces, a process died, a timeout)."""


@dataclass
class BenchConfig:
    """What to measure."""

    observers: list[int] = field(default_factory=lambda: [1, 10, 100, 1000, 5000])
    updates: int = 20
    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    #: ``observer``: one SO_REUSEPORT group socket per observer (each gets its own copy);
    #: ``process``: one group socket per client process (one arrival counts for its observers).
    listener: str = "observer"
    processes: int = 4
    pin: bool = True
    #: Steer the namespace's receive processing (RPS) to the client CPUs (see :func:`steer_receive`).
    rps: bool = True
    rcvbuf: int = 8 << 20
    gap: float = 0.02
    settle: float = 0.002
    update_timeout: float = 20.0
    #: Seconds of updates per case; slower cases stop early (after at least MIN_UPDATES updates).
    case_budget: float = 60.0
    registration_timeout: float = 120.0
    #: Folder for py-spy profiles of the server (registration and update phases); None: no profiling.
    profile_dir: str | None = None
    profile_rate: int = 1000
    #: py-spy pauses the server for every sample (exact stacks; the pauses inflate wall times, not CPU).
    profile_blocking: bool = False
    #: Experiment: replace aiocoap 0.4.17's O(active exchanges) backlog check in the server (all modes).
    fix_backlog: bool = False
    #: Experiment: ``gc.set_threshold(gc_threshold)`` in the server (0: Python's default, 700).
    gc_threshold: int = 0
    #: Trace the server's Python heap (tracemalloc) for memory per observer; slows the server down.
    tracemalloc: bool = False
    #: Where the secured modes' per-case OSCORE folder is made (None: /dev/shm if usable, else the
    #: system's temporary folder). aiocoap's server contexts write and fsync their sequence numbers there.
    credentials_parent: str | None = None
    #: Cases with fewer observers than ``repeat_below`` run this many times (modes interleaved, fresh
    #: processes each time) and report the run with the median registration time: a registration of 1
    #: or 10 observers takes about a millisecond, and one run alone is mostly noise.
    registration_runs: int = 7
    repeat_below: int = 100

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        """A run that finishes within a minute."""
        kw.setdefault("observers", list(QUICK_OBSERVERS))
        kw.setdefault("updates", QUICK_UPDATES)
        kw.setdefault("registration_runs", QUICK_REGISTRATION_RUNS)
        return cls(**kw)

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
        if not self.modes:
            raise ValueError("no modes")
        if not self.observers or any(n < 1 for n in self.observers):
            raise ValueError("observer counts must be >= 1")
        if self.updates < 1:
            raise ValueError("updates must be >= 1")
        if self.listener not in ("observer", "process"):
            raise ValueError("listener must be 'observer' or 'process'")
        if not 1 <= self.processes <= 64:
            raise ValueError("processes must be within 1..64")
        if self.registration_runs < 1:
            raise ValueError("registration runs must be >= 1")


@dataclass
class Update:
    """One update as measured."""

    seq: int
    ok: bool
    cpu_ms: float
    utime_ms: float
    stime_ms: float
    gc_ms: float  # of cpu_ms: wall time in the cyclic garbage collector
    datagrams: int
    bytes: int
    acks: int
    server_ms: float  # update until the expected datagrams (and ACKs) passed the server socket
    received: int  # observers that got it
    latency_kernel_ms: float | None  # update until the last observer's socket had it (kernel timestamp)
    latency_app_ms: float | None  # update until the last client process read it


@dataclass
class Registration:
    """N observers registering at once."""

    n: int
    done: int
    failed: int
    failures: dict[str, int]
    retransmits: int
    #: First request sent until the last client had its answer: group, the CON informative response
    #: received and ACKed; traditional, the first notification received.
    seconds: float
    #: ... until, in addition, the server processed the last datagram of the registrations (group: the
    #: last client ACK, which closes the server's last CON exchange).
    closed_seconds: float
    p50_seconds: float
    per_second: float  # N / seconds
    closed_per_second: float  # N / closed_seconds
    server_cpu_ms: float
    server_gc_ms: float  # of server_cpu_ms: in the cyclic garbage collector
    server_gc_gen2: int  # full collections
    server_sent: int
    server_received: int
    server_observers: int  # what the server counts (COUNT, or aiocoap's observations)
    open_exchanges: int  # CON exchanges still open after waiting for quiet (should be 0)
    #: ``seconds`` of every run of this (mode, N) when the case ran more than once (small N, see
    #: ``BenchConfig.registration_runs``); the fields above are those of the median run.
    runs: tuple[float, ...] = ()


@dataclass
class Case:
    """One (mode, N)."""

    mode: str
    n: int
    processes: int
    updates: list[Update]
    registration: Registration
    rss_before_kb: int
    rss_after_kb: int
    overhead_cpu_ms: float
    wall_seconds: float
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Server CPU of each update when updates follow each other without a pause (ms).
    burst_cpu_ms: list[float] = field(default_factory=list)
    #: Python heap growth over the registrations, bytes per observer (only with ``tracemalloc``).
    traced_per_observer: float | None = None

    def _p(self, name: str, q: float) -> float | None:
        vals = [getattr(u, name) for u in self.updates if getattr(u, name) is not None]
        return float(np.percentile(vals, q)) if vals else None

    @property
    def cpu_ms(self) -> float:
        """Median server CPU per update (user + system)."""
        return self._p("cpu_ms", 50) or 0.0

    @property
    def burst_cpu(self) -> float | None:
        """Median server CPU per update when updates come back to back."""
        return float(np.median(self.burst_cpu_ms)) if self.burst_cpu_ms else None

    @property
    def datagrams(self) -> float:
        return self._p("datagrams", 50) or 0.0

    @property
    def bytes(self) -> float:
        return self._p("bytes", 50) or 0.0

    @property
    def delivered_all(self) -> bool:
        return all(u.ok and u.received == self.n for u in self.updates)

    @property
    def memory_per_observer(self) -> float:
        """Server RSS growth over the registrations, bytes per observer."""
        return (self.rss_after_kb - self.rss_before_kb) * 1024 / self.n

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "n": self.n,
            "cpu_ms_p50": self.cpu_ms,
            "cpu_ms_mean": float(np.mean([u.cpu_ms for u in self.updates])),
            "utime_ms_p50": self._p("utime_ms", 50),
            "stime_ms_p50": self._p("stime_ms", 50),
            "cpu_us_per_observer": self.cpu_ms * 1000 / self.n,
            "datagrams_p50": self.datagrams,
            "datagrams_min": min(u.datagrams for u in self.updates),
            "datagrams_max": max(u.datagrams for u in self.updates),
            "bytes_p50": self.bytes,
            "server_ms_p50": self._p("server_ms", 50),
            "latency_kernel_ms_p50": self._p("latency_kernel_ms", 50),
            "latency_kernel_ms_p99": self._p("latency_kernel_ms", 99),
            "latency_app_ms_p50": self._p("latency_app_ms", 50),
            "latency_app_ms_p99": self._p("latency_app_ms", 99),
            "delivered_all": self.delivered_all,
            "memory_bytes_per_observer": self.memory_per_observer,
            "traced_bytes_per_observer": self.traced_per_observer,
            "gc_ms_p50": self._p("gc_ms", 50),
            "burst_cpu_ms_p50": self.burst_cpu,
            "burst_updates": len(self.burst_cpu_ms),
            "overhead_cpu_ms": self.overhead_cpu_ms,
            "registration_seconds": self.registration.seconds,
            "registrations_per_second": self.registration.per_second,
            "registrations_per_second_closed": self.registration.closed_per_second,
            "registration_cpu_us_per_observer": self.registration.server_cpu_ms * 1000 / self.n,
            "registration_failed": self.registration.failed,
        }


@dataclass
class BenchResult:
    """All cases of a run, plus where and how it ran."""

    config: BenchConfig
    cases: list[Case]
    machine: dict[str, Any]
    started: float
    seconds: float

    def case(self, mode: str, n: int) -> Case | None:
        return next((c for c in self.cases if c.mode == mode and c.n == n), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "machine": self.machine,
            "started": self.started,
            "seconds": self.seconds,
            "summary": [c.summary() for c in self.cases],
            "cases": [asdict(c) for c in self.cases],
        }


# -- child processes ---------------------------------------------------------------------------


class Child:
    """A process in the lab speaking JSON lines; stdout is pumped by a thread, stderr goes to a file."""

    _ids = itertools.count(1)

    def __init__(self, name: str, popen: subprocess.Popen[str], stderr: Any) -> None:
        self.name = name
        self.popen = popen
        self._stderr = stderr
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._held: list[dict[str, Any]] = []
        self._eof = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self._lines.put(json.loads(line))
            except json.JSONDecodeError:
                self._lines.put({"raw": line.rstrip()})
        self._lines.put(None)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps(obj) + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise BenchError(f"{self.name} is gone ({e}); stderr: {self.stderr_tail()}") from None

    def request(self, op: str, wait: float, **fields: Any) -> dict[str, Any]:
        """Send a command and wait up to ``wait`` seconds for its reply."""
        rid = next(self._ids)
        self.send({"op": op, "id": rid, **fields})
        return self.expect(lambda e: e.get("id") == rid, wait, f"reply to {op}")

    def expect(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The first line (held or new) that satisfies ``pred``; BenchError after ``timeout``."""
        for i, item in enumerate(self._held):
            if pred(item):
                return self._held.pop(i)
        end = time.monotonic() + timeout
        while not self._eof:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if item is None:
                self._eof = True
                break
            if pred(item):
                return item
            self._held.append(item)
        state = "exited" if self._eof else f"no answer within {timeout:.0f} s"
        raise BenchError(f"{self.name}: waiting for {what}: {state}; stderr: {self.stderr_tail()}")

    def stderr_tail(self, n: int = 1200) -> str:
        with contextlib.suppress(OSError):
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read()[-n:].strip() or "(empty)"
        return "(unreadable)"

    def close(self, timeout: float = 3.0) -> None:
        """Ask politely (EOF on stdin), then terminate, then kill; bounded."""
        with contextlib.suppress(OSError):
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(OSError):
            self._stderr.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


def _spawn(lab: Any, name: str, module: str, args: Sequence[str]) -> Child:
    stderr = tempfile.TemporaryFile(mode="w+", prefix=f"bench-{name}-")
    popen = lab.popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        bufsize=1,
        env=_env(),
    )
    return Child(name, popen, stderr)


def _cpu_plan(pin: bool) -> tuple[str, str]:
    """CPUs for the server and for the clients: the server gets one of its own when there are two+."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return "", ""
    return str(cpus[0]), ",".join(str(c) for c in cpus[1:])


def steer_receive(lab: Any, cfg: BenchConfig) -> str:
    """Move receive-side kernel work (socket delivery, multicast fan-out) off the server's CPU.

    Unicast to a local address goes through ``lo`` and the multicast loop copy through ``vm0``; both
    enter the receive path with ``netif_rx`` in the *sender's* context, and without IRQ time
    accounting the softirq work is charged to the sending server. Receive Packet Steering on those
    devices queues it to the client CPUs instead, so the server's CPU time is its own sending work, as
    with N separate hosts. Only the lab's namespace is touched. Returns the mask written ('' if none).
    """
    _, client_cpus = _cpu_plan(cfg.pin)
    if not cfg.rps or not client_cpus:
        return ""
    mask = 0
    for c in client_cpus.split(","):
        mask |= 1 << int(c)
    text = f"{mask:x}"
    script = " && ".join(
        f"echo {text} > /sys/class/net/{dev}/queues/rx-0/rps_cpus" for dev in ("lo", lab.ifname, "vm1")
    )
    res = lab.run(["sh", "-c", script], 10)
    if res.returncode != 0:
        raise BenchError(f"cannot set RPS in the lab: {res.stderr.strip()}")
    return text


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


class Profiler:
    """``py-spy record`` attached to the server process for one phase (collapsed stacks, no pausing)."""

    def __init__(self, cfg: BenchConfig, pid: int, name: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if cfg.profile_dir is None:
            return
        out = Path(cfg.profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{name}.txt"
        self.proc = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(pid), "--rate", str(cfg.profile_rate), "--format", "raw",
             *([] if cfg.profile_blocking else ["--nonblocking"]), "--output", str(self.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)  # attaching takes a moment

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def credentials_folder(cfg: BenchConfig, n: int, server: str) -> Path:
    """A fresh folder with OSCORE contexts for ``n`` observers (secured modes); the caller removes it."""
    from .secured import write_credentials

    parent = cfg.credentials_parent
    if parent is None:
        shm = Path("/dev/shm")
        parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="mcobserve-bench-oscore-", dir=parent))
    try:
        write_credentials(folder, server, n)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def expected_per_update(mode: str, n: int) -> tuple[int, int]:
    """Datagrams the server sends per update, and ACKs it waits for."""
    return (1 if mode in GROUP_MODES else n), (n if mode in CON_MODES else 0)


def _split(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# -- one case ----------------------------------------------------------------------------------


def run_case(lab: Any, cfg: BenchConfig, mode: str, n: int, progress: ProgressFn | None = None) -> Case:
    """Measure one mode at one N inside ``lab`` (a started OneHost)."""
    t_case = time.monotonic()
    server_cpus, client_cpus = _cpu_plan(cfg.pin)
    bind = f"[{lab.addr6}]:{SERVER_PORT}"
    children: list[Child] = []
    creds: Path | None = None

    def note(kind: str, **info: Any) -> None:
        if progress is not None:
            progress(kind, {"mode": mode, "n": n, **info})

    try:
        if mode in SECURED_MODES:  # one context per observer, and one for the warm-up GET (N + 1)
            creds = credentials_folder(cfg, n + 1, f"[{lab.addr6}]")
        secured = ["--credentials", str(creds)] if creds is not None else []
        server = _spawn(
            lab,
            f"server-{mode}-{n}",
            "mcobserve.bench.server_proc",
            [
                "--mode", mode, "--bind", bind, "--group", GROUP, "--ifname", lab.ifname,
                "--rcvbuf", str(cfg.rcvbuf), "--cpus", server_cpus,
                *(["--fix-backlog"] if cfg.fix_backlog else []),
                *(["--gc-threshold", str(cfg.gc_threshold)] if cfg.gc_threshold else []),
                *(["--tracemalloc"] if cfg.tracemalloc else []),
                *secured,
            ],
        )  # fmt: skip
        children.append(server)
        clients: list[Child] = []
        first = 0
        for i, size in enumerate(_split(n, cfg.processes)):
            c = _spawn(
                lab,
                f"clients{i}-{mode}-{n}",
                "mcobserve.bench.clients",
                [
                    "--mode", mode, "--server", lab.addr6, "--port", str(SERVER_PORT), "--group", GROUP,
                    "--ifname", lab.ifname, "--observers", str(size), "--first-id", str(first),
                    "--listener", cfg.listener, "--cpus", client_cpus, *secured,
                ],
            )  # fmt: skip
            first += size
            clients.append(c)
            children.append(c)
        server_ready = server.expect(lambda e: e.get("ev") == "ready", 30, "ready")
        for c in clients:
            c.expect(lambda e: e.get("ev") == "ready", 60, "ready")
        # -- warm-up: one request to each of WARMUPS other resources, the same in every mode -----------
        # A fresh process pays for what it does the first few times (OpenSSL's first AES-CCM use,
        # Python code run for the first times, which CPython 3.11 runs slower until it specialised it);
        # a serving process has long paid for it, and it is no cost of a registration. Secured modes: a
        # registration each (one context of its own); the group mode's group observations of those
        # resources are then cancelled. The measured resource is untouched: its registrations still
        # start its group observation.
        for k in range(WARMUPS):
            warm = clients[0].request("warmup", 30, ctx=n + 1, path=warmup_path(k))
            if not warm.get("ok"):
                raise BenchError(f"{mode} N={n}: the warm-up request failed: {warm.get('why')}")
        server.request("warmed", 10)
        s0 = server.request("stats", 10, gc=True)
        server_pid = int(server_ready["pid"])
        note("registering")
        prof = Profiler(cfg, server_pid, f"{mode}-{n}-registration")

        # -- registration: everybody at once ------------------------------------------------------
        for c in clients:
            c.send({"op": "register"})
        regs = [c.expect(lambda e: e.get("ev") == "registered", cfg.registration_timeout, "registration")
                for c in clients]  # fmt: skip
        q = server.request(
            "quiesce", cfg.registration_timeout + 10, quiet=0.3, max_wait=cfg.registration_timeout
        )
        prof.stop()
        s1 = server.request("stats", 10, gc=True)
        r0 = s0.get("after_gc", s0)  # s0's own gc.collect() is not part of the registrations
        t_start = min(r["t_start"] for r in regs)
        times = sorted(r["t_start"] + t - t_start for r in regs for t in r["times"])
        seconds = times[-1] if times else float("nan")
        closed = max(seconds, q["last_rx"] - t_start) if times else float("nan")
        failures: dict[str, int] = {}
        for r in regs:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        registration = Registration(
            n=n,
            done=sum(r["done"] for r in regs),
            failed=sum(r["failed"] for r in regs),
            failures=failures,
            retransmits=sum(r["retransmits"] for r in regs),
            seconds=seconds,
            closed_seconds=closed,
            p50_seconds=float(np.percentile(times, 50)) if times else float("nan"),
            per_second=len(times) / seconds if times and seconds > 0 else 0.0,
            closed_per_second=len(times) / closed if times and closed > 0 else 0.0,
            server_cpu_ms=(s1["cpu"] - r0["cpu"]) * 1000,
            server_gc_ms=(s1["gc_s"] - r0["gc_s"]) * 1000,
            server_gc_gen2=s1["gc_gen2"] - r0["gc_gen2"],
            server_sent=s1["sent"] - s0["sent"],
            server_received=s1["recv"] - s0["recv"],
            server_observers=s1["observers"],
            open_exchanges=q["open_exchanges"],
        )
        errors: list[str] = []
        notes: list[str] = []
        if registration.failed:
            errors.append(f"{registration.failed} registrations failed: {failures}")
        note("registered", registration=registration)
        time.sleep(0.1)

        # -- measuring overhead: the same procedure without a change -----------------------------
        nulls = [
            server.request("update", 10, seq=0, null=True, timeout=0.0, settle=cfg.settle)["cpu"] * 1000
            for _ in range(NULL_UPDATES)
        ]

        # -- updates ------------------------------------------------------------------------------
        expect_sent, expect_acks = expected_per_update(mode, n)
        updates: list[Update] = []
        prof = Profiler(cfg, server_pid, f"{mode}-{n}-updates")
        t_updates = time.monotonic()
        for seq in range(1, cfg.updates + 1):
            if seq > MIN_UPDATES and time.monotonic() - t_updates > cfg.case_budget:
                notes.append(f"{seq - 1} of {cfg.updates} updates (case budget {cfg.case_budget:g} s)")
                break
            reply = server.request(
                "update",
                cfg.update_timeout + 10,
                seq=seq,
                expect_sent=expect_sent,
                expect_acks=expect_acks,
                timeout=cfg.update_timeout,
                settle=cfg.settle,
                until_idle=True,
            )
            arrivals = []
            deadline = time.monotonic() + cfg.update_timeout
            for c in clients:
                try:
                    a = c.expect(lambda e, s=seq: e.get("ev") == "arrived" and e["seq"] == s,
                                 max(0.5, deadline - time.monotonic()), f"update {seq}")  # fmt: skip
                except BenchError:
                    c.send({"op": "flush", "seq": seq})
                    a = c.expect(lambda e, s=seq: e.get("ev") == "arrived" and e["seq"] == s, 10, "flush")
                arrivals.append(a)
            got = [a for a in arrivals if a.get("n")]
            received = sum(a["n"] for a in arrivals)
            t0 = reply["t0"]
            u = Update(
                seq=seq,
                ok=bool(reply["ok"]),
                cpu_ms=reply["cpu"] * 1000,
                utime_ms=reply["utime"] * 1000,
                stime_ms=reply["stime"] * 1000,
                gc_ms=reply["gc_s"] * 1000,
                datagrams=reply["sent"],
                bytes=reply["sent_bytes"],
                acks=reply["acks"],
                server_ms=(reply["t_hit"] - t0) * 1000,
                received=received,
                latency_kernel_ms=(max(a["k_last"] for a in got) - t0) * 1000 if got else None,
                latency_app_ms=(max(a["u_last"] for a in got) - t0) * 1000 if got else None,
            )
            if not u.ok or received != n:
                errors.append(f"update {seq}: server ok={u.ok}, {received} of {n} observers got it")
            updates.append(u)
            note("update", seq=seq, total=cfg.updates)
            time.sleep(cfg.gap)
        prof.stop()

        # -- the same updates back to back, no pause: CPU of a busy server ------------------------
        burst = server.request(
            "burst",
            cfg.update_timeout + BURST_BUDGET + 10,
            first_seq=BURST_FIRST_SEQ,
            count=cfg.updates,
            expect_sent=expect_sent,
            expect_acks=expect_acks,
            until_idle=True,
            timeout=cfg.update_timeout,
            budget=BURST_BUDGET,
        )
        burst_cpu = [x * 1000 for x in burst["cpu"]]
        if not burst["ok"]:
            errors.append(f"back-to-back updates: one timed out after {len(burst_cpu)}")
        with contextlib.suppress(BenchError):
            server.request("quit", 5)
        for c in clients:
            with contextlib.suppress(BenchError):
                c.send({"op": "quit"})
        return Case(
            mode=mode,
            n=n,
            processes=len(clients),
            updates=updates,
            registration=registration,
            rss_before_kb=s0["rss_kb"],
            rss_after_kb=s1["rss_kb"],
            overhead_cpu_ms=float(np.median(nulls)),
            wall_seconds=time.monotonic() - t_case,
            errors=errors,
            notes=notes,
            burst_cpu_ms=burst_cpu,
            traced_per_observer=(s1["traced_bytes"] - s0["traced_bytes"]) / n
            if "traced_bytes" in s1
            else None,
        )
    finally:
        for c in children:
            with contextlib.suppress(Exception):
                c.close()
        if creds is not None:
            shutil.rmtree(creds, ignore_errors=True)


# -- the whole run -----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, kernel, Python, aiocoap version, date."""
    import platform

    import aiocoap.meta

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiocoap": aiocoap.meta.version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run_bench(
    cfg: BenchConfig,
    progress: ProgressFn | None = None,
    on_case: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Build the namespace, run every (mode, N), tear everything down.

    ``on_case`` gets the result so far after every case (e.g. to write partial reports).
    """
    from mcobserve.netlab import OneHost, can_use_netns

    cfg.validate()
    ok, reason = can_use_netns()
    if not ok:
        raise BenchError(f"network namespaces unavailable: {reason}")
    started = time.time()
    t0 = time.monotonic()
    cases: list[Case] = []
    server_cpus, client_cpus = _cpu_plan(cfg.pin)
    machine = machine_info()
    machine["server_cpus"] = server_cpus or "any"
    machine["client_cpus"] = client_cpus or "any"
    with OneHost() as lab:
        machine["rps_mask"] = steer_receive(lab, cfg) or "off"
        for n in cfg.observers:
            runs = cfg.registration_runs if n < cfg.repeat_below else 1
            per_mode: dict[str, list[Case]] = {mode: [] for mode in cfg.modes}
            for _ in range(runs):  # the modes take turns: a drift of the machine hits them alike
                for mode in cfg.modes:
                    if progress is not None:
                        progress("case", {"mode": mode, "n": n, "index": len(cases)})
                    per_mode[mode].append(run_case(lab, cfg, mode, n, progress))
            for mode in cfg.modes:
                cases.append(median_run(per_mode[mode]))
                if on_case is not None:
                    on_case(BenchResult(cfg, list(cases), machine, started, time.monotonic() - t0))
    return BenchResult(cfg, cases, machine, started, time.monotonic() - t0)


def median_run(runs: list[Case]) -> Case:
    """One case from several runs of the same (mode, N): the first run's updates, the registration of the
    run with the median registration time (with every run's time in ``registration.runs``), and every
    run's errors."""
    first = runs[0]
    if len(runs) == 1:
        return first
    ordered = sorted(runs, key=lambda c: c.registration.seconds)
    middle = ordered[(len(ordered) - 1) // 2]
    first.registration = replace(middle.registration, runs=tuple(c.registration.seconds for c in runs))
    for k, c in enumerate(runs[1:], start=2):
        first.errors += [f"run {k}: {e}" for e in c.errors]
    return first
