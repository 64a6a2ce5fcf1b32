"""NatsBackend against real nats-server clusters on loopback, with a recording TopicSink.

Every test starts its own servers (three, clustered by routes, JetStream with replicas 3, store
folders in a tmp dir) on free loopback ports and stops them; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcobserve.broker.backend import DATA_DELETED, BrokerBackend
from mcobserve.cluster import ClusterError, ClusterOptions
from mcobserve.cluster.backend import NatsBackend
from mcobserve.cluster.natsrun import NatsCluster, find_nats_server
from mcobserve.errors import BackendUnavailable
from mcobserve.store import Store

from .conftest import unavailable

_prefix = itertools.count(1)
PROPS = {0: "temperature", 1: "/ps/data/t1", 2: "core.ps.conf"}


class Sink:
    """Records every TopicSink call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.topics: dict[str, dict[int, Any]] = {}
        self.values: dict[str, tuple[bytes, int]] = {}

    def apply_topic(self, topic_id: str, props: dict[int, Any]) -> None:
        self.events.append(("topic", topic_id, props))
        self.topics[topic_id] = props

    def apply_delete(self, topic_id: str) -> None:
        self.events.append(("delete", topic_id))
        self.topics.pop(topic_id, None)
        self.values.pop(topic_id, None)

    def apply_publication(self, topic_id: str, payload: bytes, content_format: int) -> None:
        self.events.append(("pub", topic_id, payload, content_format))
        self.values[topic_id] = (payload, content_format)

    def pubs(self, topic_id: str) -> list[bytes]:
        return [e[2] for e in self.events if e[0] == "pub" and e[1] == topic_id]


def _need_nats() -> None:
    if find_nats_server() is None:
        unavailable("nats-server is not installed (apt-get install nats-server)")


@pytest.fixture
def nats3(tmp_path: Path) -> Iterator[NatsCluster]:
    _need_nats()
    c = NatsCluster(tmp_path / "nats", 3).start(timeout=20)
    try:
        yield c
    finally:
        c.stop()


def _opts(cluster: NatsCluster, prefix: str, node: str, **kw: Any) -> ClusterOptions:
    kw.setdefault("write_timeout", 2.0)
    kw.setdefault("retry_after", 7)
    kw.setdefault("start_timeout", 10.0)
    kw.setdefault("heartbeat", 0.5)
    return ClusterOptions(urls=tuple(cluster.urls()), prefix=prefix, node=node, **kw)


@pytest.fixture
async def nodes(nats3: NatsCluster) -> AsyncIterator[list[tuple[NatsBackend, Sink]]]:
    prefix = f"t{next(_prefix)}"
    out: list[tuple[NatsBackend, Sink]] = []
    for i in range(3):
        b = NatsBackend(_opts(nats3, prefix, f"site{i + 1}"))
        s = Sink()
        await b.start(s)
        assert b.available
        out.append((b, s))
    try:
        yield out
    finally:
        for b, _ in out:
            await b.close()


async def _until(cond: Any, timeout: float, step: float = 0.01) -> float:
    """Wait until ``cond()`` is true; return the seconds it took (fail after ``timeout``)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - t0


def test_protocol_conformance(nats3: NatsCluster) -> None:
    b = NatsBackend(_opts(nats3, "proto", "x"))
    assert isinstance(b, BrokerBackend)


async def test_topic_config_propagates_to_every_node_bounded(nodes: list[tuple[NatsBackend, Sink]]) -> None:
    (a, sa), (b, sb), (c, sc) = nodes
    t0 = time.monotonic()
    await a.put_topic("t1", PROPS)
    # the writer applied it before put_topic returned (from its own subscription)
    assert sa.topics["t1"] == PROPS
    await _until(lambda: "t1" in sb.topics and "t1" in sc.topics, 2.0)
    spread = time.monotonic() - t0
    assert sb.topics["t1"] == sc.topics["t1"] == PROPS
    assert spread < 2.0
    for _, s in nodes:
        assert s.events == [("topic", "t1", PROPS)]
    # a change at another node
    changed = {**PROPS, 6: 100}
    await c.put_topic("t1", changed)
    await _until(lambda: all(s.topics.get("t1") == changed for _, s in nodes), 2.0)
    # delete at a third node
    await b.delete_topic("t1")
    await _until(lambda: all("t1" not in s.topics for _, s in nodes), 2.0)
    for _, s in nodes:
        assert [e[0] for e in s.events] == ["topic", "topic", "delete"]
    lags = [n.stats.summary()["topic_lag_ms_p99"] for n, _ in nodes]
    assert all(lag is not None and lag < 2000 for lag in lags)


def _same_relative_order(x: list[bytes], y: list[bytes]) -> bool:
    common = set(x) & set(y)
    return [v for v in x if v in common] == [v for v in y if v in common]


async def test_one_order_per_topic_at_every_node(nodes: list[tuple[NatsBackend, Sink]]) -> None:
    (a, sa), (_b, sb), (_c, sc) = nodes
    await a.put_topic("t1", PROPS)
    await _until(lambda: all("t1" in s.topics for _, s in nodes), 2.0)

    async def publisher(i: int, node: NatsBackend) -> None:
        for k in range(20):
            await node.publish("t1", f"{i}:{k}".encode(), 0)
            await asyncio.sleep(0.01)

    # three publishers at three nodes, interleaved
    await asyncio.gather(*(publisher(i, n) for i, (n, _) in enumerate(nodes)))
    await _until(lambda: all(len(s.pubs("t1")) == 60 for _, s in nodes), 5.0)
    order = sa.pubs("t1")
    assert sb.pubs("t1") == order and sc.pubs("t1") == order
    assert sorted(order) == sorted(f"{i}:{k}".encode() for k in range(20) for i in range(3))
    # each node applied its own publications once, from the subscription (not twice)
    for n, _ in nodes:
        assert n.stats.publications_applied == 60


async def test_burst_converges_in_one_order(nodes: list[tuple[NatsBackend, Sink]]) -> None:
    """60 publications at once: a node may skip values replaced before it read them (one retained
    message per subject), but every node applies them in the same order and ends on the same one."""
    (a, sa), (_b, _sb), (_c, _sc) = nodes
    await a.put_topic("t1", PROPS)
    await _until(lambda: all("t1" in s.topics for _, s in nodes), 2.0)
    writes = [n.publish("t1", f"{i}:{k}".encode(), 0) for k in range(20) for i, (n, _) in enumerate(nodes)]
    await asyncio.gather(*writes)
    last = sa.values["t1"]
    await _until(lambda: all(s.values.get("t1") == last for _, s in nodes), 5.0)
    seqs = [s.pubs("t1") for _, s in nodes]
    for x in seqs:
        assert len(set(x)) == len(x)  # no value twice
        assert x[-1] == last[0]
        for y in seqs:
            assert _same_relative_order(x, y)


async def test_publish_returns_after_local_apply_and_content_format(
    nodes: list[tuple[NatsBackend, Sink]],
) -> None:
    (a, sa), (_, sb), _ = nodes
    await a.put_topic("t1", PROPS)
    await a.publish("t1", b"\x18\x2a", 60)
    assert sa.values["t1"] == (b"\x18\x2a", 60)
    await a.publish("t1", b"", DATA_DELETED)
    assert sa.values["t1"] == (b"", DATA_DELETED)
    await _until(lambda: sb.values.get("t1") == (b"", DATA_DELETED), 2.0)


async def test_late_node_gets_current_values_at_once(nats3: NatsCluster) -> None:
    a = NatsBackend(_opts(nats3, "late", "a"))
    await a.start(Sink())
    try:
        for k in range(5):
            await a.put_topic(f"t{k}", {**PROPS, 1: f"/ps/data/{k}"})
            for v in range(3):
                await a.publish(f"t{k}", f"t{k}v{v}".encode(), 0)
        late_sink = Sink()
        late = NatsBackend(_opts(nats3, "late", "late"))
        t0 = time.monotonic()
        await late.start(late_sink)
        took = time.monotonic() - t0
        try:
            # current value of every topic when start() returns; only the latest was retained
            assert late_sink.values == {f"t{k}": (f"t{k}v2".encode(), 0) for k in range(5)}
            assert [e[0] for e in late_sink.events].count("pub") == 5
            assert took < 5.0
        finally:
            await late.close()
    finally:
        await a.close()


async def test_restart_resumes_without_duplicates(nats3: NatsCluster, tmp_path: Path) -> None:
    a = NatsBackend(_opts(nats3, "resume", "a"))
    await a.start(Sink())
    path = tmp_path / "node-b.sqlite"
    try:
        await a.put_topic("t1", PROPS)
        await a.put_topic("t2", {**PROPS, 0: "other", 1: "/ps/data/t2"})
        await a.publish("t1", b"one", 0)
        store = Store.open(path)
        b = NatsBackend(_opts(nats3, "resume", "b"), store)
        await b.start(Sink())
        await a.publish("t1", b"two", 0)
        await _until(lambda: b.stats.publications_applied == 2, 2.0)
        await b.close()
        store.close()
        # while b is down: one more publication, and t2 is deleted
        await a.publish("t1", b"three", 0)
        await a.delete_topic("t2")
        store = Store.open(path)
        sink = Sink()
        b = NatsBackend(_opts(nats3, "resume", "b"), store)
        await b.start(sink)
        try:
            # local copy first (t1=two, t2), then only what it missed: t1=three and the delete of t2
            assert sink.events[:1] == [("topic", "t1", PROPS)]
            assert sink.pubs("t1") == [b"two", b"three"]
            assert ("delete", "t2") in sink.events
            assert set(sink.topics) == {"t1"}
            assert b.stats.publications_applied == 1
        finally:
            await b.close()
            store.close()
    finally:
        await a.close()


async def test_node_starts_from_local_copy_while_nats_is_down(tmp_path: Path) -> None:
    _need_nats()
    cluster = NatsCluster(tmp_path / "nats", 3)
    cluster.start()
    path = tmp_path / "node.sqlite"
    try:
        store = Store.open(path)
        b = NatsBackend(_opts(cluster, "offline", "b"), store)
        await b.start(Sink())
        await b.put_topic("t1", PROPS)
        await b.publish("t1", b"last", 0)
        await b.close()
        store.close()
        cluster.stop()
        store = Store.open(path)
        sink = Sink()
        b = NatsBackend(_opts(cluster, "offline", "b", start_timeout=1.0), store)
        t0 = time.monotonic()
        await b.start(sink)
        assert time.monotonic() - t0 < 3.0
        try:
            assert sink.values == {"t1": (b"last", 0)}
            assert not b.available
            with pytest.raises(BackendUnavailable) as ei:
                await b.publish("t1", b"refused", 0)
            assert ei.value.retry_after == 7
            cluster.start(wait=False)  # the node finds NATS again by itself
            assert await b.wait_synced(40.0)
            await _until(lambda: b.available, 10.0)
            deadline = time.monotonic() + 30.0
            while True:  # 5.03 until JetStream has elected the stream's leader again
                try:
                    await b.publish("t1", b"after", 0)
                    break
                except BackendUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            assert sink.values["t1"] == (b"after", 0)
            assert sink.pubs("t1") == [b"last", b"after"]
        finally:
            await b.close()
            store.close()
    finally:
        cluster.stop()


async def test_kill_one_nats_server_mid_stream_loses_nothing(nodes: list[tuple[NatsBackend, Sink]],
                                                             nats3: NatsCluster) -> None:
    (a, sa), (b, sb), (_c, sc) = nodes
    await a.put_topic("t1", PROPS)
    await _until(lambda: all("t1" in s.topics for _, s in nodes), 2.0)
    accepted: list[bytes] = []
    refused = 0

    async def publisher(node: NatsBackend, tag: str, count: int) -> None:
        nonlocal refused
        for k in range(count):
            payload = f"{tag}{k}".encode()
            for _attempt in range(50):  # a publisher retries after 5.03 (bounded)
                try:
                    await node.publish("t1", payload, 0)
                except BackendUnavailable:
                    refused += 1
                    await asyncio.sleep(0.1)
                    continue
                accepted.append(payload)
                break
            await asyncio.sleep(0.005)

    async def killer() -> None:
        await asyncio.sleep(0.3)
        # kill the server that leads the data stream (the worst case), the others stay
        leader = await _stream_leader(a)
        victim = next(s for s in nats3.servers if s.name == leader)
        nats3.kill(victim)

    await asyncio.gather(publisher(a, "a", 150), publisher(b, "b", 150), killer())
    assert len(accepted) == 300  # every publication eventually accepted (retries after 5.03 allowed)
    await _until(lambda: all(len(s.pubs("t1")) >= 300 for _, s in nodes), 15.0)
    order = sa.pubs("t1")
    assert sorted(set(order)) == sorted(accepted)  # nothing lost
    assert sb.pubs("t1") == order and sc.pubs("t1") == order  # and one order everywhere


async def test_a_publication_lost_on_the_live_path_is_filled_in_order(
        nodes: list[tuple[NatsBackend, Sink]]) -> None:
    """RePublish is core NATS (at most once): when it loses one (a dying stream leader), the next
    live message names the topic's previous sequence, which this node never applied; the node leaves
    it to the consumer, which brings the lost one and the rest in order."""
    (a, sa), (b, sb), _ = nodes
    await a.put_topic("t1", PROPS)
    await _until(lambda: "t1" in sb.topics, 2.0)
    real = b._on_live

    async def lossy(msg: Any) -> None:
        if bytes(msg.data) == b"p5":
            return  # lost between the stream leader and this node
        await real(msg)

    b._on_live = lossy  # type: ignore[method-assign]
    b._live_sub._cb = lossy
    sent = [f"p{k}".encode() for k in range(10)]
    for payload in sent:
        await a.publish("t1", payload, 0)
    await _until(lambda: len(sb.pubs("t1")) >= 10, 5.0)
    assert sb.pubs("t1") == sent  # nothing skipped, one order
    assert sa.pubs("t1") == sent
    assert b.stats.live_gaps >= 1


async def _stream_leader(node: NatsBackend) -> str:
    info = await node._js.stream_info(node.options.stream)
    assert info.cluster is not None and info.cluster.leader
    return str(info.cluster.leader)


async def test_nats_down_refuses_writes_keeps_values_recovers(nodes: list[tuple[NatsBackend, Sink]],
                                                              nats3: NatsCluster) -> None:
    (a, _sa), (b, _sb), (c, _sc) = nodes
    await a.put_topic("t1", PROPS)
    await a.publish("t1", b"before", 0)
    await _until(lambda: all(s.values.get("t1") == (b"before", 0) for _, s in nodes), 2.0)
    for s in nats3.servers:
        nats3.kill(s)
    await _until(lambda: not a.available and not b.available, 10.0)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as ei:
        await b.publish("t1", b"during", 0)
    assert time.monotonic() - t0 < 0.5  # answered at once, not after a timeout
    assert ei.value.retry_after == 7
    with pytest.raises(BackendUnavailable):
        await c.put_topic("t2", PROPS)
    # local subscribers keep their values
    assert all(s.values["t1"] == (b"before", 0) for _, s in nodes)
    assert all(set(s.topics) == {"t1"} for _, s in nodes)
    nats3.start(wait=False)
    took = await _until(lambda: all(n.available for n, _ in nodes), 40.0)
    # writes accepted again, and every node's subscription works again (re-created consumers)
    deadline = time.monotonic() + 30.0
    while True:  # JetStream elects its leaders again: 5.03 meanwhile, then accepted
        try:
            await b.publish("t1", b"after", 0)
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    await _until(lambda: all(s.values.get("t1") == (b"after", 0) for _, s in nodes), 15.0)
    for _, s in nodes:
        assert s.pubs("t1") == [b"before", b"after"]  # "during" was refused, so never delivered
    assert took < 40.0


async def test_fresh_node_without_nats_fails_cleanly(tmp_path: Path) -> None:
    _need_nats()
    store = Store.open(tmp_path / "fresh.sqlite")
    try:
        opts = ClusterOptions(urls=("nats://127.0.0.1:1",), start_timeout=1.0)
        b = NatsBackend(opts, store)
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=r"cannot join the NATS cluster at nats://127\.0\.0\.1:1"):
            await b.start(Sink())
        assert time.monotonic() - t0 < 5.0
    finally:
        store.close()


async def test_nats_back_without_its_storage_resynchronises_running_nodes(tmp_path: Path) -> None:
    """The NATS cluster returns empty (store folders lost): running nodes create the streams again,
    take NATS as the truth (its topics: none) and work again, without a restart."""
    import shutil

    _need_nats()
    cluster = NatsCluster(tmp_path / "nats", 3).start()
    try:
        sinks = [Sink(), Sink()]
        nodes = [NatsBackend(_opts(cluster, "wipe", f"n{i}")) for i in range(2)]
        for n, s in zip(nodes, sinks, strict=True):
            await n.start(s)
        try:
            await nodes[0].put_topic("old", PROPS)
            await nodes[0].publish("old", b"v1", 0)
            await _until(lambda: all(s.values.get("old") == (b"v1", 0) for s in sinks), 2.0)
            cluster.stop()
            for srv in cluster.servers:
                shutil.rmtree(srv.store_dir)
            cluster.start(wait=False)
            await _until(lambda: all("old" not in s.topics for s in sinks), 60.0, step=0.1)
            assert all(("delete", "old") in s.events for s in sinks)
            await _until(lambda: all(n.available for n in nodes), 30.0, step=0.1)
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    await nodes[1].put_topic("new", {**PROPS, 1: "/ps/data/new"})
                    await nodes[1].publish("new", b"n1", 0)
                    break
                except BackendUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            await _until(lambda: all(s.values.get("new") == (b"n1", 0) for s in sinks), 10.0)
            assert all(n.stats.resyncs >= 1 for n in nodes)
        finally:
            for n in nodes:
                await n.close()
    finally:
        cluster.stop()
