"""Profile the server under registration load and under update load (py-spy), and summarise the stacks.

``python -m mcobserve.bench.profile --mode group --observers 1000 --updates 2000 --out DIR`` runs a case
``py-spy record --format raw`` attached to the server process for each phase, then prints the
functions with the largest inclusive and self shares of the samples. ``--summarise FILE...`` only
summarises existing collapsed-stack files.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _key(frame: str) -> str:
    """``function (file)`` without the line number."""
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


#: Leaf frames that mean "waiting", not working (py-spy samples them too; in ``--blocking`` mode also
#: the idle worker thread of asyncio's default executor, which aiocoap starts for getaddrinfo).
IDLE = ("EpollSelector.select", "select (selectors.py)", "_worker (concurrent/futures/thread.py)")
#: Frames of the benchmark's own control channel (outside the measured window).
HARNESS = ("emit (bench/", "dumps (json", "loads (json", "_UnixReadPipeTransport", "StreamReader.")


def summarise(path: Path, top: int = 25, focus: str | None = None) -> str:
    """Inclusive and self shares of the busy samples in a py-spy raw (collapsed) file.

    Idle samples (the event loop waiting in epoll) are left out; samples of the control channel
    (JSON lines to and from the harness) are counted separately. ``focus``: only stacks with a frame
    containing this text.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = harness = 0
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        count = int(m.group(2))
        frames = [_key(f) for f in m.group(1).split(";")]
        if frames[-1].startswith(IDLE):
            idle += count
            continue
        if any(f.startswith(HARNESS) for f in frames):
            harness += count
            continue
        if focus is not None and not any(focus in f for f in frames):
            continue
        total += count
        for f in set(frames):
            inclusive[f] += count
        own[frames[-1]] += count
    if not total:
        return f"{path.name}: no samples"
    out = [
        f"{path.name}: {total} busy samples (left out: {idle} idle, {harness} control channel)",
        "",
        "inclusive:",
    ]
    skip = ("<module>", "_run_module_as_main", "_run_code", "main (bench", "run (asyncio", "Runner.run",
            "run_until_complete", "run_forever", "serve (bench")  # fmt: skip
    for f, c in inclusive.most_common(top + len(skip)):
        if any(f.startswith(s) for s in skip):
            continue
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    out += ["", "self:"]
    for f, c in own.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcobserve.bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="group")
    p.add_argument("--observers", type=int, default=1000)
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--rate", type=int, default=2000, help="py-spy samples per second")
    p.add_argument("--out", help="output folder (default: a fresh one in the temporary folder)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--summarise", nargs="*", metavar="FILE", help="only summarise these raw files")
    p.add_argument("--focus", help="only stacks with a frame containing this text")
    p.add_argument(
        "--aiocoap-backlog-fix", action="store_true", help="experiment: O(1) aiocoap backlog check"
    )
    p.add_argument(
        "--blocking", action="store_true", help="py-spy pauses the server per sample (consistent stacks)"
    )
    args = p.parse_args(argv)
    if args.summarise:
        for f in args.summarise:
            print(summarise(Path(f), args.top, args.focus), end="\n\n")
        return 0
    from .harness import BenchConfig, run_bench

    if not args.out:
        import tempfile

        args.out = tempfile.mkdtemp(prefix="mcobserve-profile-")

    cfg = BenchConfig(
        observers=[args.observers],
        updates=args.updates,
        modes=[args.mode],
        profile_dir=args.out,
        profile_rate=args.rate,
        gap=0.002,
        fix_backlog=args.aiocoap_backlog_fix,
        profile_blocking=args.blocking,
    )
    result = run_bench(cfg)
    case = result.cases[0]
    s = case.summary()
    print(
        f"{case.mode} N={case.n}: CPU/update p50 {s['cpu_ms_p50']:.3f} ms, registration "
        f"{case.registration.server_cpu_ms * 1000 / case.n:.0f} µs server CPU per observer\n"
    )
    for phase in ("registration", "updates"):
        print(
            summarise(Path(args.out) / f"{case.mode}-{case.n}-{phase}.txt", args.top, args.focus), end="\n\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
