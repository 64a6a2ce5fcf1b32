"""The seam between the broker's CoAP resources and where topics live (local SQLite, or a cluster).

The broker's CoAP resources call a :class:`BrokerBackend` for every write (topic created, updated,
deleted; data published or deleted); nothing else mutates topics. The backend makes the change durable
(or replicates it) and then applies it through the broker's :class:`TopicSink`, which updates the
broker's state and its group observations. A remote change (another broker of a cluster) reaches the
broker through the same :class:`TopicSink` calls, so a local PUT and a remote one look the same.

Exact API (the cluster backend, :mod:`mcobserve.cluster`, implements the same):

* ``await backend.start(sink)``: remember the sink and replay the current state through it
  (``apply_topic`` for every topic, then ``apply_publication`` for every retained publication).
* ``await backend.put_topic(topic_id, props)``: create or replace the topic (``props``: the full
  property map, integer keys of pub-sub §5, values as :mod:`mcobserve.wire.cbor` items, e.g.
  ``CborTag(1, t)`` for expiration-date); then ``sink.apply_topic(topic_id, props)``.
* ``await backend.delete_topic(topic_id)``: then ``sink.apply_delete(topic_id)``.
* ``await backend.publish(topic_id, payload, content_format)``: the latest publication, retained;
  then ``sink.apply_publication(topic_id, payload, content_format)`` (the PUT's Content-Format, 0 when it
  carried none). ``content_format`` equal to
  :data:`DATA_DELETED` (``-1``, with an empty payload) means the topic-data resource was deleted
  (pub-sub §4.2.4: back to HALF CREATED); retaining it as the last value is what a replica needs.
* ``await backend.close()``.

Every write raises :class:`~mcobserve.errors.BackendUnavailable` when it cannot be accepted now; the
broker then answers 5.03 (Service Unavailable) with Max-Age = ``retry_after``.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, runtime_checkable

from ..errors import BackendUnavailable, StoreError
from ..store import Store
from ..wire.cbor import cbor_decode, cbor_encode

#: ``content_format`` of a publication that deletes the topic-data (pub-sub §4.2.4, HALF CREATED).
DATA_DELETED: Final = -1


@runtime_checkable
class TopicSink(Protocol):
    """Implemented by the broker: how a (local or remote) change reaches its state and observations."""

    def apply_topic(self, topic_id: str, props: dict[int, Any]) -> None:
        """A topic was created or its properties replaced."""
        ...

    def apply_delete(self, topic_id: str) -> None:
        """A topic was deleted (pub-sub §3.2.4): its topic-data resource goes too."""
        ...

    def apply_publication(self, topic_id: str, payload: bytes, content_format: int) -> None:
        """A publication (pub-sub §4.2.1), or :data:`DATA_DELETED` (§4.2.4)."""
        ...


@runtime_checkable
class BrokerBackend(Protocol):
    """Where topics live. Every method raises BackendUnavailable when it cannot accept a write."""

    async def start(self, sink: TopicSink) -> None:
        """Attach the broker and replay the current state through ``sink``."""
        ...

    async def put_topic(self, topic_id: str, props: dict[int, Any]) -> None: ...

    async def delete_topic(self, topic_id: str) -> None: ...

    async def publish(self, topic_id: str, payload: bytes, content_format: int) -> None: ...

    async def close(self) -> None: ...


class LocalBackend:
    """The default backend: applies each change directly, made durable in a :class:`Store` first.

    One transaction per change; a change that cannot be written is not applied and raises
    :class:`BackendUnavailable`. Without a store (``None``) state lives in memory only.
    """

    def __init__(self, store: Store | None = None, *, clock: Any = None) -> None:
        import time

        self.store = store
        self._clock = clock or time.time
        self._sink: TopicSink | None = None

    @property
    def sink(self) -> TopicSink:
        if self._sink is None:
            raise RuntimeError("LocalBackend.start(sink) was not called")
        return self._sink

    async def start(self, sink: TopicSink) -> None:
        self._sink = sink
        if self.store is None:
            return
        for rec in self.store.load_topics():
            props = cbor_decode(rec.props)
            if not isinstance(props, dict):
                raise StoreError(f"topic {rec.topic_id} in {self.store.path} has no property map")
            sink.apply_topic(rec.topic_id, props)
            if rec.payload is not None and rec.content_format is not None:
                sink.apply_publication(rec.topic_id, rec.payload, rec.content_format)
            elif rec.content_format == DATA_DELETED:  # deleted after "initialize": stays HALF CREATED
                sink.apply_publication(rec.topic_id, b"", DATA_DELETED)

    async def put_topic(self, topic_id: str, props: dict[int, Any]) -> None:
        if self.store is not None:
            try:
                self.store.put_topic(topic_id, cbor_encode(props))
            except StoreError as e:
                raise BackendUnavailable(str(e)) from None
        self.sink.apply_topic(topic_id, props)

    async def delete_topic(self, topic_id: str) -> None:
        if self.store is not None:
            try:
                self.store.delete_topic(topic_id)
            except StoreError as e:
                raise BackendUnavailable(str(e)) from None
        self.sink.apply_delete(topic_id)

    async def publish(self, topic_id: str, payload: bytes, content_format: int) -> None:
        if self.store is not None:
            try:
                if content_format == DATA_DELETED:
                    self.store.put_publication(topic_id, None, DATA_DELETED, None)
                else:
                    self.store.put_publication(topic_id, payload, content_format, self._clock())
            except StoreError as e:
                raise BackendUnavailable(str(e)) from None
        self.sink.apply_publication(topic_id, payload, content_format)

    async def close(self) -> None:
        self._sink = None
