"""Server side of group observations as a pure state machine (draft §4).

The engine never reads a clock, never draws randomness of its own and never touches a socket:
``now`` (POSIX seconds) and a :class:`random.Random` come in as arguments, and every method returns
what the caller has to do (render the resource for the phantom request, send a multicast datagram).
The aiocoap adapter (:mod:`mcobserve.aio.server`) executes those actions.
"""

from __future__ import annotations

import enum
import functools
import heapq
import ipaddress
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiocoap import GET, NON, SERVICE_UNAVAILABLE, Message
from aiocoap.numbers.optionnumbers import OptionNumber

from ..constants import (
    DEFAULT_CODE_POINTS,
    DEFAULT_GROUP_BURST,
    DEFAULT_GROUP_INTERVAL,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MIN_INTERVAL,
    NO_RESPONSE_5XX,
    CodePoints,
)
from ..errors import (
    MalformedError,
    McObserveError,
    NotificationTooLargeError,
    TokenSpaceExhaustedError,
    UnusableAddressError,
)
from ..wire import CRI, InformativeResponse, TpInfo, check_not_local, serialize_message
from ..wire.cbor import cbor_encode
from ..wire.feedback import get_feedback_divider, set_feedback_divider
from ..wire.informative import PARAMETERS_BY_NAME
from .common import OBSERVE_MODULUS, Endpoint, IPAddress
from .counting import CountingPolicy, ObserverCounter, RoundResult

log = logging.getLogger(__name__)

#: Bytes a CoAP over UDP message adds to the transport-independent serialization (draft §4.2.2): the
#: 4-byte header minus the code byte the serialization already has.
UDP_HEADER_EXTRA = 3
#: Room kept for the Observe option (up to 3 bytes + 1) and Feedback-Divider (1 + 1) that the
#: notification gets after the size check (draft §4.3, §8.1).
NOTIFICATION_OPTION_ROOM = 6
#: Room for the informative response's own header and options: header 4, Token up to 8, Content-Format
#: (3), Max-Age 0 (1), payload marker (1), rounded up (draft §4.2).
INFORMATIVE_OVERHEAD = 20
#: Extra room under OSCORE: OSCORE option (up to ~20), AEAD tag (16 with the largest algorithms), the
#: inner code and Max-Age (RFC 8613 §4, §5).
OSCORE_OVERHEAD = 48

#: RFC 7252 §4.8.2 MAX_TRANSMIT_WAIT: added to the latest Max-Age for the quarantine of a Token.
MAX_TRANSMIT_WAIT = 93.0

#: Floor for the Max-Age driven refresh (draft §4.3, last paragraph), so that a representation with
#: Max-Age 0 does not turn into a multicast storm.
MIN_REFRESH_INTERVAL = 1.0
#: Informative-response parameters that change with the time (App. C), encoded per response.
TIMED_PARAMETERS = ("exi", "exp")


def cbor_map_head(n: int) -> bytes:
    """The CBOR head of a map of ``n`` pairs (RFC 8949 §3.1, shortest form)."""
    if n < 24:
        return bytes((0xA0 | n,))
    if n < 256:
        return bytes((0xB8, n))
    return b"\xb9" + n.to_bytes(2, "big")


#: Seconds a phantom request protected ahead (ServerEngine.prepare) may wait for its group observation.
PREPARED_MAX_AGE = 3600.0

Path = tuple[str, ...]
ObserverKey = Hashable


class GroupSecurity(Protocol):
    """End-to-end protection of a group observation (draft §9.2), implemented by :mod:`mcobserve.oscore`.

    The engine hands over plain messages and stores what comes back; methods raise
    :class:`~mcobserve.errors.McObserveError` when they cannot protect (e.g. sequence numbers exhausted).
    """

    def protect_phantom(self, phantom: Message, now: float) -> tuple[Message, Any]:
        """The protected phantom request and the binding every notification refers to (§9.2.1)."""
        ...

    def protect_response(self, response: Message, binding: Any) -> Message:
        """A notification or the cancellation, group mode, own Partial IV (§9.2.3, §9.2.4)."""
        ...

    def informative_parameters(self, binding: Any, now: float) -> dict[str, Any]:
        """Informative-response parameters about the group (§9.1 signalling or App. C material)."""
        ...

    def expires_at(self, binding: Any) -> float | None:
        """When the keying material behind ``binding`` expires (App. C), or None."""
        ...

    # Optional: ``usable(binding, now) -> bool``, whether a phantom request protected ahead
    # (:meth:`ServerEngine.prepare`) may still start a group observation; without it nothing is prepared.


@dataclass(frozen=True)
class GroupPolicy:
    """When and how a resource is served through a group observation (draft §4)."""

    #: Start the group observation when this many observers are registered (1: at the first).
    group_after: int = 1
    #: Minimum seconds between two multicast notifications; changes inside it coalesce (draft §4.4).
    min_interval: float = DEFAULT_MIN_INTERVAL
    #: Cancel the group observation this many seconds after it started; announced as 'ending' (draft §4.2).
    duration: float | None = None
    #: Seconds the server commits to when it reveals an observation without a scheduled ending through
    #: another channel than an informative response (draft Appendix A).
    commitment: float = 3600.0
    #: Rough counting of the observers with Feedback-Divider (draft §8); None: COUNT only.
    counting: CountingPolicy | None = field(default_factory=CountingPolicy)

    def __post_init__(self) -> None:
        if self.group_after < 1:
            raise ValueError("group_after must be at least 1")
        if self.min_interval < 0 or not math.isfinite(self.min_interval):
            raise ValueError("min_interval must be a finite number >= 0")
        if self.duration is not None and (self.duration <= 0 or not math.isfinite(self.duration)):
            raise ValueError("duration must be positive")


@dataclass(frozen=True)
class CongestionControl:
    """Rate of multicast notifications per multicast group, over all its resources (draft §4.4).

    A token bucket: one notification per ``interval`` seconds on average, at most ``burst`` back to back
    after a quiet period. The draft's value (RFC 7641 §4.5.1): one every 3 s, burst 1. ``interval`` 0
    switches congestion control off (a warning is logged). Cancellations are not counted; Max-Age
    refreshes take a token when one is there and are never held back (draft §4.3 MUST).
    """

    interval: float = DEFAULT_GROUP_INTERVAL
    burst: int = DEFAULT_GROUP_BURST

    def __post_init__(self) -> None:
        if self.interval < 0 or not math.isfinite(self.interval):
            raise ValueError("the congestion-control interval must be a finite number >= 0")
        if self.burst < 1:
            raise ValueError("the congestion-control burst must be at least 1")


class GroupBudget:
    """Token bucket of one multicast group and the group observations waiting for it (draft §4.4).

    Waiting observations are served first come, first served; an observation waits at most once, and
    changes made while it waits coalesce into the notification it sends when its turn comes.
    """

    def __init__(self, group: Endpoint, congestion: CongestionControl) -> None:
        self.group = group
        self.congestion = congestion
        self.tokens = float(congestion.burst)
        self.updated: float | None = None
        self.waiting: deque[GroupObservation] = deque()
        #: Notifications sent (changes and refreshes) and Max-Age refreshes sent without a token.
        self.sent = 0
        self.over_budget = 0
        self.cancelled = False  # heap entries share the observations' interface
        self._due: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.congestion.interval <= 0

    def _refill(self, now: float) -> None:
        if self.updated is None or now < self.updated:
            self.updated = now if self.updated is None else self.updated
            return
        cc = self.congestion
        self.tokens = min(float(cc.burst), self.tokens + (now - self.updated) / cc.interval)
        self.updated = now

    def available(self, now: float) -> bool:
        if self.unlimited:
            return True
        self._refill(now)
        return self.tokens >= 1.0 - 1e-9

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if not self.available(now):
            return False
        if not self.unlimited:
            self.tokens -= 1.0
        self.sent += 1
        return True

    def ready_at(self, now: float) -> float:
        """When the next token is there."""
        if self.available(now):
            return now
        return now + (1.0 - self.tokens) * self.congestion.interval


class TokenSpace:
    """Token space of (GRP_ADDR, GRP_PORT) -> (SRV_ADDR, SRV_PORT), the server's to manage (draft §4.1).

    A released T is quarantined (draft §4.5, §13): a client that missed the one NON cancellation would
    take the notifications of a new group observation with the same T for its own. Quarantined values
    are handed out again only when no other value is free.
    """

    def __init__(self, length: int = 2) -> None:
        if not 1 <= length <= 8:
            raise ValueError("token length must be 1..8 bytes")
        self.length = length
        self._used: set[bytes] = set()
        #: Released values and when their quarantine ends; the heap orders them by that time.
        self._quarantined: dict[bytes, float] = {}
        self._quarantine_heap: list[tuple[float, bytes]] = []
        #: Quarantined values handed out early because nothing else was free.
        self.reused_early = 0

    def _expire(self, now: float | None) -> None:
        heap = self._quarantine_heap
        while heap and (now is None or heap[0][0] <= now):
            until, token = heapq.heappop(heap)
            if self._quarantined.get(token) == until:
                del self._quarantined[token]

    def quarantined(self, token: bytes, now: float) -> bool:
        """Is ``token`` still in quarantine at ``now``?"""
        until = self._quarantined.get(token)
        return until is not None and now < until

    def allocate(self, rng: random.Random, now: float | None = None) -> bytes:
        """Pick a value T that no live group observation uses and that is not quarantined (§4.1 step 2)."""
        if now is not None:
            self._expire(now)
        size = 1 << (8 * self.length)
        if len(self._used) >= size:
            raise TokenSpaceExhaustedError(f"all {size} tokens of length {self.length} are in use")
        blocked = self._used if not self._quarantined else self._used | self._quarantined.keys()
        if len(blocked) < size:
            for _ in range(32):
                token = rng.getrandbits(8 * self.length).to_bytes(self.length, "big")
                if token not in blocked:
                    self._used.add(token)
                    return token
            # Dense space: walk from a random start; bounded by the size of the space.
            start = rng.randrange(size)
            for i in range(size):
                token = ((start + i) % size).to_bytes(self.length, "big")
                if token not in blocked:
                    self._used.add(token)
                    return token
        # Only quarantined values are free: the one whose quarantine ends first.
        token = min(self._quarantined, key=self._quarantined.__getitem__)
        del self._quarantined[token]
        self.reused_early += 1
        self._used.add(token)
        return token

    def release(self, token: bytes, now: float | None = None, quarantine: float = 0.0) -> None:
        """Free T once its group observation is cancelled (draft §4.5), quarantined until now + quarantine."""
        self._used.discard(token)
        if now is not None and quarantine > 0:
            until = now + quarantine
            self._quarantined[token] = until
            heapq.heappush(self._quarantine_heap, (until, token))
            if len(self._quarantine_heap) > 64 + 2 * len(self._quarantined):
                self._quarantine_heap = [(u, t) for t, u in self._quarantined.items()]
                heapq.heapify(self._quarantine_heap)

    def __contains__(self, token: object) -> bool:
        return token in self._used

    def __len__(self) -> int:
        return len(self._used)


class RenderReason(enum.Enum):
    """Why the resource has to be rendered for the phantom request."""

    INIT = "init"  # INIT_NOTIF, stored and never sent (draft §4.1, step 6)
    CHANGE = "change"  # the representation changed (draft §4.3)
    MAX_AGE = "max-age"  # the latest notification got older than its Max-Age (draft §4.3)


@dataclass(eq=False)
class GroupObservation:
    """One group observation of one resource (draft §4.1)."""

    path: Path
    token: bytes
    server: Endpoint
    group: Endpoint
    policy: GroupPolicy
    phantom: Message
    ph_req: bytes
    started_at: float
    ending: float | None
    counter: ObserverCounter = field(default_factory=ObserverCounter)
    observe: int = 0
    latest: Message | None = None
    latest_bytes: bytes | None = None
    latest_at: float = 0.0
    latest_max_age: float = float(DEFAULT_MAX_AGE)
    last_sent_at: float | None = None
    sent: int = 0
    dirty: bool = False
    rendering: RenderReason | None = None
    cancelled: bool = False
    committed_until: float | None = None
    #: What the group security returned for the protected phantom request (draft §9.2.1), or None.
    binding: Any = None
    _payload_cache: dict[tuple[bool, int | None, float | None], bytes] = field(
        default_factory=dict, repr=False
    )
    #: Encoded (key, value) pairs of the informative-response payload without 'exi' and 'exp'.
    _payload_parts: dict[tuple[Any, ...], list[tuple[bytes, bytes]]] = field(default_factory=dict, repr=False)
    #: Notifications refused because they would not fit the size limit (draft §4.4).
    refused: int = 0
    #: Times the keying material was renewed in place by a multicast 5.03 (App. C).
    renewals: int = 0
    #: The latest notification before protection, to protect it again under renewed material.
    _plain_latest: Message | None = field(default=None, repr=False)
    #: The deadline this observation currently has in the engine's heap (lazy invalidation).
    _due: float | None = field(default=None, repr=False)
    #: Waiting in its group's congestion-control queue (draft §4.4).
    _queued: bool = field(default=False, repr=False)

    @property
    def count(self) -> int:
        """The observer counter COUNT (draft §4)."""
        return self.counter.count

    @count.setter
    def count(self, value: int) -> None:
        self.counter.count = value

    @property
    def ready(self) -> bool:
        """INIT_NOTIF exists, so informative responses can carry 'last_notif'."""
        return self.latest is not None

    @property
    def active(self) -> bool:
        return not self.cancelled

    @functools.cached_property
    def tp_info(self) -> TpInfo:
        """'tp_info' for CoAP over UDP (draft §4.2.1.1); fixed for the group observation's lifetime."""
        return TpInfo(
            tpi_server=CRI(scheme_id=-1, host=self.server.host, port=self.server.port),
            tpi_client=CRI(scheme_id=-1, host=self.group.host, port=self.group.port),
            tpi_token=self.token,
        )

    def can_send(self, now: float) -> bool:
        if not self.counter.may_send():
            return False  # §13.1: wait for the counting round before sending more
        return self.last_sent_at is None or now >= self.last_sent_at + self.policy.min_interval

    def refresh_due(self) -> float | None:
        """When the latest notification is older than its Max-Age (draft §4.3, last paragraph).

        The refresh is a MUST: neither the minimum interval, nor the §13.1 budget of a counting round,
        nor the group's congestion control push it later (only the 1 s floor for Max-Age 0 does).
        """
        if self.latest is None:
            return None
        return self.latest_at + max(self.latest_max_age, MIN_REFRESH_INTERVAL)

    def change_due(self) -> float | None:
        """When a pending change may be sent, or None (no change, a render or a hold in the way)."""
        if not self.dirty or self._queued or self.rendering is not None or not self.counter.may_send():
            return None
        last = self.last_sent_at
        return last + self.policy.min_interval if last is not None else 0.0

    def next_deadline(self) -> float | None:
        if self.cancelled:
            return None
        times = [t for t in (self.ending, self.counter.deadline()) if t is not None]
        if self.rendering is None:
            refresh = self.refresh_due()
            if refresh is not None:
                times.append(refresh)
            change = self.change_due()
            if change is not None:
                times.append(change)
        return min(times) if times else None


@dataclass(frozen=True)
class Render:
    """Render the resource for the phantom request and pass the result to :meth:`ServerEngine.rendered`."""

    observation: GroupObservation
    reason: RenderReason


@dataclass(frozen=True)
class SendMulticast:
    """Send ``message`` (NON, Token T) from SRV_ADDR:SRV_PORT to GRP_ADDR:GRP_PORT (draft §4.3, §4.5)."""

    observation: GroupObservation
    message: Message
    kind: str  # "notification", "cancellation" or "renewal" (App. C)
    #: Feedback-Divider Q the notification carries (inside the OSCORE protection when secured), or None.
    feedback_divider: int | None = None


@dataclass(frozen=True)
class NotificationRefused:
    """A rendered notification does not fit the size limit and was not sent (draft §4.4).

    The previous notification stays the latest one; the next change or Max-Age refresh tries again.
    """

    observation: GroupObservation
    error: NotificationTooLargeError


@dataclass(frozen=True)
class Counted:
    """A counting round finished: the new estimate is the observer counter (draft §8.3.3)."""

    observation: GroupObservation
    result: RoundResult


@dataclass(frozen=True)
class Cancelled:
    """The group observation ended; its Token T is free again (draft §4.5)."""

    observation: GroupObservation
    reason: str


Action = Render | SendMulticast | Counted | Cancelled | NotificationRefused


class Kind(enum.Enum):
    TRADITIONAL = "traditional"  # plain RFC 7641 observation
    GROUP = "group"  # answer with an informative response (draft §4.2)
    SILENT = "silent"  # counted, not answered: No-Response 16 (draft §5.1)
    CONFIRMATION = "confirmation"  # Feedback-Divider 0: a confirmation, never answered (draft §8.3.3)
    REFUSED = "refused"  # unprotected registration while notifications are protected (draft §9)


@dataclass(frozen=True)
class Registration:
    """What to do with one registration request (draft §4.2)."""

    kind: Kind
    observation: GroupObservation | None = None
    #: The group observation was just created: render INIT_NOTIF first (draft §4.1).
    started: bool = False
    #: Traditional observers (key, original request) to move over with an informative response on
    #: their own Token (draft §4.2).
    shifted: tuple[tuple[ObserverKey, Message], ...] = ()


@dataclass
class _ResourceState:
    policy: GroupPolicy
    traditional: dict[ObserverKey, Message] = field(default_factory=dict)
    group: GroupObservation | None = None
    #: Traditional observers registered from a link-local address: never shifted (draft §4.2).
    local: set[ObserverKey] = field(default_factory=set)
    #: Token T and protected phantom request made ahead of the next group observation (§4.1, §9.2.1).
    prepared: _Prepared | None = None
    #: Changes of the representation so far (on_change), so that an INIT_NOTIF rendered across one
    #: is never prepared.
    version: int = 0


@dataclass
class _Prepared:
    """Steps 1-2 of starting a group observation done ahead (draft §4.1; §9.2.1 under Group OSCORE):
    Token T, the phantom request and its protection (one signature), so that the registration that
    starts the group observation does not wait for them. Nothing of it depends on the resource's state.
    """

    token: bytes
    phantom: Message
    ph_req: bytes
    binding: Any
    at: float
    #: The group observation with INIT_NOTIF for the representation at its ``latest_at`` (§4.1 step 6),
    #: not started; dropped when the resource changes, so a signed 'last_notif' is never reused for
    #: another state (:meth:`ServerEngine.prepare_init`).
    init: GroupObservation | None = None


#: All CoAP Nodes (RFC 7252 §12.8): every CoAP node listens there, so notifications sent to it reach
#: nodes that never asked for them; not a suitable GRP_ADDR (draft §3).
ALL_COAP_NODES_V4 = ipaddress.IPv4Address("224.0.1.187")
_ALL_NODES_WHY = ": every CoAP node would receive the notifications; pick a group of your own"


def client_is_link_local(host: IPAddress | None) -> bool:
    """fe80::/10 or 169.254/16: such a client is never answered with an informative response (§4.2)."""
    return host is not None and host.is_link_local


def address_problem(server: Endpoint, group: Endpoint) -> str | None:
    """Why SRV_ADDR / GRP_ADDR cannot serve group observations (draft §3, §4.2), or None.

    Informative responses MUST NOT come from, or name, link-local or site-local addresses (§4.2);
    GRP_ADDR must be a multicast address of the same IP version, of a scope wider than the link, and
    not one every CoAP node listens to (All CoAP Nodes, RFC 7252 §12.8).
    """
    if not group.host.is_multicast:
        return f"group address {group.host} is not a multicast address"
    if group.host.version != server.host.version:
        return "server and group addresses must be of the same IP version"
    if server.host.is_multicast:
        return f"server address {server.host} is a multicast address; bind a unicast SRV_ADDR"
    for what, host in (("server", server.host), ("group", group.host)):
        try:
            check_not_local(host)
        except MalformedError as e:
            kind = next((k for k in ("link-local", "site-local", "unspecified") if k in str(e)), "unusable")
            return (
                f"{what} address {host} is {kind}: informative responses must not carry it (draft §4.2); "
                "use a global or unique-local address"
            )
    if isinstance(group.host, ipaddress.IPv6Address):
        scope = group.host.packed[1] & 0x0F
        if scope in (0x0, 0x1, 0xF):
            return f"group address {group.host} has reserved or interface-local scope {scope:x}"
        if (
            group.host.packed[1] >> 4 == 0
            and group.host.packed[2:15] == bytes(13)
            and group.host.packed[15] == 0xFD
        ):
            return f"group address {group.host} is All CoAP Nodes{_ALL_NODES_WHY}"
    elif group.host == ALL_COAP_NODES_V4:
        return f"group address {group.host} is All CoAP Nodes{_ALL_NODES_WHY}"
    return None


def transport_independent(request: Message) -> bytes:
    """The bytes draft §4.2.2 compares: code, options and payload, no Token, no type."""
    return serialize_message(request)


class ServerEngine:
    """Group observations of one server endpoint towards one multicast group (draft §4)."""

    def __init__(
        self,
        server: Endpoint,
        group: Endpoint,
        *,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        token_length: int = 2,
        security: GroupSecurity | None = None,
        renew_margin: float = 10.0,
        token_quarantine: float = MAX_TRANSMIT_WAIT,
        congestion: CongestionControl | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        renew_keys: bool = True,
    ) -> None:
        problem = address_problem(server, group)
        if problem is not None:
            raise UnusableAddressError(problem)
        self.server = server
        self.group = group
        self.code_points = code_points
        self.security = security
        #: Renew (or, without renewal, cancel) this many seconds before keying material expires (App. C).
        self.renew_margin = renew_margin
        #: Renew self-managed keying material in place by a multicast 5.03 (App. C) when the group
        #: security can; False: cancel the group observation instead (the appendix's alternative).
        self.renew_keys = renew_keys
        self.tokens = TokenSpace(token_length)
        #: A released T stays unused for the observation's Max-Age plus this many seconds (draft §4.5).
        self.token_quarantine = token_quarantine
        #: Congestion control per multicast group (draft §4.4).
        self.congestion = congestion if congestion is not None else CongestionControl()
        if self.congestion.interval <= 0:
            log.warning(
                "congestion control is off (interval 0): the draft (§4.4) says a server SHOULD NOT send "
                "more than one multicast notification every 3 seconds"
            )
        if max_message_size < 64:
            raise ValueError("max_message_size must be at least 64 bytes")
        #: Largest CoAP message sent as a multicast notification or informative response (draft §4.4).
        self.max_message_size = max_message_size
        #: A reverse proxy standing in for this server (proxy draft §10): protected informative
        #: responses and published group observation data then carry ``tp_info = [tpi_server]`` naming
        #: it, without tpi_details; only the answer to a recognized phantom request has the full one.
        self.stand_in: CRI | None = None
        self._budgets: dict[Endpoint, GroupBudget] = {}
        self._resources: dict[Path, _ResourceState] = {}
        self._by_token: dict[bytes, GroupObservation] = {}
        #: Deadline heap of (time, seq, observation); an entry is live only while it equals the
        #: observation's ``_due`` (lazy invalidation), so every event costs O(log n).
        self._heap: list[tuple[float, int, GroupObservation | GroupBudget]] = []
        self._seq = itertools.count()

    # -- configuration -------------------------------------------------------------------------

    def add_resource(self, path: Path, policy: GroupPolicy | None = None) -> None:
        """Make ``path`` group-observable (draft §4, §6 'gp-obs')."""
        self._resources[tuple(path)] = _ResourceState(policy or GroupPolicy())

    def prepare(self, path: Path, now: float, rng: random.Random) -> bool:
        """Do the state-independent steps of the next group observation of ``path`` ahead (draft §4.1).

        With group security this allocates T and protects (signs) the phantom request (§9.2.1) while no
        registration waits; the registration that starts the group observation takes them over if they
        are still usable (:meth:`_take_prepared`). Without security there is nothing worth preparing.
        Returns whether something was prepared. Costs one Token and one sender sequence number.
        """
        st = self._resources.get(tuple(path))
        if self.security is None or st is None or st.group is not None or st.prepared is not None:
            return False
        if getattr(self.security, "usable", None) is None:
            return False
        try:
            token, phantom, ph_req, binding = self._fresh_phantom(tuple(path), now, rng)
        except McObserveError:  # e.g. no Token or sequence number left: the registration will tell
            return False
        st.prepared = _Prepared(token, phantom, ph_req, binding, now)
        return True

    def wants_init(self, path: Path) -> bool:
        """Is a phantom request prepared whose INIT_NOTIF is not (or no longer) made?"""
        st = self._resources.get(tuple(path))
        return st is not None and st.group is None and st.prepared is not None and st.prepared.init is None

    def prepared_phantom(self, path: Path) -> tuple[Message, int] | None:
        """The plain phantom request of the prepared group observation, to render it (§4.1 step 3), and
        the version of the representation (pass it to :meth:`prepare_init`)."""
        st = self._resources.get(tuple(path))
        if st is None or st.prepared is None:
            return None
        return st.prepared.phantom, st.version

    def prepared_init(self, path: Path) -> GroupObservation | None:
        """The prepared, not started group observation with its INIT_NOTIF, if any."""
        st = self._resources.get(tuple(path))
        return st.prepared.init if st is not None and st.group is None and st.prepared is not None else None

    def drop_init(self, path: Path, init: GroupObservation) -> bool:
        """Forget the prepared INIT_NOTIF ``init`` (e.g. half its Max-Age is over); the phantom stays."""
        st = self._resources.get(tuple(path))
        if st is None or st.group is not None or st.prepared is None or st.prepared.init is not init:
            return False
        st.prepared.init = None
        return True

    def prepare_init(self, path: Path, response: Message, now: float, version: int) -> bool:
        """INIT_NOTIF of the prepared group observation from ``response``, the resource rendered for its
        phantom request at ``now`` (§4.1 step 6; protected as in §9.2.3). :meth:`_start` takes it over
        while the resource has not changed (:meth:`on_change` drops it) and for half its Max-Age."""
        st = self._resources.get(tuple(path))
        if st is None or st.group is not None or st.prepared is None or self.security is None:
            return False
        if not response.code.is_successful() or version != st.version:
            return False  # rendered across a change, or unsuccessful: the registration renders again
        p = st.prepared
        obs = self._observation(tuple(path), st, p.token, p.phantom, p.ph_req, p.binding, now)
        plain = self._notification(obs, response)
        obs.observe = (obs.observe + 1) % OBSERVE_MODULUS
        plain.opt.observe = obs.observe
        try:
            protected = self.security.protect_response(plain.copy(), obs.binding)
        except McObserveError:
            return False
        obs._plain_latest = plain
        obs.latest = protected
        obs.latest_bytes = serialize_message(protected)
        obs.latest_at = now
        max_age = plain.opt.max_age
        obs.latest_max_age = float(DEFAULT_MAX_AGE if max_age is None else max_age)
        obs.rendering = None
        p.init = obs
        # The payload of its informative responses, but 'exi'/'exp' (then encoded per response).
        extra = self.security.informative_parameters(obs.binding, now)
        self._informative_encoded(obs, self.tp_info_for(obs), True, None, extra)
        return True

    def _take_prepared(self, st: _ResourceState, now: float) -> _Prepared | None:
        """The prepared phantom request, if its keying material is still the one to start with (App. C)."""
        prepared, st.prepared = st.prepared, None
        if prepared is None:
            return None
        usable = getattr(self.security, "usable", None)
        if now - prepared.at <= PREPARED_MAX_AGE and usable is not None and usable(prepared.binding, now):
            return prepared
        self.tokens.release(prepared.token)  # never used on the wire: no quarantine
        return None

    def is_group_observable(self, path: Path) -> bool:
        return tuple(path) in self._resources

    def policy(self, path: Path) -> GroupPolicy | None:
        st = self._resources.get(tuple(path))
        return st.policy if st else None

    def remove_resource(self, path: Path, now: float) -> list[Action]:
        """The resource goes away: cancel its group observation (draft §4.5)."""
        st = self._resources.pop(tuple(path), None)
        if st is not None and st.prepared is not None:
            self.tokens.release(st.prepared.token)
            st.prepared = None
        if st is None or st.group is None:
            return []
        return self.cancel(st.group, now, "resource removed")

    def observation(self, path: Path) -> GroupObservation | None:
        st = self._resources.get(tuple(path))
        return st.group if st else None

    def by_token(self, token: bytes) -> GroupObservation | None:
        return self._by_token.get(token)

    def observations(self) -> Iterator[GroupObservation]:
        return iter(list(self._by_token.values()))

    def traditional_count(self, path: Path) -> int:
        st = self._resources.get(tuple(path))
        return len(st.traditional) if st else 0

    # -- registrations -------------------------------------------------------------------------

    def _phantom(self, path: Path, token: bytes) -> Message:
        """The phantom request: GET with Observe 0, as if sent by the group (draft §4.1, step 1)."""
        phantom = Message(code=GET, observe=0, uri_path=path)
        phantom.mtype = NON
        phantom.token = token
        return phantom

    @staticmethod
    def _compatible(request: Message, path: Path) -> bool:
        """Can the phantom request's notifications serve this request (draft §4.2, §5.2 step 3)?"""
        return (
            request.code == GET
            and tuple(request.opt.uri_path) == path
            and not request.opt.uri_query
            and request.opt.accept is None
        )

    def _fits_blocks(self, request: Message) -> bool:
        """A registration with Block2 asks for blocks of at most 2**(SZX+4) bytes (RFC 7959 §2.4).

        Informative responses and multicast notifications are never sent block-wise, so only a client
        whose block size takes the largest message this server sends (``max_message_size``) joins the
        group observation; one asking for smaller blocks gets a traditional observation, which
        aiocoap serves block-wise (issue 13 item 12).
        """
        block2 = request.opt.block2
        return block2 is None or (block2.block_number == 0 and block2.size >= self.max_message_size)

    def on_registration(
        self,
        path: Path,
        key: ObserverKey,
        request: Message,
        now: float,
        rng: random.Random,
        endpoint: Hashable | None = None,
        *,
        protected: bool = False,
        client_address: IPAddress | None = None,
    ) -> Registration:
        """A GET with Observe 0 arrived for ``path`` from ``endpoint`` (draft §4.2, §8.3.3).

        ``key`` identifies the observation (endpoint and Token); ``endpoint`` the client endpoint,
        which is what distinct confirmations are counted by (defaults to ``key``). ``protected`` tells
        whether the request came over OSCORE: with Group OSCORE, registrations and informative
        responses MUST be protected too (draft §9), so unprotected ones are refused.
        ``client_address``: a link-local client is served as a traditional observation and never
        shifted into a group observation (draft §4.2: no informative response to link-local addresses).
        """
        path = tuple(path)
        st = self._resources.get(path)
        if self.security is not None and not protected and st is not None:
            return Registration(Kind.REFUSED)
        if get_feedback_divider(request, self.code_points) == 0:
            obs = st.group if st is not None else None
            if obs is not None:
                obs.counter.confirmation(key if endpoint is None else endpoint)
            return Registration(Kind.CONFIRMATION, obs)
        if st is None or not self._compatible(request, path) or not self._fits_blocks(request):
            return Registration(Kind.TRADITIONAL)
        if client_is_link_local(client_address):
            st.traditional[key] = request
            st.local.add(key)
            return Registration(Kind.TRADITIONAL)
        silent = bool((request.opt.no_response or 0) & NO_RESPONSE_5XX)
        obs = st.group
        if obs is not None:
            st.traditional.pop(key, None)
            obs.count += 1
            return Registration(Kind.SILENT if silent else Kind.GROUP, obs)
        others = {k: r for k, r in st.traditional.items() if k != key and k not in st.local}
        if len(others) + 1 < st.policy.group_after:
            st.traditional[key] = request
            return Registration(Kind.TRADITIONAL)
        try:
            obs = self._start(path, st, now, rng)
        except McObserveError:
            # No group observation can be protected now (e.g. sequence numbers exhausted): serve the
            # client with a traditional observation, protected by its unicast security.
            st.traditional[key] = request
            return Registration(Kind.TRADITIONAL)
        shifted = tuple(others.items())
        self._keep_local(st)
        obs.count = len(shifted) + 1
        return Registration(Kind.SILENT if silent else Kind.GROUP, obs, started=True, shifted=shifted)

    def start(
        self, path: Path, now: float, rng: random.Random
    ) -> tuple[GroupObservation, tuple[tuple[ObserverKey, Message], ...]]:
        """Start a group observation without a registration, e.g. to publish it early (draft Appendix A)."""
        path = tuple(path)
        st = self._resources[path]
        if st.group is not None:
            return st.group, ()
        if st.prepared is not None:  # the caller's rng and security decide T and the phantom request
            self.tokens.release(st.prepared.token)
            st.prepared = None
        obs = self._start(path, st, now, rng)
        shifted = tuple((k, r) for k, r in st.traditional.items() if k not in st.local)
        obs.count = len(shifted)
        self._keep_local(st)
        return obs, shifted

    @staticmethod
    def _keep_local(st: _ResourceState) -> None:
        """After a shift only the link-local traditional observers remain (draft §4.2)."""
        st.traditional = {k: r for k, r in st.traditional.items() if k in st.local}

    def _start(self, path: Path, st: _ResourceState, now: float, rng: random.Random) -> GroupObservation:
        prepared = self._take_prepared(st, now) if st.prepared is not None else None
        init = prepared.init if prepared is not None else None
        if init is not None and now - init.latest_at <= init.latest_max_age / 2:
            return self._started(st, init, now)  # INIT_NOTIF signed ahead for the current state
        if prepared is not None:
            token, phantom, ph_req, binding = (
                prepared.token,
                prepared.phantom,
                prepared.ph_req,
                prepared.binding,
            )
        else:
            token, phantom, ph_req, binding = self._fresh_phantom(path, now, rng)
        return self._started(st, self._observation(path, st, token, phantom, ph_req, binding, now), now)

    def _observation(
        self,
        path: Path,
        st: _ResourceState,
        token: bytes,
        phantom: Message,
        ph_req: bytes,
        binding: Any,
        now: float,
    ) -> GroupObservation:
        return GroupObservation(
            path=path,
            token=token,
            server=self.server,
            group=self.group,
            policy=st.policy,
            phantom=phantom,
            ph_req=ph_req,
            binding=binding,
            started_at=now,
            ending=now + st.policy.duration if st.policy.duration is not None else None,
            counter=ObserverCounter(st.policy.counting),
            rendering=RenderReason.INIT,
        )

    def _started(self, st: _ResourceState, obs: GroupObservation, now: float) -> GroupObservation:
        """``obs`` is the group observation of its resource from ``now`` on (draft §4.1 steps 4-5)."""
        obs.started_at = now
        obs.ending = now + st.policy.duration if st.policy.duration is not None else None
        end = None if self._renewable else self._material_end(obs)
        if end is not None and obs.ending is not None and end < obs.ending:
            # Never announce an 'ending' the keying material cannot keep (App. A, App. C): the group
            # observation ends, as announced, when its material has to be given up.
            obs.ending = end
        st.group = obs
        self._by_token[obs.token] = obs
        self._schedule(obs)
        return obs

    def _fresh_phantom(self, path: Path, now: float, rng: random.Random) -> tuple[bytes, Message, bytes, Any]:
        """Token T, the phantom request, its transport-independent form and the security binding."""
        token = self.tokens.allocate(rng, now)
        phantom = self._phantom(path, token)
        ph_req = transport_independent(phantom)
        binding = None
        if self.security is not None:
            # The phantom request is protected with the server's own Sender Context (§9.2.1); the
            # resource still processes the plain one, inside the server.
            try:
                protected, binding = self.security.protect_phantom(phantom, now)
            except McObserveError:
                self.tokens.release(token)
                raise
            ph_req = transport_independent(protected)
        return token, phantom, ph_req, binding

    @property
    def _renewable(self) -> bool:
        """Can the group security hand out the next keying material in place (App. C)?"""
        return self.renew_keys and callable(getattr(self.security, "renew", None))

    def _renew(self, obs: GroupObservation, now: float) -> list[Action]:
        """Renew the keying material of a running group observation (App. C, last paragraphs).

        A multicast 5.03 with Token T and no Observe, protected with the *current* material and the
        server's own Partial IV, carries the next material ('gp_material', 'srv_cred',
        'srv_identifier', 'exi', 'exp') and 'ph_req', the phantom request protected under the next
        material (the appendix lets it be omitted; it is included so that clients that joined before
        and after the renewal verify the same phantom request). Then the group observation, its
        'ph_req' and its latest notification move to the new material. The announced 'ending' and
        every commitment stay valid (Appendix A).
        """
        assert self.security is not None
        renew = self.security.renew  # type: ignore[attr-defined]
        try:
            protected_phantom, binding = renew(obs.phantom, obs.binding, now)
        except McObserveError as e:
            return self.cancel(obs, now, f"keying material expires; renewal failed: {e}")
        ph_req = transport_independent(protected_phantom)
        params = self.security.informative_parameters(binding, now)
        message = Message(
            code=SERVICE_UNAVAILABLE,
            content_format=self.code_points.content_format,
            payload=InformativeResponse(ph_req=ph_req, **params).encode(),
        )
        message.mtype = NON
        message.token = obs.token
        try:
            message = self.security.protect_response(message, obs.binding)
            latest = None
            if obs._plain_latest is not None:
                latest = self.security.protect_response(obs._plain_latest.copy(), binding)
        except McObserveError as e:
            return self._drop(obs, now, f"cannot protect the renewal: {e}")
        obs.binding = binding
        obs.ph_req = ph_req
        if latest is not None:
            obs.latest = latest
            obs.latest_bytes = serialize_message(latest)
        obs._payload_cache.clear()
        obs._payload_parts.clear()
        obs.renewals += 1
        return [SendMulticast(obs, message, "renewal")]

    def _material_end(self, obs: GroupObservation) -> float | None:
        """When the group observation must end because its keying material expires (App. C)."""
        if self.security is None:
            return None
        expiry = self.security.expires_at(obs.binding)
        return None if expiry is None else expiry - self.renew_margin

    def traditional_ended(self, path: Path, key: ObserverKey) -> None:
        """A traditional observation ended (deregistration, RST, timeout)."""
        st = self._resources.get(tuple(path))
        if st is not None:
            st.traditional.pop(key, None)
            st.local.discard(key)

    def on_deregistration(self, path: Path, key: ObserverKey) -> GroupObservation | None:
        """A GET with Observe 1 (RFC 7641 §3.6) for ``path``: the client leaves.

        A traditional observer is forgotten; a member of the group observation cannot be told apart
        from the others, so COUNT goes down by one (never below 0) and the group observation goes on
        for the rest (draft §5.5). The request itself is answered as a plain GET, or not at all with
        No-Response.
        """
        st = self._resources.get(tuple(path))
        if st is None:
            return None
        st.traditional.pop(key, None)
        st.local.discard(key)
        obs = st.group
        if obs is not None and not obs.cancelled:
            obs.count = max(obs.count - 1, 0)
        return obs

    # -- notifications -------------------------------------------------------------------------

    def rendered(self, obs: GroupObservation, response: Message, now: float) -> list[Action]:
        """The resource was rendered for the phantom request (draft §4.1 step 6, §4.3)."""
        reason, obs.rendering = obs.rendering, None
        if obs.cancelled:
            return []
        try:
            return self._rendered(obs, reason, response, now)
        finally:
            self._schedule(obs)

    def _rendered(
        self, obs: GroupObservation, reason: RenderReason | None, response: Message, now: float
    ) -> list[Action]:
        if not response.code.is_successful():
            # An unsuccessful response ends an observation (RFC 7641 §3.2); end the group one cleanly.
            return self.cancel(obs, now, f"resource answered {response.code.dotted}")
        notification = self._notification(obs, response)
        if reason is not RenderReason.INIT:
            # Checked before an Observe number or a counting round is spent on it (draft §4.4).
            room = NOTIFICATION_OPTION_ROOM + (OSCORE_OVERHEAD if self.security is not None else 0)
            refused = self._too_large(obs, notification, now, room)
            if refused is not None:
                return refused
        obs.observe = (obs.observe + 1) % OBSERVE_MODULUS
        notification.opt.observe = obs.observe
        q = None
        if reason is not RenderReason.INIT:
            q = obs.counter.feedback_divider(now)  # first notification of a burst only (§8.3.1)
            if q is not None:
                set_feedback_divider(notification, q, self.code_points)
        max_age = notification.opt.max_age  # the inner Max-Age under Group OSCORE (§4.3)
        if self.security is not None:
            obs._plain_latest = notification.copy()
            try:
                notification = self.security.protect_response(notification, obs.binding)
            except McObserveError as e:
                return self._drop(obs, now, f"cannot protect: {e}")
            if reason is not RenderReason.INIT:
                refused = self._too_large(obs, notification, now, 0)
                if refused is not None:
                    if q is not None:
                        obs.counter.round = None  # the round never started on the wire
                    return refused
        if reason is not RenderReason.INIT:
            obs.counter.notification_sent()
        obs.latest = notification
        obs.latest_bytes = serialize_message(notification)
        obs.latest_at = now
        obs.latest_max_age = float(DEFAULT_MAX_AGE if max_age is None else max_age)
        obs._payload_cache.clear()
        obs._payload_parts.clear()
        if reason is RenderReason.INIT:
            return []  # INIT_NOTIF is stored, never sent (draft §4.1, step 6)
        obs.last_sent_at = now
        obs.sent += 1
        return [SendMulticast(obs, notification, "notification", q)]

    @staticmethod
    def _notification(obs: GroupObservation, response: Message) -> Message:
        """The NON notification with Token T for a rendered ``response`` (no Observe yet, §4.3)."""
        notification = Message(code=response.code, payload=response.payload)
        notification.mtype = NON
        for option in response.opt.option_list():
            if option.number not in (OptionNumber.OBSERVE, OptionNumber.NO_RESPONSE):
                notification.opt.add_option(option)
        notification.token = obs.token
        return notification

    def message_size(self, message: Message) -> int:
        """Bytes of ``message`` as a CoAP over UDP datagram payload (RFC 7252 §3)."""
        return UDP_HEADER_EXTRA + len(message.token or b"") + len(serialize_message(message))

    def _too_large(
        self, obs: GroupObservation, notification: Message, now: float, room: int
    ) -> list[Action] | None:
        """Refuse a multicast notification over the size limit: not sent, the application told (§4.4).

        The latest notification stays; the Max-Age refresh tries again one Max-Age later (not at once,
        which would turn a too large representation into a loop).
        """
        size = self.message_size(notification) + room
        if size <= self.max_message_size:
            return None
        obs.refused += 1
        obs.latest_at = now
        error = NotificationTooLargeError(
            f"multicast notification of /{'/'.join(obs.path)} is {size} bytes, over the limit of "
            f"{self.max_message_size} (draft §4.4): not sent; make the representation smaller or raise "
            "max_message_size"
        )
        return [NotificationRefused(obs, error)]

    def render_failed(self, obs: GroupObservation, now: float, reason: str) -> list[Action]:
        """Rendering raised: the group observation cannot continue."""
        obs.rendering = None
        if obs.cancelled:
            return []
        return self.cancel(obs, now, f"render failed: {reason}")

    def on_change(self, path: Path, now: float) -> list[Action]:
        """The representation of ``path`` changed (draft §4.3).

        Changes coalesce inside the resource's minimum interval and while the group's congestion
        control (draft §4.4) or the §13.1 hold keeps it waiting; the latest state goes out when it may.
        """
        st = self._resources.get(tuple(path))
        if st is not None:
            st.version += 1
        obs = self.observation(path)
        if obs is None or obs.cancelled:
            if st is not None and st.prepared is not None:
                st.prepared.init = None  # its signed INIT_NOTIF shows the old state: never reused
            return []
        obs.dirty = True
        actions: list[Action] = []
        if obs.rendering is None and not obs._queued and obs.can_send(now):
            actions = self._send_change(obs, now)
        self._schedule(obs)
        return actions

    def budget(self, group: Endpoint) -> GroupBudget:
        """The congestion-control budget of ``group`` (draft §4.4), shared by its group observations."""
        budget = self._budgets.get(group)
        if budget is None:
            budget = self._budgets[group] = GroupBudget(group, self.congestion)
        return budget

    def _send_change(self, obs: GroupObservation, now: float) -> list[Action]:
        """Render a pending change if the group has budget; else wait in the group's queue (§4.4)."""
        budget = self.budget(obs.group)
        if not budget.waiting and budget.take(now):
            obs.dirty = False
            obs.rendering = RenderReason.CHANGE
            return [Render(obs, RenderReason.CHANGE)]
        obs._queued = True
        budget.waiting.append(obs)
        self._schedule_budget(budget, now)
        return []

    def _serve_waiting(self, budget: GroupBudget, now: float) -> list[Action]:
        """Hand the group's tokens to waiting observations, first come first served (§4.4)."""
        actions: list[Action] = []
        while budget.waiting:
            obs = budget.waiting[0]
            if obs.cancelled or not obs.dirty or obs.rendering is not None or not obs.can_send(now):
                budget.waiting.popleft()  # sent meanwhile (refresh), cancelled, or held: not its turn
                obs._queued = False
                self._schedule(obs)
                continue
            if not budget.take(now):
                break
            budget.waiting.popleft()
            obs._queued = False
            obs.dirty = False
            obs.rendering = RenderReason.CHANGE
            actions.append(Render(obs, RenderReason.CHANGE))
            self._schedule(obs)
        self._schedule_budget(budget, now)
        return actions

    def _schedule_budget(self, budget: GroupBudget, now: float) -> None:
        due = budget.ready_at(now) if budget.waiting else None
        if due == budget._due:
            return
        budget._due = due
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._seq), budget))

    def _deadline(self, obs: GroupObservation) -> float | None:
        """When ``obs`` next needs :meth:`poll`: its own timers and its keying material's expiry."""
        due = obs.next_deadline()
        if due is None or self.security is None:
            return due
        expiry = self.security.expires_at(obs.binding)
        if expiry is not None:
            due = min(due, expiry - self.renew_margin)
        return due

    def _schedule(self, obs: GroupObservation) -> None:
        """(Re)place ``obs`` in the deadline heap after its state changed: O(log n)."""
        due = None if obs.cancelled else self._deadline(obs)
        if due == obs._due:
            return
        obs._due = due
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._seq), obs))
            if len(self._heap) > 64 + 4 * (len(self._by_token) + len(self._budgets)):
                self._compact()

    def _compact(self) -> None:
        """Drop stale heap entries; amortised O(1) per push."""
        self._heap = [e for e in self._heap if e[2]._due == e[0] and not e[2].cancelled]
        heapq.heapify(self._heap)

    def _prune(self) -> None:
        heap = self._heap
        while heap and (heap[0][2].cancelled or heap[0][2]._due != heap[0][0]):
            heapq.heappop(heap)

    def poll(self, now: float) -> list[Action]:
        """Run what is due: scheduled endings, coalesced changes, Max-Age refreshes.

        Only the observations whose deadline has come are touched (deadline heap), never all of them.
        """
        actions: list[Action] = []
        heap = self._heap
        seen: set[int] = set()
        again: list[tuple[float, int, GroupObservation]] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            due, _, item = entry
            if item.cancelled or item._due != due:
                continue  # stale entry
            if id(item) in seen:  # still due after running once: leave it for the next poll
                again.append(entry)
                continue
            seen.add(id(item))
            item._due = None
            if isinstance(item, GroupBudget):
                actions += self._serve_waiting(item, now)
                continue
            actions += self._run_due(item, now)
            self._schedule(item)
        for entry in again:
            heapq.heappush(heap, entry)
        return actions

    def _run_due(self, obs: GroupObservation, now: float) -> list[Action]:
        if obs.ending is not None and now >= obs.ending:
            return self.cancel(obs, now, "ending reached")
        expiry = self.security.expires_at(obs.binding) if self.security is not None else None
        if expiry is not None and now >= expiry - self.renew_margin:
            if self._renewable:
                return self._renew(obs, now)  # App. C: the next material by a multicast 5.03
            # The keying material is about to expire: cancel; the next registration starts a new
            # group observation under new material (App. C).
            return self.cancel(obs, now, "keying material expires")
        actions: list[Action] = []
        result = obs.counter.finish(now)
        if result is not None:
            actions.append(Counted(obs, result))
            if obs.counter.should_cancel(result) and (obs.committed_until or 0.0) <= now:
                return actions + self.cancel(obs, now, f"estimated {result.estimate:.3g} observers")
        if obs.rendering is not None:
            return actions
        due = obs.refresh_due()
        if due is not None and now >= due:
            # MUST (draft §4.3): neither the §13.1 hold nor congestion control delays it; it takes a
            # token of the group's budget when there is one, and goes anyway when there is none.
            budget = self.budget(obs.group)
            if not budget.take(now):
                budget.over_budget += 1
                budget.sent += 1
            obs.dirty = False  # the refresh carries the current representation
            obs.rendering = RenderReason.MAX_AGE
            actions.append(Render(obs, RenderReason.MAX_AGE))
            return actions
        if obs.dirty and not obs._queued and obs.can_send(now):
            actions += self._send_change(obs, now)
        return actions

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`poll` has something to do, or None (the top of the heap)."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    # -- cancellation --------------------------------------------------------------------------

    def cancel(self, obs: GroupObservation, now: float, reason: str) -> list[Action]:
        """Multicast 5.03, Token T, no payload, no Observe; then free T (draft §4.5)."""
        if obs.cancelled:
            return []
        obs.cancelled = True
        obs.rendering = None
        obs._due = None  # its heap entries are stale from now on
        st = self._resources.get(obs.path)
        if st is not None and st.group is obs:
            st.group = None
        self._by_token.pop(obs.token, None)
        # Quarantine T: a client that missed the cancellation notices the silence only after the
        # latest Max-Age (plus its margin), then registers again (draft §4.5, §5.4, §13).
        self.tokens.release(
            obs.token, now, max(obs.latest_max_age, MIN_REFRESH_INTERVAL) + self.token_quarantine
        )
        message = Message(code=SERVICE_UNAVAILABLE)
        message.mtype = NON
        message.token = obs.token
        if self.security is not None:
            try:  # protected in group mode with the server's own Partial IV (§9.2.4)
                message = self.security.protect_response(message, obs.binding)
            except McObserveError:
                return [Cancelled(obs, reason + " (the cancellation could not be protected, not sent)")]
        return [SendMulticast(obs, message, "cancellation"), Cancelled(obs, reason)]

    def _drop(self, obs: GroupObservation, now: float, reason: str) -> list[Action]:
        """End a group observation that can no longer be protected: nothing may be sent for it."""
        actions = self.cancel(obs, now, reason)
        return [a for a in actions if isinstance(a, Cancelled)]

    def cancel_path(self, path: Path, now: float, reason: str = "operator") -> list[Action]:
        obs = self.observation(path)
        return self.cancel(obs, now, reason) if obs is not None else []

    def shutdown(self, now: float) -> list[Action]:
        """Cancel every group observation (draft §4.5)."""
        actions: list[Action] = []
        for obs in self.observations():
            actions += self.cancel(obs, now, "shutdown")
        return actions

    # -- informative responses -----------------------------------------------------------------

    def next_not_before(self, obs: GroupObservation, now: float) -> int | None:
        """'next_not_before': whole seconds before the next notification can leave (draft §4.2, §4.4)."""
        if obs.last_sent_at is None or obs.policy.min_interval <= 0:
            return None
        remaining = math.floor(obs.last_sent_at + obs.policy.min_interval - now)
        return remaining if remaining > 0 else None

    def informative_payload(
        self,
        obs: GroupObservation,
        request: Message | None,
        now: float,
        *,
        with_ph_req: bool | None = None,
        full_tp_info: bool = False,
    ) -> bytes:
        """The CBOR payload of the informative response (draft §4.2).

        'ph_req' is included whenever the phantom request differs from ``request`` in its
        transport-independent information (or always, without a request). With :attr:`stand_in` set
        and not ``full_tp_info``, 'tp_info' only names the reverse proxy (proxy draft §10.2, step c).
        """
        if self.security is not None:
            with_ph_req = True  # the protected phantom request always differs (§9.2.2)
        elif with_ph_req is None:
            with_ph_req = request is None or transport_independent(request) != obs.ph_req
        nnb = self.next_not_before(obs, now)
        extra = self.security.informative_parameters(obs.binding, now) if self.security is not None else {}
        tp_info = self.tp_info_for(obs, full=full_tp_info)
        key = (with_ph_req, nnb, obs.ending, extra.get("exi"), extra.get("exp"), tp_info.has_details)
        cached = obs._payload_cache.get(key)
        if cached is None:
            cached = self._informative_encoded(obs, tp_info, with_ph_req, nnb, extra)
            obs._payload_cache[key] = cached
        return cached

    def _informative_encoded(
        self,
        obs: GroupObservation,
        tp_info: TpInfo,
        with_ph_req: bool,
        nnb: int | None,
        extra: dict[str, Any],
    ) -> bytes:
        """The payload of :meth:`informative_payload`, byte for byte ``InformativeResponse(...).encode()``.

        'exi' and 'exp' change every second (App. C); the encoded rest is kept per group observation
        and state (:attr:`GroupObservation._payload_parts`), and only those two are encoded per call.
        """
        timed = {k: extra[k] for k in TIMED_PARAMETERS if extra.get(k) is not None}
        static = {k: v for k, v in extra.items() if k not in TIMED_PARAMETERS}
        overhead = INFORMATIVE_OVERHEAD + (OSCORE_OVERHEAD if self.security is not None else 0)
        for last_notif in (obs.latest_bytes, None):
            parts_key = (with_ph_req, nnb, obs.ending, last_notif is not None, tp_info.has_details)
            parts = obs._payload_parts.get(parts_key)
            if parts is None:
                informative = InformativeResponse(
                    tp_info=tp_info,
                    ph_req=obs.ph_req if with_ph_req else None,
                    last_notif=last_notif,
                    next_not_before=nnb,
                    ending=_time_value(obs.ending),
                    **static,
                )
                parts = [(cbor_encode(k), cbor_encode(v)) for k, v in informative.to_cbor_obj().items()]
                obs._payload_parts[parts_key] = parts
            if timed:
                InformativeResponse(**timed).validate()
                parts = parts + [
                    (cbor_encode(PARAMETERS_BY_NAME[k].key), cbor_encode(v)) for k, v in timed.items()
                ]
            parts = sorted(parts)  # deterministic encoding: keys in bytewise order (RFC 8949 §4.2.1)
            payload = cbor_map_head(len(parts)) + b"".join(k + v for k, v in parts)
            if last_notif is None or len(payload) + overhead <= self.max_message_size:
                return payload
            # 'last_notif' is a SHOULD; a response that fits one datagram matters more (§4.2, §4.4).
        return payload

    def tp_info_for(self, obs: GroupObservation, *, full: bool = False) -> TpInfo:
        """``obs``'s 'tp_info'; only ``[tpi_server]`` = :attr:`stand_in` when a reverse proxy stands in
        for this server and ``full`` is not asked for (proxy draft §10, observe draft §4.2.1)."""
        if self.stand_in is None or full:
            return obs.tp_info
        return TpInfo(self.stand_in)

    def informative_response(
        self, obs: GroupObservation, request: Message | None, now: float, *, full_tp_info: bool = False
    ) -> Message:
        """5.03, Content-Format informative-response+cbor, Max-Age 0, no Observe (draft §4.2)."""
        return Message(
            code=SERVICE_UNAVAILABLE,
            content_format=self.code_points.content_format,
            max_age=0,
            payload=self.informative_payload(obs, request, now, full_tp_info=full_tp_info),
        )

    def introspect(self, token: bytes, now: float) -> bytes | None:
        """Informative-response payload for ``/.well-known/core/mc-sender?token=`` (draft Appendix A.2).

        Data handed out this way names an 'ending'; without a scheduled one the server commits to
        ``policy.commitment`` seconds from now and keeps the observation until then (draft Appendix A).
        """
        obs = self._by_token.get(token)
        if obs is None or not obs.ready:
            return None
        ending = obs.ending
        if ending is None:
            commitment = now + obs.policy.commitment
            end = None if self._renewable else self._material_end(obs)
            if end is not None:
                commitment = min(commitment, end)  # a commitment the keying material can keep
            obs.committed_until = max(obs.committed_until or 0.0, commitment)
            ending = obs.committed_until
        return InformativeResponse(
            tp_info=self.tp_info_for(obs),
            ph_req=obs.ph_req,
            last_notif=obs.latest_bytes,
            ending=_time_value(ending),
        ).encode()


def _time_value(t: float | None) -> int | float | None:
    """'ending' as a CBOR integer when whole, else a float (draft §4.2)."""
    if t is None:
        return None
    return int(t) if float(t).is_integer() else round(t, 3)
