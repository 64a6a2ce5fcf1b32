"""``mcobserve bench broker``: the pub-sub broker (:mod:`mcobserve.broker.bench`).

Publication to N subscribers of one topic (broker CPU and datagrams per publication; group against
traditional against the draft editor's broker), then publication cost against 1..10,000 topics, in
private namespaces (root). Writes ``broker-fanout.md/json`` and ``broker.md/json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "pub-sub broker: publication to N subscribers (group, traditional, editor) and cost by topic count"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument(
        "--subscribers", metavar="N,N,...", help="fanout sizes (default 1,10,100,1000; --quick 1,20)"
    )
    p.add_argument("--modes", default="group,traditional,editor", help="fanout brokers (default all three)")
    p.add_argument(
        "--topics", metavar="T,T,...", help="topic counts (default 1,100,1000,10000; --quick 1,100)"
    )
    p.add_argument("--publications", type=int, help="timed publications per case (default 200; --quick 10)")
    p.add_argument(
        "--per-topic-groups",
        action="store_true",
        help="topic-count cost with one multicast group per topic (--group-prefix) instead of one for all",
    )


def _ints(text: str, what: str) -> list[int]:
    from ...cli.common import UsageError

    try:
        v = [int(x) for x in text.split(",") if x.strip()]
        if not v or min(v) < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--{what} takes positive integers, e.g. 1,10,100") from None
    return v


def run(args: argparse.Namespace, out: Path) -> int:
    """Run the section; the headline (traditional/group CPU per publication at the largest N) is last."""
    from ...broker.bench import report, run_section
    from ...broker.bench_fanout import MODES, fanout_report, run_fanout
    from ...cli.common import RuntimeFailure, UsageError
    from ...netlab import NetlabError, OneHost, can_use_netns

    quick = bool(getattr(args, "quick", False))
    ns = _ints(args.subscribers or ("1,20" if quick else "1,10,100,1000"), "subscribers")
    topics = _ints(args.topics or ("1,100" if quick else "1,100,1000,10000"), "topics")
    pubs = args.publications or (10 if quick else 200)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if pubs < 1 or not modes or not set(modes) <= set(MODES):
        raise UsageError(f"--publications >= 1 and --modes some of {','.join(MODES)}")
    ok, why = can_use_netns()
    if not ok:
        raise RuntimeFailure(f"the broker benchmark needs network namespaces: {why}")
    try:
        with OneHost() as lab:
            rows = run_fanout(lab, ns, pubs, modes)
        text = fanout_report(rows)
        print(text, flush=True)
        (out / "broker-fanout.md").write_text(text + "\n")
        (out / "broker-fanout.json").write_text(json.dumps(rows, indent=1) + "\n")
        result = run_section(topics, pubs, per_topic_groups=bool(getattr(args, "per_topic_groups", False)))
    except (RuntimeError, NetlabError) as e:
        raise RuntimeFailure(str(e)) from None
    except KeyboardInterrupt:
        return 130
    text = report(result)
    print(text, flush=True)
    (out / "broker.md").write_text(text + "\n")
    (out / "broker.json").write_text(json.dumps(result, indent=1) + "\n")
    print(_headline(rows, result), flush=True)
    return 0


def _headline(rows: list, result: dict) -> str:
    """One line: CPU per publication, traditional over group at the largest N; cost ratio at most topics."""
    parts = []
    try:
        ok = [r for r in rows if "error" not in r]
        n = max(r["n"] for r in ok)
        cpu = {r["mode"]: r["cpu_ms_p50"] for r in ok if r["n"] == n}
        if cpu.get("group") and cpu.get("traditional"):
            ratio = cpu["traditional"] / cpu["group"]
            parts.append(f"traditional/group CPU per publication at N={n}: {ratio:.1f}x")
    except (KeyError, TypeError, ValueError):
        pass
    last = result["rows"][-1] if result.get("rows") else None
    if last:
        first = result["rows"][0]["topics"]
        parts.append(f"cost at {last['topics']} topics / at {first}: {last['ratio_to_first']}x")
    return "broker: " + "; ".join(parts) if parts else "broker: no rows"
