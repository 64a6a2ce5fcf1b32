"""``mcobserve simulate-counting``: rough counting of observers at scale, without sockets (draft §8).

Drives the real server counter (:mod:`mcobserve.engine.counting`) through :mod:`mcobserve.sim`: the
number of confirmations per round is a binomial draw (or, with ``--exact``, the real client draw
per active client), so a million observers for 30 rounds take well under a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TypeVar

from ..engine.counting import CountingPolicy
from ..sim import RoundRecord, check_arguments, iter_simulation
from .main import UsageError

_T = TypeVar("_T", int, float)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``simulate-counting`` (its values are checked by the command: one-line errors, exit 64)."""
    p = sub.add_parser(
        "simulate-counting",
        help="rough counting at scale, without sockets (draft §8)",
        description="Simulate counting rounds of one group observation: N registered observers of "
        "which A are still active, the real server counter (§8.3, Appendix B.3) on a fake clock, and "
        "the clients' confirmations drawn as Binomial(A, (1 - P) * 2**-Q).",
        epilog="--loss is the probability that one confirmation (the client's re-registration) is lost; "
        "it biases the estimate down by the factor (1 - P) (§8.3.3). --joins clients register during "
        "every confirmation wait: they count for COUNT' and take part from the next round on.",
    )
    w = p.add_argument_group("population")
    w.add_argument("--observers", metavar="N", help="registered observers: COUNT at the start (required)")
    w.add_argument("--active", metavar="A", help="of those, clients still active, A <= N (required)")
    w.add_argument("--loss", metavar="P", help="chance that a confirmation is lost, 0 <= P < 1 (default 0)")
    w.add_argument("--joins", metavar="J", help="registrations during each confirmation wait (default 0)")
    c = p.add_argument_group("rough counting (draft §8.3, Appendix B.3)")
    c.add_argument("--confirmations", metavar="M", help="confirmations wanted per round (default 8)")
    c.add_argument("--dampener", metavar="D", help="dampener of the update (default 4)")
    c.add_argument("--count-every", metavar="K", help="notifications between rounds when E and N agree (10)")
    c.add_argument("--retry-threshold", metavar="X", help="count again at once if E/N or N/E exceeds it (4)")
    c.add_argument("--cancel-below", metavar="X", help="cancel below this estimate (default 0.2)")
    c.add_argument("--max-unconfirmed", metavar="K", help="notifications without a round, §13.1 (default 50)")
    c.add_argument("--confirmation-wait", metavar="SECONDS", help="MAX_CONFIRMATION_WAIT (default 452)")
    r = p.add_argument_group("run")
    r.add_argument("--rounds", metavar="R", help="counting rounds to simulate (default 30)")
    r.add_argument("--seed", metavar="S", help="seed of the random draws (default: fresh entropy)")
    r.add_argument("--interval", metavar="SECONDS", help="fake-clock seconds between notifications (10)")
    r.add_argument(
        "--exact",
        action="store_true",
        help="run the real client draw respond_to(Q) per active client: O(A) per round (App. B.2)",
    )
    r.add_argument("--json", action="store_true", help="one JSON object per round on stdout")
    r.add_argument("--plot", metavar="FILE.png", help="plot estimate and true active count per round")
    p.set_defaults(func=_cmd_simulate)


def _optional(args: argparse.Namespace, name: str, kind: type[_T]) -> _T | None:
    """The option ``--name`` converted with ``kind``, None when absent; a bad value is a UsageError."""
    raw = getattr(args, name.replace("-", "_"))
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"--{name} must be {what}, not {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"--{name} must be a finite number, not {raw!r}")
    return value


def _get(args: argparse.Namespace, name: str, kind: type[_T], default: _T) -> _T:
    value = _optional(args, name, kind)
    return default if value is None else value


def _required(args: argparse.Namespace, name: str) -> int:
    value = _optional(args, name, int)
    if value is None:
        raise UsageError(f"--{name} is required")
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _check_plot_path(path: str) -> None:
    from matplotlib.figure import Figure

    ext = os.path.splitext(path)[1].lower().lstrip(".") or "png"
    if ext not in Figure().canvas.get_supported_filetypes():
        raise UsageError(f"--plot: matplotlib cannot write .{ext} files (use FILE.png)")


def _cmd_simulate(args: argparse.Namespace) -> int:
    observers = _required(args, "observers")
    active = _required(args, "active")
    rounds = _get(args, "rounds", int, 30)
    loss = _get(args, "loss", float, 0.0)
    joins = _get(args, "joins", int, 0)
    seed = _optional(args, "seed", int)
    interval = _get(args, "interval", float, 10.0)
    _check(observers >= 0, "--observers must not be negative")
    _check(0 <= active <= observers, f"--active must be between 0 and --observers ({observers})")
    _check(rounds >= 1, "--rounds must be at least 1")
    _check(0.0 <= loss < 1.0, "--loss must be a probability in [0, 1)")
    _check(joins >= 0, "--joins must not be negative")
    for name in ("confirmations", "dampener"):
        _check(_get(args, name, int, 1) >= 1, f"--{name} must be at least 1")
    try:
        policy = CountingPolicy(
            confirmations=_get(args, "confirmations", int, 8),
            dampener=_get(args, "dampener", int, 4),
            confirmation_wait=_optional(args, "confirmation-wait", float),
            count_every=_get(args, "count-every", int, 10),
            cancel_below=_get(args, "cancel-below", float, 0.2),
            retry_threshold=_get(args, "retry-threshold", float, 4.0),
            max_unconfirmed=_get(args, "max-unconfirmed", int, 50),
        )
        if interval < 0:
            raise ValueError("--interval must not be negative")
        if seed is not None and seed < 0:
            raise ValueError("--seed must not be negative")
        check_arguments(observers, active, rounds, loss, joins)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.plot:
        _check_plot_path(args.plot)
    records: list[RoundRecord] = []
    for record in iter_simulation(observers, active, policy, rounds, loss, joins, seed, args.exact, interval):
        records.append(record)
        if args.json:
            print(json.dumps(record.to_json()), flush=True)
    if not args.json:
        _print_table(records, observers, active, loss, policy)
    if args.plot:
        try:
            _plot(records, args.plot, observers, active, loss, policy, joins)
        except OSError as e:
            print(f"mcobserve: cannot write {args.plot}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0


def _print_table(
    records: Sequence[RoundRecord], observers: int, active: int, loss: float, policy: CountingPolicy
) -> None:
    """A rich table of the rounds and the one-line summary (human output)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: no reason to squeeze the table into 80 columns
        console = Console(highlight=False, width=max(console.width, 120))
    table = Table(
        title=f"rough counting: N = {observers} registered, A = {active} active, "
        f"M = {policy.confirmations}, D = {policy.dampener}, loss = {loss:g}",
        title_justify="left",
    )
    for name in ("round", "notif", "N", "Q", "R", "E", "COUNT'", "estimate", "active", "error", "next"):
        table.add_column(name, justify="right", no_wrap=True)
    for rec in records:
        table.add_row(
            str(rec.round),
            str(rec.notification),
            _num(rec.n),
            str(rec.q),
            str(rec.r),
            str(rec.e),
            _num(rec.count_prime),
            _num(rec.estimate) + (" ✗" if rec.cancelled else ""),
            str(rec.true_active),
            _error(rec.estimate, rec.true_active),
            str(rec.next_round_in),
        )
    console.print(table)
    print(summary(records, loss))


def _num(value: float) -> str:
    """Counts are real-valued estimates (engine/counting.py); whole ones print without decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _error(estimate: float, truth: int) -> str:
    return f"{100.0 * (estimate - truth) / truth:+.1f}%" if truth else "-"


def summary(records: Sequence[RoundRecord], loss: float = 0.0) -> str:
    """One line: final estimate against the truth, confirmations spent, cancellation (§8.3.3)."""
    last = records[-1]
    confirmations = sum(r.r for r in records)
    text = (
        f"after {len(records)} rounds: estimate {_num(last.estimate)} for {last.true_active} active "
        f"({_error(last.estimate, last.true_active)}"
    )
    if loss:
        text += f"; loss biases it to (1 - P) * A = {(1 - loss) * last.true_active:.0f}"
    text += (
        f"), {confirmations} confirmations ({confirmations / len(records):.1f} per round), "
        f"{last.notification} multicast notifications"
    )
    if last.cancelled:
        text += f"; group observation cancelled in round {last.round}"
    return text


def _plot(
    records: Sequence[RoundRecord],
    path: str,
    observers: int,
    active: int,
    loss: float,
    policy: CountingPolicy,
    joins: int,
) -> None:
    """Estimate vs true active count per round, written with the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [0] + [r.round for r in records]
    truth = [active] + [r.true_active for r in records]
    estimates = [observers] + [r.estimate for r in records]
    ax.plot(x, estimates, "o-", label="estimate: COUNT after the round (round 0: N)")
    ax.plot(x, truth, "k--", label="true active clients")
    if loss:
        biased = [(1 - loss) * t for t in truth]
        ax.plot(x, biased, ":", color="grey", label=f"(1 − P) · active, P = {loss:g}")
    cancelled = [r for r in records if r.cancelled]
    if cancelled:
        ax.plot([cancelled[0].round], [cancelled[0].estimate], "rx", markersize=10, label="cancelled")
    ax.set_xlabel("counting round")
    ax.set_ylabel("observers")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"rough counting: N = {observers}, A = {active}, M = {policy.confirmations}, "
        f"D = {policy.dampener}, P = {loss:g}, J = {joins}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
