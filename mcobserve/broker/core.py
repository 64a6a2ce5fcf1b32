"""The CoAP pub-sub broker (draft-ietf-core-coap-pubsub -21) whose topic-data resources are served by
group observations (draft-ietf-core-observe-multicast-notifications §4, Appendix A).

:class:`Broker` implements :class:`~mcobserve.broker.backend.TopicSink`: every change of a topic reaches
it from the backend; its CoAP resources (collection, topic, topic-data) call the backend for every write.
Each topic-data resource is a :class:`~mcobserve.aio.server.GroupObservableResource` of a
:class:`~mcobserve.aio.server.GroupServer`: one per multicast group (one group for all topics, or one
derived per topic from a prefix, see :func:`group_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import ipaddress
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap import (
    BAD_REQUEST,
    CHANGED,
    CON,
    CONTENT,
    CREATED,
    DELETED,
    FORBIDDEN,
    GET,
    NON,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    UNSUPPORTED_CONTENT_FORMAT,
    Message,
)
from aiocoap.numbers.codes import Code

from ..aio import _glue
from ..aio.server import GroupObservableResource, GroupServer
from ..constants import (
    CONTENT_FORMAT_PUBSUB,
    DEFAULT_CODE_POINTS,
    TOPIC_PROPERTY_GROUP_OBSERVATION,
    CodePoints,
)
from ..engine.common import Endpoint
from ..engine.server import GroupPolicy, GroupSecurity, ServerEngine
from ..errors import BackendUnavailable, McObserveError, TopicError
from ..store import Store
from ..wire import InformativeResponse
from ..wire.cbor import cbor_decode, cbor_encode
from . import properties as P
from .backend import DATA_DELETED, BrokerBackend, LocalBackend
from .persist import ObservationKeeper, start_observation

log = logging.getLogger(__name__)

TOO_MANY_REQUESTS = Code(4 << 5 | 29)  # 4.29 (RFC 8516)
CONTENT_FORMAT_CBOR = 60
CONTENT_FORMAT_LINK = 40

EventSink = Callable[[dict[str, Any]], None]
Path = tuple[str, ...]


@dataclass(frozen=True)
class BrokerConfig:
    """What a broker operator chooses (flags of ``mcobserve broker``)."""

    #: Path of the topic collection (pub-sub §2.3.2: "/ps" in the examples).
    collection: Path = ("ps",)
    #: Content-Format of application/core-pubsub+cbor ("TBD606").
    pubsub_content_format: int = CONTENT_FORMAT_PUBSUB
    #: Topic property carrying the group observation (observe-multicast Appendix A.1).
    group_property: int = TOPIC_PROPERTY_GROUP_OBSERVATION
    #: Group observation policy of every topic-data resource.
    policy: GroupPolicy = field(default_factory=GroupPolicy)
    #: Publications per second and topic before 4.29 (pub-sub §4.4), and the burst allowed.
    publish_rate: float = 50.0
    publish_burst: int = 50
    #: Largest number of topics (4.03 above it: a broker on a gateway is bounded).
    max_topics: int = 100_000
    #: Max-Age on topic-data responses, or None for the CoAP default.
    data_max_age: int | None = None
    #: Per-topic multicast groups: an IPv6 multicast prefix; None: one group for all topics.
    group_prefix: ipaddress.IPv6Network | None = None
    #: Start the group observation of a topic at its first publication (before any subscriber), so the
    #: topic metadata can announce it (observe-multicast Appendix A.1).
    announce: bool = False
    #: Topic configuration and publications only over OSCORE (4.01 otherwise): set when the broker has
    #: credentials (pub-sub §6: writes SHOULD be access-controlled).
    protected_writes: bool = False
    #: Authorisation of writes: ``authorize(request, action, topic_id)`` with action one of "create",
    #: "update", "delete", "publish", "delete-data"; False gives 4.03. None: no further check.
    authorize: Callable[[Message, str, str | None], bool] | None = None

    def __post_init__(self) -> None:
        if self.publish_rate <= 0 or self.publish_burst < 1:
            raise ValueError("publish rate must be positive and burst at least 1")
        if self.group_prefix is not None:
            if not self.group_prefix.is_multicast:
                raise ValueError(f"group prefix {self.group_prefix} is not an IPv6 multicast prefix")
            if self.group_prefix.prefixlen > 120:
                raise ValueError("group prefix must leave at least 8 bits for topics (length <= 120)")

    @property
    def data_root(self) -> Path:
        return (*self.collection, "data")


def group_for(prefix: ipaddress.IPv6Network, data_path: str, port: int) -> Endpoint:
    """The multicast group of a topic: PREFIX + the low bits of SHA-256 of its topic-data path.

    Two topics may hash to the same address: with a /96 prefix (32 bits) the chance that any two of
    n topics collide is about n^2 / 2^33 (0.01 % at 1,000 topics, 1.2 % at 10,000). Colliding topics
    share the group and its rate limit; their notifications stay apart by Token (one Token space for
    the whole broker). The address is never the prefix itself.
    """
    bits = 128 - prefix.prefixlen
    digest = int.from_bytes(hashlib.sha256(data_path.encode()).digest(), "big")
    low = digest % ((1 << bits) - 1) + 1  # never all-zero
    host = ipaddress.IPv6Address(int(prefix.network_address) | low)
    return Endpoint(host, port)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(eq=False)
class Topic:
    """One topic: its properties and its topic-data state (pub-sub §4.1 lifecycle)."""

    topic_id: str
    props: dict[int, Any]
    data_path: Path
    resource: TopicDataResource
    config_resource: TopicResource
    server: GroupServer
    payload: bytes | None = None
    content_format: int | None = None
    published_at: float | None = None
    publications: int = 0
    bucket: _Bucket | None = None
    expires_at: float | None = None

    @property
    def fully_created(self) -> bool:
        return self.payload is not None

    @property
    def name(self) -> str:
        return str(self.props.get(P.TOPIC_NAME, ""))


# ==================================================================================================
# CoAP resources
# ==================================================================================================


def _error(code: Code, text: str, max_age: int | None = None) -> Message:
    m = Message(code=code, payload=text.encode()[:200])
    if max_age is not None:
        m.opt.max_age = max_age
    return m


class CollectionResource(aiocoap.resource.Resource):
    """The topic collection (pub-sub §3.1): GET, FETCH with a filter, POST to create a topic."""

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    def get_link_description(self) -> dict[str, Any]:
        return {"rt": P.RT_COLLECTION, "ct": str(CONTENT_FORMAT_LINK)}

    async def render_get(self, request: Message) -> Message:
        rts = [q[3:] for q in request.opt.uri_query if q.startswith("rt=")]
        if rts and rts[0] == P.RT_DATA:  # topic-data discovery (pub-sub §2.3.4)
            links = [t.props.get(P.TOPIC_DATA, "") for t in self.broker.topics.values()]
            return _links(links)
        if rts and rts[0] not in (P.RT_TOPIC, "*"):
            return _links([])
        return _links(self.broker.topic_hrefs())

    async def render_fetch(self, request: Message) -> Message:
        if request.opt.content_format not in (None, self.broker.config.pubsub_content_format):
            return _error(UNSUPPORTED_CONTENT_FORMAT, "FETCH filter must be application/core-pubsub+cbor")
        try:
            flt = P.decode_map(request.payload)
        except TopicError as e:
            return _error(BAD_REQUEST, str(e))
        hrefs = [
            self.broker.topic_href(t) for t in self.broker.topics.values() if P.matches(self._view(t), flt)
        ]
        return _links(hrefs)

    def _view(self, topic: Topic) -> dict[int, Any]:
        return topic.props

    async def render_post(self, request: Message) -> Message:
        return await self.broker.create_topic(request)


class TopicResource(aiocoap.resource.Resource):
    """A topic resource (pub-sub §3.2): GET, FETCH, POST, iPATCH, DELETE."""

    def __init__(self, broker: Broker, topic_id: str) -> None:
        super().__init__()
        self.broker = broker
        self.topic_id = topic_id

    def get_link_description(self) -> dict[str, Any]:
        return {"rt": P.RT_TOPIC, "ct": str(self.broker.config.pubsub_content_format)}

    def _topic(self) -> Topic | None:
        return self.broker.topics.get(self.topic_id)

    async def render_get(self, request: Message) -> Message:
        topic = self._topic()
        if topic is None:
            return _error(NOT_FOUND, "no such topic")
        return self.broker.props_response(CONTENT, self.broker.representation(topic, request))

    async def render_fetch(self, request: Message) -> Message:
        topic = self._topic()
        if topic is None:
            return _error(NOT_FOUND, "no such topic")
        if request.opt.content_format != CONTENT_FORMAT_CBOR:
            return _error(UNSUPPORTED_CONTENT_FORMAT, "FETCH on a topic takes application/cbor (60)")
        try:
            keys = P.decode_key_array(request.payload)
        except TopicError as e:
            return _error(BAD_REQUEST, str(e))
        full = self.broker.representation(topic, request)
        return self.broker.props_response(CONTENT, {k: full[k] for k in keys if k in full})

    async def render_post(self, request: Message) -> Message:
        return await self.broker.update_topic(self.topic_id, request, replace=True)

    async def render_ipatch(self, request: Message) -> Message:
        return await self.broker.update_topic(self.topic_id, request, replace=False)

    async def render_delete(self, request: Message) -> Message:
        if self._topic() is None:
            return _error(NOT_FOUND, "no such topic")
        if (refusal := self.broker.refused(request, "delete", self.topic_id)) is not None:
            return refusal
        try:
            await self.broker.backend.delete_topic(self.topic_id)
        except BackendUnavailable as e:
            return _error(SERVICE_UNAVAILABLE, str(e), e.retry_after)
        return Message(code=DELETED)

    async def render(self, request: Message) -> Message:
        if request.code.name == "iPATCH" or int(request.code) == 7:
            return await self.render_ipatch(request)
        return await super().render(request)


class TopicDataResource(GroupObservableResource):
    """A topic-data resource (pub-sub §4.2): PUT publishes, GET reads, Observe subscribes, DELETE."""

    def __init__(self, broker: Broker, topic_id: str) -> None:
        super().__init__()
        self.broker = broker
        self.topic_id = topic_id
        self._last_con: dict[Any, float] = {}

    def get_link_description(self) -> dict[str, Any]:
        link = super().get_link_description()
        link["rt"] = P.RT_DATA
        topic = self.broker.topics.get(self.topic_id)
        if topic is not None and P.TOPIC_CONTENT_FORMAT in topic.props:
            link["ct"] = str(topic.props[P.TOPIC_CONTENT_FORMAT])
        return link

    def _topic(self) -> Topic | None:
        return self.broker.topics.get(self.topic_id)

    async def render_get(self, request: Message) -> Message:
        topic = self._topic()
        if topic is None or not topic.fully_created:
            return _error(NOT_FOUND, "topic is not FULLY CREATED (nothing published yet)")
        m = Message(code=CONTENT, payload=topic.payload)
        if topic.content_format is not None:
            m.opt.content_format = topic.content_format
        if self.broker.config.data_max_age is not None:
            m.opt.max_age = self.broker.config.data_max_age
        return m

    async def render_put(self, request: Message) -> Message:
        return await self.broker.publish(self.topic_id, request)

    async def render_delete(self, request: Message) -> Message:
        topic = self._topic()
        if topic is None or not topic.fully_created:
            return _error(NOT_FOUND, "no topic-data")
        if (refusal := self.broker.refused(request, "delete-data", self.topic_id)) is not None:
            return refusal
        try:
            await self.broker.backend.publish(self.topic_id, b"", DATA_DELETED)
        except BackendUnavailable as e:
            return _error(SERVICE_UNAVAILABLE, str(e), e.retry_after)
        return Message(code=DELETED)

    def registration_needs_verification(self, request: Message) -> bool:
        """A subscription to a topic not FULLY CREATED is a small 4.04 (pub-sub §4.2.2): no Echo first."""
        topic = self._topic()
        return topic is not None and topic.fully_created

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        request = pipe.request
        if request.code == GET and request.opt.observe == 0:
            topic = self._topic()
            if topic is None or not topic.fully_created:
                # pub-sub §4.2.2: 4.04 before the first publication; no group observation starts.
                pipe.add_response(await self.render_get(request), is_last=True)
                return
            limit = topic.props.get(P.MAX_SUBSCRIBERS)
            if limit is not None and self.broker.subscribers(topic) >= limit:
                # pub-sub §4.2.2, RFC 7641 §4.1: 2.05 without Observe, the subscription failed.
                pipe.add_response(await self.render_get(request), is_last=True)
                return
        await super().render_to_pipe(pipe)

    def updated_state(self, response: Message | None = None) -> None:
        """Notify; a traditional subscriber gets a Confirmable notification every 'observer-check' s."""
        topic = self._topic()
        check = P.DEFAULT_OBSERVER_CHECK if topic is None else topic.props.get(P.OBSERVER_CHECK, 86400)
        if response is None and self._observations and topic is not None and topic.fully_created:
            now = time.monotonic()
            for o in list(self._observations):
                # NON mostly, CON at least every 'observer-check' seconds (pub-sub §4.2.3, RFC 7641 §4.5)
                m = _sync_render(self, topic)
                last = self._last_con.setdefault(o, now)
                if now - last >= check:
                    self._last_con[o] = now
                    m.mtype = CON
                else:
                    m.mtype = NON
                o.trigger(m)
            if len(self._last_con) > 2 * len(self._observations) + 8:  # forget ended subscribers
                self._last_con = {o: t for o, t in self._last_con.items() if o in self._observations}
            if self._mc_server is not None:
                self._mc_server._changed(self._mc_path)
            return
        super().updated_state(response)

    def end_traditional(self, count: int | None = None) -> int:
        """Final 4.04 to traditional subscribers (RFC 7641 §3.2): all, or the ``count`` latest."""
        observations = list(self._observations)
        if count is not None:
            observations = observations[len(observations) - count :] if count > 0 else []
        for o in observations:
            self._last_con.pop(o, None)
            o.trigger(Message(code=NOT_FOUND, payload=b"unsubscribed"))
        return len(observations)


def _sync_render(resource: TopicDataResource, topic: Topic) -> Message:
    m = Message(code=CONTENT, payload=topic.payload or b"")
    if topic.content_format is not None:
        m.opt.content_format = topic.content_format
    if resource.broker.config.data_max_age is not None:
        m.opt.max_age = resource.broker.config.data_max_age
    return m


def _links(hrefs: list[str]) -> Message:
    payload = ",".join(f"<{h}>" for h in hrefs if h)
    return Message(code=CONTENT, content_format=CONTENT_FORMAT_LINK, payload=payload.encode())


class BrokerIntrospection(aiocoap.resource.Resource):
    """``/.well-known/core/mc-sender?token=HEX`` for every topic's group observation (App. A.2)."""

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    async def render_get(self, request: Message) -> Message:
        tokens = [q[len("token=") :] for q in request.opt.uri_query if q.startswith("token=")]
        if len(tokens) != 1:
            return _error(BAD_REQUEST, "exactly one token=HEX query parameter expected")
        try:
            token = bytes.fromhex(tokens[0])
        except ValueError:
            return _error(BAD_REQUEST, "token is not hexadecimal")
        payload = self.broker.introspect(token)
        if payload is None:
            return _error(NOT_FOUND, "no group observation with this token")
        return Message(code=CONTENT, content_format=self.broker.code_points.content_format, payload=payload)


# ==================================================================================================
# The broker
# ==================================================================================================


class Broker:
    """Topics, their resources and their group observations; the backend's :class:`TopicSink`."""

    def __init__(
        self,
        server: GroupServer,
        backend: BrokerBackend,
        *,
        config: BrokerConfig | None = None,
        store: Store | None = None,
        token_length: int = 2,
        security: GroupSecurity | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.server = server
        self.backend = backend
        self.config = config or BrokerConfig()
        self.store = store
        self.code_points: CodePoints = server.code_points
        self.token_length = token_length
        self.security = security
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.on_event = on_event
        self.topics: dict[str, Topic] = {}
        self._by_name: dict[str, str] = {}
        self._by_data: dict[str, str] = {}
        self._servers: dict[Endpoint, GroupServer] = {server.engine.group: server}
        self._by_token: dict[bytes, GroupServer] = {}
        self._expiry: list[tuple[float, str]] = []
        self._expiry_wake = asyncio.Event()
        self._expiry_task: asyncio.Task[None] | None = None
        self._keeper = ObservationKeeper(store) if store is not None else None
        self._restoring = False
        self._group_port = server.engine.group.port  # GRP_PORT of groups derived from the prefix
        server.on_event = self._server_event
        site = server.site
        site.add_resource(self.config.collection, CollectionResource(self))
        site.add_resource([".well-known", "core", "mc-sender"], BrokerIntrospection(self))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        bind: Endpoint,
        group: Endpoint | None = None,
        *,
        config: BrokerConfig | None = None,
        group_port: int = 61616,
        interface: str | None = None,
        store: Store | None = None,
        backend: BrokerBackend | None = None,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        token_length: int = 2,
        hops: int = 1,
        security: GroupSecurity | None = None,
        server_credentials: Any = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_event: EventSink | None = None,
        **server_options: Any,
    ) -> Broker:
        """Bind, start the backend (replaying stored topics), resume stored group observations.

        ``server_options`` go to :meth:`GroupServer.create` (``congestion``, ``authorize``,
        ``trusted_network``, ``guard_limits``, ``max_message_size``); per-topic groups share them.
        """
        config = config or BrokerConfig()
        if group is None:
            if config.group_prefix is None:
                raise ValueError("give a group or a group prefix")
            group = group_for(config.group_prefix, "/" + "/".join(config.collection), group_port)
        site = _glue.LeanSite()  # aiocoap's Site without a deep copy per request
        site.add_resource(
            [".well-known", "core"], aiocoap.resource.WKCResource(site.get_resources_as_linkheader)
        )
        server = await GroupServer.create(
            bind,
            group,
            interface=interface,
            site=site,
            code_points=code_points,
            token_length=token_length,
            hops=hops,
            rng=rng,
            clock=clock,
            security=security,
            server_credentials=server_credentials,
            **server_options,
        )
        self = cls(
            server,
            backend or LocalBackend(store, clock=clock),
            config=config,
            store=store,
            token_length=token_length,
            security=security,
            clock=clock,
            rng=rng,
            on_event=on_event,
        )
        self._group_port = group_port
        try:
            await self.start()
        except BaseException:
            await server.shutdown()
            raise
        return self

    async def start(self) -> None:
        """Replay the backend's topics, then resume the stored group observations (same Token T)."""
        self._restoring = True
        try:
            await self.backend.start(self)
        finally:
            self._restoring = False
        if self._keeper is not None:
            for rec, server in list(self._keeper.pending(self._servers_by_scope())):
                topic = self._topic_by_path(server, rec.path)
                init = _sync_render(topic.resource, topic) if topic and topic.fully_created else None
                obs = self._keeper.resume(rec, server, init, self.clock())
                if obs is not None:
                    self._by_token[obs.token] = server
                    server._wake.set()  # private: let its timer loop see the resumed deadlines
                    self._emit(
                        "group_observation_resumed",
                        resource=rec.path,
                        topic=topic.topic_id if topic else None,
                        token=obs.token.hex(),
                        observe=obs.observe,
                        group=str(obs.group),
                    )
        self._expiry_task = asyncio.create_task(self._run_expiry())
        self._emit("broker_started", topics=len(self.topics), server=str(self.server.engine.server))

    def _servers_by_scope(self) -> dict[str, GroupServer]:
        return {str(g): s for g, s in self._servers.items()}

    def _topic_by_path(self, server: GroupServer, path: str) -> Topic | None:
        tid = self._by_data.get(path)
        return self.topics.get(tid) if tid is not None else None

    async def shutdown(self) -> None:
        """Cancel every group observation with the multicast 5.03 (draft §4.5) and close."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        for s in list(self._servers.values()):
            if s is not self.server:
                await _shutdown_secondary(s)
        await self.server.shutdown()
        await self.backend.close()

    # -- groups --------------------------------------------------------------------------------

    def server_for(self, data_path: str) -> GroupServer:
        """The GroupServer of the topic's multicast group (a prefix-derived group, or the one group)."""
        if self.config.group_prefix is None:
            return self.server
        group = group_for(self.config.group_prefix, data_path, self._group_port)
        server = self._servers.get(group)
        if server is None:
            engine = ServerEngine(
                self.server.engine.server,
                group,
                code_points=self.code_points,
                token_length=self.token_length,
                security=self.security,
                congestion=self.server.engine.congestion,  # the §4.4 budget is per group
                max_message_size=self.server.engine.max_message_size,
            )
            engine.tokens = self.server.engine.tokens  # one Token space: introspection by Token alone
            server = GroupServer(
                self.server.ctx,
                engine,
                self.server.site,
                ifindex=self.server.ifindex,
                rng=self.rng,
                clock=self.clock,
                on_event=self._server_event,
                authorize=self.server.authorize,  # one authorisation hook, one source guard
                guard=self.server.guard,
            )
            self._servers[group] = server
        return server

    # -- TopicSink -----------------------------------------------------------------------------

    def apply_topic(self, topic_id: str, props: dict[int, Any]) -> None:
        """Create or update a topic's state and resources (from the backend)."""
        topic = self.topics.get(topic_id)
        if topic is None:
            data_uri = str(props[P.TOPIC_DATA])
            data_path = _path_of(data_uri)
            server = self.server_for(data_uri)
            res = TopicDataResource(self, topic_id)
            conf = TopicResource(self, topic_id)
            topic = Topic(topic_id, props, data_path, res, conf, server)
            self.topics[topic_id] = topic
            self._by_name[topic.name] = topic_id
            self._by_data[data_uri] = topic_id
            self.server.site.add_resource((*self.config.collection, topic_id), conf)
            server.add_resource(data_path, res, self.config.policy)
            if P.INITIALIZE in props:
                self._set_data(topic, props[P.INITIALIZE], props.get(P.TOPIC_CONTENT_FORMAT))
            self._emit(
                "topic_created",
                topic=topic_id,
                name=topic.name,
                topic_data=data_uri,
                group=str(server.engine.group),
            )
        else:
            old_limit = topic.props.get(P.MAX_SUBSCRIBERS)
            topic.props = props
            new_limit = props.get(P.MAX_SUBSCRIBERS)
            if new_limit is not None and (old_limit is None or new_limit < old_limit):
                excess = len(topic.resource._observations) - new_limit
                if excess > 0:  # pub-sub §3.2.3: unsubscribed with a final 4.04
                    topic.resource.end_traditional(excess)
            self._emit("topic_updated", topic=topic_id, name=topic.name)
        topic.expires_at = P.expiration(props)
        if topic.expires_at is not None:
            heapq.heappush(self._expiry, (topic.expires_at, topic_id))
            self._expiry_wake.set()

    def apply_delete(self, topic_id: str) -> None:
        """Delete a topic: its topic-data goes, subscribers get 4.04, the group observation 5.03."""
        topic = self.topics.pop(topic_id, None)
        if topic is None:
            return
        if self._by_name.get(topic.name) == topic_id:
            del self._by_name[topic.name]
        data_uri = str(topic.props.get(P.TOPIC_DATA))
        self._by_data.pop(data_uri, None)
        with contextlib.suppress(KeyError):
            self.server.site.remove_resource((*self.config.collection, topic_id))
        topic.server.remove_resource(topic.data_path)  # multicast 5.03 and final 4.04s (RFC 7641 §3.2)
        self._emit("topic_deleted", topic=topic_id, name=topic.name)

    def apply_publication(self, topic_id: str, payload: bytes, content_format: int) -> None:
        """A publication (or the deletion of the topic-data) reaches subscribers."""
        topic = self.topics.get(topic_id)
        if topic is None:
            return
        if content_format == DATA_DELETED:
            was = topic.fully_created
            topic.payload = None
            topic.content_format = None
            topic.published_at = None
            if was and not self._restoring:
                topic.server.cancel(topic.data_path, "topic-data deleted")
                topic.resource.end_traditional()
            self._emit("topic_data_deleted", topic=topic_id)
            return
        self._set_data(topic, payload, content_format)

    def _set_data(self, topic: Topic, payload: bytes, content_format: int | None) -> None:
        topic.payload = bytes(payload)
        topic.content_format = content_format
        topic.published_at = self.clock()
        topic.publications += 1
        if self._restoring:
            return
        topic.resource.updated_state()
        if self.config.announce and topic.server.engine.observation(topic.data_path) is None:
            self._announce(topic)
        if self.on_event is not None:
            self._emit("published", topic=topic.topic_id, size=len(payload), content_format=content_format)

    def _announce(self, topic: Topic) -> None:
        """Start the group observation before any registration, for the topic metadata (App. A.1)."""
        try:
            obs = start_observation(
                topic.server, topic.data_path, _sync_render(topic.resource, topic), self.clock(), self.rng
            )
        except McObserveError as e:
            log.warning("cannot start the group observation of %s: %s", topic.topic_id, e)
            return
        self._server_event(
            {
                "event": "group_observation_started",
                "time": round(self.clock(), 3),
                "resource": _path_str(topic.data_path),
                "token": obs.token.hex(),
                "group": str(obs.group),
                "server": str(obs.server),
                "shifted": 0,
                "announced": True,
            }
        )

    # -- requests ------------------------------------------------------------------------------

    def refused(self, request: Message, action: str, topic_id: str | None = None) -> Message | None:
        """4.01 for an unprotected write to a secured broker, 4.03 when the authorisation says no."""
        if self.config.protected_writes and not _glue.is_oscore_protected(request):
            return _error(UNAUTHORIZED, "this broker takes topic changes and publications over OSCORE only")
        if self.config.authorize is not None:
            try:
                allowed = self.config.authorize(request, action, topic_id)
            except Exception:
                log.exception("authorisation hook failed")
                allowed = False
            if not allowed:
                return _error(FORBIDDEN, f"not allowed to {action}")
        return None

    def props_response(self, code: Code, props: dict[int, Any]) -> Message:
        return Message(
            code=code, content_format=self.config.pubsub_content_format, payload=cbor_encode(props)
        )

    def representation(self, topic: Topic, request: Message | None = None) -> dict[int, Any]:
        """The topic's property map, with the group observation when one exists (Appendix A.1).

        Under Group OSCORE, a request that came over OSCORE also gets the group parameters that an
        informative response carries (§9.1 signalling, or the App. C keying material), so that the
        client can join from the metadata as from an informative response.
        """
        props = dict(topic.props)
        engine = topic.server.engine
        obs = engine.observation(topic.data_path)
        if obs is not None and obs.ready:
            now = self.clock()
            payload = engine.introspect(obs.token, now)
            if payload is not None:
                if engine.security is not None and request is not None and _glue.is_oscore_protected(request):
                    try:
                        extra = engine.security.informative_parameters(obs.binding, now)
                        payload = dataclasses.replace(InformativeResponse.decode(payload), **extra).encode()
                    except (McObserveError, TypeError) as e:
                        log.warning("group parameters left out of the topic metadata: %s", e)
                props[self.config.group_property] = cbor_decode(payload)
                if self._keeper is not None:
                    self._keeper.committed(topic.server, obs)
        return props

    def topic_href(self, topic: Topic) -> str:
        return "/" + "/".join((*self.config.collection, topic.topic_id))

    def topic_hrefs(self) -> list[str]:
        return [self.topic_href(t) for t in self.topics.values()]

    def subscribers(self, topic: Topic) -> int:
        """Traditional subscribers plus the group observation's observer count (draft §4, §8)."""
        obs = topic.server.engine.observation(topic.data_path)
        return len(topic.resource._observations) + (math.ceil(obs.count) if obs is not None else 0)

    def _content_format(self, request: Message) -> int | None:
        cf = request.opt.content_format
        return None if cf is None else int(cf)

    def _new_id(self, taken: Callable[[str], bool], length: int = 3) -> str:
        for _ in range(64):
            candidate = self.rng.getrandbits(8 * length).to_bytes(length, "big").hex()
            if not taken(candidate):
                return candidate
        return self._new_id(taken, length + 1)

    async def create_topic(self, request: Message) -> Message:
        """POST to the collection (pub-sub §3.1.3): 2.01, Location-Path, the full property map."""
        if (refusal := self.refused(request, "create")) is not None:
            return refusal
        if self._content_format(request) not in (None, self.config.pubsub_content_format):
            return _error(UNSUPPORTED_CONTENT_FORMAT, "topic representation must be core-pubsub+cbor")
        try:
            props = P.decode_map(request.payload)
            props.pop(self.config.group_property, None)
            P.check_values(props)
            for key in (P.TOPIC_NAME, P.RESOURCE_TYPE):
                if key not in props:
                    raise TopicError(f"{P.NAMES[key]} is required to create a topic")
            if props[P.TOPIC_NAME] in self._by_name:
                raise TopicError("topic-name is already in use")
            if len(self.topics) >= self.config.max_topics:
                return _error(Code(4 << 5 | 3), "the broker holds its maximum number of topics")
            topic_id = self._new_id(lambda c: c in self.topics or (*self.config.collection, c) == ())
            if P.TOPIC_DATA in props:
                data_uri = props[P.TOPIC_DATA]
                root = "/" + "/".join(self.config.data_root) + "/"
                rest = data_uri[len(root) :] if data_uri.startswith(root) else ""
                bad = set("?#%") & set(rest) or any(seg in ("", ".", "..") for seg in rest.split("/"))
                if not rest or bad:
                    raise TopicError(f"topic-data must be a path under {root} on this broker")
                if data_uri in self._by_data or _path_of(data_uri) == self.config.collection:
                    raise TopicError("topic-data is already in use")
            else:
                root = self.config.data_root
                data_id = self._new_id(lambda c: "/" + "/".join((*root, c)) in self._by_data, 4)
                props[P.TOPIC_DATA] = "/" + "/".join((*root, data_id))
            expires = P.expiration(props)
            if expires is not None and expires <= self.clock():
                raise TopicError("expiration-date is in the past")
        except TopicError as e:
            return _error(BAD_REQUEST, str(e))
        try:
            await self.backend.put_topic(topic_id, props)
        except BackendUnavailable as e:
            return _error(SERVICE_UNAVAILABLE, str(e), e.retry_after)
        topic = self.topics.get(topic_id)
        response = self.props_response(CREATED, self.representation(topic) if topic else props)
        response.opt.location_path = (*self.config.collection, topic_id)
        return response

    async def update_topic(self, topic_id: str, request: Message, *, replace: bool) -> Message:
        """POST (full replacement) or iPATCH (partial) on a topic (pub-sub §3.2.3, §3.2.4)."""
        topic = self.topics.get(topic_id)
        if topic is None:
            return _error(NOT_FOUND, "no such topic")
        if (refusal := self.refused(request, "update", topic_id)) is not None:
            return refusal
        if self._content_format(request) not in (None, self.config.pubsub_content_format):
            return _error(UNSUPPORTED_CONTENT_FORMAT, "topic representation must be core-pubsub+cbor")
        try:
            change = P.decode_map(request.payload)
            change.pop(self.config.group_property, None)
            for key in P.IMMUTABLE:
                if key in change and change[key] != topic.props.get(key):
                    raise TopicError(f"{P.NAMES[key]} is immutable")
            if replace:
                props = {k: topic.props[k] for k in P.IMMUTABLE if k in topic.props}
                props.update(change)
            else:
                props = dict(topic.props)
                props.update(change)
            P.check_values(props)
        except TopicError as e:
            return _error(BAD_REQUEST, str(e))
        try:
            await self.backend.put_topic(topic_id, props)
        except BackendUnavailable as e:
            return _error(SERVICE_UNAVAILABLE, str(e), e.retry_after)
        topic = self.topics.get(topic_id)
        return self.props_response(CHANGED, self.representation(topic) if topic else props)

    async def publish(self, topic_id: str, request: Message) -> Message:
        """PUT on topic-data (pub-sub §4.2.1): 2.01 first, 2.04 after; 4.15; 4.29 with Max-Age."""
        topic = self.topics.get(topic_id)
        if topic is None:
            return _error(NOT_FOUND, "no such topic")
        if (refusal := self.refused(request, "publish", topic_id)) is not None:
            return refusal
        want = topic.props.get(P.TOPIC_CONTENT_FORMAT)
        cf = self._content_format(request)
        if want is not None and cf != want:
            return _error(UNSUPPORTED_CONTENT_FORMAT, f"this topic takes Content-Format {want}")
        now = self.clock()
        wait = self._rate_limit(topic, now)
        if wait is not None:
            return _error(TOO_MANY_REQUESTS, "publishing too fast", max(1, math.ceil(wait)))
        first = not topic.fully_created
        try:
            await self.backend.publish(topic_id, request.payload, cf if cf is not None else 0)
        except BackendUnavailable as e:
            return _error(SERVICE_UNAVAILABLE, str(e), e.retry_after)
        return Message(code=CREATED if first else CHANGED)

    def _rate_limit(self, topic: Topic, now: float) -> float | None:
        """Token bucket per topic (pub-sub §4.4); seconds to wait, or None if the publication passes."""
        rate, burst = self.config.publish_rate, float(self.config.publish_burst)
        b = topic.bucket
        if b is None:
            b = topic.bucket = _Bucket(burst, now)
        b.tokens = min(burst, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens < 1.0:
            return (1.0 - b.tokens) / rate
        b.tokens -= 1.0
        return None

    # -- expiration ----------------------------------------------------------------------------

    async def _run_expiry(self) -> None:
        """Delete topics whose expiration-date passed (pub-sub §2.2.1), through the backend."""
        while True:
            now = self.clock()
            while self._expiry and self._expiry[0][0] <= now:
                at, topic_id = heapq.heappop(self._expiry)
                topic = self.topics.get(topic_id)
                if topic is None or topic.expires_at != at:
                    continue  # stale entry: deleted or re-dated
                try:
                    await self.backend.delete_topic(topic_id)
                    self._emit("topic_expired", topic=topic_id, name=topic.name)
                except BackendUnavailable:
                    heapq.heappush(self._expiry, (now + 5.0, topic_id))
                    topic.expires_at = now + 5.0
            timeout = None if not self._expiry else max(0.0, self._expiry[0][0] - self.clock())
            self._expiry_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._expiry_wake.wait(), timeout)

    # -- introspection -------------------------------------------------------------------------

    def introspect(self, token: bytes) -> bytes | None:
        server = self._by_token.get(token)
        if server is None:
            return None
        return server.engine.introspect(token, self.clock())

    def topic_by_name(self, name: str) -> Topic | None:
        tid = self._by_name.get(name)
        return self.topics.get(tid) if tid is not None else None

    # -- events --------------------------------------------------------------------------------

    def _server_event(self, event: dict[str, Any]) -> None:
        try:
            self._keep(event)
        except McObserveError as e:  # the store failed: keep serving, say so
            log.error("store: %s", e)
            self._emit("store_error", error=str(e))
        if self.on_event is not None:
            tid = self._by_data.get(str(event.get("resource")))
            if tid is not None:
                event = {**event, "topic": tid}
            try:
                self.on_event(event)
            except Exception:
                log.exception("event sink failed")

    def _keep(self, event: dict[str, Any]) -> None:
        """Mirror the group observations into the store (and the Token index for introspection)."""
        kind = event.get("event")
        if kind == "group_observation_started":
            token = bytes.fromhex(event["token"])
            server = self._server_of(event)
            if server is not None:
                self._by_token[token] = server
                if self._keeper is not None:
                    obs = server.engine.by_token(token)
                    if obs is not None:
                        self._keeper.started(server, obs)
        elif kind == "notification_sent":
            if self._keeper is not None:
                server = self._server_of(event)
                obs = server.engine.by_token(bytes.fromhex(event["token"])) if server else None
                if obs is not None:
                    self._keeper.notified(server, obs)
        elif kind == "cancelled":
            token = bytes.fromhex(event["token"])
            server = self._by_token.pop(token, None)
            if server is not None and self._keeper is not None:
                self._keeper.ended(server, event["resource"])
        elif kind == "count":
            server = self._server_of(event)
            if server is not None and self._keeper is not None:
                obs = server.engine.by_token(bytes.fromhex(event["token"]))
                if obs is not None:
                    self._keeper.counted(server, obs)

    def _server_of(self, event: dict[str, Any]) -> GroupServer | None:
        tid = self._by_data.get(str(event.get("resource")))
        if tid is not None and tid in self.topics:
            return self.topics[tid].server
        token = event.get("token")
        return self._by_token.get(bytes.fromhex(token)) if isinstance(token, str) else None

    def _emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event({"event": event, "time": round(self.clock(), 3), **fields})
            except Exception:
                log.exception("event sink failed")


async def _shutdown_secondary(server: GroupServer) -> None:
    """A GroupServer sharing the primary's context: cancel its observations, stop its timer only."""
    server._execute(server.engine.shutdown(server.clock()))
    server._closed = True
    server._wake.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(server._timer), 1.0)
    server._timer.cancel()
    for t in list(server._tasks):
        t.cancel()
    await asyncio.gather(server._timer, *server._tasks, return_exceptions=True)


def _path_str(path: Path) -> str:
    return "/" + "/".join(path)


def _path_of(uri: str) -> Path:
    return tuple(p for p in uri.split("/") if p)


__all__ = [
    "Broker",
    "BrokerConfig",
    "CollectionResource",
    "Topic",
    "TopicDataResource",
    "TopicResource",
    "group_for",
]
