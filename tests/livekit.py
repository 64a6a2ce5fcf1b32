"""Driving ``mcobserve`` processes inside lab namespaces and reading their JSON lines."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PY = [sys.executable, "-m", "mcobserve.cli.main"]
GROUP6 = "[ff35:30:2001:db8::23]:61616"
GROUP4 = "239.255.0.23:61616"


@dataclass
class Proc:
    """A process whose stdout JSON lines are collected by a thread."""

    name: str
    popen: subprocess.Popen[str]
    lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    def start(self) -> Proc:
        def pump() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                try:
                    self.lines.put(json.loads(line))
                except json.JSONDecodeError:
                    self.lines.put({"raw": line.rstrip()})
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return self

    def wait_event(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first line (old or new) that satisfies ``pred``; AssertionError after ``timeout``."""
        for item in self.seen:
            if pred(item):
                return item
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                item = self.lines.get(timeout=min(0.2, max(0.01, end - time.monotonic())))
            except queue.Empty:
                continue
            if item is None:
                self.lines.put(None)
                break
            self.seen.append(item)
            if pred(item):
                return item
        raise AssertionError(
            f"{self.name}: no matching line within {timeout} s; seen {self.seen[-5:]}; "
            f"stderr: {self.read_stderr()[-800:]}"
        )

    def wait_count(self, pred: Any, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``n`` lines satisfy ``pred``; return them."""
        end = time.monotonic() + timeout
        while True:
            found = [e for e in self.seen if pred(e)]
            if len(found) >= n:
                return found
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: {len(found)} of {n} matching lines; seen {self.seen[-5:]}"
                )
            try:
                self.wait_event(lambda e, found=found: pred(e) and e not in found, timeout=remaining)
            except AssertionError:
                pass

    def collect(self, timeout: float) -> list[dict[str, Any]]:
        """Wait for the process to end (bounded) and return every line."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                item = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                break
            self.seen.append(item)
        return self.seen

    def read_stderr(self) -> str:
        if self.popen.stderr is not None and self.popen.poll() is not None and not self.stderr:
            self.stderr = self.popen.stderr.read()
        return self.stderr

    def stop(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        if self.popen.poll() is None:
            self.popen.terminate()
        return self.collect(timeout)


def start(host: Any, name: str, args: list[str]) -> Proc:
    p = host.popen([*PY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Proc(name, p).start()


def server(host: Any, bind: str, group: str, *extra: str, resource: str = "r=1234") -> Proc:
    proc = start(
        host,
        "server",
        [
            "server",
            "--bind",
            bind,
            "--group",
            group,
            "--interface",
            host.ifname,
            "--resource",
            resource,
            "--min-interval",
            "0",
            "--json",
            *extra,
        ],
    )
    proc.wait_event(lambda e: e.get("event") == "started")
    return proc


def observer(
    host: Any,
    uri: str,
    count: int,
    timeout: float = 20.0,
    name: str = "observer",
    extra: tuple[str, ...] = (),
) -> Proc:
    argv = ["observe", uri, "--json", "--count", str(count), "--timeout", str(timeout)]
    return start(host, name, [*argv, "--interface", host.ifname, *extra])


def put(host: Any, uri: str, values: list[str], every: float = 0.3, *extra: str) -> None:
    argv = [*PY, "publish", uri, "--every", str(every), "--count", str(len(values))]
    argv += ["--values", ",".join(values)]
    res = host.run([*argv, *extra], timeout=30)
    assert res.returncode == 0, res.stderr


def notifications(proc: Proc) -> list[dict[str, Any]]:
    return [e for e in proc.seen if "observe" in e and "via" in e]
