"""``mcobserve bench cluster``: broker nodes at three sites on NATS (:mod:`mcobserve.cluster.bench`).

Cross-site latency (publication at site 1 to the datagram at the last of sites 2 and 3, p50/p99) and
publications per second of a three-node cluster against a single node, in the same run, in private
namespaces (root, nats-server). Writes ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "broker nodes at three sites on NATS: cross-site latency p50/p99, publications/s 3 nodes vs 1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument("--publications", type=int, help="publications for the latency (default 300; --quick 60)")
    p.add_argument("--load-seconds", type=float, help="seconds of load per setup (default 10; --quick 4)")
    p.add_argument("--concurrency", type=int, help="requests in flight per publisher process (default 8)")
    p.add_argument("--topics-per-site", type=int, help="topics each site's publisher writes (default 4)")


def run(args: argparse.Namespace, out: Path) -> int:
    """Run the section; the headline is the last line on stdout."""
    from ...cli.common import RuntimeFailure, UsageError
    from ...cluster.bench import BenchConfig
    from ...cluster.bench import run as bench_run
    from ...cluster.errors import ClusterError

    try:
        cfg = BenchConfig.make(
            bool(getattr(args, "quick", False)),
            publications=args.publications,
            load_seconds=args.load_seconds,
            concurrency=args.concurrency,
            topics_per_site=args.topics_per_site,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        result = bench_run(out, cfg, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except ClusterError as e:
        raise RuntimeFailure(str(e)) from None
    except KeyboardInterrupt:
        return 130
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}", flush=True)
    print(result["headline"], flush=True)
    return 0
