"""Simulated observers: many sockets in one process, plain epoll, no asyncio (a bench client process).

Every observer has its own unicast UDP socket (connected to the server) for its registration (CON GET,
Observe 0, one Token per observer) and, in ``traditional-*`` modes, for its notifications; every CON
message from the server is acknowledged at once. In ``group`` mode the multicast notifications are
heard on group listener sockets made by :func:`mcobserve.aio.client.open_group_socket`: either one per
observer (``--listener observer``, SO_REUSEPORT: the kernel hands every socket its own copy, as if each
observer were its own host) or one per process (``--listener process``: one arrival counts for all the
observers of this process, as on a real host where all observers share one socket).

Arrival times are read twice: the kernel receive timestamp (SO_TIMESTAMPNS, taken when the datagram
entered the receive path, so it does not depend on how busy the client processes are) and the
``time.time()`` at which this process read the datagram. Both use CLOCK_REALTIME, as the server does.

Secured modes (``--credentials DIR``, see :mod:`mcobserve.bench.secured`): every observer has its own OSCORE
context (in memory) and sends its registration protected (outer FETCH); it unprotects the answer.
``traditional-oscore`` observers unprotect every notification with their own context (AEAD, no
signature). ``group-oscore`` observers check the informative response as above, then verify the phantom
request with the self-managed group material it carries (:class:`ClientGroupSecurity`, draft §9.3.1)
and every multicast notification (signature, decryption, binding to the phantom request, Response
Number). Both checks run once per distinct datagram per process: identical bytes give the identical
result, so the other observers of the process (and the other copies of the same multicast datagram)
only look the bytes up. A rejected datagram counts for nobody.

Control protocol, JSON lines: stdin ``{"op": "warmup", "ctx": I, "path": P}``, ``{"op": "register"}``,
``{"op": "flush", "seq": S}``, ``{"op": "quit"}``; stdout ``{"ev": "ready"}``, ``{"ev": "warmed", "ok": ...}``
(one request to P from context I, see ``warmup``), ``{"ev": "registered", ...}`` once all registrations ended,
``{"ev": "arrived", "seq": S, ...}`` once every observer of this process has update S.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiocoap import ACK, CON, EMPTY, GET, RST, SERVICE_UNAVAILABLE, UNAUTHORIZED, Message
from aiocoap import oscore as aiocoap_oscore

from mcobserve.aio.client import open_group_socket
from mcobserve.constants import DEFAULT_CODE_POINTS
from mcobserve.engine.common import Endpoint
from mcobserve.errors import GroupObservationError, MalformedError
from mcobserve.oscore import OscoreError
from mcobserve.oscore.groupobs import ClientGroupSecurity, ClientState
from mcobserve.wire.informative import InformativeResponse

from . import GROUP_MODES, MODES, SECURED_MODES
from .secured import MemoryContext

SO_TIMESTAMPNS = 35  # Linux; also the SCM type of the ancillary data
ANCBUF = socket.CMSG_SPACE(16)
ACK_TIMEOUT = 2.0
MAX_RETRANSMIT = 3
#: An acknowledged registration whose separate response does not come within this is a failure.
SEPARATE_TIMEOUT = 30.0
#: Datagrams read from one socket per wake-up (bounded work per socket, fair to the others).
DRAIN = 64
TYPE_CON = 0
TYPE_ACK = 2

NEW, SENT, ACKED, DONE, FAILED = range(5)
#: Seconds the warm-up GET waits for its answer.
WARMUP_TIMEOUT = 5.0
#: Verified datagrams remembered per process (group-oscore): a few updates' worth.
VERIFIED_CACHE = 256


def kernel_time(ancdata: Sequence[tuple[int, int, bytes]]) -> float | None:
    """The SO_TIMESTAMPNS receive time (POSIX seconds) in ``ancdata``, if any."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("@qq", data)
            return sec + nsec * 1e-9
    return None


def payload_seq(data: bytes) -> int | None:
    """The update number of a notification: the payload is exactly 8 ASCII digits (see server_proc)."""
    if len(data) >= 13 and data[-9] == 0xFF:
        tail = data[-8:]
        if tail.isdigit():
            return int(tail)
    return None


def empty_ack(data: bytes) -> bytes:
    """An empty ACK for the CON message ``data`` (RFC 7252 §4.2)."""
    return bytes((0x60, 0, data[2], data[3]))


def registration(token: bytes, mid: int, path: str, echo: bytes | None = None) -> bytes:
    """CON GET with Observe 0 (RFC 7641 §3.1), with the server's Echo value once it asked (RFC 9175)."""
    m = Message(code=GET, uri_path=(path,), observe=0, echo=echo)
    m.mtype = CON
    m.mid = mid
    m.token = token
    return m.encode()


def protected_registration(
    ctx: MemoryContext, token: bytes, mid: int, path: str
) -> tuple[bytes, aiocoap_oscore.RequestIdentifiers]:
    """The same GET protected with OSCORE (RFC 8613: outer FETCH, Observe 0), and its request identifiers."""
    outer, request_id = ctx.protect(Message(code=GET, uri_path=(path,), observe=0))
    outer.mtype = CON
    outer.mid = mid
    outer.token = token
    return outer.encode(), request_id


def digits(payload: bytes) -> int | None:
    """The update number in a (decrypted) payload of exactly 8 ASCII digits."""
    return int(payload) if len(payload) == 8 and payload.isdigit() else None


class Observers:
    """The observers of this process and their sockets."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.group_mode = args.mode in GROUP_MODES
        self.secured = args.mode in SECURED_MODES
        self.n = args.observers
        self.server = (args.server, args.port)
        self._warm_contexts: dict[int, MemoryContext] = {}
        self.group = Endpoint.parse(args.group)
        self.ifindex = socket.if_nametoindex(args.ifname)
        self.sel = selectors.EpollSelector()
        self.usocks: list[socket.socket] = []
        self.lsocks: list[socket.socket] = []
        self.tokens = [struct.pack(">I", args.first_id + i) for i in range(self.n)]
        self.mids = [(args.first_id * 7 + i * 13) & 0xFFFF for i in range(self.n)]
        self.echo: list[bytes | None] = [None] * self.n  # the server verifies addresses (RFC 9175 §2.4)
        self.state = bytearray(self.n)
        self.sent_at = [0.0] * self.n
        self.tries = [0] * self.n
        #: Kernel receive time of the first datagram answering observer i's registration (0: none yet).
        self.answered_at = [0.0] * self.n
        self.done_at = [0.0] * self.n
        self.pending: set[int] = set()
        self.retransmits = 0
        self.failures: dict[str, int] = {}
        self.group_token: bytes | None = None
        self.reg_start: float | None = None
        self.reg_reported = False
        self.stray = 0
        self.other = 0
        self.last_seq: list[int] = []
        self.arrivals: dict[int, list[float]] = {}
        self.reported: set[int] = set()
        self.running = True
        self._stdin_buf = b""
        # secured modes
        self.contexts: list[MemoryContext] = []
        self.request_ids: list[aiocoap_oscore.RequestIdentifiers] = []
        self.reg_bytes: list[bytes] = []
        self.group_security = ClientGroupSecurity()
        self.group_state: ClientState | None = None
        self.joined: dict[tuple[bytes, ...], ClientState] = {}
        self.verified: dict[bytes, int | None] = {}
        self.rejected = 0
        self.verifications = 0
        if self.secured:
            self._load_contexts()
        self._open()

    # -- setup ---------------------------------------------------------------------------------

    def _load_contexts(self) -> None:
        """Every observer's OSCORE context and its protected registration (sent as is, also when
        retransmitted), prepared before the registrations start."""
        if not self.args.credentials:
            raise SystemExit(f"--mode {self.args.mode} needs --credentials")
        folder = Path(self.args.credentials)
        for i in range(self.n):
            ctx = MemoryContext.load(folder, self.args.first_id + i + 1)
            data, request_id = protected_registration(ctx, self.tokens[i], self.mids[i], self.args.path)
            self.contexts.append(ctx)
            self.request_ids.append(request_id)
            self.reg_bytes.append(data)

    def _open(self) -> None:
        for i in range(self.n):
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.bind((self.args.server, 0))
            s.connect(self.server)
            s.setblocking(False)
            self.usocks.append(s)
            self.sel.register(s, selectors.EVENT_READ, (0, i))
        if self.group_mode:
            listeners = self.n if self.args.listener == "observer" else 1
            for j in range(listeners):
                s = open_group_socket(self.group, self.ifindex)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.lsocks.append(s)
                self.sel.register(s, selectors.EVENT_READ, (1, j))
            self.last_seq = [0] * listeners
        else:
            self.last_seq = [0] * self.n
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, (2, 0))

    def close(self) -> None:
        for s in self.usocks + self.lsocks:
            with contextlib.suppress(OSError):
                s.close()
        self.sel.close()

    # -- output --------------------------------------------------------------------------------

    @staticmethod
    def emit(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    # -- warm-up -------------------------------------------------------------------------------

    def warmup(self, ctx_id: int, path: str) -> dict[str, Any]:
        """One request to the server's warm-up resource ``path``, from a socket of its own, answered
        before the registrations start (see the harness): in secured modes a registration (GET,
        Observe 0, with context ``ctx_id``), as the measured ones; in the others a plain GET, because a
        registration would verify the address all observers share (Echo) before the measured ones."""
        context = None
        observe = 0 if self.secured else None
        if self.secured:
            context = self._warm_contexts.get(ctx_id)
            if context is None:  # kept: its sequence numbers go on across warm-up requests
                context = self._warm_contexts[ctx_id] = MemoryContext.load(
                    Path(self.args.credentials), ctx_id
                )
            outer, request_id = context.protect(Message(code=GET, uri_path=(path,), observe=observe))
        else:
            outer = Message(code=GET, uri_path=(path,))
        outer.mtype, outer.mid, outer.token = CON, 0xFFFF, b"warm"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind((self.args.server, 0))
            s.connect(self.server)
            s.settimeout(WARMUP_TIMEOUT)
            try:
                s.send(outer.encode())
                while True:
                    data = s.recv(2048)
                    if len(data) >= 4 and (data[0] >> 4) & 3 == TYPE_CON:
                        s.send(empty_ack(data))
                    answer = Message.decode(data)
                    if answer.code != EMPTY:  # not the empty ACK of a separate response
                        break
            except OSError as e:
                return {"ok": False, "why": str(e)}
        if context is not None:
            try:
                answer, _ = context.unprotect(answer, request_id)
            except aiocoap_oscore.ProtectionInvalid as e:
                return {"ok": False, "why": f"OSCORE: {type(e).__name__}"}
        ok = answer.code.is_successful() or (self.group_mode and answer.code == SERVICE_UNAVAILABLE)
        return {"ok": ok, "why": answer.code.dotted}

    # -- registration --------------------------------------------------------------------------

    def register(self) -> None:
        self.reg_start = time.time()
        for i, s in enumerate(self.usocks):
            self._send_registration(i, s)
            self.pending.add(i)

    def _registration_bytes(self, i: int) -> bytes:
        if self.secured:
            return self.reg_bytes[i]
        return registration(self.tokens[i], self.mids[i], self.args.path, self.echo[i])

    def _send_registration(self, i: int, s: socket.socket) -> None:
        try:
            s.send(self._registration_bytes(i))
        except OSError as e:  # a full send buffer: the retransmission timer tries again
            self._fail_count(f"send: {e.strerror}")
        self.state[i] = SENT
        self.sent_at[i] = time.time()

    def _fail_count(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    def _finish(self, i: int, ok: bool, why: str = "", at: float | None = None) -> None:
        self.state[i] = DONE if ok else FAILED
        self.done_at[i] = time.time() if at is None else at
        self.pending.discard(i)
        if not ok:
            self._fail_count(why)

    def check_timers(self, now: float) -> None:
        """Retransmit unanswered registrations (RFC 7252 §4.2, simplified), give up in the end."""
        for i in list(self.pending):
            st = self.state[i]
            deadline = self.sent_at[i] + ACK_TIMEOUT * (2 ** self.tries[i])
            if st == SENT and now > deadline:
                # An observer on its own host would have read what already arrived: read it first (this
                # process's other observers may have kept it busy); retransmit only if nothing came, and
                # count the retransmission it would have made if the answer came after the deadline.
                self.read(0, i, self.usocks[i])
                if self.state[i] != SENT:
                    if self.answered_at[i] > deadline:
                        self.retransmits += 1
                    continue
                if self.tries[i] >= MAX_RETRANSMIT:
                    self._finish(i, False, "no answer")
                    continue
                self.tries[i] += 1
                self.retransmits += 1
                s = self.usocks[i]
                try:
                    s.send(self._registration_bytes(i))
                except OSError as e:
                    self._fail_count(f"send: {e.strerror}")
                self.sent_at[i] = now
            elif st == ACKED and now - self.sent_at[i] > SEPARATE_TIMEOUT:
                self._finish(i, False, "no separate response")
        if self.reg_start is not None and not self.reg_reported and not self.pending:
            self.reg_reported = True
            done = [t - self.reg_start for i, t in enumerate(self.done_at) if self.state[i] == DONE]
            self.emit(
                ev="registered",
                n=self.n,
                done=len(done),
                failed=self.n - len(done),
                failures=self.failures,
                retransmits=self.retransmits,
                t_start=self.reg_start,
                times=[round(t, 6) for t in done],
                group_token=self.group_token.hex() if self.group_token else None,
            )

    def _registration_response(self, i: int, data: bytes, received: float) -> None:
        """Check observer ``i``'s answer; a good one counts as done at ``received``, the kernel's receive
        time of the answer at the observer's socket.

        The checks (OSCORE, the informative response, the group material and phantom request) decide
        success or failure, but their client CPU is not part of the registration time, in every mode:
        the observers of a process share its CPU, so one observer's checks would otherwise delay the
        time at which the next one's answer is read (N hosts would not wait for each other).
        """
        try:
            m = Message.decode(data)
        except Exception:  # aiocoap raises several types for garbage
            self.other += 1
            return
        if m.code == EMPTY:
            if m.mtype == ACK and self.state[i] == SENT:
                self.state[i] = ACKED  # separate response follows (draft §4.2)
                self.sent_at[i] = time.time()
            elif m.mtype == RST:
                self._finish(i, False, "RST")
            return
        if m.token != self.tokens[i]:
            self.other += 1
            return
        if m.code == UNAUTHORIZED and m.opt.echo is not None and not self.secured and self.echo[i] is None:
            self.echo[i] = m.opt.echo  # repeat the registration with it, as a new message (RFC 9175 §2.4)
            self.mids[i] = (self.mids[i] + 1) & 0xFFFF
            self._send_registration(i, self.usocks[i])
            return
        if self.secured:
            inner = self._unprotect(i, m)
            if isinstance(inner, str):
                self._finish(i, False, inner)
                return
            m = inner  # the checks below read the plain response
        if self.group_mode:
            if m.code != SERVICE_UNAVAILABLE or m.opt.content_format != DEFAULT_CODE_POINTS.content_format:
                self._finish(i, False, f"not an informative response: {m.code.dotted}")
                return
            try:
                info = InformativeResponse.decode(m.payload)
            except MalformedError as e:
                self._finish(i, False, f"malformed: {e}")
                return
            tp = info.tp_info
            if tp is None or tp.tpi_token is None or tp.tpi_client is None:
                self._finish(i, False, "no tp_info")
                return
            if (Endpoint.of(tp.tpi_client.host, tp.tpi_client.port or 0)) != self.group:
                self._finish(i, False, "other group")
                return
            if self.group_token is None:
                self.group_token = tp.tpi_token
            elif tp.tpi_token != self.group_token:
                self._finish(i, False, "token differs between observers")
                return
            if self.secured:
                why = self._join_secured(info)
                if why:
                    self._finish(i, False, why)
                    return
            self._finish(i, True, at=received)  # the ACK of the CON 5.03 already left (on_unicast)
        elif m.code.is_successful() and m.opt.observe is not None:
            self._finish(i, True, at=received)  # the first notification (RFC 7641 §3.2)
        else:
            self._finish(i, False, f"answered {m.code.dotted}")

    # -- OSCORE --------------------------------------------------------------------------------

    def _unprotect(self, i: int, m: Message) -> Message | str:
        """Observer ``i``'s protected response, unprotected with its own context; a reason if that fails."""
        if m.opt.oscore is None:
            return f"unprotected answer: {m.code.dotted}"
        try:
            inner, _ = self.contexts[i].unprotect(m, self.request_ids[i])
        except aiocoap_oscore.ProtectionInvalid as e:  # DecodeError and ReplayError are subclasses
            return f"OSCORE: {type(e).__name__}"
        return inner

    def _join_secured(self, info: InformativeResponse) -> str:
        """Verify the phantom request with the group material of the (protected) informative response.

        Once per distinct material and phantom request in this process; every observer must get the
        same group observation. Returns a reason for failure, or ''.
        """
        assert self.group_token is not None
        material = repr(info.gp_material).encode()
        key = (info.ph_req or b"", info.srv_cred or b"", info.srv_identifier or b"", material)
        state = self.joined.get(key)
        if state is None:
            if info.ph_req is None:
                return "no ph_req"
            try:
                plain, state = self.group_security.verify_phantom(info, True, self.group_token)
            except (MalformedError, GroupObservationError) as e:
                return f"phantom request: {e}"
            if plain.opt.uri_path != (self.args.path,) or plain.opt.observe != 0:
                return "phantom request is not the registration"
            self.joined[key] = state
        if self.group_state is None:
            self.group_state = state
        elif state is not self.group_state:
            return "group material differs between observers"
        return ""

    def group_seq(self, data: bytes) -> int | None:
        """The update number of a protected multicast notification; None if rejected or not an update."""
        if data in self.verified:
            return self.verified[data]
        assert self.group_state is not None and self.group_token is not None
        self.verifications += 1
        seq = None
        try:
            message = Message.decode(data)
        except Exception:  # aiocoap raises several types for garbage
            message = None
            self.rejected += 1
        if message is not None:
            try:
                plain = self.group_security.unprotect(message, self.group_state, self.group_token)
                seq = digits(plain.payload)
            except (OscoreError, MalformedError):
                self.rejected += 1
        if len(self.verified) >= VERIFIED_CACHE:
            del self.verified[next(iter(self.verified))]
        self.verified[data] = seq
        return seq

    def unicast_seq(self, i: int, data: bytes) -> int | None:
        """The update number of observer ``i``'s protected notification (its own context)."""
        try:
            m = Message.decode(data)
        except Exception:  # aiocoap raises several types for garbage
            return None
        if m.token != self.tokens[i]:
            return None
        inner = self._unprotect(i, m)
        if isinstance(inner, str):
            self.rejected += 1
            return None
        return digits(inner.payload)

    # -- datagrams -----------------------------------------------------------------------------

    def on_unicast(self, i: int, data: bytes, kts: float, uts: float) -> None:
        if len(data) < 4:
            return
        if not self.answered_at[i]:
            self.answered_at[i] = kts
        if (data[0] >> 4) & 3 == TYPE_CON:
            with contextlib.suppress(OSError):
                self.usocks[i].send(empty_ack(data))  # every CON, retransmissions too
        if self.state[i] in (SENT, ACKED):
            self._registration_response(i, data, kts)  # the answer is there (and ACKed if CON)
            return
        if self.group_mode:
            self.other += 1  # e.g. a retransmitted 5.03 whose ACK got lost
            return
        seq = self.unicast_seq(i, data) if self.secured else payload_seq(data)
        if seq is None:
            self.other += 1
            return
        self.arrive(i, seq, kts, uts, 1)

    def on_listener(self, j: int, data: bytes, kts: float, uts: float) -> None:
        if len(data) < 4:
            return
        tkl = data[0] & 0x0F
        if self.group_token is None or data[4 : 4 + tkl] != self.group_token:
            self.stray += 1
            return
        seq = self.group_seq(data) if self.secured else payload_seq(data)
        if seq is None:
            self.other += 1  # the cancellation 5.03 at shutdown
            return
        self.arrive(j, seq, kts, uts, 1 if self.args.listener == "observer" else self.n)

    def arrive(self, j: int, seq: int, kts: float, uts: float, weight: int) -> None:
        if seq <= self.last_seq[j] or seq in self.reported:
            return
        self.last_seq[j] = seq
        rec = self.arrivals.get(seq)
        if rec is None:
            rec = self.arrivals[seq] = [0, kts, kts, uts, uts]
        rec[0] += weight
        rec[1] = min(rec[1], kts)
        rec[2] = max(rec[2], kts)
        rec[3] = min(rec[3], uts)
        rec[4] = max(rec[4], uts)
        if rec[0] >= self.n:
            self.report(seq)

    def report(self, seq: int) -> None:
        rec = self.arrivals.pop(seq, None)
        self.reported.add(seq)
        if rec is None:
            self.emit(ev="arrived", seq=seq, n=0)
            return
        self.emit(
            ev="arrived", seq=seq, n=rec[0], k_first=rec[1], k_last=rec[2], u_first=rec[3], u_last=rec[4]
        )

    def read(self, kind: int, idx: int, sock: socket.socket) -> None:
        for _ in range(DRAIN):
            try:
                data, anc, _flags, _addr = sock.recvmsg(2048, ANCBUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uts = time.time()
            kts = kernel_time(anc) or uts
            if kind == 0:
                self.on_unicast(idx, data, kts, uts)
            else:
                self.on_listener(idx, data, kts, uts)

    # -- control -------------------------------------------------------------------------------

    def on_stdin(self) -> None:
        try:
            chunk = os.read(0, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.running = False  # the harness went away
            return
        self._stdin_buf += chunk
        while b"\n" in self._stdin_buf:
            line, self._stdin_buf = self._stdin_buf.split(b"\n", 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "warmup":
                self.emit(ev="warmed", id=cmd.get("id"), **self.warmup(int(cmd["ctx"]), cmd["path"]))
            elif op == "register":
                self.register()
            elif op == "flush":
                seq = int(cmd["seq"])
                if seq not in self.reported:
                    self.report(seq)
            elif op == "quit":
                self.emit(
                    ev="bye",
                    stray=self.stray,
                    other=self.other,
                    rejected=self.rejected,
                    verifications=self.verifications,
                )
                self.running = False

    def run(self, max_seconds: float) -> None:
        end = time.monotonic() + max_seconds
        next_timer = 0.0
        while self.running and time.monotonic() < end:
            for key, _ in self.sel.select(0.1):
                kind, idx = key.data
                if kind == 2:
                    self.on_stdin()
                else:
                    self.read(kind, idx, key.fileobj)  # type: ignore[arg-type]
            now = time.time()
            if self.reg_start is not None and not self.reg_reported and now >= next_timer:
                next_timer = now + 0.05
                self.check_timers(now)


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit if ``need`` descriptors do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, max(need, soft)))
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"need {need} file descriptors but the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--server", required=True, help="server IPv6 address (clients bind it too)")
    p.add_argument("--port", type=int, default=5683)
    p.add_argument("--group", required=True, help="[GRP_ADDR]:GRP_PORT")
    p.add_argument("--ifname", required=True)
    p.add_argument("--observers", type=int, required=True)
    p.add_argument("--first-id", type=int, default=0)
    p.add_argument("--listener", choices=("observer", "process"), default="observer")
    p.add_argument("--path", default="r")
    p.add_argument("--cpus", default="", help="comma-separated CPUs to pin this process to")
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument(
        "--credentials", default="", help="folder of mcobserve.bench.secured.write_credentials (*-oscore)"
    )
    args = p.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    raise_nofile(2 * args.observers + 64)
    obs = Observers(args)
    try:
        obs.emit(ev="ready", pid=os.getpid(), observers=obs.n, sockets=len(obs.usocks) + len(obs.lsocks))
        obs.run(args.max_seconds)
    finally:
        obs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
