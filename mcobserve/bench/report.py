"""Write a run's results: ``results.md``, ``results.json``, ``machine.md`` and ``plot.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import SECURED_MODES
from .harness import BenchResult, Case

#: What the project wants to show (reported, never asserted).
TARGET_FLAT = 2.0
TARGET_CPU_RATIO = 100.0
TARGET_REGISTRATION = 0.8
TARGET_LATENCY_RATIO = 10.0
TARGET_N = 1000
#: Issue 8 item 5: Group OSCORE registrations/s against aiocoap OSCORE observe, at every N of a run.
TARGET_SECURED_REGISTRATION = 1.0
#: ... and the N at which no client may retransmit its registration.
STORM_N = 5000

MODE_STYLE = {
    "group": ("tab:green", "o"),
    "traditional-non": ("tab:orange", "s"),
    "traditional-con": ("tab:red", "^"),
    "group-oscore": ("tab:blue", "D"),
    "traditional-oscore": ("tab:purple", "v"),
    "traditional-oscore-con": ("tab:brown", "<"),
}
#: (traditional, group) pairs compared in the ratios and targets: plain, and both secured.
PAIRS = (("traditional-non", "group"), ("traditional-oscore", "group-oscore"))


def _f(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def cpu_ratio(
    result: BenchResult, n: int, mode: str = "traditional-non", base: str = "group"
) -> float | None:
    """Server CPU per update of ``mode`` over ``base``'s, at N = ``n``."""
    g, t = result.case(base, n), result.case(mode, n)
    return _ratio(t.cpu_ms, g.cpu_ms) if g and t else None


def burst_ratio(result: BenchResult, n: int, mode: str, base: str) -> float | None:
    """The same with updates back to back."""
    g, t = result.case(base, n), result.case(mode, n)
    return _ratio(t.burst_cpu, g.burst_cpu) if g and t else None


def headline(result: BenchResult) -> str | None:
    """``cpu ratio TRADITIONAL/GROUP at N=...: ...x`` for the largest N that has both, per pair.

    With both pairs measured there are two lines, and the last one is still traditional-non/group.
    """
    lines = []
    for mode, base in reversed(PAIRS):
        for n in sorted(set(result.config.observers), reverse=True):
            r = cpu_ratio(result, n, mode, base)
            if r is not None:
                lines.append(f"cpu ratio {mode}/{base} at N={n}: {r:.1f}x")
                break
    return "\n".join(lines) or None


def _latency(c: Case | None) -> float | None:
    return c.summary()["latency_kernel_ms_p50"] if c else None


def _group_targets(result: BenchResult, base: str) -> list[tuple[str, str, bool | None]]:
    """Flat CPU per update and one datagram per update, for a group mode."""
    out: list[tuple[str, str, bool | None]] = []
    groups = [c for c in result.cases if c.mode == base]
    if groups:
        cpus = [c.cpu_ms for c in groups]
        spread = max(cpus) / min(cpus) if min(cpus) > 0 else math.inf
        lo, hi = min(c.n for c in groups), max(c.n for c in groups)
        out.append((f"{base} CPU per update flat within {TARGET_FLAT:g}x (N={lo}..{hi})",
                    f"max/min = {spread:.2f}", spread <= TARGET_FLAT))  # fmt: skip
        ones = all(u.datagrams == 1 for c in groups for u in c.updates)
        out.append((f"{base}: one datagram per update", "yes" if ones else "no", ones))
    return out


def _target_n(result: BenchResult, base: str) -> int | None:
    """TARGET_N if ``base`` ran there, else the largest N it ran at."""
    if result.case(base, TARGET_N):
        return TARGET_N
    return max((c.n for c in result.cases if c.mode == base), default=None)


def targets(result: BenchResult) -> list[tuple[str, str, bool | None]]:
    """(what, measured, met?) for the targets the project wants to show."""
    out = _group_targets(result, "group")
    groups = [c for c in result.cases if c.mode == "group"]
    n = TARGET_N if result.case("group", TARGET_N) else max((c.n for c in groups), default=None)
    if n is not None:
        r = cpu_ratio(result, n)
        if r is not None:
            out.append((f"N={n}: server CPU per update traditional-non/group >= {TARGET_CPU_RATIO:g}x",
                        f"{r:.1f}x", r >= TARGET_CPU_RATIO))  # fmt: skip
        g, t = result.case("group", n), result.case("traditional-non", n)
        r = _ratio(t.burst_cpu, g.burst_cpu) if g and t else None
        if r is not None:
            out.append(("... with updates back to back", f"{r:.1f}x", r >= TARGET_CPU_RATIO))
        g, t = result.case("group", n), result.case("traditional-non", n)
        if g and t:
            reg = _ratio(g.registration.per_second, t.registration.per_second)
            if reg is not None:
                out.append((f"N={n}: registrations/s group/traditional-non >= {TARGET_REGISTRATION:g}x",
                            f"{reg:.2f}x", reg >= TARGET_REGISTRATION))  # fmt: skip
            reg = _ratio(g.registration.closed_per_second, t.registration.closed_per_second)
            if reg is not None:
                out.append(("... counting until the server closed its last CON exchange",
                            f"{reg:.2f}x", reg >= TARGET_REGISTRATION))  # fmt: skip
            lat = _ratio(_latency(t), _latency(g))
            if lat is not None:
                what = (
                    f"N={n}: latency to the last observer traditional-non/group >= {TARGET_LATENCY_RATIO:g}x"
                )
                out.append((what, f"{lat:.1f}x", lat >= TARGET_LATENCY_RATIO))
    out += _secured_targets(result)
    return out


def _secured_targets(result: BenchResult) -> list[tuple[str, str, bool | None]]:
    """The CPU target with security: Group OSCORE group observation against OSCORE RFC 7641 observation."""
    mode, base = PAIRS[1]
    out = _group_targets(result, base)
    n = _target_n(result, base)
    if n is None:
        return out
    r = cpu_ratio(result, n, mode, base)
    if r is not None:
        out.append((f"N={n}: server CPU per update {mode}/{base} >= {TARGET_CPU_RATIO:g}x",
                    f"{r:.1f}x", r >= TARGET_CPU_RATIO))  # fmt: skip
    r = burst_ratio(result, n, mode, base)
    if r is not None:
        out.append(("... with updates back to back", f"{r:.1f}x", r >= TARGET_CPU_RATIO))
    g, t = result.case(base, n), result.case(mode, n)
    lat = _ratio(_latency(t), _latency(g))
    if lat is not None:
        out.append((f"N={n}: latency to the last observer {mode}/{base} >= {TARGET_LATENCY_RATIO:g}x",
                    f"{lat:.1f}x", lat >= TARGET_LATENCY_RATIO))  # fmt: skip
    out += _storm_targets(result, mode, base)
    return out


def _storm_targets(result: BenchResult, mode: str, base: str) -> list[tuple[str, str, bool | None]]:
    """Issue 8 item 5: Group OSCORE registrations at least as fast as aiocoap's OSCORE observe at every
    N of the run, and no client retransmission at N = 5000 (the server keeps up)."""
    out: list[tuple[str, str, bool | None]] = []
    for n in sorted({c.n for c in result.cases if c.mode == base}):
        g, t = result.case(base, n), result.case(mode, n)
        reg = _ratio(g.registration.per_second, t.registration.per_second) if g and t else None
        if reg is not None:
            out.append((f"N={n}: registrations/s {base}/{mode} >= {TARGET_SECURED_REGISTRATION:g}x",
                        f"{reg:.2f}x", reg >= TARGET_SECURED_REGISTRATION))  # fmt: skip
    g = result.case(base, STORM_N)
    if g is not None:
        t = result.case(mode, STORM_N)
        theirs = f" ({mode}: {t.registration.retransmits})" if t else ""
        out.append((f"N={STORM_N}: client retransmissions of {base} registrations = 0",
                    f"{g.registration.retransmits}{theirs}", g.registration.retransmits == 0))  # fmt: skip
    return out


def markdown(result: BenchResult) -> str:
    cfg = result.config
    m = result.machine
    lines = [
        "# mcobserve benchmark: group observation vs RFC 7641 observation",
        "",
        f"{m['date']} · {m['cpu_model']} · {m['usable_cpus']} CPUs · Linux {m['kernel']} · "
        f"Python {m['python']} · aiocoap {m['aiocoap']} (details: machine.md)",
        "",
        f"Updates per case: {cfg.updates} · observers per case: {', '.join(map(str, cfg.observers))} · "
        f"group listener: one per {cfg.listener} · server CPU {m['server_cpus']}, clients CPU "
        f"{m['client_cpus']}, RPS mask {m['rps_mask']} · server SO_RCVBUF {cfg.rcvbuf >> 20} MiB "
        f"(requested, every mode) · run took {result.seconds:.0f} s",
        "",
        "## Per update",
        "",
        "| mode | N | server CPU / update, p50 (ms) | per observer (µs) | back to back (ms) | "
        "datagrams / update | CoAP bytes / update | to last observer p50 / p99 (ms) | "
        "... read by client p50 / p99 (ms) | server memory / observer (B) | all got all |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for c in result.cases:
        s = c.summary()
        dg = _f(s["datagrams_p50"], 0)
        if s["datagrams_min"] != s["datagrams_max"]:
            dg += f" ({s['datagrams_min']}–{s['datagrams_max']})"
        lines.append(
            f"| {c.mode} | {c.n} | {_f(s['cpu_ms_p50'], 3)} | {_f(s['cpu_us_per_observer'], 1)} | "
            f"{_f(s['burst_cpu_ms_p50'], 3)} | {dg} | "
            f"{_f(s['bytes_p50'], 0)} | "
            f"{_f(s['latency_kernel_ms_p50'])} / {_f(s['latency_kernel_ms_p99'])} | "
            f"{_f(s['latency_app_ms_p50'])} / {_f(s['latency_app_ms_p99'])} | "
            f"{_f(s['memory_bytes_per_observer'], 0) if c.n >= 100 else '–'} | "
            f"{'yes' if s['delivered_all'] else '**no**'} |"
        )
    lines += [
        "",
        "## Registration (N observers at once)",
        "",
        "| mode | N | last answer received (ms) | registrations / s | server done (ms) | "
        "registrations / s, server done | server CPU / registration (µs) | of it in GC (µs) | "
        "server datagrams out / in | client retransmissions | failed | server counts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result.cases:
        r = c.registration
        lines.append(
            f"| {c.mode} | {c.n} | {_f(r.seconds * 1000, 1)}{_runs(r.runs)} | {_f(r.per_second, 0)} | "
            f"{_f(r.closed_seconds * 1000, 1)} | {_f(r.closed_per_second, 0)} | "
            f"{_f(r.server_cpu_ms * 1000 / c.n, 0)} | {_f(r.server_gc_ms * 1000 / c.n, 0)} | "
            f"{r.server_sent} / {r.server_received} | {r.retransmits} | {r.failed} | {r.server_observers} |"
        )
    ns = sorted({c.n for c in result.cases})
    lines += [
        "",
        "## Ratios (traditional / group; registration: group / traditional)",
        "",
        "| N | CPU NON/group | CPU CON/group | CPU NON/group back to back | bytes NON/group | "
        "latency NON/group | registrations/s group/NON | ... server done |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in ns:
        g, t = result.case("group", n), result.case("traditional-non", n)
        gr, tr = (g.registration if g else None), (t.registration if t else None)
        lines.append(
            f"| {n} | {_f(cpu_ratio(result, n), 1)} | {_f(cpu_ratio(result, n, 'traditional-con'), 1)} | "
            f"{_f(_ratio(t.burst_cpu, g.burst_cpu) if t and g else None, 1)} | "
            f"{_f(_ratio(t.bytes, g.bytes) if t and g else None, 1)} | "
            f"{_f(_ratio(_latency(t), _latency(g)), 1)} | "
            f"{_f(_ratio(gr.per_second, tr.per_second) if gr and tr else None)} | "
            f"{_f(_ratio(gr.closed_per_second, tr.closed_per_second) if gr and tr else None)} |"
        )
    mode, base = PAIRS[1]
    if any(c.mode in SECURED_MODES for c in result.cases):
        lines += [
            "",
            "### With security (traditional-oscore / group-oscore; registration: group-oscore / "
            "traditional-oscore)",
            "",
            "| N | CPU | CPU back to back | bytes | latency | registrations/s | ... server done | "
            "CPU traditional-oscore-con/group-oscore | "
            "CPU group-oscore/group | CPU traditional-oscore/traditional-non |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in ns:
            g, t = result.case(base, n), result.case(mode, n)
            gr, tr = (g.registration if g else None), (t.registration if t else None)
            lines.append(
                f"| {n} | {_f(cpu_ratio(result, n, mode, base), 1)} | "
                f"{_f(burst_ratio(result, n, mode, base), 1)} | "
                f"{_f(_ratio(t.bytes, g.bytes) if t and g else None, 1)} | "
                f"{_f(_ratio(_latency(t), _latency(g)), 1)} | "
                f"{_f(_ratio(gr.per_second, tr.per_second) if gr and tr else None)} | "
                f"{_f(_ratio(gr.closed_per_second, tr.closed_per_second) if gr and tr else None)} | "
                f"{_f(cpu_ratio(result, n, 'traditional-oscore-con', base), 1)} | "
                f"{_f(cpu_ratio(result, n, base, 'group'), 2)} | "
                f"{_f(cpu_ratio(result, n, mode, 'traditional-non'), 2)} |"
            )
    tg = targets(result)
    if tg:
        lines += ["", "## Targets (shown, not asserted)", "", "| target | measured | met |", "|---|---:|:-:|"]
        lines += [f"| {w} | {v} | {'yes' if ok else 'no'} |" for w, v, ok in tg]
    notes = [f"{c.mode} N={c.n}: {e}" for c in result.cases for e in c.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"* {e}" for e in notes]
    errors = [f"{c.mode} N={c.n}: {e}" for c in result.cases for e in c.errors]
    if errors:
        lines += ["", "## Problems", ""] + [f"* {e}" for e in errors[:50]]
    lines += ["", "## How this was measured", "", METHOD.strip(), ""]
    return "\n".join(lines)


METHOD = """
* One private network namespace (`mcobserve.netlab.OneHost`, veth pair `vm0`/`vm1`): the server binds
  `[fd00:db8:1::1]:5683`, the group is `[ff35:30:2001:db8::23]:61616`; nothing leaves the namespace.
  Per (mode, N) a fresh server process and up to 4 client processes.
* **group**: `GroupServer` with one `TextResource` under `GroupPolicy(min_interval=0, counting=None)`.
  **traditional-non / -con**: aiocoap 0.4.17's own `ObservableResource` (RFC 7641), responses with
  `transport_tuning=Unreliable` (NON) or aiocoap's default for a CON registration (CON). Every server socket
  gets the same `SO_RCVBUFFORCE` (the kernel doubles it), so ACK bursts are not dropped (with the default
  212 KB, 500 CON observers lose ACKs and retransmit after about 3 s).
* **Secured modes**: one OSCORE (RFC 8613) context per observer, written per case into a temporary folder on
  tmpfs (`/dev/shm`) in the layout of `mcobserve credentials`, with two-byte client Sender IDs; the server
  loads them as aiocoap `FilesystemSecurityContext`s (`server.json`). **group-oscore**: the `group` server
  with `server_credentials` and a self-managed Group OSCORE group (`SelfManagedGroupSecurity`, draft App. C):
  registrations and the informative responses (with the group material) over OSCORE, the phantom request
  and every multicast notification protected in group mode (Ed25519 signature). **traditional-oscore**: the
  `traditional-non` resource behind aiocoap's `OscoreSiteWrapper`; every NON notification is protected with
  its observer's context (**traditional-oscore-con**: CON notifications, ACKed). Clients protect their GET
  with in-memory contexts (aiocoap's OSCORE code) and unprotect every answer; traditional-oscore observers
  unprotect every notification with their own context; group-oscore clients verify the phantom request
  and every multicast notification (signature, decryption, binding, Response Number) once per distinct
  datagram per client process, and the other copies of the same bytes count as verified.
* **Observers**: each has its own UDP socket and Token and registers with a raw CoAP CON GET, Observe 0;
  clients ACK every CON message at once (the group's CON 5.03 informative response, CON notifications) and
  check the informative response's `tp_info` (group, Token T). Group notifications are heard on
  `open_group_socket` listeners: by default one per observer (SO_REUSEPORT: the kernel gives each its own
  copy, the closest to N hosts); `--listener process` uses one per client process and counts one arrival
  for all its observers.
* **Counting**: datagrams and CoAP bytes (UDP payload; add 48 B per datagram for IPv6+UDP headers) are counted
  at the server's socket by wrapping aiocoap's transport `sendmsg`; received datagrams and empty ACKs by
  wrapping `datagram_msg_received`.
* **Server CPU per update**: `time.process_time()` (user + system) of the server process, from just before the
  change until the expected datagrams left (and, for CON, the N ACKs were processed and no CON exchange is
  open) plus 2 ms of settling; updates are 20 ms apart. "Back to back": the same updates with no pause in
  between, which leaves out the cost of waking an idle process (caches, on this VM about 0.3 ms).
  The same procedure without a change ("null update") costs the overhead shown in results.json (about 0.1 ms);
  it is not subtracted. The server has a CPU of its own and the clients the others; the kernel's receive
  work (socket delivery and multicast fan-out, which this kernel would otherwise charge to the sending server
  because it has no IRQ time accounting) is steered to the client CPUs with RPS, as N separate hosts would do
  it in their own kernels.
* **Latency to the last observer**: from the server's `time.time()` just before the change to the latest
  kernel receive timestamp (SO_TIMESTAMPNS) among all observers' sockets; "read by client" is the latest
  `time.time()` at which a client process read it, which also includes the simulated clients' own CPU
  contention (N observers share the client CPUs here; N hosts would not).
* **Memory per observer**: the server's VmRSS after the registrations (and `gc.collect()`) minus before, / N.
  aiocoap keeps every request's response in its deduplication cache for EXCHANGE_LIFETIME in all modes.
* **Registration**: all N observers send their GET at once; the time runs from the first request until the
  last observer has its answer, at the kernel's receive time (SO_TIMESTAMPNS) at its socket (group: the CON
  informative response, which the client ACKs; traditional: the first notification); the clients' checks of
  the answer (OSCORE, informative response, group material and phantom request) decide success but are not
  part of the time, in every mode (the observers of a client process share a CPU; N hosts would not wait
  for each other's checks). "Server done" runs until, in addition, the server processed the last datagram
  of the registrations (group: the last ACK, closing its last CON exchange), after 0.3 s of quiet. Before
  it, each case sends one warm-up request to each of 16 other resources of the same kind, from a context
  and socket of its own (secured modes: registrations, whose group observations are then cancelled; the
  others: GETs, which verify no address), so that no mode pays for a fresh process's first uses of its
  code and of OpenSSL. Cases below 100 observers run 7 times (`--registration-runs`; the modes take
  turns, fresh processes each time) and report the run with the median registration time, with the range
  of all runs in brackets: one registration takes about a millisecond, and one run alone is mostly noise.
  Server CPU per registration leaves out the explicit `gc.collect()` before the registrations.
"""


def _runs(runs: tuple[float, ...]) -> str:
    """`` (7 runs: 0.9-1.3)`` after a median registration time in ms, or nothing for a single run."""
    if not runs:
        return ""
    return f" ({len(runs)} runs: {min(runs) * 1000:.1f}–{max(runs) * 1000:.1f})"


def machine_markdown(result: BenchResult) -> str:
    m = result.machine
    rows = [
        ("CPU model", m["cpu_model"]),
        ("cores (usable)", f"{m['cores']} ({m['usable_cpus']})"),
        ("kernel", m["kernel"]),
        ("Python", m["python"]),
        ("aiocoap", m["aiocoap"]),
        ("date", m["date"]),
        ("server pinned to CPU", m["server_cpus"]),
        ("clients pinned to CPU", m["client_cpus"]),
        ("RPS mask (lo, vm0, vm1)", m["rps_mask"]),
    ]
    return "# Machine\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def plot(result: BenchResult, path: Path) -> None:
    """Log-log: server CPU per update and bytes per update against N, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in result.config.modes:
        cases = sorted((c for c in result.cases if c.mode == mode), key=lambda c: c.n)
        if not cases:
            continue
        colour, marker = MODE_STYLE.get(mode, ("tab:blue", "x"))
        ns = [c.n for c in cases]
        ax1.plot(ns, [c.cpu_ms for c in cases], marker=marker, color=colour, label=mode)
        burst = [(c.n, c.burst_cpu) for c in cases if c.burst_cpu]
        if burst:
            ax1.plot(*zip(*burst, strict=True), linestyle="--", linewidth=1, color=colour, alpha=0.7,
                     label=f"{mode}, back to back")  # fmt: skip
        ax2.plot(ns, [max(c.bytes, 1) for c in cases], marker=marker, color=colour, label=mode)
    for ax, title, unit in (
        (ax1, "server CPU per update", "ms (p50; dashed: updates back to back)"),
        (ax2, "bytes sent per update", "CoAP bytes (p50)"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("observers N")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"mcobserve bench ({result.machine['cpu_model']}, {result.config.updates} updates per case)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: BenchResult, out: Path) -> dict[str, Path]:
    """Write every output file into ``out``; return their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results.md": out / "results.md",
        "results.json": out / "results.json",
        "machine.md": out / "machine.md",
        "plot.png": out / "plot.png",
    }
    paths["results.md"].write_text(markdown(result))
    paths["results.json"].write_text(json.dumps(result.to_json(), indent=1, default=_json_default) + "\n")
    paths["machine.md"].write_text(machine_markdown(result))
    plot(result, paths["plot.png"])
    return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
