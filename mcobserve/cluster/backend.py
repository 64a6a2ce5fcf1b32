"""NatsBackend: broker nodes at many sites act as one pub-sub broker, on NATS JetStream.

Implements the broker's ``BrokerBackend`` seam (:mod:`mcobserve.broker.backend`):

* **Topic configuration** (pub-sub §3.2) lives in the replicated JetStream key-value bucket
  ``<prefix>_topics``: key = :func:`~mcobserve.cluster.naming.topic_key`, value = the CBOR property
  map. Every node watches the bucket (an ordered consumer) and applies creates, changes and deletes
  through its ``TopicSink``.
* **Publications** (pub-sub §4.2.1) go to one subject per topic, ``<prefix>.data.<key>``, in the
  stream ``<prefix>_data`` with ``max_msgs_per_subject`` = ``--nats-history`` (default 64): the
  latest publication of every topic is retained, so a node that starts later serves the current
  value at once, and the few before it let a node that missed some (a NATS server died between
  storing and pushing them) fill the gap in order. Every node, the publishing one included, applies
  publications from its subscription, in stream order: all nodes see one order per topic.
* A local write is accepted only after JetStream acknowledged it (replicated to a quorum);
  otherwise :class:`~mcobserve.errors.BackendUnavailable` (the broker answers 5.03 + Max-Age).
  Retries within the write timeout carry the same ``Nats-Msg-Id``, so JetStream stores a write once.
* Node-local state (Token T, Observe numbering, SRV_ADDR) is the broker's, in its own SQLite store.
  This backend also keeps a **local copy** of topics and latest publications in that store (plus the
  last applied stream sequences), so a node restarted while NATS is unreachable serves its last
  values, and a node that restarts resumes the streams where it stopped (no publication twice).
* NATS unreachable: local subscribers keep their last values; writes get 5.03 at once; nats-py
  reconnects by itself and the ordered consumers are re-created from the last applied sequence.

Nothing here walks every topic per event; a full resynchronisation (a new NATS deployment whose
streams were re-created) is O(topics) once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    StorageType,
    StreamConfig,
)

from ..errors import BackendUnavailable, McObserveError, StoreError
from ..wire.cbor import cbor_decode, cbor_encode
from .errors import ClusterError
from .naming import key_topic, topic_key
from .options import ClusterOptions

log = logging.getLogger(__name__)

#: ``content_format`` of a publication that deletes the topic-data (pub-sub §4.2.4); the same value
#: as ``mcobserve.broker.backend.DATA_DELETED`` (not imported: the cluster depends only on the seam).
DATA_DELETED = -1

HDR_CF = "Mco-Content-Format"
HDR_ORIGIN = "Mco-Origin"
HDR_TIME = "Mco-Time"
HDR_GEN = "Mco-Gen"
HDR_MSGID = "Nats-Msg-Id"
KV_OP = "KV-Operation"

META_KV_SEQ = "cluster.kv_seq"
META_DATA_SEQ = "cluster.data_seq"
META_KV_EPOCH = "cluster.kv_epoch"
META_DATA_EPOCH = "cluster.data_epoch"
META_GEN = "cluster.gen."

#: Publications whose topic has not reached this node yet (bounded; oldest dropped first).
MAX_PENDING = 10_000
#: Latency samples kept for :meth:`NatsBackend.stats` (ring buffer).
LAG_SAMPLES = 4096
#: How long the consumer path holds a message back so that the live path (RePublish) applies it
#: first; the consumer only fills gaps (after a reconnect or a stream leader change).
CATCH_UP_GRACE = 0.25
#: The consumer position is written to the store at most this often (and at close); a restart
#: re-reads at most this much, applied quietly during start (per-topic sequences skip repeats).
SEQ_SAVE_INTERVAL = 1.0
#: At most one log line per kind per this many seconds.
LOG_INTERVAL = 10.0

_TRANSIENT = (
    asyncio.TimeoutError,
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    OSError,
)


class _RateLimitedLog:
    """One log line per kind per :data:`LOG_INTERVAL` seconds, with the count of suppressed ones."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(kind, (-1e9, 0))
        if now - last < LOG_INTERVAL:
            self._last[kind] = (last, suppressed + 1)
            return
        self._last[kind] = (now, 0)
        if suppressed:
            msg += f" ({suppressed} similar suppressed)"
        log.log(level, msg, *args)


@dataclass
class ClusterStats:
    """What this node measured (for ``--json``, the benchmark and the tests)."""

    writes_accepted: int = 0
    writes_refused: int = 0
    topics_applied: int = 0
    deletes_applied: int = 0
    publications_applied: int = 0
    duplicates_skipped: int = 0
    stale_dropped: int = 0
    #: live (RePublish) messages left to the consumer because an earlier one of the topic was lost
    live_gaps: int = 0
    malformed: int = 0
    resyncs: int = 0
    disconnects: int = 0
    reconnects: int = 0
    #: seconds from the origin's write to this node's apply (origin clock vs. local clock)
    topic_lag: deque[float] = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))
    data_lag: deque[float] = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))

    def summary(self) -> dict[str, Any]:
        """Counters plus p50/p99 of the lags in milliseconds."""

        def pct(values: deque[float], q: float) -> float | None:
            if not values:
                return None
            s = sorted(values)
            return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 3)

        out: dict[str, Any] = {
            k: v for k, v in self.__dict__.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        out["topic_lag_ms_p50"] = pct(self.topic_lag, 0.5)
        out["topic_lag_ms_p99"] = pct(self.topic_lag, 0.99)
        out["data_lag_ms_p50"] = pct(self.data_lag, 0.5)
        out["data_lag_ms_p99"] = pct(self.data_lag, 0.99)
        return out


class _Follower:
    """An ordered push consumer of one stream, without flow control, that re-creates itself.

    Applies messages strictly in stream order. On a gap in the consumer sequence, a missed idle
    heartbeat (the consumer or its server is gone) or a reconnect, it re-creates the (ephemeral,
    in-memory) consumer from the last applied stream sequence + 1, retrying while NATS is away.
    nats-py's own ordered consumer answers flow control on a 0.25 s poll, which stalls delivery
    long enough for the per-topic history limit to drop publications; this one has no such stall.
    A fresh follower (nothing applied yet) starts at ``fresh_policy``.
    """

    def __init__(
        self,
        backend: NatsBackend,
        stream: str,
        subject: str,
        on_msg: Callable[[Msg], Any],
        last_seq: Callable[[], int],
        fresh_policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> None:
        self.b = backend
        self.fresh_policy = fresh_policy
        self.stream = stream
        self.subject = subject
        self.on_msg = on_msg
        self.last_seq = last_seq
        self.hb = backend.options.heartbeat
        self._sub: Any = None
        self._consumer: str | None = None
        self._cseq = 0
        self._last_activity = time.monotonic()
        self._need_reset = False
        self._watch: asyncio.Task[None] | None = None
        self.resets = 0
        self.pending: int | None = None  # from the last delivered message's metadata

    async def start(self) -> None:
        await self._create()
        self._watch = asyncio.create_task(self._watchdog(), name=f"mcobserve-follow-{self.stream}")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
            self._watch = None
        await self._drop()

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        name, self._consumer = self._consumer, None
        if name is not None and self.b._nc is not None and self.b._nc.is_connected:
            with contextlib.suppress(Exception):
                await self.b._js._jsm.delete_consumer(self.stream, name)

    async def _create(self) -> None:
        nc, js = self.b._nc, self.b._js
        await self._drop()
        inbox = nc.new_inbox()
        self._cseq = 0
        self.pending = None
        self._sub = await nc.subscribe(inbox, cb=self._on, pending_msgs_limit=512 * 1024)
        start = self.last_seq() + 1
        cfg = ConsumerConfig(
            deliver_subject=inbox,
            filter_subject=self.subject,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else self.fresh_policy,
            opt_start_seq=start if start > 1 else None,
            idle_heartbeat=self.hb,
            flow_control=False,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=max(5.0, 10 * self.hb),
        )
        info = await js._jsm.add_consumer(self.stream, config=cfg, timeout=self.b.options.write_timeout)
        self._consumer = info.name
        self._last_activity = time.monotonic()
        self._need_reset = False

    async def caught_up(self) -> bool:
        """True when the consumer has nothing left to deliver and all it delivered is applied."""
        if self._consumer is None:
            return False
        ci = await self.b._js._jsm.consumer_info(self.stream, self._consumer,
                                                 timeout=self.b.options.write_timeout)
        return int(ci.num_pending or 0) == 0 and self.last_seq() >= int(ci.delivered.stream_seq or 0)

    async def _on(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if status is not None:
            last = hdrs.get("Nats-Last-Consumer")
            if status == "100" and last is not None and int(last) != self._cseq:
                self._need_reset = True
            return
        if self._need_reset:
            return
        try:
            md = msg.metadata
        except Exception:
            self.b.stats.malformed += 1
            return
        if int(md.sequence.consumer) != self._cseq + 1:
            self._need_reset = True  # a message was dropped (slow consumer): re-create, lose nothing
            return
        self._cseq = int(md.sequence.consumer)
        self.pending = int(md.num_pending)
        await self.on_msg(msg)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.hb)
            stale = time.monotonic() - self._last_activity > 3 * self.hb
            if not (self._need_reset or stale):
                continue
            nc = self.b._nc
            if nc is None or not nc.is_connected:
                continue
            try:
                await self._create()
                self.resets += 1
            except nats.js.errors.NotFoundError:
                # the stream is gone: NATS came back without its storage
                self.b._resetup(f"the NATS stream {self.stream} is gone")
            except Exception as e:
                self.b._rl("follow-" + self.stream, logging.WARNING,
                           "mcobserve: cannot follow NATS stream %s yet (%r); retrying", self.stream, e)


class NatsBackend:
    """A broker backend on a NATS JetStream cluster (see the module docstring).

    ``store`` is the node's :class:`mcobserve.store.Store` (or None: no local copy, a restart then
    needs NATS to serve topics). ``clock`` gives wall-clock seconds (the lag figures use it).
    """

    def __init__(
        self,
        options: ClusterOptions,
        store: Any = None,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Configure; nothing connects before :meth:`start`.

        ``on_event`` receives the node's cluster events (the broker's event stream: ``--json``):
        ``cluster_joined``, ``cluster_disconnected``, ``cluster_reconnected``, ``cluster_offline``.
        """
        self.options = options
        self.on_event = on_event
        self.store = store
        self._clock = clock
        self.node = options.node or socket.gethostname()
        self.stats = ClusterStats()
        self._sink: Any = None
        self._nc: Any = None
        self._js: Any = None
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self._closing = False
        self._ready = False  # connected, streams exist, consumers subscribed
        self._synced = asyncio.Event()
        self._topics: dict[str, int] = {}  # topic id -> generation (KV revision of its creation)
        self._pending: OrderedDict[str, tuple[int, int, bytes, int]] = OrderedDict()
        self._kv_seq = 0
        self._data_seq = 0  # the consumer's position (saved every SEQ_SAVE_INTERVAL and at close)
        self._data_seq_saved_at = 0.0
        self._topic_seq: dict[str, int] = {}  # topic id -> stream sequence of its applied publication
        self._topic_waiters: dict[str, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._backlog: deque[tuple[float, int, Msg]] = deque()
        self._backlog_task: asyncio.Task[None] | None = None
        self._live_sub: Any = None
        # (origin time, payload) of the local copy's publication per topic, until NATS shows it again
        self._copied: dict[str, tuple[float, bytes]] = {}
        self._kv_target = 0
        self._data_target = 0
        self._full_kv_replay = False
        self._replay_seen: set[str] = set()
        self._waiters: dict[str, list[tuple[int, int, asyncio.Future[None]]]] = {"kv": [], "data": []}
        self._wid = itertools.count()
        self._rl = _RateLimitedLog()
        self._kv_prefix = f"$KV.{options.bucket}."
        self._data_prefix = f"{options.prefix}.data."

    # -- public surface ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True while writes can be accepted (connected to NATS, streams and consumers in place)."""
        return self._ready and self._nc is not None and self._nc.is_connected

    @property
    def topics(self) -> list[str]:
        """Topic ids applied at this node (a copy; O(topics), not for per-event use)."""
        return list(self._topics)

    async def start(self, sink: Any) -> None:
        """Replay the local copy through ``sink``, join NATS, catch up (bounded by the start timeout).

        When NATS cannot be reached in time the node starts anyway with its local copy and keeps
        trying in the background; writes are refused (5.03) until it is back.
        """
        self._sink = sink
        self._closing = False
        self._replay_local_copy()
        self._task = asyncio.create_task(self._run(), name="mcobserve-nats")
        if self.options.start_timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._synced.wait()), self.options.start_timeout)
        if not self._synced.is_set() and not self._joined_before():
            urls = ",".join(self.options.urls)
            await self.close()
            raise ClusterError(
                f"cannot join the NATS cluster at {urls} within {self.options.start_timeout:g} s"
                " (and this node has no local copy yet): check --cluster and that nats-server"
                " runs with JetStream"
            )
        if not self._synced.is_set():
            log.warning(
                "mcobserve: NATS %s not reachable or not synchronised yet; serving the local copy of"
                " %d topic(s), publications answered 5.03 until it is",
                ",".join(self.options.urls),
                len(self._topics),
            )
            self._emit("cluster_offline", topics=len(self._topics), node=self.node)

    def _joined_before(self) -> bool:
        """True if this node's store holds a local copy from an earlier run in the cluster."""
        if self.store is None:
            return False
        try:
            return self.store.get_meta(META_KV_EPOCH) is not None
        except StoreError:
            return False

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until the node caught up with NATS once (True) or ``timeout`` passed (False)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._synced.wait()), timeout)
        except TimeoutError:
            return False
        return True

    async def put_topic(self, topic_id: str, props: dict[int, Any]) -> None:
        """Create or replace a topic (KV put), then wait until this node applied it."""
        seq = await self._write(self._kv_prefix + topic_key(topic_id), cbor_encode(props), {})
        await self._wait_applied("kv", seq)

    async def delete_topic(self, topic_id: str) -> None:
        """Delete a topic (KV delete marker), purge its retained publication, wait for the apply."""
        key = topic_key(topic_id)
        seq = await self._write(self._kv_prefix + key, b"", {KV_OP: "DEL"})
        with contextlib.suppress(*_TRANSIENT, nats.js.errors.Error):
            await self._js.purge_stream(self.options.stream, subject=self._data_prefix + key)
        await self._wait_applied("kv", seq)

    async def publish(self, topic_id: str, payload: bytes, content_format: int) -> None:
        """Store the latest publication in JetStream, then wait until this node applied it."""
        gen = self._topics.get(topic_id, 0)
        seq = await self._write(
            self._data_prefix + topic_key(topic_id),
            bytes(payload),
            {HDR_CF: str(int(content_format)), HDR_GEN: str(gen)},
        )
        await self._wait_topic(topic_id, seq)

    async def close(self) -> None:
        """Leave NATS (bounded), keep the local copy (and where this node stopped reading).

        Nothing reaches the broker any more once this is called (it shuts down first); what the
        consumer brought but did not apply yet is read again at the next start.
        """
        self._closing = True
        self._ready = False
        self._sink = None
        for task in (self._task, self._check_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._check_task = None
        for f in self._subs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(f.stop(), 2.0)
        self._subs = []
        live, self._live_sub = self._live_sub, None
        if live is not None:
            with contextlib.suppress(Exception):
                await live.unsubscribe()
        if self._backlog_task is not None:
            self._backlog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._backlog_task
            self._backlog_task = None
        while self._backlog:  # skip over what the live path applied already; stop at the first gap
            _, seq, msg = self._backlog[0]
            try:
                topic = key_topic(msg.subject[len(self._data_prefix):])
            except ClusterError:
                topic = ""
            if seq > self._topic_seq.get(topic, 0):
                break
            self._backlog.popleft()
            self._data_seq = max(self._data_seq, seq)
        self._backlog.clear()
        if self._data_seq:
            self._cache("set_meta", META_DATA_SEQ, str(self._data_seq))
        for heap in [*self._waiters.values(), *self._topic_waiters.values()]:
            for _, _, fut in heap:
                if not fut.done():
                    fut.cancel()
        self._waiters = {"kv": [], "data": []}
        self._topic_waiters = {}
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)

    # -- writes --------------------------------------------------------------------------------

    def _emit(self, name: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event({"event": name, "time": round(self._clock(), 3), **fields})
        except Exception as e:  # a broken event consumer must not break replication
            self._rl("event", logging.ERROR, "mcobserve: event sink failed: %r", e)

    def _unavailable(self, why: str) -> BackendUnavailable:
        self.stats.writes_refused += 1
        return BackendUnavailable(f"NATS cluster unavailable: {why}", retry_after=self.options.retry_after)

    async def _write(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish to JetStream and return the stream sequence once acknowledged, else 5.03."""
        if not self.available:
            raise self._unavailable("not connected")
        hdrs = dict(headers)
        hdrs[HDR_ORIGIN] = self.node
        hdrs[HDR_TIME] = repr(self._clock())
        hdrs[HDR_MSGID] = f"{self.node}-{self._nc.new_inbox()[7:]}"
        deadline = time.monotonic() + self.options.write_timeout
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unavailable(f"no JetStream acknowledgement ({type(last).__name__})")
            if self._nc is None or not self._nc.is_connected:
                raise self._unavailable("connection lost")
            try:
                ack = await self._js.publish(subject, payload, timeout=min(remaining, 1.0), headers=hdrs)
            except _TRANSIENT as e:
                last = e
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            except nats.js.errors.APIError as e:
                last = e
                if e.code is not None and e.code < 500:
                    raise self._unavailable(f"JetStream refused the write: {e.description}") from None
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            self.stats.writes_accepted += 1
            return int(ack.seq)

    async def _wait_applied(self, kind: str, seq: int) -> None:
        """Wait (bounded by the write timeout) until this node applied stream sequence ``seq``.

        The write is already durable in JetStream; if the apply takes longer (a consumer being
        re-created), the call returns and the apply follows when the consumer catches up.
        """
        if (self._kv_seq if kind == "kv" else self._data_seq) >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters[kind], (seq, next(self._wid), fut))
        try:
            await asyncio.wait_for(fut, self.options.write_timeout)
        except TimeoutError:
            self._rl("slow-apply", logging.WARNING,
                     "mcobserve: a %s write (sequence %d) is accepted but not yet applied here", kind, seq)

    async def _wait_topic(self, topic_id: str, seq: int) -> None:
        """Wait (bounded) until this node applied publication ``seq`` of the topic, or a later one."""
        if self._topic_seq.get(topic_id, 0) >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._topic_waiters.setdefault(topic_id, []), (seq, next(self._wid), fut))
        try:
            await asyncio.wait_for(fut, self.options.write_timeout)
        except TimeoutError:
            self._rl("slow-apply", logging.WARNING,
                     "mcobserve: a publication (sequence %d) is accepted but not yet applied here", seq)

    def _wake(self, kind: str, seq: int) -> None:
        heap = self._waiters[kind]
        while heap and heap[0][0] <= seq:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)

    # -- local copy ----------------------------------------------------------------------------

    def _replay_local_copy(self) -> None:
        """Apply the node's last known topics and publications before NATS answers."""
        if self.store is None:
            return
        try:
            self._kv_seq = int(self.store.get_meta(META_KV_SEQ) or 0)
            self._data_seq = int(self.store.get_meta(META_DATA_SEQ) or 0)
            records = self.store.load_topics()
        except (StoreError, ValueError) as e:
            raise ClusterError(f"cannot read the local copy in the store: {e}") from None
        for rec in records:
            try:
                props = cbor_decode(rec.props)
            except McObserveError:
                props = None
            if not isinstance(props, dict):
                self.stats.malformed += 1
                continue
            gen = int(self.store.get_meta(META_GEN + rec.topic_id) or 0)
            self._topics[rec.topic_id] = gen
            self._call_sink("apply_topic", rec.topic_id, props)
            if rec.payload is not None and rec.content_format is not None:
                self._call_sink("apply_publication", rec.topic_id, rec.payload, rec.content_format)
                if rec.published_at is not None:
                    self._copied[rec.topic_id] = (float(rec.published_at), bytes(rec.payload))

    def _cache(self, fn: str, *args: Any) -> None:
        """Write the local copy; a failing store is logged (NATS stays the truth), never raised."""
        if self.store is None:
            return
        try:
            getattr(self.store, fn)(*args)
        except StoreError as e:
            self._rl("store", logging.ERROR, "mcobserve: cannot update the local copy: %s", e)

    def _call_sink(self, name: str, *args: Any) -> None:
        """Call the broker; its errors are logged, never allowed to stop the consumer."""
        if self._sink is None:
            return
        try:
            getattr(self._sink, name)(*args)
        except Exception as e:  # the broker's bug must not stall replication for every topic
            self._rl("sink-" + name, logging.ERROR, "mcobserve: broker %s(%r) failed: %r", name, args[0], e)

    # -- connection life cycle -----------------------------------------------------------------

    async def _connect(self) -> Any:
        o = self.options
        kw: dict[str, Any] = {
            "servers": list(o.urls),
            "name": f"mcobserve-broker {self.node}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 2,
            "ping_interval": 5,
            "max_outstanding_pings": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        ctx = o.ssl_context()
        if ctx is not None:
            kw["tls"] = ctx
            if o.tls_hostname:
                kw["tls_hostname"] = o.tls_hostname
        if o.creds:
            kw["user_credentials"] = o.creds
        if o.nkey_seed:
            kw["nkeys_seed"] = o.nkey_seed
        if o.token:
            kw["token"] = o.token
        if o.user:
            kw["user"] = o.user
            kw["password"] = o.password or ""
        return await nats.connect(**kw)

    def _resetup(self, why: str) -> None:
        """Create the streams again and resynchronise from them (once at a time)."""
        if self._closing or (self._task is not None and not self._task.done()):
            return
        log.warning("mcobserve: %s; creating the streams again and resynchronising", why)
        self._ready = False
        self._task = asyncio.create_task(self._run(), name="mcobserve-nats")

    async def _run(self) -> None:
        """Connect (retrying while NATS is away), then set up streams and consumers (retrying)."""
        backoff = 0.5
        while not self._closing:
            if self._nc is None:
                try:
                    self._nc = await self._connect()
                    self._js = self._nc.jetstream(timeout=self.options.write_timeout)
                except Exception as e:  # nats-py raises assorted errors on a failed first connect
                    self._rl("connect", logging.WARNING,
                             "mcobserve: cannot reach NATS %s (%s); retrying", ",".join(self.options.urls), e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            try:
                await self._setup()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._rl("setup", logging.WARNING, "mcobserve: NATS JetStream not ready (%r); retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _ensure_stream(self, name: str, create: Callable[[int], Any]) -> Any:
        """stream_info, or create it with the configured replicas (fewer if the cluster is smaller)."""
        try:
            return await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            pass
        replicas = self.options.replicas
        while True:
            try:
                await create(replicas)
                return await self._js.stream_info(name)
            except nats.js.errors.APIError as e:
                # 10074: "replicas > 1 not supported in non-clustered mode" (a single server): R1.
                # Too few servers up in a cluster (10023, insufficient resources) is retried as it is
                # (by the caller), never silently created with fewer replicas.
                if replicas > 1 and e.err_code == 10074:
                    log.warning("mcobserve: NATS at %s is a single server: %s created with 1 replica, not %d",
                                ",".join(self.options.urls), name, replicas)
                    replicas = 1
                    continue
                raise

    async def _setup(self) -> None:
        o = self.options
        js = self._js

        async def make_kv(r: int) -> None:
            await js.create_key_value(
                KeyValueConfig(bucket=o.bucket, history=1, replicas=r, storage=StorageType.FILE)
            )

        async def make_data(r: int) -> None:
            await js.add_stream(
                StreamConfig(
                    name=o.stream,
                    subjects=[o.data_subjects],
                    max_msgs_per_subject=o.history,
                    num_replicas=r,
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.OLD,
                    duplicate_window=120.0,
                    republish=RePublish(src=o.data_subjects, dest=o.live_subjects),
                )
            )

        kv_info = await self._ensure_stream(f"KV_{o.bucket}", make_kv)
        data_info = await self._ensure_stream(o.stream, make_data)
        if int(data_info.config.max_msgs_per_subject or 0) != o.history:
            log.warning("mcobserve: NATS stream %s kept %s publications per topic; now %d (--nats-history)",
                        o.stream, data_info.config.max_msgs_per_subject, o.history)
            data_info.config.max_msgs_per_subject = o.history
            await self._js.update_stream(data_info.config)
            data_info = await self._js.stream_info(o.stream)
        self._check_epoch(META_KV_EPOCH, kv_info, "kv")
        self._check_epoch(META_DATA_EPOCH, data_info, "data")
        self._kv_target = int(kv_info.state.last_seq)
        self._data_target = int(data_info.state.last_seq)
        self._full_kv_replay = self._kv_seq == 0
        self._replay_seen = set()
        for f in self._subs:
            await f.stop()
        self._subs = []
        kv = _Follower(self, f"KV_{o.bucket}", self._kv_prefix + ">", self._on_kv, lambda: self._kv_seq)
        self._subs.append(kv)
        await kv.start()
        await self._wait_target("kv", kv)
        if self._full_kv_replay:
            for topic in [t for t in self._topics if t not in self._replay_seen]:
                self._apply_delete(topic, 0)
            self._full_kv_replay = False
            self._replay_seen = set()
        if self._live_sub is None:
            self._live_sub = await self._nc.subscribe(o.live_subjects, cb=self._on_live,
                                                      pending_msgs_limit=512 * 1024)
        data = _Follower(self, o.stream, o.data_subjects, self._on_data, lambda: self._data_seq,
                         DeliverPolicy.LAST_PER_SUBJECT)
        self._subs.append(data)
        await data.start()
        await self._wait_target("data", data)
        self._ready = True
        self._synced.set()
        self._emit("cluster_joined", node=self.node, topics=len(self._topics), kv_seq=self._kv_seq,
                   data_seq=self._data_seq, server=self._server_url())
        log.info("mcobserve: joined NATS (%d topics, kv seq %d, data seq %d)",
                 len(self._topics), self._kv_seq, self._data_seq)

    def _check_epoch(self, meta: str, info: Any, kind: str) -> None:
        """A stream re-created since our last run (NATS storage lost): resynchronise from its start."""
        epoch = str(info.created) if info.created is not None else ""
        if self.store is None:
            known = getattr(self, "_epoch_" + kind, None)
        else:
            try:
                known = self.store.get_meta(meta)
            except StoreError:
                known = None
        last = int(info.state.last_seq)
        seq = self._kv_seq if kind == "kv" else self._data_seq
        if (known is not None and known != epoch) or seq > last:
            log.warning("mcobserve: the NATS %s stream is not the one this node followed; resynchronising",
                        kind)
            self.stats.resyncs += 1
            if kind == "kv":
                self._kv_seq = 0
                for topic in self._topics:  # generations are revisions of the old bucket
                    self._topics[topic] = 0
            else:
                self._data_seq = 0
                self._topic_seq.clear()  # sequences of the old stream
                self._pending.clear()
        setattr(self, "_epoch_" + kind, epoch)
        self._cache("set_meta", meta, epoch)

    async def _wait_target(self, kind: str, follower: _Follower) -> None:
        """Wait until the follower applied the stream's last sequence seen at setup, or has nothing
        pending (the last message may have been purged meanwhile)."""
        target = self._kv_target if kind == "kv" else self._data_target
        while (self._kv_seq if kind == "kv" else self._data_seq) < target:
            if follower.pending == 0:
                return
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters[kind], (target, next(self._wid), fut))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fut, 0.5)
            if not fut.done() and await follower.caught_up():
                return

    async def _on_error(self, e: Exception) -> None:
        self._rl("nats-error", logging.WARNING, "mcobserve: NATS: %r", e)

    def _server_url(self) -> str:
        nc = self._nc
        if nc is None or nc.connected_url is None:
            return ""
        return str(nc.connected_url.netloc)

    async def _on_disconnected(self) -> None:
        self.stats.disconnects += 1
        if not self._closing:
            self._emit("cluster_disconnected", node=self.node)
            self._rl("disconnected", logging.WARNING,
                     "mcobserve: disconnected from NATS; local subscribers keep their last values,"
                     " publications are answered 5.03 until NATS is back")

    async def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        url = self._server_url()
        self._emit("cluster_reconnected", node=self.node, server=url)
        self._rl("reconnected", logging.WARNING, "mcobserve: reconnected to NATS at %s", url)
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.create_task(self._check_streams(), name="mcobserve-nats-check")

    async def _check_streams(self) -> None:
        """After a reconnect: are these still the streams this node followed? (NATS may have come
        back without its storage.) Retries while JetStream elects its leaders (bounded)."""
        o = self.options
        for attempt in range(30):
            if self._closing or self._js is None:
                return
            try:
                for name, kind in ((f"KV_{o.bucket}", "kv"), (o.stream, "data")):
                    info = await self._js.stream_info(name)
                    epoch = str(info.created) if info.created is not None else ""
                    known = getattr(self, "_epoch_" + kind, None)
                    if known is not None and known != epoch:
                        self._resetup(f"the NATS {kind} stream was created again")
                        return
                return
            except nats.js.errors.NotFoundError:
                self._resetup("the NATS streams are gone")
                return
            except Exception:
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))

    # -- applying the streams ------------------------------------------------------------------

    @staticmethod
    def _stream_seq(msg: Msg) -> int:
        return int(msg.metadata.sequence.stream)

    def _lag(self, msg: Msg, into: deque[float]) -> None:
        self._lag_hdrs(msg.headers or {}, into)

    def _lag_hdrs(self, hdrs: dict[str, str], into: deque[float]) -> None:
        t = hdrs.get(HDR_TIME)
        if t is None:
            return
        with contextlib.suppress(ValueError):
            into.append(max(0.0, self._clock() - float(t)))

    async def _on_kv(self, msg: Msg) -> None:
        if self._sink is None:
            return
        try:
            seq = self._stream_seq(msg)
        except Exception:
            self.stats.malformed += 1
            return
        if seq <= self._kv_seq:
            self.stats.duplicates_skipped += 1
            return
        try:
            self._apply_kv(msg, seq)
        finally:
            self._kv_seq = seq
            self._cache("set_meta", META_KV_SEQ, str(seq))
            self._wake("kv", seq)

    def _apply_kv(self, msg: Msg, seq: int) -> None:
        try:
            topic = key_topic(msg.subject[len(self._kv_prefix):])
        except ClusterError as e:
            self.stats.malformed += 1
            self._rl("kv-key", logging.WARNING, "mcobserve: ignoring a foreign key in the bucket: %s", e)
            return
        op = (msg.headers or {}).get(KV_OP)
        if op in ("DEL", "PURGE"):
            self._apply_delete(topic, seq)
            self._lag(msg, self.stats.topic_lag)
            return
        try:
            props = cbor_decode(msg.data)
        except McObserveError:
            props = None
        if not isinstance(props, dict):
            self.stats.malformed += 1
            self._rl("kv-value", logging.WARNING, "mcobserve: topic %r in NATS has no CBOR map", topic)
            return
        if self._full_kv_replay:
            self._replay_seen.add(topic)
        gen = self._topics.get(topic)
        if not gen:
            gen = seq
            self._topics[topic] = gen
            self._cache("set_meta", META_GEN + topic, str(gen))
        self._cache("put_topic", topic, cbor_encode(props))
        self._call_sink("apply_topic", topic, props)
        self.stats.topics_applied += 1
        self._lag(msg, self.stats.topic_lag)
        pending = self._pending.pop(topic, None)
        if pending is not None:
            pgen, pseq, payload, cf = pending
            if pgen in (0, gen):
                self._apply_publication(topic, pseq, payload, cf, None)
            else:
                self.stats.stale_dropped += 1

    def _apply_delete(self, topic: str, seq: int) -> None:
        self._pending.pop(topic, None)
        self._topic_seq.pop(topic, None)
        if topic not in self._topics:
            return
        del self._topics[topic]
        self._cache("delete_topic", topic)
        if self.store is not None:
            with contextlib.suppress(StoreError):
                self.store.set_meta(META_GEN + topic, "0")
        self._call_sink("apply_delete", topic)
        self.stats.deletes_applied += 1
        del seq

    # Publications reach a node by two paths, both in stream order: the stream's RePublish to
    # ``<prefix>.live.>`` (every stored message, pushed by the stream leader at once, but core NATS:
    # at most once) and an ordered consumer of the stream (retained messages: the last
    # ``--nats-history`` per topic). The live path carries every publication; the consumer catches
    # up after a start, a reconnect or a leader change, after a short grace so that it does not
    # overtake the live path. A per-topic sequence keeps each topic's order and applies every
    # publication once, whichever path brings it first. A live message whose ``Nats-Last-Sequence``
    # (the topic's previous publication) was never applied here shows that the live path lost one:
    # it is left to the consumer, which brings the missing one and those after it in order.

    async def _on_live(self, msg: Msg) -> None:
        if self._sink is None:
            return
        hdrs = msg.headers or {}
        try:
            seq = int(hdrs["Nats-Sequence"])
            subject = hdrs["Nats-Subject"]
        except (KeyError, ValueError):
            self.stats.malformed += 1
            return
        try:
            prev = int(hdrs.get("Nats-Last-Sequence", "0"))
        except ValueError:
            prev = 0
        self._apply_data(subject, seq, hdrs, bytes(msg.data), prev)

    async def _on_data(self, msg: Msg) -> None:
        if self._sink is None:
            return
        try:
            seq = self._stream_seq(msg)
        except Exception:
            self.stats.malformed += 1
            return
        if self._synced.is_set():
            self._backlog.append((time.monotonic() + CATCH_UP_GRACE, seq, msg))
            if self._backlog_task is None or self._backlog_task.done():
                self._backlog_task = asyncio.create_task(self._drain_backlog())
            return
        self._consumed(seq, msg)

    async def _drain_backlog(self) -> None:
        while self._backlog:
            due, seq, msg = self._backlog[0]
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._backlog.popleft()
            self._consumed(seq, msg)

    def _consumed(self, seq: int, msg: Msg) -> None:
        if seq > self._data_seq:
            self._apply_data(msg.subject, seq, msg.headers or {}, bytes(msg.data))
            self._data_seq = seq
            now = time.monotonic()
            if now - self._data_seq_saved_at >= SEQ_SAVE_INTERVAL:
                self._data_seq_saved_at = now
                self._cache("set_meta", META_DATA_SEQ, str(seq))
        self._wake("data", seq)

    def _apply_data(self, subject: str, seq: int, hdrs: dict[str, str], payload: bytes,
                    prev: int = 0) -> None:
        """Apply one publication (``prev``: on the live path, the topic's previous stream sequence)."""
        try:
            topic = key_topic(subject[len(self._data_prefix):])
            cf = int(hdrs[HDR_CF])
            gen = int(hdrs.get(HDR_GEN, "0"))
        except (ClusterError, KeyError, ValueError):
            self.stats.malformed += 1
            self._rl("data", logging.WARNING, "mcobserve: ignoring a publication without mcobserve headers"
                     " on %s", subject)
            return
        if seq <= self._topic_seq.get(topic, 0):
            self.stats.duplicates_skipped += 1
            return
        if prev > self._topic_seq.get(topic, prev):
            # The live path lost the topic's previous publication: the consumer fills the gap.
            self.stats.live_gaps += 1
            return
        copied = self._copied.pop(topic, None) if self._copied else None
        if copied is not None and topic not in self._topic_seq:
            try:
                same = float(hdrs.get(HDR_TIME, "nan")) == copied[0] and payload == copied[1]
            except ValueError:
                same = False
            if same:  # the publication the local copy already holds (read again after a restart)
                self._topic_seq[topic] = seq
                self.stats.duplicates_skipped += 1
                return
        known = self._topics.get(topic)
        if known is None:
            # The topic's configuration has not reached this node yet (bucket and stream are not
            # ordered with each other): keep the latest publication until it does.
            if seq > self._pending.get(topic, (0, 0, b"", 0))[1]:
                self._pending[topic] = (gen, seq, payload, cf)
                self._pending.move_to_end(topic)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            return
        if gen not in (0, known):
            # Published to an earlier incarnation of a topic deleted and created again.
            self.stats.stale_dropped += 1
            return
        self._apply_publication(topic, seq, payload, cf, hdrs)

    def _apply_publication(
        self, topic: str, seq: int, payload: bytes, cf: int, hdrs: dict[str, str] | None
    ) -> None:
        self._topic_seq[topic] = seq
        if cf == DATA_DELETED:
            self._cache("put_publication", topic, None, None, None)
        else:
            at = self._clock()
            if hdrs is not None:
                with contextlib.suppress(ValueError, TypeError):
                    at = float(hdrs.get(HDR_TIME, at))
            self._cache("put_publication", topic, payload, cf, at)
        self._call_sink("apply_publication", topic, payload, cf)
        self.stats.publications_applied += 1
        if hdrs is not None:
            self._lag_hdrs(hdrs, self.stats.data_lag)
        waiters = self._topic_waiters.get(topic)
        if waiters:
            while waiters and waiters[0][0] <= seq:
                _, _, fut = heapq.heappop(waiters)
                if not fut.done():
                    fut.set_result(None)
            if not waiters:
                del self._topic_waiters[topic]
