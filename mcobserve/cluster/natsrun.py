"""Run a small nats-server cluster (JetStream, routes on loopback) for tests, the benchmark and demos.

Not used by a production broker (it connects to a NATS deployment that already runs). Every server
gets its own config file and JetStream store folder under ``workdir``; ports are chosen free on the
listen host. Servers can be started inside a network namespace by passing ``argv_prefix``
(e.g. ``["ip", "netns", "exec", NAME]``). Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ClusterError

#: Where Debian installs it (``/usr/sbin`` is not on every user's PATH).
NATS_SERVER_CANDIDATES = ("nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server")


def find_nats_server() -> str | None:
    """Path of the nats-server binary, or None."""
    for cand in NATS_SERVER_CANDIDATES:
        found = shutil.which(cand)
        if found:
            return found
    return None


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NatsServer:
    """One nats-server process of a :class:`NatsCluster`."""

    name: str
    client_port: int
    route_port: int
    http_port: int
    store_dir: Path
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """``n`` nats-servers with JetStream, clustered by routes on ``route_host`` (one server: no routes).

    ``client_host`` is where clients connect (``0.0.0.0`` to accept from other namespaces);
    :meth:`urls` gives the client URLs for a host address as seen by the client.
    """

    def __init__(
        self,
        workdir: str | Path,
        n: int = 3,
        *,
        client_host: str = "127.0.0.1",
        route_host: str = "127.0.0.1",
        argv_prefix: Sequence[str] = (),
        cluster_name: str = "mco",
        port_probe_host: str | None = None,
        extra_conf: str = "",
    ) -> None:
        """Describe the cluster; nothing runs before :meth:`start`."""
        binary = find_nats_server()
        if binary is None:
            raise ClusterError("nats-server is not installed (Debian: apt-get install nats-server)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.client_host = client_host
        self.route_host = route_host
        self.argv_prefix = list(argv_prefix)
        self.cluster_name = cluster_name
        self.extra_conf = extra_conf  # appended to every server's configuration (tls, authorization)
        probe = port_probe_host or ("127.0.0.1" if client_host in ("0.0.0.0", "127.0.0.1") else client_host)
        ports = free_ports(3 * n, probe)
        self.servers: list[NatsServer] = []
        for i in range(n):
            name = f"n{i + 1}"
            d = self.workdir / name
            self.servers.append(
                NatsServer(
                    name=name,
                    client_port=ports[3 * i],
                    route_port=ports[3 * i + 1],
                    http_port=ports[3 * i + 2],
                    store_dir=d / "js",
                    conf=d / "nats.conf",
                    log=d / "nats.log",
                )
            )

    def urls(self, host: str | None = None) -> list[str]:
        """Client URLs, ``nats://HOST:PORT`` (default host: the client host, or 127.0.0.1)."""
        h = host or ("127.0.0.1" if self.client_host == "0.0.0.0" else self.client_host)
        return [f"nats://{h}:{s.client_port}" for s in self.servers]

    def _write_conf(self, s: NatsServer) -> None:
        s.store_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'server_name: "{s.name}"',
            f'listen: "{self.client_host}:{s.client_port}"',
            f'http: "127.0.0.1:{s.http_port}"',
            "jetstream {",
            f'  store_dir: "{s.store_dir}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 1GB",
            "}",
        ]
        if len(self.servers) > 1:
            routes = ", ".join(
                f'"nats-route://{self.route_host}:{o.route_port}"' for o in self.servers if o is not s
            )
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{self.route_host}:{s.route_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        if self.extra_conf:
            lines.append(self.extra_conf)
        s.conf.write_text("\n".join(lines) + "\n")

    def start_server(self, s: NatsServer) -> None:
        """Start (or restart) one server with its existing store folder."""
        if s.running:
            return
        self._write_conf(s)
        logf = s.log.open("ab")
        try:
            s.proc = subprocess.Popen(
                [*self.argv_prefix, self.binary, "-c", str(s.conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            logf.close()

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> NatsCluster:
        """Start every server and (``wait``) wait until JetStream is healthy on all (bounded).

        After a full stop, JetStream needs a few seconds to elect leaders again; clients retry.
        """
        for s in self.servers:
            self.start_server(s)
        if wait:
            self.wait_healthy(timeout)
        return self

    def _healthz(self, s: NatsServer) -> bool:
        """JetStream health of one server (``/healthz``, via its monitoring port)."""
        url = f"http://127.0.0.1:{s.http_port}/healthz"
        if self.argv_prefix:
            res = subprocess.run(
                [*self.argv_prefix, "python3", "-c", _HEALTH_PY, url],
                capture_output=True,
                timeout=5,
                check=False,
            )
            return res.returncode == 0
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return bool(json.loads(r.read()).get("status") == "ok")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 20.0, servers: Sequence[NatsServer] | None = None) -> None:
        """Wait until the given (default: running) servers report healthy JetStream."""
        deadline = time.monotonic() + timeout
        todo = list(servers) if servers is not None else [s for s in self.servers if s.running]
        while todo:
            for s in list(todo):
                if s.proc is not None and s.proc.poll() is not None:
                    raise ClusterError(f"nats-server {s.name} exited ({s.proc.returncode}); see {s.log}")
                if self._healthz(s):
                    todo.remove(s)
            if not todo:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"nats-server(s) {[s.name for s in todo]} not healthy within {timeout} s")
            time.sleep(0.1)

    def kill(self, s: NatsServer, sig: int = signal.SIGKILL) -> None:
        """Stop one server abruptly (default SIGKILL) and reap it."""
        if s.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            s.proc.send_signal(sig)
        try:
            s.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after a bounded wait)."""
        for s in self.servers:
            if s.running and s.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.terminate()
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                s.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(timeout=5)

    def __enter__(self) -> NatsCluster:
        """Start; see :meth:`start`."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Always stop."""
        self.stop()


_HEALTH_PY = (
    "import json,sys,urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=1.0)\n"
    "    sys.exit(0 if json.loads(r.read()).get('status') == 'ok' else 1)\n"
    "except Exception:\n"
    "    sys.exit(1)\n"
)
