"""Child processes of the benchmarks whose stdout is read by a thread from the start.

A server started with ``--json`` writes one event per registration; a benchmark that reads its stdout
only now and then would let the 64 KiB pipe fill, and the server would block on its next event (it did
at N = 1000 in the proxy section: 464 registrations, then nothing).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import Any


class JsonLines:
    """``popen``'s stdout, collected by a thread; :meth:`wait_json` finds an event line."""

    def __init__(self, popen: subprocess.Popen[str], error: type[Exception] = RuntimeError) -> None:
        self.popen = popen
        self.error = error
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        stream = popen.stdout
        assert stream is not None, "start the process with stdout=subprocess.PIPE"

        def pump() -> None:
            for line in stream:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"bench-stdout-{popen.pid}").start()

    def wait_json(self, pred: Any, timeout: float, *, rescan: bool = True) -> dict[str, Any]:
        """The first JSON object line for which ``pred`` is true (``rescan``: lines already seen count)."""
        end = time.monotonic() + timeout
        if rescan:
            for line in self.seen:
                ev = parse_json_line(line)
                if ev is not None and pred(ev):
                    return ev
        while (remaining := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            ev = parse_json_line(line)
            if ev is not None and pred(ev):
                return ev
        err = ""
        if self.popen.poll() is not None and self.popen.stderr is not None:
            err = self.popen.stderr.read()[-500:].strip()
        raise self.error(f"benchmark: {self.popen.args[:4]} did not report in {timeout:g} s ({err})")

    def stop(self) -> None:
        """Terminate (kill after 10 s) and reap."""
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def parse_json_line(line: str) -> dict[str, Any] | None:
    """A JSON object on one line, or None."""
    if not line.startswith("{"):
        return None
    try:
        v = json.loads(line)
    except json.JSONDecodeError:
        return None
    return v if isinstance(v, dict) else None
