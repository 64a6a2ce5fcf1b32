"""The default section of ``mcobserve bench``: group observation against RFC 7641 observation.

For each N: N simulated observers against a GroupServer (one multicast notification per change) and
against aiocoap's ObservableResource with NON and CON notifications, in a private namespace
(:mod:`mcobserve.bench.harness`). Writes ``results.md``, ``results.json``, ``machine.md`` and ``plot.png``.

The registration comparison (issue 8, item 5: ``group-oscore`` against ``traditional-oscore``) measures
the same work on both sides: the time until each client has read (and, for a CON answer, ACKed) its
answer (the group's CON 5.03 informative response, the first notification of an RFC 7641 observation);
the clients' checks of it (OSCORE, group material, the signed phantom request) decide success but are
not timed. Before the registrations each case sends one warm-up request to a second resource ``/w``
(secured modes: a registration with a context of its own, whose group observation is then cancelled),
so that neither side's N = 1 measures a fresh process's first use of its code and of OpenSSL; the
measured resource is untouched, its first registration still starts its group observation. The report
shows the item-5 targets (>= 1.0x at every N, no client retransmission at N = 5000).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ...cli.common import RuntimeFailure, UsageError, reason

HELP = "group observation against aiocoap's RFC 7641 observation (NON, CON; optionally OSCORE)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument(
        "--observers",
        metavar="N,N,...",
        help="observer counts (default 1,10,100,1000,5000; with --quick 1,20,200)",
    )
    p.add_argument("--updates", type=int, metavar="K", help="updates per case (default 20; --quick 5)")
    p.add_argument(
        "--modes",
        metavar="MODE,...",
        help="any of group, traditional-non, traditional-con, group-oscore, traditional-oscore, "
        "traditional-oscore-con (default: the first three; the secured ones: Group OSCORE against OSCORE)",
    )
    p.add_argument(
        "--listener",
        choices=("observer", "process"),
        default="observer",
        help="group sockets: one per observer (SO_REUSEPORT copies, default) or one per client process",
    )
    p.add_argument("--processes", type=int, default=4, help="client processes per case (default 4)")
    p.add_argument("--no-pin", action="store_true", help="do not give the server a CPU of its own")
    p.add_argument("--no-rps", action="store_true", help="leave receive processing on the sending CPU")
    p.add_argument("--gap", type=float, default=0.02, help="idle seconds between two updates (default 0.02)")
    p.add_argument(
        "--case-budget",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds of updates per case; slower cases stop early, after at least 3 (default 60)",
    )
    p.add_argument(
        "--registration-runs",
        type=int,
        metavar="R",
        help="runs of each case below 100 observers; the median registration is reported "
        "(default 7; --quick 3)",
    )
    x = p.add_argument_group("experiments (change the server; not the default comparison)")
    x.add_argument(
        "--aiocoap-backlog-fix",
        action="store_true",
        help="replace aiocoap 0.4.17's O(open CON exchanges) scan after every ACK with an O(1) check",
    )
    x.add_argument(
        "--gc-threshold", type=int, default=0, metavar="N", help="gc.set_threshold(N) in the server"
    )
    x.add_argument(
        "--tracemalloc", action="store_true", help="also report the Python heap per observer (slower server)"
    )


def _config(args: argparse.Namespace) -> Any:
    from .. import harness

    kw: dict[str, Any] = {
        "listener": args.listener,
        "processes": args.processes,
        "pin": not args.no_pin,
        "rps": not args.no_rps,
        "gap": args.gap,
        "case_budget": args.case_budget,
        "fix_backlog": args.aiocoap_backlog_fix,
        "gc_threshold": args.gc_threshold,
        "tracemalloc": args.tracemalloc,
    }
    if args.observers:
        try:
            kw["observers"] = [int(x) for x in args.observers.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--observers must be comma-separated integers, not {args.observers!r}"
            ) from None
    if args.updates is not None:
        kw["updates"] = args.updates
    if args.registration_runs is not None:
        kw["registration_runs"] = args.registration_runs
    if args.modes:
        kw["modes"] = [m.strip() for m in args.modes.split(",") if m.strip()]
    cfg = harness.BenchConfig.quick(**kw) if args.quick else harness.BenchConfig(**kw)
    cfg.validate()
    return cfg


def run(args: argparse.Namespace, out: Path) -> int:
    """Run the comparison; the last line on stdout is the server-CPU ratio at the largest N."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import harness, report

    try:
        cfg = _config(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    total_cases = len(cfg.observers) * len(cfg.modes)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        cases = progress.add_task("cases", total=total_cases)
        steps = progress.add_task("", total=cfg.updates)

        def on_progress(kind: str, info: dict[str, Any]) -> None:
            label = f"{info['mode']} N={info['n']}"
            if kind == "case":
                progress.update(cases, completed=info["index"], description=f"cases ({label})")
                progress.reset(steps, total=cfg.updates, description=f"{label}: starting")
            elif kind == "registering":
                progress.update(steps, description=f"{label}: registering")
            elif kind == "registered":
                progress.update(steps, description=f"{label}: updates")
            elif kind == "update":
                progress.update(steps, completed=info["seq"])

        try:
            result = harness.run_bench(cfg, on_progress, on_case=lambda partial: report.write(partial, out))
        except harness.BenchError as e:
            raise RuntimeFailure(f"benchmark failed: {e}") from None
        except KeyboardInterrupt:
            reason(f"interrupted; results of the finished cases are in {out}")
            return 130
        progress.update(cases, completed=total_cases)
    paths = report.write(result, out)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    _print_summary(console, result)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    line = report.headline(result)
    if line is not None:
        print(line, flush=True)
    return 0


def _print_summary(console: Any, result: Any) -> None:
    from rich.table import Table

    table = Table(title="per update (p50)", show_lines=False)
    for col in ("mode", "N", "CPU ms", "µs/obs", "datagrams", "bytes", "last obs ms", "reg/s", "all got all"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for c in result.cases:
        s = c.summary()
        lat = s["latency_kernel_ms_p50"]
        table.add_row(
            c.mode,
            str(c.n),
            f"{s['cpu_ms_p50']:.3f}",
            f"{s['cpu_us_per_observer']:.1f}",
            f"{s['datagrams_p50']:.0f}",
            f"{s['bytes_p50']:.0f}",
            "–" if lat is None else f"{lat:.2f}",
            f"{s['registrations_per_second']:.0f}",
            "yes" if s["delivered_all"] else "NO",
        )
    console.print(table)
