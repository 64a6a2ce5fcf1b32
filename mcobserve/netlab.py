"""Private network namespaces for real multicast tests and demos (Linux, root, pyroute2).

Two topologies, both context managers that always tear down what they created:

* :class:`Lan`: one bridge namespace (``br0``, ``mcast_snooping 0``), a server namespace and N client
  namespaces, each with an ``eth0`` veth port on the bridge. IPv6 ``fd00:db8::/64`` (server ``::1``,
  client *i* ``::(i+1)``), IPv4 ``10.77.0.0/16`` (server ``10.77.0.1``, client *i* ``10.77.0.(i+1)``).
* :class:`OneHost`: a single namespace with a veth pair ``vm0``/``vm1`` (both ends inside), addresses
  ``fd00:db8:1::1/64`` and ``10.78.0.1/24`` on ``vm0``: "many clients on one host" mode.

Every host namespace has ``lo`` up, ``accept_dad=0`` plus ``nodad`` addresses (usable at once) and the
route ``224.0.0.0/4 dev <ifname>`` (IPv4 multicast needs it: there is no default route).
Namespace names are ``mco-<pid>-<n>-<role>``; :func:`sweep_stale` removes only names of that form whose
pid is dead. Configuration is done with pyroute2; processes run via ``ip netns exec``. Labs left open
are closed at normal interpreter exit; a process killed by a signal leaves them for :func:`sweep_stale`
(no signal handler is installed: pyroute2 forks helpers that must die on SIGTERM).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import errno
import importlib.util
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

NETNS_DIR = "/run/netns"
PREFIX = "mco"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-([a-z0-9]+)$")

LAN_NET6 = "fd00:db8::"
LAN_PREFIX6 = 64
LAN_PREFIX4 = 16
ONEHOST_ADDR6 = "fd00:db8:1::1"
ONEHOST_ADDR4 = "10.78.0.1"
ONEHOST_PREFIX4 = 24
MAX_CLIENTS = 1000
IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253
PROC_STOP_TIMEOUT = 3.0

_counter = itertools.count(1)
_counter_lock = threading.Lock()
_live_labs: set[_Lab] = set()


class NetlabError(RuntimeError):
    """Building or using a namespace lab failed."""


def _next_tag() -> str:
    """Return a fresh ``mco-<pid>-<n>`` tag (unique within this process)."""
    with _counter_lock:
        n = next(_counter)
    return f"{PREFIX}-{os.getpid()}-{n}"


def _pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (zombies count as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_ours() -> list[str]:
    """Names in /run/netns that have our ``mco-<pid>-<n>-<role>`` form (any pid)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _NAME_RE.match(n))


def _remove_ns(name: str) -> None:
    """Delete one named namespace (pyroute2: umount + unlink); missing is fine."""
    from pyroute2 import netns

    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def sweep_stale() -> list[str]:
    """Delete namespaces named ``mco-<pid>-<n>-<role>`` whose pid is dead; return their names."""
    removed: list[str] = []
    for name in list_ours():
        m = _NAME_RE.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            _remove_ns(name)
            removed.append(name)
    return removed


def _ns_sysctls(name: str, values: dict[str, str]) -> None:
    """Write /proc/sys keys (dotted names) inside namespace ``name`` via a temporary setns."""
    from pyroute2 import netns

    netns.pushns(name)
    try:
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
    finally:
        netns.popns()


def _create_ns(name: str) -> None:
    """Create a named namespace with accept_dad=0 (so addresses are usable at once)."""
    from pyroute2 import netns

    netns.create(name)
    _ns_sysctls(
        name,
        {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"},
    )


def _ifindex(ipr: Any, ifname: str) -> int:
    """Interface index of ``ifname`` via an open IPRoute."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetlabError(f"interface {ifname} not found")
    return int(found[0])


def loss_ruleset(percent: int, dport: int, table: str = "mco_loss") -> str:
    """nftables ruleset dropping ``percent`` % of incoming UDP to ``dport`` (random, per packet)."""
    if not 0 <= percent <= 100:
        raise ValueError("percent must be within 0..100")
    if not 0 < dport < 65536:
        raise ValueError("dport must be a UDP port")
    return (
        f"table inet {table} {{\n"
        "  chain in {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f"    udp dport {dport} numgen random mod 100 < {percent} counter drop\n"
        "  }\n"
        "}\n"
    )


class Host:
    """One network namespace as seen by tests: names, addresses and process helpers."""

    def __init__(self, name: str, role: str, ifname: str, addr6: str, addr4: str, ifindex: int) -> None:
        """Describe an already-configured namespace (made by a lab)."""
        self.name = name
        self.role = role
        self.ifname = ifname
        self.addr6 = addr6
        self.addr4 = addr4
        self.ifindex = ifindex
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        """Short description."""
        return f"Host({self.name!r}, {self.ifname}, {self.addr6}, {self.addr4})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this namespace; still-running processes are killed at teardown."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``sys.executable -c code args...`` in this namespace."""
        return self.popen([sys.executable, "-c", code, *args], **kw)

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        *,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this namespace to completion (text mode, output captured)."""
        return subprocess.run(
            self.argv(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def nft(self, ruleset_text: str, timeout: float = 10.0) -> None:
        """Load an nftables ruleset (``nft -f -``) into this namespace."""
        res = self.run(["nft", "-f", "-"], timeout, input=ruleset_text)
        if res.returncode != 0:
            raise NetlabError(f"nft failed in {self.name}: {res.stderr.strip()}")

    def clear_nft(self, timeout: float = 10.0) -> None:
        """Remove every nftables rule in this namespace."""
        res = self.run(["nft", "flush", "ruleset"], timeout)
        if res.returncode != 0:
            raise NetlabError(f"nft flush failed in {self.name}: {res.stderr.strip()}")

    def set_loss(self, percent: int, dport: int) -> None:
        """Drop ``percent`` % of incoming UDP datagrams to ``dport`` (see :func:`loss_ruleset`)."""
        self.nft(loss_ruleset(percent, dport))

    def stop_processes(self, timeout: float = PROC_STOP_TIMEOUT) -> None:
        """Terminate (then kill) processes started here that are still running; bounded."""
        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=timeout)


class _Lab(abc.ABC):
    """Common lifecycle: unique names, idempotent teardown, context manager, atexit safety."""

    def __init__(self, tag: str | None = None, keep: bool = False) -> None:
        """Reserve a unique tag (or use ``tag``); nothing is created before :meth:`start`.

        ``keep``: the lab outlives this process (``mcobserve lab up``); it is not closed at exit and
        :func:`remove_kept` removes it later.
        """
        self.tag = tag or _next_tag()
        self.keep = keep
        self.owner_pid = os.getpid()
        self.namespaces: list[str] = []
        self.hosts: list[Host] = []
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0
        self._started = False

    def _new_ns(self, role: str) -> str:
        """Create and remember namespace ``<tag>-<role>``."""
        name = f"{self.tag}-{role}"
        self.namespaces.append(name)  # before creating: a half-made one is removed too
        _create_ns(name)
        return name

    @abc.abstractmethod
    def _build(self) -> None:
        """Create the topology (subclasses)."""

    def start(self) -> Self:
        """Build the topology; on any failure (or Ctrl-C) remove what was made, then re-raise."""
        if self._started:
            return self
        self._started = True
        if not self.keep:
            _live_labs.add(self)
        t0 = time.monotonic()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    def close(self) -> None:
        """Stop our processes and delete our namespaces (idempotent, best effort, bounded)."""
        if self.owner_pid != os.getpid():  # a forked child must not tear down its parent's lab
            return
        t0 = time.monotonic()
        for h in self.hosts:
            with contextlib.suppress(Exception):
                h.stop_processes()
        errors: list[str] = []
        for name in reversed(self.namespaces):
            try:
                _remove_ns(name)
            except OSError as exc:
                errors.append(f"{name}: {exc}")
        self.namespaces = [n for n in self.namespaces if os.path.exists(os.path.join(NETNS_DIR, n))]
        if not self.namespaces:
            _live_labs.discard(self)
        self.teardown_seconds = time.monotonic() - t0
        if errors:
            raise NetlabError("teardown failed: " + "; ".join(errors))

    def __enter__(self) -> Self:
        """Build and return the lab."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Always tear down."""
        self.close()


class Lan(_Lab):
    """Bridge LAN: ``server`` + ``clients`` namespaces, each ``eth0`` on bridge ``br0`` in ``bridge_ns``."""

    def __init__(
        self,
        clients: int = 3,
        *,
        roles: Sequence[str] | None = None,
        tag: str | None = None,
        keep: bool = False,
    ) -> None:
        """Describe a LAN with ``clients`` client hosts (1..1000); ``roles`` names the server and the
        clients (default ``srv``, ``c1``...); ``tag`` and ``keep`` as for the base class."""
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients must be within 1..{MAX_CLIENTS}")
        if roles is not None and len(roles) != clients + 1:
            raise ValueError("roles names the server and every client")
        super().__init__(tag, keep)
        self.n_clients = clients
        self.roles = list(roles) if roles else ["srv"] + [f"c{k}" for k in range(1, clients + 1)]
        self.bridge_ns = f"{self.tag}-br"
        self.server: Host
        self.clients: list[Host] = []

    @staticmethod
    def addresses(i: int) -> tuple[str, str]:
        """(IPv6, IPv4) of host number ``i`` (1 = server, 2 = first client, ...)."""
        n = i - 1
        return f"{LAN_NET6}{i:x}", f"10.77.{n // 254}.{n % 254 + 1}"

    def _build(self) -> None:
        """Create bridge namespace, then one namespace plus veth port per host."""
        from pyroute2 import IPRoute

        self._new_ns("br")
        roles = self.roles
        brfd = os.open(os.path.join(NETNS_DIR, self.bridge_ns), os.O_RDONLY)
        try:
            with IPRoute(netns=self.bridge_ns) as bipr:
                bipr.link("set", index=_ifindex(bipr, "lo"), state="up")
                bipr.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
                br_index = _ifindex(bipr, "br0")
                bipr.link("set", index=br_index, state="up")
                for i, role in enumerate(roles, start=1):
                    addr6, addr4 = self.addresses(i)
                    host = self._add_host(role, addr6, addr4, brfd)
                    port = _ifindex(bipr, f"p-{role}")
                    bipr.link("set", index=port, master=br_index)
                    bipr.link("set", index=port, state="up")
                    self.hosts.append(host)
        finally:
            os.close(brfd)
        self.server = self.hosts[0]
        self.clients = self.hosts[1:]

    def _add_host(self, role: str, addr6: str, addr4: str, brfd: int) -> Host:
        """Create one host namespace with ``eth0`` whose peer ``p-<role>`` lands in the bridge ns."""
        from pyroute2 import IPRoute

        name = self._new_ns(role)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=_ifindex(ipr, "lo"), state="up")
            ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": f"p-{role}", "net_ns_fd": brfd})
            idx = _ifindex(ipr, "eth0")
            ipr.addr("add", index=idx, address=addr6, prefixlen=LAN_PREFIX6, flags=IFA_F_NODAD)
            ipr.addr("add", index=idx, address=addr4, prefixlen=LAN_PREFIX4)
            ipr.link("set", index=idx, state="up")
            ipr.route("add", dst="224.0.0.0/4", oif=idx, scope=RT_SCOPE_LINK)
        return Host(name, role, "eth0", addr6, addr4, idx)


class OneHost(_Lab):
    """One namespace, veth pair ``vm0``/``vm1`` inside it; all processes use ``vm0`` (``host``)."""

    def __init__(self) -> None:
        """Describe the single-namespace lab."""
        super().__init__()
        self.host: Host

    def _build(self) -> None:
        """Create the namespace, the veth pair, addresses and the IPv4 multicast route."""
        from pyroute2 import IPRoute

        name = self._new_ns("host")
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=_ifindex(ipr, "lo"), state="up")
            ipr.link("add", ifname="vm0", kind="veth", peer="vm1")
            idx = _ifindex(ipr, "vm0")
            ipr.addr("add", index=idx, address=ONEHOST_ADDR6, prefixlen=64, flags=IFA_F_NODAD)
            ipr.addr("add", index=idx, address=ONEHOST_ADDR4, prefixlen=ONEHOST_PREFIX4)
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=_ifindex(ipr, "vm1"), state="up")
            ipr.route("add", dst="224.0.0.0/4", oif=idx, scope=RT_SCOPE_LINK)
        self.host = Host(name, "host", "vm0", ONEHOST_ADDR6, ONEHOST_ADDR4, idx)
        self.hosts.append(self.host)

    # Convenience: a OneHost behaves like its single host.
    @property
    def name(self) -> str:
        """Namespace name."""
        return self.host.name

    @property
    def ifname(self) -> str:
        """Interface every process uses (``vm0``)."""
        return self.host.ifname

    @property
    def addr6(self) -> str:
        """IPv6 address on vm0."""
        return self.host.addr6

    @property
    def addr4(self) -> str:
        """IPv4 address on vm0."""
        return self.host.addr4

    @property
    def ifindex(self) -> int:
        """ifindex of vm0."""
        return self.host.ifindex

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """See :meth:`Host.popen`."""
        return self.host.popen(argv, **kw)

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """See :meth:`Host.python`."""
        return self.host.python(code, *args, **kw)

    def run(self, argv: Sequence[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
        """See :meth:`Host.run`."""
        return self.host.run(argv, timeout, **kw)

    def nft(self, ruleset_text: str) -> None:
        """See :meth:`Host.nft`."""
        self.host.nft(ruleset_text)

    def clear_nft(self) -> None:
        """See :meth:`Host.clear_nft`."""
        self.host.clear_nft()

    def set_loss(self, percent: int, dport: int) -> None:
        """See :meth:`Host.set_loss`."""
        self.host.set_loss(percent, dport)


def _probe() -> tuple[bool, str]:
    """Try the real thing once: namespace, veth, bridge, ``ip netns exec``; then clean up."""
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        hint = "re-run as root"
        if (
            shutil.which("sudo")
            and subprocess.run(
                ["sudo", "-n", "true"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        ):
            hint = "passwordless sudo works here: re-run the command with `sudo -E`"
        return False, f"creating network namespaces needs root (euid is {os.geteuid()}); {hint}"
    if shutil.which("ip") is None:
        return False, "the `ip` command (package iproute2) is not installed"
    if importlib.util.find_spec("pyroute2") is None:
        return False, "the Python package pyroute2 is not installed"
    from pyroute2 import IPRoute

    name = f"{_next_tag()}-probe"
    try:
        _create_ns(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname="vp0", kind="veth", peer="vp1")
            ipr.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
        res = subprocess.run(
            ["ip", "netns", "exec", name, "true"], capture_output=True, text=True, timeout=10, check=False
        )
        if res.returncode != 0:
            return False, f"`ip netns exec` does not work here: {res.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot create a network namespace with veth and bridge: {exc}"
    except Exception as exc:
        return False, f"cannot configure a network namespace (pyroute2): {exc!r}"
    finally:
        with contextlib.suppress(Exception):
            _remove_ns(name)
    return True, "root, network namespaces, veth and bridge work"


def processes_in(name: str) -> list[int]:
    """Process ids running in namespace ``name`` (``ip netns pids``)."""
    res = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10, check=False
    )
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def remove_kept(names: Sequence[str], timeout: float = PROC_STOP_TIMEOUT) -> list[str]:
    """Stop the processes in the namespaces ``names`` (SIGTERM, then SIGKILL) and delete them.

    For a lab made with ``keep=True`` by another process; returns the names removed.
    """
    pids = [pid for name in names for pid in processes_in(name) if pid != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _pid_alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    removed = []
    for name in names:
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            _remove_ns(name)
            removed.append(name)
    return removed


def can_use_netns() -> tuple[bool, str]:
    """(True, info) if labs can be built here, else (False, plain-language reason)."""
    try:
        return _probe()
    except Exception as exc:  # never raise from a capability check
        return False, f"network namespace check failed: {exc!r}"


@atexit.register
def _close_live_labs() -> None:
    """Tear down labs left open at interpreter exit (only in the process that made them)."""
    for lab in list(_live_labs):
        if lab.owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                lab.close()
