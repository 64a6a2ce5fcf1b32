"""Every use of aiocoap 0.4.17 internals, in one place (DESIGN.md, "adapter").

aiocoap has no public API to send an unsolicited response (a multicast notification) from a
server's own socket, nor to send the empty ACK of a separate response at once. The functions here
do both through objects that are internal to aiocoap 0.4.17, which ``pyproject.toml`` pins. Each
function has a test in ``tests/test_glue.py``; when aiocoap changes, only this module moves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import fcntl
import functools
import ipaddress
import logging
import socket
import struct
import termios
from collections.abc import Callable
from typing import Protocol

import aiocoap
import aiocoap.meta
import aiocoap.pipe
import aiocoap.resource
from aiocoap import ACK, CON, EMPTY, NON, RST, Context, Message
from aiocoap.error import UnparsableMessage
from aiocoap.message import Direction
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.tokenmanager import TokenManager
from aiocoap.transports.oscore import OSCOREAddress
from aiocoap.transports.udp6 import MessageInterfaceUDP6, UDP6EndpointAddress

from ..engine.common import Endpoint, host_address, normalize_ip
from ..errors import ResponseTooLargeError

log = logging.getLogger(__name__)

assert aiocoap.meta.version == "0.4.17", "mcobserve.aio._glue is written against aiocoap 0.4.17"

IPV6_MULTICAST_ALL = 29
IP_MULTICAST_ALL = 49
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not exported by Python's socket module


def udp_message_manager(ctx: Context) -> MessageManager:
    """The MessageManager of the context's udp6 transport (the order of request_interfaces varies)."""
    for ri in ctx.request_interfaces:
        if isinstance(ri, TokenManager):
            mman = ri.token_interface
            if isinstance(getattr(mman, "message_interface", None), MessageInterfaceUDP6):
                return mman
    raise RuntimeError("context has no udp6 transport")


def server_socket(ctx: Context) -> socket.socket:
    """The dual-stack UDP socket aiocoap serves on."""
    mif = udp_message_manager(ctx).message_interface
    return mif.transport.get_extra_info("socket")


def _v6(host: Endpoint) -> str:
    return str(host.host) if host.is_v6 else f"::ffff:{host.host}"


def group_remote(ctx: Context, group: Endpoint, source: Endpoint, ifindex: int = 0) -> UDP6EndpointAddress:
    """A remote for GRP_ADDR:GRP_PORT whose pktinfo pins SRV_ADDR as source (draft §4.3)."""
    mif = udp_message_manager(ctx).message_interface
    pktinfo = struct.pack("16sI", socket.inet_pton(socket.AF_INET6, _v6(source)), ifindex)
    return UDP6EndpointAddress((_v6(group), group.port, 0, 0), mif, pktinfo=pktinfo)


def send_unsolicited(ctx: Context, message: Message, remote: UDP6EndpointAddress) -> None:
    """Send a ready NON response from the server's own socket (draft §4.3, §4.5)."""
    message.remote = remote
    udp_message_manager(ctx).send_message(message, None)


def acknowledge_now(request: Message) -> bool:
    """Send the empty ACK of a CON request at once, so the response goes out separately (RFC 7252 §5.2.2).

    Returns False when there is nothing to acknowledge (NON request, or the ACK already went out
    after EMPTY_ACK_DELAY); the response is then separate anyway.
    """
    ack = acknowledge_later(request)
    if ack is None:
        return False
    ack()
    return True


def acknowledge_later(request: Message) -> Callable[[], None] | None:
    """Make the response to a CON request separate (RFC 7252 §5.2.2) and return what sends its empty ACK.

    The caller sends the separate response first and then calls the result: RFC 7252 §5.2.2 lets the
    separate response arrive before the ACK (it then also ends the client's retransmissions), and the
    client has its answer one datagram earlier. None when there is nothing to acknowledge (NON request,
    or the ACK already went out: on receipt, or after EMPTY_ACK_DELAY).
    """
    remote = request.remote
    key: tuple[object, bytes] | None = (remote, request.token)
    if isinstance(remote, OSCOREAddress):
        # aiocoap gives the unprotected inner request an empty Token; the outer CON request waiting for
        # its ACK is the one pending exchange of that endpoint (NSTART = 1).
        remote = remote.underlying_address
        key = None
    mman = getattr(getattr(remote, "interface", None), "_ctx", None)
    if not isinstance(mman, MessageManager):
        return None
    if key is None:
        outer = getattr(remote.interface, "_mcobserve_outer_tokens", None)
        token = outer.pop(remote, None) if outer is not None else None
        if token is not None:  # recorded by install_datagram_hooks: no scan (O(1) per registration)
            key = (remote, token)
        else:
            pending = [k for k in mman._piggyback_opportunities if k[0] == remote]
            if len(pending) != 1:
                return None
            key = pending[0]
    entry = mman._piggyback_opportunities.pop(key, None)
    if entry is None:
        return None
    mid, handle = entry
    handle.cancel()
    return functools.partial(mman._send_empty_ack, remote, mid, "separate informative response (draft §4.2)")


def respond_separately(pipe: aiocoap.pipe.Pipe, response: Message) -> None:
    """Send ``response`` to ``pipe``'s request as a Confirmable separate response (RFC 7252 §5.2.2), e.g.
    an informative response (draft §4.2): the response first, the request's empty ACK right after it
    (unless that ACK already went out)."""
    response.mtype = CON
    ack = acknowledge_later(pipe.request)
    pipe.add_response(response, is_last=True)
    if ack is not None:  # after the response, which may pass through the OSCORE protection first
        asyncio.get_running_loop().call_soon(ack)


def is_oscore_protected(message: Message) -> bool:
    """Did this request or response come over (unicast) OSCORE, unprotected by aiocoap (RFC 8613)?"""
    return isinstance(message.remote, OSCOREAddress)


def authenticated_claims(message: Message) -> tuple[object, ...]:
    """The claims of the security context an OSCORE request came from (aiocoap: credentials entry names)."""
    remote = message.remote
    if not isinstance(remote, OSCOREAddress):
        return ()
    return tuple(getattr(remote.security_context, "authenticated_claims", None) or ())


def oscore_site(
    site: aiocoap.interfaces.Resource, server_credentials: object, *, lean: bool = True
) -> aiocoap.interfaces.Resource:
    """Wrap a site so that OSCORE-protected requests are unprotected before rendering (RFC 8613 §8.2).

    ``lean``: :class:`_LeanOscoreSite` (the same processing, without a task and a queue per request);
    else aiocoap's own ``OscoreSiteWrapper`` (the benchmark's baseline).
    """
    return (
        _lean_oscore_site_class()(site, server_credentials)
        if lean
        else _aiocoap_oscore_site_class()(site, server_credentials)
    )


def _aiocoap_oscore_site_class() -> type:
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

    return OscoreSiteWrapper


class _ProtectingPipe:
    """The inner pipe of :class:`_LeanOscoreSite`: every response is protected and passed on at once."""

    def __init__(self, request: Message, outer: aiocoap.pipe.Pipe, sc: object, seqno: object) -> None:
        self.request = request
        self.log = log
        self._outer = outer
        self._sc = sc
        self._seqno = seqno
        self._ended = False

    def on_interest_end(self, callback: Callable[[], None]) -> None:
        self._outer.on_interest_end(callback)

    def add_response(self, message: Message, is_last: bool = False) -> None:
        if self._ended:
            return
        self._ended = is_last
        if not is_last:
            message.opt.observe = 0  # as aiocoap: a non-final response is a notification
        protected, _ = self._sc.protect(message, self._seqno)  # type: ignore[attr-defined]
        if message.opt.observe is not None:
            protected.opt.observe = self._sc.sender_sequence_number & 0xFFFFFFFF  # type: ignore[attr-defined]
        self._outer.add_response(protected, is_last=is_last)

    def add_exception(self, exception: BaseException) -> None:
        self.log.warning("Turning error raised from renderer into nondescript protected error %r", exception)
        self.add_response(Message(code=aiocoap.INTERNAL_SERVER_ERROR), is_last=True)


@functools.cache
def _lean_oscore_site_class() -> type:
    from aiocoap import oscore
    from aiocoap.error import BadOption, BadRequest, MethodNotAllowed, Unauthorized
    from aiocoap.numbers.codes import FETCH, POST
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

    class _LeanOscoreSite(OscoreSiteWrapper):
        """aiocoap 0.4.17's ``OscoreSiteWrapper.render_to_pipe`` for OSCORE requests, with the inner
        rendering awaited in place and each response protected as it is added (aiocoap runs the inner
        site in a task of its own, hands every response over through a queue, and formats a repr of
        the request for the task's name: three loop turns and a tenth of a protected registration).
        EDHOC and unprotected requests take aiocoap's own path."""

        async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
            request = pipe.request
            if request.opt.oscore is None or request.opt.uri_path == (".well-known", "edhoc"):
                await super().render_to_pipe(pipe)
                return
            try:
                unprotected = oscore.verify_start(request)
            except oscore.NotAProtectedMessage:
                await self._inner_site.render_to_pipe(pipe)
                return
            if request.code not in (FETCH, POST):
                raise MethodNotAllowed
            try:
                sc = self.server_credentials.find_oscore(unprotected)
            except KeyError:
                if request.mtype == CON:
                    raise Unauthorized("Security context not found") from None
                return
            try:
                unprotected, seqno = sc.unprotect(request)
            except aiocoap.error.RenderableError:
                raise  # e.g. the 4.01 Echo recovery (a ReplayError too)
            except oscore.ReplayError:
                if request.mtype == CON:
                    pipe.add_response(
                        Message(code=aiocoap.UNAUTHORIZED, max_age=0, payload=b"Replay detected"),
                        is_last=True,
                    )
                return
            except oscore.DecodeError:
                if request.mtype == CON:
                    raise BadOption("Failed to decode COSE") from None
                return
            except oscore.ProtectionInvalid:
                if request.mtype == CON:
                    raise BadRequest("Decryption failed") from None
                return
            unprotected.remote = OSCOREAddress(sc, request.remote)
            inner = _ProtectingPipe(unprotected, pipe, sc.context_for_response(), seqno)
            errors = aiocoap.pipe.error_to_message(inner, self.log)
            try:
                await self._inner_site.render_to_pipe(errors)
            except Exception as e:  # as aiocoap's run_driving_pipe: the pipe renders it
                errors.add_exception(e)

    return _LeanOscoreSite


class _StrippedRequest(Message):
    """A request whose Uri-Path a :class:`LeanSite` stripped; the original request URI (aiocoap's
    ``_original_request_uri``, read first by ``get_request_uri``) is built only when asked for."""

    _original_request: Message

    @property
    def _original_request_uri(self) -> str:
        uri = self.__dict__.get("_uri")
        if uri is None:
            uri = self.__dict__["_uri"] = self._original_request.get_request_uri()
        return str(uri)

    @_original_request_uri.setter
    def _original_request_uri(self, value: str) -> None:
        self.__dict__["_uri"] = value


def path_stripped(request: Message) -> Message:
    """``request.copy(uri_path=())`` without ``copy.deepcopy`` of every option (aiocoap 0.4.17).

    The copy has its own option lists and shares the option objects, which aiocoap never changes in
    place (its setters replace them). Same code, payload, type, MID, Token, remote and direction; its
    ``get_request_uri()`` is the original request's, computed when first asked for.
    """
    new = _StrippedRequest(
        code=request.code, payload=request.payload, transport_tuning=request.transport_tuning
    )
    new.mtype, new.mid, new.token = request.mtype, request.mid, request.token
    new.remote, new.direction = request.remote, request.direction
    options = new.opt._options
    for number, values in request.opt._options.items():
        if number != OptionNumber.URI_PATH:
            options[number] = list(values)
    if "_original_request_uri" in request.__dict__ or isinstance(request, _StrippedRequest):
        new._original_request_uri = request._original_request_uri  # stripped before: keep the first
    else:
        new._original_request = request
    return new


class LeanSite(aiocoap.resource.Site):
    """aiocoap's ``Site``, but a request for one of its own resources is stripped of its Uri-Path with
    :func:`path_stripped` instead of a deep copy and an eagerly built URI (a quarter of a publication's
    CPU in the broker, a sixth of a registration's under load)."""

    def _find_child_and_pathstripped_message(
        self, request: Message
    ) -> tuple[aiocoap.interfaces.Resource, Message]:
        child = self._resources.get(request.opt.uri_path)
        if child is None:
            return super()._find_child_and_pathstripped_message(request)  # sub-sites, 4.04
        return child, path_stripped(request)


def name_tasks_cheaply(ctx: Context) -> None:
    """aiocoap 0.4.17 names every rendering task ``"Rendering for %r" % request``: both addresses
    formatted and the interface name asked from the kernel, per request (an eighth of a publication's
    CPU in the broker). Here the name is constant; nothing else changes."""
    from aiocoap.pipe import error_to_message, run_driving_pipe

    def render_to_pipe(pipe: aiocoap.pipe.Pipe) -> None:
        run_driving_pipe(error_to_message(pipe, ctx.log), ctx._render_to_pipe(pipe), name="mcobserve request")

    ctx.render_to_pipe = render_to_pipe  # type: ignore[method-assign]


@functools.lru_cache(maxsize=1024)
def _is_multicast_pktinfo(pktinfo: bytes) -> bool:
    """What aiocoap's ``is_multicast_locally`` answers for this in6_pktinfo (v4-mapped as IPv4)."""
    address = ipaddress.IPv6Address(pktinfo[:16])
    mapped = address.ipv4_mapped
    return (mapped if mapped is not None else address).is_multicast


#: Distinct peer address strings whose printable form is remembered (:func:`install_address_cache`).
ADDRESS_CACHE_SIZE = 8192


def install_address_cache() -> bool:
    """Remember aiocoap 0.4.17's printable form of UDP addresses (``UDP6EndpointAddress._strip_v4mapped``)
    and whether a request's local address is multicast (``is_multicast_locally``).

    aiocoap parses and prints the peer's address with :mod:`ipaddress` several times per request (the
    remote's ``hostinfo``, task names built with ``%r`` of the request, ``as_response_address`` of every
    response): about a tenth of a registration's CPU under load. The function is pure, so a bounded
    LRU cache returns the same strings. Installed once per process; returns False if it already was.
    """
    current = UDP6EndpointAddress.__dict__["_strip_v4mapped"].__func__
    if hasattr(current, "cache_info"):
        return False
    UDP6EndpointAddress._strip_v4mapped = staticmethod(  # type: ignore[method-assign]
        functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)(current)
    )
    # ``is_multicast_locally`` (every response: ``as_response_address``) parses the local address again
    original = UDP6EndpointAddress.is_multicast_locally

    def is_multicast_locally(self: UDP6EndpointAddress) -> bool:
        if isinstance(self.pktinfo, bytes) and len(self.pktinfo) >= 16:
            return _is_multicast_pktinfo(self.pktinfo)
        return bool(original.fget(self))  # type: ignore[attr-defined]

    UDP6EndpointAddress.is_multicast_locally = property(is_multicast_locally)  # type: ignore[method-assign,assignment]
    return True


def install_backlog_fix() -> bool:
    """Make aiocoap 0.4.17's ``MessageManager._continue_backlog`` O(1) instead of O(open exchanges).

    aiocoap scans every open CON exchange each time one ends, so N informative responses (CON,
    separate, draft §4.2) in flight cost O(N^2), and late ACK processing causes retransmissions. Under
    aiocoap's NSTART = 1 invariant a remote has a backlog entry exactly while it has one open CON
    exchange, and ``_send_initially`` opens one for every CON message, so the backlog itself tells
    what the scan computed. Same behaviour, measured by ``mcobserve bench``. Returns True when installed.
    """
    original = MessageManager._continue_backlog
    if getattr(original, "_mcobserve_o1", False):
        return False

    def _continue_backlog(self: MessageManager, remote: object) -> None:
        backlog = self._backlogs.get(remote)
        if backlog is None:
            raise AssertionError("backlogs/active_exchange relation violated (implementation error)")
        while backlog:
            message, monitor = backlog.pop(0)
            self._send_initially(message, monitor)
            if message.mtype == aiocoap.CON:
                return  # now the remote's open exchange
        del self._backlogs[remote]

    _continue_backlog._mcobserve_o1 = True  # type: ignore[attr-defined]
    MessageManager._continue_backlog = _continue_backlog  # type: ignore[method-assign]
    return True


def oscore_rejections() -> tuple[type[Exception], ...]:
    """Exceptions aiocoap raises for a response that fails OSCORE verification (RFC 8613 §8.4)."""
    from aiocoap import oscore

    return (oscore.ProtectionInvalid, oscore.DecodeError)


def local_endpoint(request: Message) -> Endpoint | None:
    """The address and port a unicast request arrived at, from its pktinfo."""
    remote = request.remote
    pktinfo = getattr(remote, "pktinfo", None)
    if pktinfo is None:
        return None
    addr = socket.inet_ntop(socket.AF_INET6, pktinfo[:16])
    sock = remote.interface.transport.get_extra_info("socket")
    return Endpoint.of(normalize_ip(addr), sock.getsockname()[1])


def configure_multicast_sender(ctx: Context, ifindex: int, *, hops: int = 1, loop: bool = True) -> None:
    """Outgoing interface, hop limit and loopback for multicast from the server socket (draft §4.4)."""
    sock = server_socket(ctx)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loop))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, hops)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
    if ifindex:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        mreqn = struct.pack("4s4si", b"\0" * 4, b"\0" * 4, ifindex)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)


def set_receive_buffer(ctx: Context, size: int) -> int:
    """Grow the server socket's receive buffer (ACK bursts when many observers move over at once)."""
    sock = server_socket(ctx)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def incoming(message: Message, remote: UDP6EndpointAddress | None = None) -> Message:
    """Mark a locally built request (the phantom request) as incoming, as Resource.render expects."""
    message.direction = aiocoap.message.Direction.INCOMING
    if remote is not None:
        message.remote = remote
    return message


class DatagramHooks(Protocol):
    """What :func:`install_datagram_hooks` asks about every unicast datagram of a server context."""

    def on_datagram(self, source: str, size: int) -> None:
        """A datagram of ``size`` bytes (UDP payload) arrived from ``source`` (an IP address)."""

    def on_dropped(self, source: str, reason: str) -> None:
        """A datagram was dropped (unparsable, undecodable option, unfit type/code, failed processing)."""

    def on_message(self, source: str, message: Message) -> bool | Message:
        """A decoded message; False drops it before aiocoap sees it; a Message is the answer to send now
        instead (its type, MID, Token and remote are filled in here: ACK to a CON request, else NON)."""

    def on_send(self, source: str, message: Message, size: int) -> Message | None:
        """A unicast message of ``size`` bytes is about to go to ``source``: send it, another, or None."""

    def may_ack_early(self, source: str, message: Message) -> bool:
        """May this CON request get its empty ACK before it is processed (the server is behind)?"""

    def ack_at_once(self, source: str, message: Message) -> bool:
        """Optional: is this CON request answered separately anyway, so its empty ACK goes out on receipt?"""


#: Remotes whose latest outer OSCORE Token is remembered for :func:`acknowledge_now`.
OUTER_TOKENS_MAX = 65536
#: recvmsg buffer, as aiocoap's transport.
RECEIVE_SIZE = 4096
#: A poll that finds at least this many datagrams waiting ACKs their CON requests at once.
EARLY_ACK_BACKLOG = 4


def poll_datagrams(ctx: Context, limit: int = 64) -> int:
    """Read up to ``limit`` datagrams waiting at the server socket now, from inside a long piece of work.

    asyncio reads one datagram per loop iteration, between whole task steps; in a registration storm the
    queue in the socket grows while each registration is processed, and the clients retransmit after
    ACK_TIMEOUT (2-3 s) although their request is only waiting. Called from the registration path, this
    hands waiting datagrams to aiocoap at once and, when at least :data:`EARLY_ACK_BACKLOG` were waiting,
    sends the empty ACK of each CON request right away (the response then goes separately, as the
    informative response does anyway). Needs :func:`install_datagram_hooks`; returns the number read.
    """
    poll = getattr(udp_message_manager(ctx).message_interface, "_mcobserve_poll", None)
    return poll(limit) if poll is not None else 0


@functools.lru_cache(maxsize=4096)
def _is_multicast(host: str) -> bool:
    address = host_address(host)
    return address is not None and address.is_multicast


#: The (type, code class) pairs aiocoap's MessageManager handles (RFC 7252 §4.2, §4.3); the rest is dropped.
def _fits(message: Message) -> bool:
    code, mtype = message.code, message.mtype
    if code == EMPTY:
        return mtype in (CON, ACK, RST)
    if code.is_request():
        return mtype in (CON, NON)
    if code.is_response():
        return mtype in (CON, NON, ACK)
    return False


def _waiting(sock: socket.socket) -> bool:
    """Does a datagram wait at ``sock`` (FIONREAD: the size of the next one, one system call)?"""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
    except OSError:
        return True  # unknown: as if the server were behind


def install_datagram_hooks(ctx: Context, hooks: DatagramHooks) -> None:
    """Put ``hooks`` between the server context's UDP socket and aiocoap (receive and send).

    Replaces, on this context's ``MessageInterfaceUDP6`` instance only, ``datagram_msg_received`` (the
    transport's callback) and ``send`` with copies of aiocoap 0.4.17's code that (a) never let an
    exception escape into asyncio's callback (which printed a traceback per bad datagram: a Uri-Path with
    invalid UTF-8 raises UnicodeDecodeError inside ``Message.decode``), (b) drop what aiocoap would only
    warn about (unfit type/code pairs), and (c) let the hooks count and bound what goes back to
    each source. Datagrams to multicast destinations (notifications) pass untouched.
    """
    mif = udp_message_manager(ctx).message_interface
    transport = mif.transport
    # The outer Token of the latest CON OSCORE request per remote, for acknowledge_now (bounded).
    outer_tokens: collections.OrderedDict[object, bytes] = collections.OrderedDict()
    mif._mcobserve_outer_tokens = outer_tokens

    sock = transport.get_extra_info("socket")
    mman = mif._ctx
    early_ack = [False]  # set while poll() hands over a backlog
    ack_at_once = getattr(hooks, "ack_at_once", None)  # optional in DatagramHooks

    def datagram_msg_received(
        data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int, address: tuple
    ) -> None:
        source = address[0]
        hooks.on_datagram(source, len(data))
        pktinfo = None
        for level, kind, cdata in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                pktinfo = cdata
        try:
            message = Message.decode(data, UDP6EndpointAddress(address, mif, pktinfo=pktinfo))
        except UnparsableMessage:
            hooks.on_dropped(source, "unparsable CoAP message")
            return
        except Exception:  # aiocoap decodes options eagerly: e.g. UnicodeDecodeError for a bad Uri-Path
            hooks.on_dropped(source, "undecodable option")
            return
        message.direction = Direction.INCOMING
        if not _fits(message):
            hooks.on_dropped(source, "type and code do not fit (RFC 7252 §4)")
            return
        verdict = hooks.on_message(source, message)
        if isinstance(verdict, Message):  # answered at once, statelessly (e.g. 4.01 + Echo)
            verdict.token, verdict.remote = message.token, message.remote
            if message.mtype is CON:
                verdict.mtype, verdict.mid = ACK, message.mid
            else:
                verdict.mtype, verdict.mid = NON, mman._next_message_id()
            mif.send(verdict)
            return
        if not verdict:
            return
        if message.mtype is CON and message.opt.oscore is not None and message.code.is_request():
            outer_tokens[message.remote] = message.token
            outer_tokens.move_to_end(message.remote)
            if len(outer_tokens) > OUTER_TOKENS_MAX:
                outer_tokens.popitem(last=False)
        try:
            mman.dispatch_message(message)
        except Exception:
            hooks.on_dropped(source, "processing failed")
            return
        if message.mtype is not CON or not message.code.is_request():
            return
        if early_ack[0]:  # the server is behind: ACK now, answer separately (RFC 7252 §5.2.2)
            if hooks.may_ack_early(source, message):
                ack_pending(message.remote, message.token)
        elif (
            ack_at_once is not None
            and ack_at_once(source, message)
            and hooks.may_ack_early(source, message)
            and _waiting(sock)  # last: a system call, only for registrations
        ):
            # Answered separately anyway, and more datagrams wait: ACK now, before this request waits its
            # turn. With nothing waiting the response is ready at once and leaves first, its ACK right
            # after it (acknowledge_later); aiocoap's EMPTY_ACK_DELAY timer stays the safety net.
            ack_pending(message.remote, message.token)

    def ack_pending(remote: object, token: bytes) -> None:
        entry = mman._piggyback_opportunities.pop((remote, token), None)
        if entry is not None:
            entry[1].cancel()
            mman._send_empty_ack(remote, entry[0], "separate response")

    def poll(limit: int) -> int:
        waiting = []
        for _ in range(limit):
            try:
                waiting.append(sock.recvmsg(RECEIVE_SIZE, 1024))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # the transport's own reader reports socket errors
        early_ack[0] = len(waiting) >= EARLY_ACK_BACKLOG
        try:
            for data, ancdata, flags, address in waiting:
                mif.datagram_msg_received(data, ancdata, flags, address)  # through any wrapper (the bench's)
        finally:
            early_ack[0] = False
        return len(waiting)

    mif._mcobserve_poll = poll

    def send(message: Message) -> None:
        remote = message.remote
        data = message.encode()
        host = remote.sockaddr[0]
        if not _is_multicast(host):
            out = hooks.on_send(host, message, len(data))
            if out is None:
                return
            if out is not message:
                data = out.encode()
        ancdata = []
        if remote.pktinfo is not None:
            ancdata.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, remote.pktinfo))
        token = mif._remote_being_sent_to.set(remote)  # for aiocoap's ICMP error attribution
        try:
            transport.sendmsg(data, ancdata, 0, remote.sockaddr)
        finally:
            with contextlib.suppress(ValueError):
                mif._remote_being_sent_to.reset(token)

    mif.datagram_msg_received = datagram_msg_received  # type: ignore[method-assign]
    mif.send = send  # type: ignore[method-assign]


def client_endpoint(message: Message) -> Endpoint | None:
    """The UDP address and port a request came from (through OSCORE: of the outer message)."""
    remote = message.remote
    if isinstance(remote, OSCOREAddress):
        remote = remote.underlying_address
    sockaddr = getattr(remote, "sockaddr", None)
    if not sockaddr:
        return None
    try:
        return Endpoint.of(normalize_ip(sockaddr[0].split("%", 1)[0]), sockaddr[1])
    except ValueError:
        return None


def udp_source(message: Message) -> str | None:
    """The IP address a request came from (through OSCORE: the address of the outer message)."""
    remote = message.remote
    if isinstance(remote, OSCOREAddress):
        remote = remote.underlying_address
    sockaddr = getattr(remote, "sockaddr", None)
    return sockaddr[0] if sockaddr else None


def exchange_key(message: Message) -> tuple[object, int]:
    """(address, port) and Message ID of a UDP request: what a retransmission of it repeats."""
    return (message.remote.sockaddr[:2], message.mid)


def bound_deduplication(ctx: Context, trusted: Callable[[str], bool], caps: tuple[int, int]) -> None:
    """Bound aiocoap's message deduplication table (RFC 7252 §4.5) of the server context.

    aiocoap 0.4.17 keeps every request's (remote, MID) and its response for EXCHANGE_LIFETIME (247 s)
    with one timer handle each: about 1-2 KB per request, unbounded under a flood. This replaces
    ``MessageManager._deduplicate_message`` on this instance with the same logic over two FIFO queues,
    one for sources ``trusted`` says are verified and one for the others, holding at most ``caps``
    = (verified, unverified) entries; the oldest entry goes first (a duplicate of it would then be
    processed again). Expiry is checked at the queue heads: no timer per message.
    """
    mman = udp_message_manager(ctx)
    recent = mman._recent_messages
    lifetime = aiocoap.numbers.constants.TransportTuning().EXCHANGE_LIFETIME
    queues: dict[bool, collections.deque[tuple[float, object]]] = {
        True: collections.deque(),
        False: collections.deque(),
    }
    limits = {True: caps[0], False: caps[1]}
    loop_time = mman.loop.time

    def _deduplicate_message(message: Message) -> bool:
        now = loop_time()
        for q in queues.values():
            while q and q[0][0] <= now:
                recent.pop(q.popleft()[1], None)
        key = (message.remote, message.mid)
        if key in recent:
            stored = recent[key]
            if message.mtype is CON and stored is not None:
                mman._send_initially(stored)  # the old response again (aiocoap's behaviour)
            return True
        kind = trusted(message.remote.sockaddr[0])
        q = queues[kind]
        q.append((now + lifetime, key))
        recent[key] = None
        while len(q) > limits[kind]:
            recent.pop(q.popleft()[1], None)
        return False

    mman._deduplicate_message = _deduplicate_message  # type: ignore[method-assign]


def open_exchanges(ctx: Context) -> int:
    """Confirmable exchanges of the server context waiting for their ACK (one per remote, NSTART = 1)."""
    return len(udp_message_manager(ctx)._active_exchanges)


#: The Block2 limit of the requests made by :func:`request_limited` (None: aiocoap's unbounded assembly).
_BLOCK2_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "mcobserve_block2_limit", default=None
)


def request_limited(ctx: Context, request: Message, max_size: int) -> aiocoap.protocol.Request:
    """``ctx.request(request)`` whose Block2 assembly (RFC 7959) stops before passing ``max_size`` bytes.

    The limit applies before fetching: a first block whose Size2 announces more, or a next block that
    would take the body over ``max_size``, fails the request with :class:`ResponseTooLargeError`
    (notifications of the observation too). aiocoap's own assembly has no limit.
    """
    _install_block2_limit()
    token = _BLOCK2_LIMIT.set(max_size)  # copied into the tasks aiocoap creates for this request
    try:
        pending = ctx.request(request)
    finally:
        _BLOCK2_LIMIT.reset(token)
    runner = getattr(pending, "_runner", None)
    if isinstance(runner, asyncio.Task):
        # aiocoap also hands the error to the request's observation, which raises RuntimeError when that
        # was cancelled meanwhile: the error already reached the caller, keep asyncio from printing it.
        runner.add_done_callback(lambda t: t.cancelled() or t.exception())
    return pending


def _install_block2_limit() -> None:
    from aiocoap.protocol import BlockwiseRequest

    original = BlockwiseRequest.__dict__["_complete_by_requesting_block2"].__func__
    if getattr(original, "_mcobserve_limited", False):
        return

    async def _complete_by_requesting_block2(
        cls: type, protocol: object, request_to_repeat: Message, initial_response: Message, log: object
    ) -> Message:
        limit = _BLOCK2_LIMIT.get()
        block2 = initial_response.opt.block2
        if limit is None or block2 is None or block2.more is False:
            return await original(cls, protocol, request_to_repeat, initial_response, log)
        announced = initial_response.opt.size2
        if announced is not None and announced > limit:
            raise ResponseTooLargeError(f"the response announces {announced} bytes (Size2), over {limit}")
        if block2.block_number != 0:
            raise aiocoap.error.UnexpectedBlock2()
        assembled = initial_response
        while True:
            size = 1 << (block2.size_exponent + 4)
            if len(assembled.payload) + size > limit:
                raise ResponseTooLargeError(
                    f"the response goes on past {len(assembled.payload)} bytes (Block2)"
                )
            nxt = request_to_repeat._generate_next_block2_request(assembled)
            nxt = nxt.copy(remote=initial_response.remote)
            last = await protocol.request(nxt, handle_blockwise=False).response
            if last.opt.block2 is None:
                return last  # as aiocoap: a non-blockwise response ends the transfer
            block2 = last.opt.block2
            assembled._append_response_block(last)
            if block2.more is False:
                return assembled

    _complete_by_requesting_block2._mcobserve_limited = True  # type: ignore[attr-defined]
    BlockwiseRequest._complete_by_requesting_block2 = classmethod(_complete_by_requesting_block2)  # type: ignore[assignment]


async def mark_replay_windows(credentials: aiocoap.credentials.CredentialsMap, batch: int = 32) -> int:
    """Record, for every OSCORE context loaded from files, that its replay window is not kept on disk.

    aiocoap 0.4.17 writes this (and fsyncs it) when a context receives its first request, so that after a
    crash the server knows it has to recover the window with Echo (RFC 8613 Appendix B.1.2): on the
    path of every client's first request after a start, a file write and an fsync each. This does the
    same write for every context once, in the background after the start, ``batch`` contexts per loop
    turn; a request that comes first still gets aiocoap's own write. Returns how many were marked.
    """
    from aiocoap.oscore import FilesystemSecurityContext

    marked = 0
    for item in list(credentials.values()):
        if isinstance(item, FilesystemSecurityContext) and item.replay_window_persisted:
            try:
                item._replay_window_changed()  # what aiocoap does on the first request
            except OSError as e:  # as it would have failed there; the request then fails itself
                log.warning("cannot record the replay window state of an OSCORE context: %s", e)
                continue
            marked += 1
            if marked % batch == 0:
                await asyncio.sleep(0)
    return marked


def index_oscore_contexts(credentials: aiocoap.credentials.CredentialsMap) -> None:
    """Find the OSCORE context of a request by (kid, kid context) in O(1) (RFC 8613 §8.2).

    aiocoap 0.4.17's ``CredentialsMap.find_oscore`` asks every entry in turn: O(number of clients) per
    protected request, the largest cost of a registration storm at N = 1000. This replaces it on this
    map with a dictionary of the plain (RFC 8613) contexts, rebuilt when the map's size changes; entries
    with their own matching rule (e.g. group contexts) are still asked in turn, and the result is the
    one aiocoap's scan would find (the first matching entry in insertion order).
    """
    from aiocoap.oscore import COSE_KID, COSE_KID_CONTEXT, SecurityContextUtils

    plain_rule = SecurityContextUtils.get_oscore_context_for
    state: dict[str, object] = {"size": -1}

    def rebuild() -> None:
        index: dict[tuple[object, object], object] = {}
        others: list[object] = []
        for item in credentials.values():
            rule = getattr(type(item), "get_oscore_context_for", None)
            if rule is None:
                continue
            if rule is plain_rule:
                index.setdefault((item.recipient_id, item.id_context), item)
            else:
                others.append(item)
        state.update(size=len(credentials), index=index, others=others)

    def find_oscore(unprotected: dict[object, object]) -> object:
        if state["size"] != len(credentials):
            rebuild()
        others = state["others"]
        hit = state["index"].get((unprotected.get(COSE_KID), unprotected.get(COSE_KID_CONTEXT)))
        if hit is not None and not others:
            return hit
        for item in credentials.values() if others else ():
            if item is hit:
                return hit
            ctx = item.get_oscore_context_for(unprotected) if item in others else None
            if ctx is not None:
                return ctx
        if hit is not None:
            return hit
        raise KeyError()

    credentials.find_oscore = find_oscore  # type: ignore[method-assign]
