"""Client side of group observations as a pure state machine (draft §5).

:class:`GroupObservationClient` takes an informative response (steps 1-7 of draft §5.2) and then
judges every datagram heard on the group: right Token, right source, fresh Observe (RFC 7641 §3.4).
Time comes in as ``now``; name resolution comes in as a mapping; nothing here does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiocoap import NON, SERVICE_UNAVAILABLE, VALID, Message

from ..constants import DEFAULT_CODE_POINTS, DEFAULT_MAX_AGE, CodePoints
from ..errors import (
    MalformedError,
    McObserveError,
    StandInError,
    UnsupportedTransportError,
    WithdrawnError,
)
from ..wire import CRI, InformativeResponse, parse_message, serialize_message
from ..wire.feedback import get_feedback_divider
from ..wire.message import split_options, unknown_critical_options
from .common import Endpoint, IPAddress, observe_is_fresh
from .counting import DEFAULT_LEISURE, respond_to

log = logging.getLogger(__name__)

#: Seconds of group silence beyond the latest notification's Max-Age after which the client registers
#: again (issue 13 item 10). The server refreshes at Max-Age (draft §4.3, with a 1 s floor), so this
#: only has to cover that floor, network delay and timer slack; it stays well below the server's Token
#: quarantine (Max-Age + MAX_TRANSMIT_WAIT, 93 s), so a client that missed a cancellation has left
#: before T can be handed out again.
SILENCE_MARGIN = 10.0
#: An informative response that arrives this many seconds after the registration was sent may be a
#: retransmission (the first CON 5.03 lost; RFC 7252 ACK_TIMEOUT is 2 s), so its 'last_notif' may be
#: stale: the client then re-validates with one GET (issue 13 item 11).
REVALIDATE_AFTER = 1.0
#: The server's floor for the Max-Age refresh (draft §4.3; mcobserve.engine.server.MIN_REFRESH_INTERVAL).
_REFRESH_FLOOR = 1.0


class Via(enum.Enum):
    """How a notification reached the client."""

    UNICAST = "unicast"  # traditional observation (RFC 7641)
    REVALIDATED = "revalidated"  # a GET after a late informative response brought newer state
    MULTICAST = "multicast"  # multicast notification of a group observation (draft §5.3)
    LAST_NOTIF = "last_notif"  # rebuilt from an informative response (draft §5.2, steps 5-6)


@dataclass(frozen=True)
class Notification:
    """One notification as delivered to the application."""

    message: Message
    via: Via
    received_at: float

    @property
    def observe(self) -> int | None:
        return self.message.opt.observe

    @property
    def code(self) -> str:
        return self.message.code.dotted

    @property
    def payload(self) -> bytes:
        return self.message.payload


@dataclass(frozen=True)
class Accepted:
    notification: Notification
    #: Seconds to wait before confirming with a re-registration carrying Feedback-Divider 0, or None
    #: when this notification asks for no confirmation from us (draft §8.2).
    confirm_in: float | None = None


@dataclass(frozen=True)
class Dropped:
    """A datagram that is not a valid notification of this group observation; the reason is logged."""

    reason: str


@dataclass(frozen=True)
class Ended:
    """The server cancelled the group observation (draft §4.5, §5.4)."""

    message: Message


@dataclass(frozen=True)
class Renewed:
    """The server handed out the next keying material in a protected multicast 5.03 (App. C).

    ``ok`` False: the renewal could not be used (the reason says why); the client registers again.
    """

    ok: bool
    reason: str = ""


Verdict = Accepted | Dropped | Ended | Renewed

#: Options that take part in deciding whether the phantom request can serve the client's own request
#: (draft §5.2, step 3): those that select the representation. Observe, No-Response, Block and
#: transport-bound ones (Uri-Host, Uri-Port) do not.
_REPRESENTATION_OPTIONS = ("uri_path", "uri_query", "accept", "content_format", "proxy_uri", "proxy_scheme")


def informative_response_payload(
    response: Message, code_points: CodePoints = DEFAULT_CODE_POINTS
) -> bytes | None:
    """The payload if ``response`` is an informative response (5.03 + the Content-Format, draft §4.2)."""
    if response.code == SERVICE_UNAVAILABLE and response.opt.content_format == code_points.content_format:
        return response.payload
    return None


def _resolve(cri: CRI, resolved: Mapping[str, IPAddress], what: str) -> IPAddress:
    host = cri.host
    if isinstance(host, str):
        try:
            return resolved[host]
        except KeyError:
            raise MalformedError(f"{what} names host {host!r} that could not be resolved") from None
    return host


def hostnames(informative: InformativeResponse) -> list[str]:
    """Host names in 'tp_info' that the caller has to resolve before :meth:`GroupObservationClient.join`."""
    tp = informative.tp_info
    if tp is None:
        return []
    return [c.host for c in (tp.tpi_server, tp.tpi_client) if c is not None and isinstance(c.host, str)]


@dataclass(frozen=True)
class StandIn:
    """Where and what to send when 'tp_info' names only a stand-in for the server (proxy draft §10).

    ``target`` is PRX_ADDR:PRX_PORT from 'tpi_server'; ``ph_req`` is the Deterministic phantom request
    PH_REQ to send there as it is; ``phantom`` is its verified plain form and ``state`` what the
    notifications forwarded by the stand-in are verified against (observe draft §9.3.2).
    """

    target: Endpoint
    ph_req: bytes
    phantom: Message
    state: Any


def is_deterministic_request(ph_req: bytes, code_points: CodePoints = DEFAULT_CODE_POINTS) -> bool:
    """An OSCORE-protected request with a Request-Hash option: a Deterministic Request
    (draft-ietf-core-cacheable-oscore §3; observe draft App. D). Malformed bytes are not one."""
    try:
        message = parse_message(ph_req)
    except MalformedError:
        return False
    return (
        message.code.is_request()
        and message.opt.oscore is not None
        and bool(message.opt.get_option(code_points.request_hash))
    )


class NotificationSecurity(Protocol):
    """Client side of draft §9.3, implemented by :mod:`mcobserve.oscore`."""

    def verify_phantom(
        self, informative: InformativeResponse, protected_channel: bool, token: bytes
    ) -> tuple[Message, Any]:
        """Verify the rebuilt phantom request without replay check or window update (§9.3.1).

        Returns the plain phantom request and the state later notifications are checked against
        (kid, Partial IV, kid context, Response Number). Raises :class:`MalformedError` when it cannot.
        ``protected_channel`` tells whether the informative response came over OSCORE.
        """
        ...

    def unprotect(self, message: Message | bytes, state: Any, token: bytes) -> Message:
        """Verify and decrypt 'last_notif' or a notification (§9.3.2); McObserveError when rejected."""
        ...


class GroupObservationClient:
    """Follows one group observation for one registration request (draft §5)."""

    def __init__(
        self,
        request: Message,
        *,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        security: NotificationSecurity | None = None,
        silence_margin: float = SILENCE_MARGIN,
        clock_synchronized: bool = False,
    ) -> None:
        self.request = request
        self.code_points = code_points
        self.security = security
        self._security_state: Any = None
        self.server: Endpoint | None = None
        self.group: Endpoint | None = None
        self.token: bytes | None = None
        self.phantom: Message | None = None
        self.informative: InformativeResponse | None = None
        self._last: tuple[int, float] | None = None
        self.ended = False
        #: When a notification of this group observation was last accepted, and its Max-Age (§4.3).
        self.last_heard: float | None = None
        self.max_age: float = float(DEFAULT_MAX_AGE)
        #: Seconds of silence beyond Max-Age after which :meth:`silent_since` reports the group dead.
        self.silence_margin = silence_margin
        #: Whether this client's clock is synchronised to UTC: then 'exp' is used (App. C, MUST).
        self.clock_synchronized = clock_synchronized
        #: When the self-managed keying material expires ('exi' / 'exp', App. C), or None.
        self.material_expires: float | None = None
        #: The informative response came late: re-validate 'last_notif' with a GET (item 11).
        self.needs_revalidation = False
        self._last_notif: Message | None = None
        self._accepted_since_join = False

    @property
    def joined(self) -> bool:
        return self.token is not None and not self.ended

    def parse(self, payload: bytes) -> InformativeResponse:
        """Decode the informative-response payload; :class:`MalformedError` if it is not one (draft §4.2)."""
        return InformativeResponse.decode(payload)

    def join(
        self,
        informative: InformativeResponse,
        now: float,
        resolved: Mapping[str, IPAddress] | None = None,
        *,
        protected_channel: bool = False,
        requested_at: float | None = None,
    ) -> Notification | None:
        """Steps 1-7 of draft §5.2. Returns the rebuilt 'last_notif' when there is one.

        Raises :class:`MalformedError` when expected fields are absent or invalid (the caller may then
        register again, draft §5.2 last paragraphs) and :class:`WithdrawnError` when the phantom
        request cannot serve this client's request (step 3).
        """
        resolved = resolved or {}
        tp = informative.tp_info
        # Step 1: identify the transport from 'tpi_server' and parse 'tpi_details'.
        if tp is None:
            raise MalformedError("informative response lacks 'tp_info' (draft §4.2)")
        if tp.tpi_server.scheme_id != -1:
            raise UnsupportedTransportError(
                f"transport of scheme-id {tp.tpi_server.scheme_id} is not supported"
            )
        if tp.tpi_client is None or tp.tpi_token is None:
            raise MalformedError(
                "'tp_info' lacks 'tpi_client' and 'tpi_token' (draft §4.2.1.1); a 'tp_info' naming a "
                "stand-in goes to stand_in() (proxy draft §10)"
            )
        # A CRI without port means the transport's default port (draft §5.2, step 1).
        server = Endpoint.of(
            _resolve(tp.tpi_server, resolved, "'tpi_server'"), tp.tpi_server.effective_port()
        )
        group = Endpoint.of(_resolve(tp.tpi_client, resolved, "'tpi_client'"), tp.tpi_client.effective_port())
        if not group.host.is_multicast:
            raise MalformedError(f"'tpi_client' address {group.host} is not a multicast address")
        if group.host.version != server.host.version:
            raise MalformedError("'tpi_server' and 'tpi_client' are of different IP versions")
        token = tp.tpi_token
        state = None
        # Step 2: rebuild the phantom request with Token T.
        if self.security is not None:
            # Group OSCORE: 'ph_req' is required and verified before step 3 (draft §9.3.1).
            if informative.ph_req is None:
                raise MalformedError("a secured informative response must carry 'ph_req' (draft §9.3.1)")
            phantom, state = self.security.verify_phantom(informative, protected_channel, token)
            if not phantom.code.is_request() or phantom.opt.observe != 0:
                raise MalformedError("the verified 'ph_req' is not an Observe registration")
        elif informative.ph_req is not None:
            phantom = parse_message(informative.ph_req, token=token)
            if not phantom.code.is_request():
                raise MalformedError(f"'ph_req' has code {phantom.code.dotted}, not a request")
            if phantom.opt.observe != 0:
                raise MalformedError("'ph_req' is not an Observe registration (Observe 0)")
        else:
            phantom = parse_message(serialize_message(self.request), token=token)
        # Step 3: can the phantom request serve our own request?
        if informative.ph_req is not None and informative.ph_req != serialize_message(self.request):
            mismatch = self._mismatch(phantom)
            if mismatch:
                raise WithdrawnError(
                    f"the phantom request differs in {mismatch}; it cannot serve this request"
                )
        # Step 5: rebuild 'last_notif' (parsed before committing to anything, so that a malformed one
        # leaves this object untouched).
        last: Message | None = None
        if informative.last_notif is not None and self.security is not None:
            try:
                last = self.security.unprotect(informative.last_notif, state, token)
            except McObserveError as e:
                # Verification failed: go on without it (draft §9.3.1, then step 7).
                log.info("'last_notif' rejected: %s", e)
                last = None
            if last is not None and (
                not last.code.is_response() or (last.code.is_successful() and last.opt.observe is None)
            ):
                raise MalformedError("the verified 'last_notif' is not a notification")
        elif informative.last_notif is not None:
            last = parse_message(informative.last_notif, token=token)
            if not last.code.is_response():
                raise MalformedError(f"'last_notif' has code {last.code.dotted}, not a response")
            if last.code.is_successful() and last.opt.observe is None:
                raise MalformedError("'last_notif' lacks the Observe option (draft §4.3)")
        # Step 4: adopt T.
        self.server, self.group, self.token, self.phantom = server, group, token, phantom
        self.informative = informative
        self._security_state = state
        self._last = None
        self.ended = False
        self.last_heard = now
        self.max_age = float(DEFAULT_MAX_AGE)
        self.material_expires = self._expiry(informative, now)
        self._last_notif = last
        self._accepted_since_join = False
        # A late informative response (``requested_at``: when the registration left) may carry a
        # stale 'last_notif': re-validate it (item 11).
        self.needs_revalidation = requested_at is not None and now - requested_at > REVALIDATE_AFTER
        if last is not None and last.opt.max_age is not None:
            self.max_age = float(last.opt.max_age)
        if last is None:
            return None
        # Step 6: its Observe is the baseline for reordering.
        if last.opt.observe is not None:
            self._last = (last.opt.observe, now)
        return Notification(last, Via.LAST_NOTIF, now)

    def stand_in(
        self,
        informative: InformativeResponse,
        resolved: Mapping[str, IPAddress] | None = None,
        *,
        protected_channel: bool = False,
    ) -> StandIn:
        """'tp_info' is only ``[tpi_server]`` (no tpi_details): a reverse proxy stands in for the server
        (proxy draft §10, §10.2 step e; observe draft §4.2.1 "MAY be omitted").

        The client then sends the Deterministic phantom request PH_REQ to 'tpi_server' (§10.1, step 1).
        Raises :class:`StandInError` when 'ph_req' is absent, is not a Deterministic Request, or cannot
        be verified with this client's group security (the request could then not be computed by the
        proxy's other clients, nor bound to the notifications); :class:`MalformedError` for the rest.
        """
        tp = informative.tp_info
        if tp is None or tp.has_details:
            raise MalformedError("'tp_info' has tpi_details: it does not name a stand-in (proxy draft §10)")
        if tp.tpi_server.scheme_id != -1:
            raise UnsupportedTransportError(
                f"transport of scheme-id {tp.tpi_server.scheme_id} is not supported"
            )
        if informative.ph_req is None:
            raise StandInError(
                "'tp_info' has no tpi_details and there is no 'ph_req' to send to the stand-in it names "
                "(proxy draft §10): ask the server's operator (it needs a Deterministic phantom request)"
            )
        if not is_deterministic_request(informative.ph_req, self.code_points):
            raise StandInError(
                "'tp_info' has no tpi_details but 'ph_req' is not a Deterministic Request (no OSCORE and "
                "Request-Hash options), so no proxy can serve it from its cache (proxy draft §10)"
            )
        if self.security is None:
            raise StandInError(
                "the Deterministic phantom request cannot be verified without the group's keying "
                "material: give the group file with a [deterministic] table (--group-oscore)"
            )
        try:
            phantom, state = self.security.verify_phantom(informative, protected_channel, b"")
        except MalformedError as e:
            raise StandInError(
                f"cannot verify the Deterministic phantom request ({e}): give the group file with a "
                "[deterministic] table (--group-oscore)"
            ) from None
        if not phantom.code.is_request() or phantom.opt.observe != 0:
            raise MalformedError("the verified 'ph_req' is not an Observe registration")
        mismatch = self._mismatch(phantom)
        if mismatch:
            raise WithdrawnError(f"the phantom request differs in {mismatch}; it cannot serve this request")
        target = Endpoint.of(
            _resolve(tp.tpi_server, resolved or {}, "'tpi_server'"), tp.tpi_server.effective_port()
        )
        self.informative = informative
        return StandIn(target, informative.ph_req, phantom, state)

    def _mismatch(self, phantom: Message) -> str | None:
        if phantom.code != self.request.code:
            return "its method"
        for name in _REPRESENTATION_OPTIONS:
            if getattr(phantom.opt, name) != getattr(self.request.opt, name):
                return name.replace("_", "-")
        if phantom.payload != self.request.payload:
            return "its payload"
        return None

    def on_multicast(
        self,
        message: Message,
        source: Endpoint,
        now: float,
        rng: random.Random | None = None,
        leisure: float = DEFAULT_LEISURE,
        *,
        raw: bytes | None = None,
    ) -> Verdict:
        """Judge a datagram heard on GRP_ADDR:GRP_PORT (draft §5.3, §5.4; RFC 7641 §3.4).

        With ``rng``, a notification carrying Feedback-Divider Q is confirmed with probability 2**-Q
        after a random fraction of ``leisure`` (draft §8.2, Appendix B.2). ``raw`` is the datagram as
        received: its framing is checked, since aiocoap's decoder accepts a payload marker followed by
        no payload (a format error, RFC 7252 §3). Notifications with an unknown critical option are
        rejected (RFC 7252 §5.4.1); neither kind moves the Observe baseline.
        """
        if not self.joined:
            return Dropped("not part of a group observation")
        if raw is not None:
            problem = format_error(raw)
            if problem is not None:  # RFC 7252 §3, §4.3: a message format error is rejected
                return Dropped(problem)
        if message.token != self.token:
            return Dropped(f"token {message.token.hex()} is not T={self.token.hex()}")  # type: ignore[union-attr]
        if source != self.server:
            return Dropped(f"source {source} is not SRV_ADDR:SRV_PORT {self.server}")
        if not message.code.is_response():
            return Dropped(f"code {message.code.dotted} is not a response")
        if message.mtype != NON:
            return Dropped(f"multicast notifications are NON, got type {message.mtype}")
        if self.material_expired(now):
            # App. C: the client MUST stop using expired keying material (and may register again).
            return Dropped("the group keying material has expired (draft Appendix C)")
        if self.security is not None:
            try:  # verified against the phantom request's kid / Partial IV / kid context (§9.3.2)
                message = self.security.unprotect(message, self._security_state, self.token)  # type: ignore[arg-type]
            except McObserveError as e:
                return Dropped(f"rejected by Group OSCORE: {e}")
        unknown = unknown_critical_options(message, code_points=self.code_points)
        if unknown:
            return Dropped(f"unknown critical option {', '.join(map(str, unknown))} (RFC 7252 §5.4.1)")
        if (
            self.security is not None
            and message.opt.observe is None
            and informative_response_payload(message, self.code_points) is not None
        ):
            return self._renewed(message, now)
        if message.opt.observe is None:
            if not message.code.is_successful():
                # The multicast 5.03 (or any error without Observe) ends the observation (draft §5.4).
                self.ended = True
                return Ended(message)
            return Dropped("successful response without Observe on Token T")
        if not message.code.is_successful():
            self.ended = True
            return Ended(message)
        observe = message.opt.observe
        if self._last is not None and not observe_is_fresh(self._last[0], self._last[1], observe, now):
            return Dropped(f"Observe {observe} is not newer than {self._last[0]} (RFC 7641 §3.4)")
        self._last = (observe, now)
        self._accepted_since_join = True
        self.last_heard = now
        max_age = message.opt.max_age
        self.max_age = float(DEFAULT_MAX_AGE if max_age is None else max_age)
        confirm_in = None
        q = get_feedback_divider(message, self.code_points)
        if q is not None and rng is not None and respond_to(q, rng):
            confirm_in = rng.random() * leisure
        return Accepted(Notification(message, Via.MULTICAST, now), confirm_in)

    def _renewed(self, message: Message, now: float) -> Renewed:
        """Install the next keying material of a protected multicast 5.03 (App. C, last paragraphs).

        It came protected with the current material and signed by the server, so it counts as a
        protected channel for self-managed material. Its 'ph_req' is verified under the new
        material and becomes the phantom request later notifications are bound to; the Observe
        baseline stays. Without 'ph_req' the old binding cannot be verified under the new material:
        the client registers again.
        """
        assert self.security is not None and self.token is not None
        try:
            informative = InformativeResponse.decode(message.payload)
        except MalformedError as e:
            return Renewed(False, f"malformed renewal: {e}")
        if informative.gp_material is None or informative.ph_req is None:
            return Renewed(False, "renewal without 'gp_material' and 'ph_req'")
        try:
            phantom, state = self.security.verify_phantom(informative, True, self.token)
        except McObserveError as e:
            return Renewed(False, f"renewed material does not verify: {e}")
        self.phantom, self._security_state = phantom, state
        self.material_expires = self._expiry(informative, now)
        self.last_heard = now
        return Renewed(True)

    def _expiry(self, informative: InformativeResponse, now: float) -> float | None:
        """'exp' when the clock is synchronised and 'exp' is there, else now + 'exi' (App. C)."""
        if self.security is None:
            return None
        if self.clock_synchronized and informative.exp is not None:
            return float(informative.exp)
        if informative.exi is not None:
            return now + float(informative.exi)
        return None

    def material_expired(self, now: float) -> bool:
        """Has the self-managed keying material of this group observation expired (App. C)?"""
        return self.material_expires is not None and now >= self.material_expires

    def silence_deadline(self) -> float | None:
        """When the group has been silent too long: latest Max-Age (1 s floor) plus the margin.

        The server MUST refresh the latest notification once it is older than its Max-Age (draft
        §4.3), so silence beyond that means a lost cancellation, a restarted or a dead server: the
        client then registers again (issue 13 items 10 and 15).
        """
        if not self.joined or self.last_heard is None:
            return None
        deadline = self.last_heard + max(self.max_age, _REFRESH_FLOOR) + self.silence_margin
        if self.material_expires is not None:
            deadline = min(deadline, self.material_expires)  # then register again (App. C)
        return deadline

    def is_silent(self, now: float) -> bool:
        deadline = self.silence_deadline()
        return deadline is not None and now >= deadline

    def revalidation_etag(self) -> bytes | None:
        """The ETag of 'last_notif' for a conditional GET (RFC 7252 §5.10.6), if it has one."""
        last = self._last_notif
        return last.opt.etag if last is not None else None

    def revalidated(self, response: Message, now: float) -> Notification | None:
        """The answer to the re-validation GET: a Notification when it brings newer state.

        Nothing when a multicast notification was accepted meanwhile (that one is at least as new),
        on 2.03 Valid, on an error, or when it equals 'last_notif'.
        """
        self.needs_revalidation = False
        if self.ended or self._accepted_since_join or not response.code.is_successful():
            return None
        if response.code == VALID:
            return None
        last = self._last_notif
        if (
            last is not None
            and last.payload == response.payload
            and last.opt.content_format == response.opt.content_format
        ):
            return None
        return Notification(response, Via.REVALIDATED, now)

    def leave(self) -> None:
        """Forget the group observation (draft §5.5); later datagrams with T are dropped."""
        self.ended = True


class NotificationBuffer:
    """What a traditional observation delivered, kept until the application reads it (draft §4.2).

    Observe is lossy (RFC 7641 §1.3): a successful notification that finds another one still unread
    replaces it. Anything else (the informative response that moves the client into a group
    observation, an error response, the end of the observation) is never overwritten, so a slow
    reader always sees and follows the shift (issue 13 item 7).
    """

    def __init__(self) -> None:
        self._items: list[Message | BaseException] = []
        self.coalesced = 0

    def push(self, item: Message | BaseException) -> None:
        if (
            isinstance(item, Message)
            and item.code.is_successful()
            and self._items
            and isinstance(self._items[-1], Message)
            and self._items[-1].code.is_successful()
        ):
            self._items[-1] = item
            self.coalesced += 1
            return
        self._items.append(item)

    def pop(self) -> Message | BaseException | None:
        return self._items.pop(0) if self._items else None

    def __len__(self) -> int:
        return len(self._items)


def format_error(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed CoAP over UDP message (RFC 7252 §3), or None."""
    if len(data) < 4:
        return f"datagram of {len(data)} bytes is shorter than the CoAP header"
    if data[0] >> 6 != 1:
        return f"CoAP version {data[0] >> 6} is not 1"
    tkl = data[0] & 0x0F
    if tkl > 8:
        return f"token length {tkl} is reserved (RFC 7252 §3)"
    if len(data) < 4 + tkl:
        return "datagram ends inside the Token"
    try:
        split_options(data, 4 + tkl)
    except MalformedError as e:
        return f"format error: {e}"
    return None


def needs_group_security(informative: InformativeResponse, protected_phantom: bool) -> bool:
    """Do the notifications of this informative response come protected with Group OSCORE (§9)?

    Yes with self-managed material ('gp_material', App. C), with a protected phantom request, or with
    the §9.1 signalling of a pre-arranged group. That signalling needs both 'sec_gp' and 'join_uri':
    one without the other is ignored (draft §9.1) and the group observation is followed unprotected.
    """
    if informative.gp_material is not None or protected_phantom:
        return True
    return informative.sec_gp is not None and informative.join_uri is not None


def registration_target_problem(host: IPAddress) -> str | None:
    """Why a registration to ``host`` must not be sent for a group observation (draft §5.1), or None.

    The request MUST NOT have link-local destination (or source) addresses.
    """
    if is_link_local(host):
        return (
            f"{host} is a link-local address: group observations need a routable server address "
            "(draft §5.1); use the server's global or unique-local address"
        )
    return None


def is_link_local(host: IPAddress) -> bool:
    """Link-local addresses are not used for registrations (draft §5.1)."""
    return host.is_link_local or (
        isinstance(host, ipaddress.IPv6Address) and host.is_multicast and (host.packed[1] & 0x0F) == 2
    )
