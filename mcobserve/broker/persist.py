"""Group observations that survive a crash: kept in the store, resumed on the same Token T.

What is stored per group observation (draft §4.1): Token T, SRV_ADDR:SRV_PORT, GRP_ADDR:GRP_PORT, an
Observe *ceiling*, the count estimate, start, 'ending' and the Appendix A commitment. The Observe number
follows the pattern of RFC 8613 Appendix B.1.1 for sequence numbers: the store holds a ceiling at least
:data:`OBSERVE_LEAD` above every Observe number used, written ahead of use; a resumed observation
continues from the ceiling, which is above anything a subscriber saw and less than 2^23 ahead of it, so
the next notification is fresh (RFC 7641 §3.4). The phantom request of an unsecured group observation is
a function of the path and T (draft §4.1 step 1), so it is rebuilt, not stored.

The engine is used through its public API only: :meth:`ServerEngine.start` with a random source that
draws T, then :meth:`ServerEngine.rendered` for the new INIT_NOTIF.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from aiocoap import Message

from ..engine.common import OBSERVE_MODULUS
from ..engine.server import GroupObservation, RenderReason
from ..errors import MalformedError, McObserveError, StoreError
from ..store import ObservationRecord, Store
from ..wire.cbor import cbor_decode, cbor_encode

if TYPE_CHECKING:
    from ..aio.server import GroupServer

#: Observe numbers reserved per write of the ceiling.
OBSERVE_LEAD: Final = 1024
#: Commitments (Appendix A) are written when they grow by more than this many seconds.
COMMIT_SLACK: Final = 60.0


class _FixedToken(random.Random):
    """A random source whose first draw is the Token T to resume (TokenSpace.allocate draws T)."""

    def __init__(self, token: bytes) -> None:
        super().__init__(0)
        self._token = token
        self._used = False

    def getrandbits(self, k: int) -> int:
        if not self._used and k == 8 * len(self._token):
            self._used = True
            return int.from_bytes(self._token, "big")
        return super().getrandbits(k)

    def randbytes(self, n: int) -> bytes:  # the same draw, should the Token space take bytes
        if not self._used and n == len(self._token):
            self._used = True
            return self._token
        return super().randbytes(n)

    def randrange(self, *args: Any, **kwargs: Any) -> int:  # or an index into the space
        if not self._used and len(args) == 1 and args[0] == 1 << (8 * len(self._token)):
            self._used = True
            return int.from_bytes(self._token, "big")
        return super().randrange(*args, **kwargs)


def start_observation(
    server: GroupServer,
    path: tuple[str, ...],
    init_notif: Message,
    now: float,
    rng: random.Random,
) -> GroupObservation:
    """Start a group observation of ``path`` without a registration (draft Appendix A) and store the
    rendered INIT_NOTIF; returns it ready for informative responses and topic metadata."""
    engine = server.engine
    obs, _shifted = engine.start(path, now, rng)
    if obs.rendering is RenderReason.INIT or obs.latest is None:
        obs.rendering = RenderReason.INIT
        engine.rendered(obs, init_notif, now)
    return obs


def _key(server: GroupServer, path: str) -> tuple[str, str]:
    return (str(server.engine.group), path)


def _path_str(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


class ObservationKeeper:
    """Writes group observation state to the store as the broker's GroupServers report it."""

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self._ceiling: dict[tuple[str, str], int] = {}
        self._committed: dict[tuple[str, str], float] = {}

    def _record(self, server: GroupServer, obs: GroupObservation, ceiling: int) -> ObservationRecord:
        return ObservationRecord(
            scope=str(server.engine.group),
            path=_path_str(obs.path),
            token=obs.token,
            server=str(obs.server),
            group=str(obs.group),
            observe_ceiling=ceiling,
            count=float(obs.count),
            started_at=obs.started_at,
            ending=obs.ending,
            committed_until=obs.committed_until,
            binding=_binding_blob(obs),
        )

    def started(self, server: GroupServer, obs: GroupObservation) -> None:
        """A group observation started: store it with an Observe ceiling ahead of its numbers."""
        if self.store is None:
            return
        ceiling = (obs.observe + OBSERVE_LEAD) % OBSERVE_MODULUS
        key = _key(server, _path_str(obs.path))
        try:
            self.store.put_observation(self._record(server, obs, ceiling))
        except StoreError as e:
            # Not durable: a restart will not resume it (subscribers re-register). Keep serving.
            self._ceiling.pop(key, None)
            raise McObserveError(f"group observation not stored: {e}") from None
        self._ceiling[key] = ceiling

    def notified(self, server: GroupServer, obs: GroupObservation) -> None:
        """A notification left: move the Observe ceiling ahead once half of the lead is used."""
        if self.store is None:
            return
        key = _key(server, _path_str(obs.path))
        ceiling = self._ceiling.get(key)
        if ceiling is None:
            return
        ahead = (ceiling - obs.observe) % OBSERVE_MODULUS
        if ahead > OBSERVE_LEAD // 2 and ahead <= OBSERVE_LEAD:
            return
        ceiling = (obs.observe + OBSERVE_LEAD) % OBSERVE_MODULUS
        self.store.update_observation(key[0], key[1], observe_ceiling=ceiling)
        self._ceiling[key] = ceiling

    def counted(self, server: GroupServer, obs: GroupObservation) -> None:
        if self.store is None or _key(server, _path_str(obs.path)) not in self._ceiling:
            return
        self.store.update_observation(str(server.engine.group), _path_str(obs.path), count=float(obs.count))

    def committed(self, server: GroupServer, obs: GroupObservation) -> None:
        """The Appendix A commitment grew (topic metadata was handed out): keep it across restarts."""
        if self.store is None or obs.committed_until is None:
            return
        key = _key(server, _path_str(obs.path))
        if key not in self._ceiling:
            return
        if obs.committed_until - self._committed.get(key, 0.0) > COMMIT_SLACK:
            self.store.update_observation(key[0], key[1], committed_until=obs.committed_until)
            self._committed[key] = obs.committed_until

    def ended(self, server: GroupServer, path: str) -> None:
        key = _key(server, path)
        self._ceiling.pop(key, None)
        self._committed.pop(key, None)
        if self.store is not None:
            self.store.delete_observation(key[0], key[1])

    # -- restart -------------------------------------------------------------------------------

    def pending(self, servers: dict[str, GroupServer]) -> Iterator[tuple[ObservationRecord, GroupServer]]:
        """Stored group observations whose group is served again; others are forgotten."""
        if self.store is None:
            return
        for rec in self.store.load_observations():
            server = servers.get(rec.scope)
            if server is None or str(server.engine.server) != rec.server:
                self.store.delete_observation(rec.scope, rec.path)
                continue
            yield rec, server

    def resume(
        self, rec: ObservationRecord, server: GroupServer, init_notif: Message | None, now: float
    ) -> GroupObservation | None:
        """Resume ``rec`` on its Token T with the Observe number at its ceiling; None if it cannot be."""
        assert self.store is not None
        path = tuple(p for p in rec.path.split("/") if p)
        engine = server.engine
        if (
            init_notif is None
            or not engine.is_group_observable(path)
            or engine.observation(path) is not None
            or rec.token in engine.tokens
            or (rec.ending is not None and rec.ending <= now)
        ):
            self.store.delete_observation(rec.scope, rec.path)
            return None
        original = engine.security
        if original is not None:
            resumed_security = _resumed_security(original, rec.binding)
            if resumed_security is None:  # not a group we can resume on (see _resumed_security)
                self.store.delete_observation(rec.scope, rec.path)
                return None
            engine.security = resumed_security
        try:
            obs, _shifted = engine.start(path, now, _FixedToken(rec.token))
        except McObserveError:
            self.store.delete_observation(rec.scope, rec.path)
            return None
        finally:
            engine.security = original
        expected = _blob(rec.binding).get(3) if original is not None else None
        if obs.token != rec.token or (expected is not None and obs.ph_req != expected):
            # the engine drew T differently, or the protected phantom request does not come back
            engine.cancel(obs, now, "resume failed")
            self.store.delete_observation(rec.scope, rec.path)
            return None
        obs.observe = rec.observe_ceiling
        obs.count = round(rec.count)
        obs.started_at = rec.started_at
        obs.ending = rec.ending
        obs.committed_until = rec.committed_until
        ceiling = (obs.observe + 1 + OBSERVE_LEAD) % OBSERVE_MODULUS
        key = _key(server, rec.path)
        self.store.put_observation(self._record(server, obs, ceiling))  # the new ceiling before use
        self._ceiling[key] = ceiling
        obs.rendering = RenderReason.INIT
        engine.rendered(obs, init_notif, now)  # INIT_NOTIF with Observe ceiling + 1, stored, not sent
        return obs


def _binding_blob(obs: GroupObservation) -> bytes | None:
    """What a Group OSCORE group observation needs to resume (draft §9.2.1): the protected phantom
    request's kid, Partial IV and kid context, the Gid of its group and 'ph_req' itself."""
    b = obs.binding
    request = getattr(b, "request", None)
    context = getattr(b, "context", None)
    if b is None or request is None or context is None:
        return None
    try:
        return cbor_encode(
            {
                0: bytes(request.kid),
                1: bytes(request.piv),
                2: bytes(request.kid_context),
                3: obs.ph_req,
                4: bytes(context.gid),
                5: getattr(b, "expires_at", None),
            }
        )
    except (AttributeError, TypeError, McObserveError):
        return None


def _blob(data: bytes | None) -> dict[int, Any]:
    if not data:
        return {}
    try:
        item = cbor_decode(data)
    except MalformedError:
        return {}
    return item if isinstance(item, dict) else {}


class _ResumingSecurity:
    """The server's group security, except that the next phantom request is the stored one (§9.2.1):
    same kid, Partial IV and protected bytes, so 'ph_req' and the external_aad of every notification
    stay what the subscribers hold. Notifications still get fresh Partial IVs from the persisted SSN."""

    def __init__(self, inner: Any, protected: Message, binding: Any) -> None:
        self._inner = inner
        self._protected = protected
        self._binding = binding

    def protect_phantom(self, phantom: Message, now: float) -> tuple[Message, Any]:
        return self._protected, self._binding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _resumed_security(security: Any, data: bytes | None) -> _ResumingSecurity | None:
    """The security to resume a stored observation with: a pre-arranged group (fixed Sender Context, SSN
    persisted) whose Gid is still the stored one, or a self-managed group kept in the store
    (:mod:`mcobserve.broker.durable_oscore`) that still knows the stored Gid; else None."""
    from ..oscore.groupobs import PreArrangedGroup, SelfManagedGroupSecurity, ServerBinding
    from ..oscore.protect import RequestBinding
    from ..wire import parse_message
    from .durable_oscore import DurableSelfManagedGroup

    blob = _blob(data)
    if not all(isinstance(blob.get(k), bytes) for k in (0, 1, 2, 3, 4)):
        return None
    try:
        request = RequestBinding(kid=blob[0], piv=blob[1], kid_context=blob[2])
        protected = parse_message(blob[3])
    except (McObserveError, ValueError):
        return None
    expires_at = blob.get(5)
    if isinstance(security, DurableSelfManagedGroup):  # its material is in the store too
        binding = security.binding_for(
            blob[4], request, float(expires_at) if expires_at is not None else None
        )
        return None if binding is None else _ResumingSecurity(security, protected, binding)
    if not isinstance(security, PreArrangedGroup) or isinstance(security, SelfManagedGroupSecurity):
        return None
    if blob[4] != security.context.gid:
        return None
    binding = ServerBinding(security.context, request, None, dict(security.parameters))
    return _ResumingSecurity(security, protected, binding)


class ServerPersistence:
    """``mcobserve server --store``: the group observations of one GroupServer, kept and resumed.

    It takes the server's event sink (and forwards every event to ``forward``); after the resources are
    added, :meth:`resume` restarts the stored group observations on their Token T (see the module).
    """

    def __init__(self, server: GroupServer, store: Store, forward: Any = None) -> None:
        self.server = server
        self.keeper = ObservationKeeper(store)
        self.forward = forward
        server.on_event = self.on_event

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        token_hex = event.get("token")
        obs = None
        if isinstance(token_hex, str) and kind in ("group_observation_started", "notification_sent", "count"):
            try:
                obs = self.server.engine.by_token(bytes.fromhex(token_hex))
            except ValueError:
                obs = None
        try:
            if kind == "group_observation_started" and obs is not None:
                self.keeper.started(self.server, obs)
            elif kind == "notification_sent" and obs is not None:
                self.keeper.notified(self.server, obs)
            elif kind == "count" and obs is not None:
                self.keeper.counted(self.server, obs)
            elif kind == "cancelled" and isinstance(event.get("resource"), str):
                self.keeper.ended(self.server, event["resource"])
        except McObserveError as e:  # the store failed: keep serving, say so
            if self.forward is not None:
                self.forward({"event": "store_error", "time": event.get("time"), "error": str(e)})
        if self.forward is not None:
            self.forward(event)

    async def resume(self, render: Any, now: float) -> list[GroupObservation]:
        """Resume every stored group observation of this server; ``render(path)`` gives INIT_NOTIF."""
        resumed = []
        scope = str(self.server.engine.group)
        for rec, server in list(self.keeper.pending({scope: self.server})):
            path = tuple(p for p in rec.path.split("/") if p)
            init = None
            if server.engine.is_group_observable(path):
                try:
                    init = await render(path)
                except Exception:  # the application's render failed: do not resume
                    init = None
            if init is not None and not init.code.is_successful():
                init = None
            obs = self.keeper.resume(rec, server, init, now)
            if obs is not None:
                resumed.append(obs)
                server._wake.set()  # private: let its timer loop see the resumed deadlines
                if self.forward is not None:
                    self.forward(
                        {
                            "event": "group_observation_resumed",
                            "time": round(now, 3),
                            "resource": rec.path,
                            "token": obs.token.hex(),
                            "observe": obs.observe,
                            "group": str(obs.group),
                        }
                    )
        return resumed


async def open_server_store(
    server: GroupServer, path: str, forward: Any, resources: dict[Any, Any], args: Any = None
) -> bool:
    """``mcobserve server --store PATH``: keep and resume ``server``'s group observations.

    False (after one line ``mcobserve: ...`` on stderr) when the store is not usable.
    """
    import sys
    import time

    from aiocoap import GET

    try:
        store = Store.open(path)
    except StoreError as e:
        print(f"mcobserve: {e}", file=sys.stderr, flush=True)
        return False
    if getattr(args, "group_oscore", None) == "self-managed" and not any(server.engine.observations()):
        # The self-managed group's keying material and SSN move into the store, so that its group
        # observations can be resumed too (durable_oscore); nothing was protected with the old one yet.
        from .durable_oscore import load_self_managed

        try:
            server.engine.security = load_self_managed(store, lifetime=args.key_lifetime, now=time.time())
        except StoreError as e:
            print(f"mcobserve: {e}", file=sys.stderr, flush=True)
            return False
    persistence = ServerPersistence(server, store, forward)

    async def render(p: tuple[str, ...]) -> Message | None:
        from ..aio import _glue  # a locally built request is marked incoming, as for the phantom request

        resource = resources.get(tuple(p))
        if resource is None:
            return None
        return await resource.render(
            _glue.incoming(Message(code=GET, uri_path=p), getattr(server, "_remote", None))
        )

    await persistence.resume(render, server.clock() if hasattr(server, "clock") else time.time())
    return True
