"""The server's local control socket (``mcobserve server --control PATH``): its events for ``top``.

A Unix stream socket; every connected reader gets one JSON object per line: first a snapshot (the
``started`` event, then for every group observation its ``group_observation_started`` event, its
latest ``registration`` and ``count`` events, a ``notifications_so_far`` event with ``notifications``
and ``payload_bytes`` sent until then, and its ``cancelled`` event), then every new event as the server emits
it (the same objects as ``--json``). ``mcobserve top --socket PATH`` reads it.

Per event the hub does O(1) bookkeeping plus one write per connected reader (readers, not observers);
a reader that does not keep up (more than :data:`MAX_BUFFER` bytes queued) is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Bytes a slow reader may have queued before it is dropped.
MAX_BUFFER = 1 << 20
_SNAPSHOT_KINDS = ("group_observation_started", "registration", "count", "cancelled")


class EventHub:
    """Forwards server events to a printer and to the control socket's readers."""

    def __init__(self, printer: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.printer = printer
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: (resource, token) -> [notifications, payload bytes] sent before a reader connected.
        self._sent: dict[tuple[str, str], list[int]] = {}
        self._started: dict[str, Any] | None = None
        #: (resource, token) -> {kind: latest event}: what a new reader needs to see the state.
        self._latest: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._current: dict[str, str] = {}  # resource -> token of its latest group observation

    def __call__(self, event: dict[str, Any]) -> None:
        if self.printer is not None:
            self.printer(event)
        self._remember(event)
        if self._writers:
            line = (json.dumps(event) + "\n").encode()
            for w in list(self._writers):
                self._send(w, line)

    def _remember(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        resource = str(event.get("resource", ""))
        if kind == "started":
            self._started = event
        elif kind == "group_observation_started":
            token = str(event.get("token", ""))
            self._current[resource] = token
            self._latest[(resource, token)] = {"group_observation_started": event}
        elif kind == "notification_sent":
            token = str(event.get("token") or self._current.get(resource, ""))
            sent = self._sent.setdefault((resource, token), [0, 0])
            sent[0] += 1
            sent[1] += int(event.get("size") or 0)
        elif kind in ("registration", "count", "cancelled"):
            if kind == "registration" and event.get("kind") == "confirmation":
                return
            token = str(event.get("token") or self._current.get(resource, ""))
            slot = self._latest.get((resource, token))
            if slot is not None:
                slot[kind] = event

    def _snapshot(self) -> list[dict[str, Any]]:
        out = [] if self._started is None else [self._started]
        for (resource, token), slot in self._latest.items():
            out += [slot[k] for k in _SNAPSHOT_KINDS if k in slot and k != "cancelled"]
            sent = self._sent.get((resource, token))
            if sent:  # what was sent before this reader came (``top`` adds it up)
                out.append(
                    {"event": "notifications_so_far", "time": slot["group_observation_started"]["time"],
                     "resource": resource, "token": token, "notifications": sent[0], "payload_bytes": sent[1]}
                )  # fmt: skip
            if "cancelled" in slot:
                out.append(slot["cancelled"])
        return out

    def _send(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        transport = writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > MAX_BUFFER:
            self._writers.discard(writer)
            transport.abort()
            return
        writer.write(line)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for event in self._snapshot():
            self._send(writer, (json.dumps(event) + "\n").encode())
        self._writers.add(writer)
        try:
            while await reader.read(4096):  # readers send nothing; EOF ends them
                pass
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # the loop is ending: finish quietly (asyncio would log it)
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self, path: str) -> None:
        """Listen on ``path`` (a stale socket file there is replaced; anything else is refused)."""
        p = Path(path)
        if p.exists() or p.is_symlink():
            if not p.is_socket():
                raise FileExistsError(f"{path} exists and is not a socket")
            p.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(p))
        os.chmod(p, 0o600)
        self.path = p

    async def close(self) -> None:
        """Send what is queued, disconnect the readers, remove the socket file."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.write_eof()
                await asyncio.wait_for(w.drain(), 1.0)
            w.close()
        self._writers.clear()
        if self._tasks:  # their reads see EOF now
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
