"""Server side of group observations as a pure state machine (draft §4).

The engine never reads a clock, never draws randomness of its own and never touches a socket:
``now`` (POSIX seconds) and a :class:`random.Random` come in as arguments, and every method returns
what the caller has to do (render the resource for the phantom request, send a multicast datagram).
The aiocoap adapter (:mod:`mcobserve.aio.server`) executes those actions.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import random
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiocoap import GET, NON, SERVICE_UNAVAILABLE, Message
from aiocoap.numbers.optionnumbers import OptionNumber

from ..constants import (
    DEFAULT_CODE_POINTS,
    DEFAULT_MAX_AGE,
    DEFAULT_MIN_INTERVAL,
    NO_RESPONSE_5XX,
    CodePoints,
)
from ..errors import McObserveError, TokenSpaceExhaustedError
from ..wire import CRI, InformativeResponse, TpInfo, serialize_message
from ..wire.feedback import get_feedback_divider, set_feedback_divider
from .common import OBSERVE_MODULUS, Endpoint
from .counting import CountingPolicy, ObserverCounter, RoundResult

#: Floor for the Max-Age driven refresh (draft §4.3, last paragraph), so that a representation with
#: Max-Age 0 does not turn into a multicast storm.
MIN_REFRESH_INTERVAL = 1.0

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


class TokenSpace:
    """Token space of (GRP_ADDR, GRP_PORT) -> (SRV_ADDR, SRV_PORT), the server's to manage (draft §4.1)."""

    def __init__(self, length: int = 2) -> None:
        if not 1 <= length <= 8:
            raise ValueError("token length must be 1..8 bytes")
        self.length = length
        self._used: set[bytes] = set()

    def allocate(self, rng: random.Random) -> bytes:
        """Pick a value T that no live group observation uses (draft §4.1, step 2)."""
        size = 1 << (8 * self.length)
        if len(self._used) >= size:
            raise TokenSpaceExhaustedError(f"all {size} tokens of length {self.length} are in use")
        for _ in range(32):
            token = rng.getrandbits(8 * self.length).to_bytes(self.length, "big")
            if token not in self._used:
                self._used.add(token)
                return token
        # Dense space: walk from a random start; bounded by the size of the space.
        start = rng.randrange(size)
        for i in range(size):
            token = ((start + i) % size).to_bytes(self.length, "big")
            if token not in self._used:
                self._used.add(token)
                return token
        raise TokenSpaceExhaustedError("no free token")  # pragma: no cover - guarded above

    def release(self, token: bytes) -> None:
        """Free T once its group observation is cancelled (draft §4.5)."""
        self._used.discard(token)

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
    #: The deadline this observation currently has in the engine's heap (lazy invalidation).
    _due: float | None = field(default=None, repr=False)

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

    @property
    def tp_info(self) -> TpInfo:
        """'tp_info' for CoAP over UDP (draft §4.2.1.1)."""
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
        """When the latest notification is older than its Max-Age (draft §4.3, last paragraph)."""
        if self.latest is None:
            return None
        due = self.latest_at + max(self.latest_max_age, MIN_REFRESH_INTERVAL)
        if self.last_sent_at is not None:
            due = max(due, self.last_sent_at + self.policy.min_interval)
        return due

    def next_deadline(self) -> float | None:
        if self.cancelled:
            return None
        times = [t for t in (self.ending, self.counter.deadline()) if t is not None]
        if self.rendering is None and self.counter.may_send():
            refresh = self.refresh_due()
            if refresh is not None:
                times.append(refresh)
            if self.dirty:
                last = self.last_sent_at
                times.append(last + self.policy.min_interval if last is not None else 0.0)
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
    kind: str  # "notification" or "cancellation"
    #: Feedback-Divider Q the notification carries (inside the OSCORE protection when secured), or None.
    feedback_divider: int | None = None


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


Action = Render | SendMulticast | Counted | Cancelled


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
    ) -> None:
        if not group.host.is_multicast:
            raise ValueError(f"group address {group.host} is not a multicast address")
        if group.host.version != server.host.version:
            raise ValueError("server and group addresses must be of the same IP version")
        self.server = server
        self.group = group
        self.code_points = code_points
        self.security = security
        #: Cancel a group observation this many seconds before its keying material expires (App. C).
        self.renew_margin = renew_margin
        self.tokens = TokenSpace(token_length)
        self._resources: dict[Path, _ResourceState] = {}
        self._by_token: dict[bytes, GroupObservation] = {}
        #: Deadline heap of (time, seq, observation); an entry is live only while it equals the
        #: observation's ``_due`` (lazy invalidation), so every event costs O(log n).
        self._heap: list[tuple[float, int, GroupObservation]] = []
        self._seq = itertools.count()

    # -- configuration -------------------------------------------------------------------------

    def add_resource(self, path: Path, policy: GroupPolicy | None = None) -> None:
        """Make ``path`` group-observable (draft §4, §6 'gp-obs')."""
        self._resources[tuple(path)] = _ResourceState(policy or GroupPolicy())

    def is_group_observable(self, path: Path) -> bool:
        return tuple(path) in self._resources

    def policy(self, path: Path) -> GroupPolicy | None:
        st = self._resources.get(tuple(path))
        return st.policy if st else None

    def remove_resource(self, path: Path, now: float) -> list[Action]:
        """The resource goes away: cancel its group observation (draft §4.5)."""
        st = self._resources.pop(tuple(path), None)
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
    ) -> Registration:
        """A GET with Observe 0 arrived for ``path`` from ``endpoint`` (draft §4.2, §8.3.3).

        ``key`` identifies the observation (endpoint and Token); ``endpoint`` the client endpoint,
        which is what distinct confirmations are counted by (defaults to ``key``). ``protected`` tells
        whether the request came over OSCORE: with Group OSCORE, registrations and informative
        responses MUST be protected too (draft §9), so unprotected ones are refused.
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
        if st is None or not self._compatible(request, path):
            return Registration(Kind.TRADITIONAL)
        silent = bool((request.opt.no_response or 0) & NO_RESPONSE_5XX)
        obs = st.group
        if obs is not None:
            st.traditional.pop(key, None)
            obs.count += 1
            return Registration(Kind.SILENT if silent else Kind.GROUP, obs)
        others = {k: r for k, r in st.traditional.items() if k != key}
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
        st.traditional.clear()
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
        obs = self._start(path, st, now, rng)
        shifted = tuple(st.traditional.items())
        obs.count = len(shifted)
        st.traditional.clear()
        return obs, shifted

    def _start(self, path: Path, st: _ResourceState, now: float, rng: random.Random) -> GroupObservation:
        token = self.tokens.allocate(rng)
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
        obs = GroupObservation(
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
        st.group = obs
        self._by_token[token] = obs
        self._schedule(obs)
        return obs

    def traditional_ended(self, path: Path, key: ObserverKey) -> None:
        """A traditional observation ended (deregistration, RST, timeout)."""
        st = self._resources.get(tuple(path))
        if st is not None:
            st.traditional.pop(key, None)

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
        notification = Message(code=response.code, payload=response.payload)
        notification.mtype = NON
        for option in response.opt.option_list():
            if option.number not in (OptionNumber.OBSERVE, OptionNumber.NO_RESPONSE):
                notification.opt.add_option(option)
        notification.token = obs.token
        obs.observe = (obs.observe + 1) % OBSERVE_MODULUS
        notification.opt.observe = obs.observe
        q = None
        if reason is not RenderReason.INIT:
            q = obs.counter.feedback_divider(now)  # first notification of a burst only (§8.3.1)
            if q is not None:
                set_feedback_divider(notification, q, self.code_points)
            obs.counter.notification_sent()
        max_age = notification.opt.max_age  # the inner Max-Age under Group OSCORE (§4.3)
        if self.security is not None:
            try:
                notification = self.security.protect_response(notification, obs.binding)
            except McObserveError as e:
                return self._drop(obs, f"cannot protect: {e}")
        obs.latest = notification
        obs.latest_bytes = serialize_message(notification)
        obs.latest_at = now
        obs.latest_max_age = float(DEFAULT_MAX_AGE if max_age is None else max_age)
        obs._payload_cache.clear()
        if reason is RenderReason.INIT:
            return []  # INIT_NOTIF is stored, never sent (draft §4.1, step 6)
        obs.last_sent_at = now
        obs.sent += 1
        return [SendMulticast(obs, notification, "notification", q)]

    def render_failed(self, obs: GroupObservation, now: float, reason: str) -> list[Action]:
        """Rendering raised: the group observation cannot continue."""
        obs.rendering = None
        if obs.cancelled:
            return []
        return self.cancel(obs, now, f"render failed: {reason}")

    def on_change(self, path: Path, now: float) -> list[Action]:
        """The representation of ``path`` changed (draft §4.3); coalesced in the minimum interval (§4.4)."""
        obs = self.observation(path)
        if obs is None or obs.cancelled:
            return []
        if obs.rendering is not None or not obs.can_send(now):
            obs.dirty = True
            self._schedule(obs)
            return []
        obs.dirty = False
        obs.rendering = RenderReason.CHANGE
        self._schedule(obs)
        return [Render(obs, RenderReason.CHANGE)]

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
            if len(self._heap) > 64 + 4 * len(self._by_token):
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
            due, _, obs = entry
            if obs.cancelled or obs._due != due:
                continue  # stale entry
            if id(obs) in seen:  # still due after running once: leave it for the next poll
                again.append(entry)
                continue
            seen.add(id(obs))
            obs._due = None
            actions += self._run_due(obs, now)
            self._schedule(obs)
        for entry in again:
            heapq.heappush(heap, entry)
        return actions

    def _run_due(self, obs: GroupObservation, now: float) -> list[Action]:
        if obs.ending is not None and now >= obs.ending:
            return self.cancel(obs, now, "ending reached")
        expiry = self.security.expires_at(obs.binding) if self.security is not None else None
        if expiry is not None and now >= expiry - self.renew_margin:
            # The keying material is about to expire: cancel; the next registration starts a new
            # group observation under new material (App. C).
            return self.cancel(obs, now, "keying material expires")
        actions: list[Action] = []
        result = obs.counter.finish(now)
        if result is not None:
            actions.append(Counted(obs, result))
            if obs.counter.should_cancel(result) and (obs.committed_until or 0.0) <= now:
                return actions + self.cancel(obs, now, f"estimated {result.estimate:.3g} observers")
        if obs.rendering is not None or not obs.can_send(now):
            return actions
        if obs.dirty:
            obs.dirty = False
            obs.rendering = RenderReason.CHANGE
            actions.append(Render(obs, RenderReason.CHANGE))
            return actions
        due = obs.refresh_due()
        if due is not None and now >= due:
            obs.rendering = RenderReason.MAX_AGE
            actions.append(Render(obs, RenderReason.MAX_AGE))
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
        self.tokens.release(obs.token)
        message = Message(code=SERVICE_UNAVAILABLE)
        message.mtype = NON
        message.token = obs.token
        if self.security is not None:
            try:  # protected in group mode with the server's own Partial IV (§9.2.4)
                message = self.security.protect_response(message, obs.binding)
            except McObserveError:
                return [Cancelled(obs, reason + " (the cancellation could not be protected, not sent)")]
        return [SendMulticast(obs, message, "cancellation"), Cancelled(obs, reason)]

    def _drop(self, obs: GroupObservation, reason: str) -> list[Action]:
        """End a group observation that can no longer be protected: nothing may be sent for it."""
        actions = self.cancel(obs, 0.0, reason)
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
        self, obs: GroupObservation, request: Message | None, now: float, *, with_ph_req: bool | None = None
    ) -> bytes:
        """The CBOR payload of the informative response (draft §4.2).

        'ph_req' is included whenever the phantom request differs from ``request`` in its
        transport-independent information (or always, without a request).
        """
        if with_ph_req is None:
            with_ph_req = request is None or transport_independent(request) != obs.ph_req
        nnb = self.next_not_before(obs, now)
        extra = self.security.informative_parameters(obs.binding, now) if self.security is not None else {}
        if self.security is not None:
            with_ph_req = True  # the protected phantom request always differs (§9.2.2)
        key = (with_ph_req, nnb, obs.ending, extra.get("exi"), extra.get("exp"))
        cached = obs._payload_cache.get(key)
        if cached is None:
            cached = InformativeResponse(
                tp_info=obs.tp_info,
                ph_req=obs.ph_req if with_ph_req else None,
                last_notif=obs.latest_bytes,
                next_not_before=nnb,
                ending=_time_value(obs.ending),
                **extra,
            ).encode()
            obs._payload_cache[key] = cached
        return cached

    def informative_response(self, obs: GroupObservation, request: Message | None, now: float) -> Message:
        """5.03, Content-Format informative-response+cbor, Max-Age 0, no Observe (draft §4.2)."""
        return Message(
            code=SERVICE_UNAVAILABLE,
            content_format=self.code_points.content_format,
            max_age=0,
            payload=self.informative_payload(obs, request, now),
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
            obs.committed_until = max(obs.committed_until or 0.0, now + obs.policy.commitment)
            ending = obs.committed_until
        return InformativeResponse(
            tp_info=obs.tp_info,
            ph_req=obs.ph_req,
            last_notif=obs.latest_bytes,
            ending=_time_value(ending),
        ).encode()


def _time_value(t: float | None) -> int | float | None:
    """'ending' as a CBOR integer when whole, else a float (draft §4.2)."""
    if t is None:
        return None
    return int(t) if float(t).is_integer() else round(t, 3)
