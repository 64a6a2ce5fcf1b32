"""``mcobserve bench-broker``: cost of a publication against the number of topics, and memory per topic.

For each T (default 1, 100, 1000, 10000) a fresh broker in a private namespace holds T topics, each with a
live group observation (started at its first publication, ``announce``); then P publications to one topic
are timed from the backend call to the multicast datagram leaving (process CPU, including the timer loop's
turn afterwards). Memory per topic is the RSS growth over the T topics and observations. The store is
SQLite in a temporary folder (``--sync``; FULL is the broker's default) or ``:memory:``.

Run as a section of its own (``mcobserve bench-broker``); :func:`run_section` is what ``mcobserve bench``
can call to include it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_TOPICS = (1, 100, 1000, 10000)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench-broker``."""
    p = sub.add_parser(
        "bench-broker",
        help="deprecated: use 'mcobserve bench broker' (publication cost against topics, memory per topic)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--topics", default=",".join(map(str, DEFAULT_TOPICS)), metavar="T,T,...")
    p.add_argument("--publications", type=int, default=200, metavar="P", help="timed publications per T")
    p.add_argument("--store", choices=("file", "memory"), default="file", help="SQLite file or :memory:")
    p.add_argument(
        "--sync", choices=("FULL", "NORMAL"), default="NORMAL", help="synchronous mode of the file"
    )
    p.add_argument(
        "--per-topic-groups",
        action="store_true",
        help="one multicast group per topic (--group-prefix ff35:30:2001:db8::/96)",
    )
    p.add_argument(
        "--fanout",
        metavar="N,N,...",
        help="instead: publication to N subscribers, our broker (group, traditional) against the "
        "editor's broker",
    )
    p.add_argument("--modes", default="group,traditional,editor", help="with --fanout: which brokers")
    p.add_argument("--out", metavar="DIR", help="write broker.md and broker.json there")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    print("mcobserve: bench-broker is deprecated; use 'mcobserve bench broker'", file=sys.stderr)
    if args.fanout:
        return _cmd_fanout(args)
    try:
        topics = [int(t) for t in args.topics.split(",") if t.strip()]
        if not topics or min(topics) < 1 or args.publications < 1:
            raise ValueError
    except ValueError:
        print(
            "mcobserve: --topics takes positive integers (e.g. 1,100,1000) and --publications >= 1",
            file=sys.stderr,
        )
        return 64
    try:
        result = run_section(
            topics,
            args.publications,
            store=args.store,
            sync=args.sync,
            per_topic_groups=args.per_topic_groups,
        )
    except RuntimeError as e:
        print(f"mcobserve: {e}", file=sys.stderr)
        return 1
    text = report(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "broker.md").write_text(text + "\n")
        (out / "broker.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _cmd_fanout(args: argparse.Namespace) -> int:
    from ..netlab import NetlabError, OneHost, can_use_netns
    from .bench_fanout import MODES, fanout_report, run_fanout

    try:
        ns = [int(x) for x in args.fanout.split(",") if x.strip()]
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        if not ns or min(ns) < 1 or args.publications < 1 or not set(modes) <= set(MODES):
            raise ValueError
    except ValueError:
        print(
            f"mcobserve: --fanout takes positive integers, --modes some of {','.join(MODES)}", file=sys.stderr
        )
        return 64
    ok, why = can_use_netns()
    if not ok:
        print(f"mcobserve: the broker benchmark needs network namespaces: {why}", file=sys.stderr)
        return 1
    try:
        with OneHost() as lab:
            rows = run_fanout(lab, ns, args.publications, modes)
    except (RuntimeError, NetlabError) as e:
        print(f"mcobserve: {e}", file=sys.stderr)
        return 1
    text = fanout_report(rows)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "broker-fanout.md").write_text(text + "\n")
        (out / "broker-fanout.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def run_section(
    topics: list[int],
    publications: int,
    *,
    store: str = "file",
    sync: str = "NORMAL",
    per_topic_groups: bool = False,
) -> dict[str, Any]:
    """Run the worker inside a fresh private namespace (needs root); the rows, one per T."""
    from ..netlab import NetlabError, OneHost, can_use_netns

    ok, why = can_use_netns()
    if not ok:
        raise RuntimeError(f"the broker benchmark needs network namespaces: {why}")
    rows = []
    try:
        with OneHost() as lab:
            for t in topics:
                res = lab.run(
                    [
                        sys.executable,
                        "-m",
                        "mcobserve.broker.bench",
                        lab.addr6,
                        lab.ifname,
                        str(t),
                        str(publications),
                        store,
                        sync,
                        "prefix" if per_topic_groups else "one",
                    ],
                    timeout=600,
                )
                if res.returncode != 0:
                    raise RuntimeError(f"worker for T={t} failed: {res.stderr.strip()[-400:]}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    except NetlabError as e:
        raise RuntimeError(str(e)) from None
    base = rows[0]["cpu_us_p50"] if rows else None
    for r in rows:
        r["ratio_to_first"] = round(r["cpu_us_p50"] / base, 2) if base else None
    groups = "per topic" if per_topic_groups else "one"
    return {"store": store, "sync": sync, "groups": groups, "publications": publications, "rows": rows}


def report(result: dict[str, Any]) -> str:
    lines = [
        f"broker: publication cost by number of topics (groups: {result['groups']}, store {result['store']}, "
        f"sync {result['sync']}, "
        f"{result['publications']} publications per T)",
        "",
        "| topics | group obs | CPU µs/pub p50 | p90 | ratio to first | datagrams/pub | RSS KiB/topic |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['topics']} | {r['observations']} | {r['cpu_us_p50']:.0f} | {r['cpu_us_p90']:.0f} | "
            f"{r['ratio_to_first']} | {r['datagrams_per_publication']:.2f} | {r['rss_kib_per_topic']:.2f} |"
        )
    return "\n".join(lines)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


async def _worker(
    addr: str, ifname: str, topics: int, publications: int, store_kind: str, sync: str, groups: str
) -> dict[str, Any]:
    import ipaddress

    from ..engine.common import Endpoint
    from ..engine.server import CongestionControl, GroupPolicy
    from ..store import Store
    from .core import Broker, BrokerConfig

    tmp = tempfile.mkdtemp(prefix="mco-bench-broker-")
    store = Store.open(
        ":memory:" if store_kind == "memory" else os.path.join(tmp, "b.sqlite"), synchronous=sync
    )
    config = BrokerConfig(
        announce=True,
        policy=GroupPolicy(min_interval=0.0, counting=None),
        publish_rate=1e9,
        publish_burst=10**9,
        max_topics=max(topics, 1),
        group_prefix=ipaddress.IPv6Network("ff35:30:2001:db8::/96") if groups == "prefix" else None,
    )
    broker = await Broker.create(
        Endpoint.parse(f"[{addr}]"),
        Endpoint.parse("[ff35:30:2001:db8::77]:61616"),
        config=config,
        interface=ifname,
        store=store,
        # the CPU cost of a publication is measured, not the §4.4 rate (one per 3 s by default)
        congestion=CongestionControl(interval=0.0),
    )
    try:
        rss0 = _rss_kib()
        for i in range(topics):
            tid = f"t{i}"
            await broker.backend.put_topic(tid, {0: tid, 1: f"/ps/data/{tid}", 2: "core.ps.data", 3: 0})
            await broker.backend.publish(tid, b"0", 0)
        for _ in range(20):
            await asyncio.sleep(0.01)
        rss1 = _rss_kib()
        observations = sum(1 for s in broker._servers.values() for _ in s.engine.observations())
        topic = broker.topics["t0"]
        obs = topic.server.engine.observation(topic.data_path)
        assert obs is not None
        samples = []
        sent0 = obs.sent  # t0's own notifications: other topics' Max-Age refreshes do not count
        for k in range(publications):
            before = obs.sent
            t0 = time.process_time_ns()
            await broker.backend.publish("t0", str(k).encode(), 0)
            while obs.sent == before:
                await asyncio.sleep(0)
            for _ in range(3):  # the timer loop's turn after the send
                await asyncio.sleep(0)
            samples.append((time.process_time_ns() - t0) / 1000.0)
        sent = obs.sent - sent0
    finally:
        await broker.shutdown()
        store.close()
    samples.sort()
    return {
        "topics": topics,
        "observations": observations,
        "cpu_us_p50": statistics.median(samples),
        "cpu_us_p90": samples[int(0.9 * (len(samples) - 1))],
        "datagrams_per_publication": sent / publications,
        "rss_kib_per_topic": (rss1 - rss0) / topics,
    }


def main(argv: list[str]) -> int:
    addr, ifname, topics, publications, store_kind, sync, groups = argv
    row = asyncio.run(_worker(addr, ifname, int(topics), int(publications), store_kind, sync, groups))
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - the worker inside the namespace
    sys.exit(main(sys.argv[1:]))
