"""Cost model of broker nodes on NATS, and a small simulation (docs/scale.md).

``python -m mcobserve.cluster.scale`` prints the model's figures for 10^5 topics, 100 sites and 10^6
subscribers; ``--measure N`` also measures, on this machine, what N topics cost in nats-server
(memory and store bytes) and in a NatsBackend (Python heap), with one publication each.

Model of one publication of a topic with ``s`` subscribers spread over the sites (see docs/scale.md):

* NATS messages: 1 (publish to the stream leader) + (R - 1) (replication) + 1 (ack) + N (RePublish,
  one per broker node: every node follows every topic) + N (the catch-up consumer of every node,
  which also sees every retained message);
* on the air: one multicast datagram at every site that has at least one subscriber of the topic
  (a group observation there); RFC 7641 observation would send ``s`` unicast notifications;
* memory per topic per broker node: the broker's topic state (measured by ``mcobserve bench-broker``),
  the latest publication, this backend's per-topic entries; per NATS server: one KV entry and one
  retained message per topic (times R over the cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Broker RSS per topic with a live group observation, one group for all topics (docs/broker.md,
#: ``bench-broker`` at 10,000 topics): the broker's own state, the same with or without a cluster.
BROKER_BYTES_PER_TOPIC = 6.4 * 1024
#: The same with one multicast group per topic (docs/broker.md).
BROKER_BYTES_PER_TOPIC_PER_GROUP = 12.4 * 1024


@dataclass(frozen=True)
class Scenario:
    """A deployment to cost."""

    topics: int = 100_000
    sites: int = 100
    subscribers: int = 1_000_000
    zipf: float = 1.0  # topic popularity ~ 1 / rank^zipf
    payload: int = 64  # bytes of one publication
    props: int = 120  # bytes of one topic's CBOR property map
    replicas: int = 3
    headers: int = 160  # NATS headers of a publication (mcobserve's and JetStream's)
    # measured here with --measure 5000 (R3, 64-byte publications), per server and topic:
    nats_bytes_per_topic: float = 1057.0  # JetStream store (file) bytes
    nats_rss_per_topic: float = 2495.0  # nats-server resident memory
    backend_bytes_per_topic: float = 1062.0  # NatsBackend's per-topic entries (Python heap)


def simulate(sc: Scenario, seed: int = 1) -> dict[str, Any]:
    """Place every subscriber on a topic (Zipf) and a site (uniform); cost one publication per topic.

    Returns per-publication means (uniform over topics, and weighted by popularity) and totals.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, sc.topics + 1, dtype=np.float64)
    weights = ranks ** (-sc.zipf)
    weights /= weights.sum()
    per_topic = rng.multinomial(sc.subscribers, weights)  # subscribers of each topic
    # sites with >= 1 subscriber of a topic with n subscribers spread uniformly over S sites:
    # draw it (not the expectation), topic by topic, from the occupancy distribution
    sites_hit = np.zeros(sc.topics, dtype=np.int64)
    nz = np.nonzero(per_topic)[0]
    for t in nz:
        n = int(per_topic[t])
        if n >= 20 * sc.sites:
            sites_hit[t] = sc.sites if rng.random() > sc.sites * (1 - 1 / sc.sites) ** n else sc.sites - 1
        else:
            sites_hit[t] = np.unique(rng.integers(0, sc.sites, size=n)).size
    nodes = sc.sites
    nats_msgs = 1 + (sc.replicas - 1) + 1 + 2 * nodes
    nats_bytes = (sc.payload + sc.headers) * (1 + (sc.replicas - 1) + 2 * nodes)
    pop = per_topic / max(1, per_topic.sum())

    def mean(x: np.ndarray, w: np.ndarray | None = None) -> float:
        return float(np.average(x, weights=w)) if w is not None else float(x.mean())

    return {
        "scenario": asdict(sc),
        "topics_with_subscribers": int(nz.size),
        "max_subscribers_of_a_topic": int(per_topic.max()),
        "nats_messages_per_publication": nats_msgs,
        "nats_bytes_per_publication": nats_bytes,
        "air_datagrams_per_publication_uniform": round(mean(sites_hit), 3),
        "air_datagrams_per_publication_by_popularity": round(mean(sites_hit, pop), 2),
        "rfc7641_notifications_per_publication_uniform": round(mean(per_topic), 3),
        "rfc7641_notifications_per_publication_by_popularity": round(mean(per_topic, pop), 1),
        "air_saving_by_popularity": round(mean(per_topic, pop) / max(1e-9, mean(sites_hit, pop)), 1),
        "node_bytes_per_topic": round(
            BROKER_BYTES_PER_TOPIC + sc.payload + sc.props + sc.backend_bytes_per_topic
        ),
        "node_bytes_total": int(
            sc.topics * (BROKER_BYTES_PER_TOPIC + sc.payload + sc.props + sc.backend_bytes_per_topic)
        ),
        "nats_server_store_bytes_total": int(sc.topics * sc.nats_bytes_per_topic),
        "nats_server_rss_bytes_total": int(sc.topics * sc.nats_rss_per_topic),
        "occupancy_check": _occupancy_check(per_topic, sites_hit, sc.sites),
    }


def _occupancy_check(per_topic: np.ndarray, hit: np.ndarray, sites: int) -> float:
    """Mean of drawn occupied sites over the expectation S(1 - (1 - 1/S)^n) (about 1 when consistent)."""
    nz = per_topic > 0
    expected = sites * (1 - (1 - 1 / sites) ** per_topic[nz])
    return round(float(hit[nz].sum() / expected.sum()), 4)


async def measure(n: int, workdir: str, payload: int = 64) -> dict[str, Any]:
    """nats-server bytes (RSS and store) and NatsBackend heap for ``n`` topics with one publication."""
    import tracemalloc
    import urllib.request
    from pathlib import Path

    from .backend import NatsBackend
    from .natsrun import NatsCluster
    from .options import ClusterOptions

    class _Sink:
        def apply_topic(self, *a: Any) -> None: ...
        def apply_delete(self, *a: Any) -> None: ...
        def apply_publication(self, *a: Any) -> None: ...

    def varz(c: NatsCluster) -> int:
        total = 0
        for s in c.servers:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.http_port}/varz", timeout=2) as r:
                total += int(json.loads(r.read())["mem"])
        return total

    def store_bytes(c: NatsCluster) -> int:
        return sum(f.stat().st_size for s in c.servers for f in Path(s.store_dir).rglob("*") if f.is_file())

    out: dict[str, Any] = {"topics": n}
    for servers in (1, 3):
        c = NatsCluster(Path(workdir) / f"m{servers}", servers).start()
        try:
            b = NatsBackend(ClusterOptions(urls=tuple(c.urls()), replicas=servers, write_timeout=10))
            await b.start(_Sink())
            mem0, disk0 = varz(c), store_bytes(c)
            tracemalloc.start()
            h0 = tracemalloc.get_traced_memory()[0]
            props = {0: "x" * 16, 1: "/ps/data/" + "y" * 8, 2: "core.ps.conf"}
            sem = asyncio.Semaphore(64)

            async def one(i: int, b: NatsBackend, sem: asyncio.Semaphore, props: dict[int, Any]) -> None:
                async with sem:
                    await b.put_topic(f"t{i:06d}", props)
                    await b.publish(f"t{i:06d}", b"p" * payload, 0)

            await asyncio.gather(*(one(i, b, sem, props) for i in range(n)))
            h1 = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            await asyncio.sleep(1.0)
            mem1, disk1 = varz(c), store_bytes(c)
            out[f"r{servers}"] = {
                "nats_rss_bytes_per_topic_all_servers": round((mem1 - mem0) / n),
                "nats_store_bytes_per_topic_all_servers": round((disk1 - disk0) / n),
                "backend_heap_bytes_per_topic": round((h1 - h0) / n),
            }
            await b.close()
        finally:
            c.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the model for the scenario (JSON); ``--measure N`` adds this machine's NATS figures."""
    p = argparse.ArgumentParser(prog="python -m mcobserve.cluster.scale", description=__doc__.split("\n")[0])
    p.add_argument("--topics", type=int, default=100_000)
    p.add_argument("--sites", type=int, default=100)
    p.add_argument("--subscribers", type=int, default=1_000_000)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--measure", type=int, default=0, metavar="N", help="measure N topics on this machine")
    a = p.parse_args(argv)
    if min(a.topics, a.sites, a.subscribers) < 1 or a.payload < 0 or not math.isfinite(a.zipf):
        print("mcobserve: topics, sites and subscribers must be >= 1", file=sys.stderr)
        return 64
    sc = Scenario(topics=a.topics, sites=a.sites, subscribers=a.subscribers, zipf=a.zipf, payload=a.payload)
    result: dict[str, Any] = {}
    if a.measure:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            m = asyncio.run(measure(a.measure, d, a.payload))
        result["measured"] = m
        r3 = m["r3"]
        sc = Scenario(
            **{
                **asdict(sc),
                "nats_bytes_per_topic": r3["nats_store_bytes_per_topic_all_servers"] / 3,
                "nats_rss_per_topic": r3["nats_rss_bytes_per_topic_all_servers"] / 3,
                "backend_bytes_per_topic": r3["backend_heap_bytes_per_topic"],
            }
        )
    result["model"] = simulate(sc)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
