"""The server's OSCORE path (mcobserve.aio._glue): aiocoap's processing without a task and a queue per
request (``_LeanOscoreSite``), and the replay-window state of every loaded context written at start
instead of on each client's first request (RFC 8613 Appendix B.1.2). Unicast on loopback only."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiocoap
import aiocoap.resource
import pytest
from aiocoap import CON, CONTENT, GET, INTERNAL_SERVER_ERROR, NOT_FOUND, UNAUTHORIZED, Message
from aiocoap.oscore import FilesystemSecurityContext

from mcobserve.aio.server import GroupServer
from mcobserve.bench.secured import MemoryContext

from .oscorekit import LOCAL, client, oscore_server

pytestmark = pytest.mark.asyncio


class Counter(aiocoap.resource.ObservableResource):
    """A plain RFC 7641 resource (no group observation): its notifications go through the OSCORE path."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def bump(self) -> None:
        self.value += 1
        self.updated_state()

    async def render_get(self, request: Message) -> Message:
        return Message(code=CONTENT, payload=str(self.value).encode())


class Broken(aiocoap.resource.Resource):
    async def render_get(self, request: Message) -> Message:
        raise RuntimeError("a bug in a resource")


async def secured(tmp_path: Path) -> tuple[GroupServer, str, int]:
    server, port = await oscore_server(tmp_path)
    return server, f"coap://{LOCAL}:{port}", port


def sequence_file(tmp_path: Path, i: int) -> dict:
    return json.loads((tmp_path / "server" / f"client-{i}" / "sequence.json").read_text())


async def test_replay_window_state_is_written_at_start_not_on_the_first_request(tmp_path, monkeypatch):
    server, uri, _ = await secured(tmp_path)
    try:
        assert server.replay_windows_marked is not None
        assert await server.replay_windows_marked == 3
        for i in (1, 2, 3):  # after a crash from here on, the window is recovered with Echo (B.1.2)
            assert sequence_file(tmp_path, i)["received"] == "unknown"
        writes: list[str] = []  # any write goes through aiocoap's _store: count the server's

        store = FilesystemSecurityContext._store

        def counting(self: FilesystemSecurityContext) -> None:
            if "/server/" in str(self.basedir):  # not the test client's own context
                writes.append(str(self.basedir))
            store(self)

        monkeypatch.setattr(FilesystemSecurityContext, "_store", counting)
        server.add_resource(["c"], Counter())
        ctx = await client(tmp_path, 2)
        try:
            answer = await ctx.request(Message(code=GET, uri=uri + "/c")).response
            assert (answer.code, answer.payload) == (CONTENT, b"0")
        finally:
            await ctx.shutdown()
        assert writes == []  # the first request of client 2 needed no file write
    finally:
        await server.shutdown()


async def test_protected_traditional_observation_errors_and_replays(tmp_path):
    server, uri, port = await secured(tmp_path)
    counter = Counter()
    server.add_resource(["c"], counter)
    server.add_resource(["broken"], Broken())
    ctx = await client(tmp_path, 1)
    try:
        # an RFC 7641 observation over OSCORE: every notification protected, in order
        request = ctx.request(Message(code=GET, uri=uri + "/c", observe=0))
        first = await request.response
        assert (first.code, first.payload) == (CONTENT, b"0") and first.opt.observe is not None
        seen = []
        notifications = request.observation.__aiter__()
        for _ in range(3):
            counter.bump()
            note = await asyncio.wait_for(notifications.__anext__(), 5)
            seen.append((note.payload, note.opt.observe))
        assert [p for p, _ in seen] == [b"1", b"2", b"3"]
        observes = [first.opt.observe] + [o for _, o in seen]
        assert observes == sorted(set(observes))  # increasing, as aiocoap's wrapper numbers them
        request.observation.cancel()
        # errors are rendered inside the protection
        missing = await ctx.request(Message(code=GET, uri=uri + "/nothing")).response
        assert missing.code == NOT_FOUND and missing.remote.authenticated_claims
        broken = await ctx.request(Message(code=GET, uri=uri + "/broken")).response
        assert broken.code == INTERNAL_SERVER_ERROR and broken.remote.authenticated_claims
    finally:
        await ctx.shutdown()
    # a replayed request (same OSCORE sequence number, new MID) is refused, in the clear
    mem = MemoryContext.load(tmp_path, 3)
    outer, request_id = mem.protect(Message(code=GET, uri_path=("c",)))
    outer.mtype, outer.token = CON, b"\x01"

    def exchange() -> list[Message]:  # blocking, in a thread: the server runs in this test's loop
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            answers = []
            for mid in (7, 8):
                outer.mid = mid
                s.sendto(outer.encode(), (LOCAL, port))
                answers.append(Message.decode(s.recv(2048)))
            return answers

    answers = await asyncio.to_thread(exchange)
    try:
        plain, _ = mem.unprotect(answers[0], request_id)  # the first one served, protected
        assert (plain.code, plain.payload) == (CONTENT, b"3")
        assert answers[1].code == UNAUTHORIZED and answers[1].payload == b"Replay detected"
    finally:
        await server.shutdown()
