"""``mcobserve lab up|exec|down|status``: a private LAN of network namespaces to try mcobserve on.

``lab up`` builds the demo's topology and leaves it running: a bridge, a ``server`` host
(``fd00:db8::1``, ``10.77.0.1``), a ``sensor`` host (``fd00:db8::2``, ``10.77.0.2``) and
``observer1``..``observerN`` (``fd00:db8::3``..., ``10.77.0.3``...), each with ``eth0`` on the bridge
and a multicast route. ``lab exec HOST -- CMD`` runs a command in a host (with this mcobserve on its
PATH), ``lab down`` stops what runs there and removes everything. Multicast never leaves the lab; the
host's own interfaces are untouched. The lab is named ``mcolab`` (``--name`` or ``MCOBSERVE_LAB``
choose another, so several can coexist); its description is kept in ``/run/mcobserve/NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_FAILURE, RuntimeFailure, UsageError, reason

STATE_DIR = Path("/run/mcobserve")
DEFAULT_NAME = "mcolab"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
GROUP6 = "[ff35:30:2001:db8::23]:61616"
GROUP4 = "239.255.0.23:61616"


def _name(args: argparse.Namespace) -> str:
    name = args.name or os.environ.get("MCOBSERVE_LAB") or DEFAULT_NAME
    if not _NAME_RE.match(name):
        raise UsageError(f"lab name {name!r}: 1-8 lowercase letters and digits, starting with a letter")
    return name


def _state_file(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lab",
        help="a private namespace LAN to try mcobserve on: lab up, lab exec HOST -- CMD, lab down",
        description="Builds a LAN of network namespaces (server, sensor, observers on one bridge) that "
        "stays up until `mcobserve lab down`. Needs root (or unprivileged user namespaces).",
    )
    p.add_argument("--name", help=f"lab name (default $MCOBSERVE_LAB or {DEFAULT_NAME})")
    lsub = p.add_subparsers(dest="lab_command", required=True, metavar="up|exec|down|status")
    up = lsub.add_parser("up", help="build the LAN and print the commands to try in it")
    up.add_argument("--observers", type=int, default=3, help="observer hosts (default 3, at most 50)")
    up.add_argument("--ipv4", action="store_true", help="print IPv4 example commands (both work)")
    ex = lsub.add_parser("exec", help="run CMD in HOST: lab exec observer1 -- mcobserve observe URI")
    ex.add_argument("host", help="server, sensor or observerN")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    lsub.add_parser("down", help="stop everything in the LAN and remove it")
    lsub.add_parser("status", help="print the hosts and addresses of the LAN")
    for q in (up, ex, *lsub.choices.values()):
        if not any(a.dest == "name" for a in q._actions):
            q.add_argument("--name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``lab up|exec|down|status``."""
    name = _name(args)
    return {"up": _up, "exec": _exec, "down": _down, "status": _status}[args.lab_command](args, name)


def _load(name: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(_state_file(name).read_text())
    except FileNotFoundError:
        raise RuntimeFailure(f"no lab {name!r} is up; start one with: mcobserve lab up") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeFailure(
            f"cannot read {_state_file(name)} ({e}); remove the lab with: mcobserve lab down"
        ) from None
    return state


def _up(args: argparse.Namespace, name: str) -> int:
    from ..netlab import NETNS_DIR, Lan, can_use_netns, remove_kept

    if not 1 <= args.observers <= 50:
        raise UsageError("--observers must be within 1..50")
    if _state_file(name).exists() or any(n.startswith(f"{name}-") for n in _listdir(NETNS_DIR)):
        raise RuntimeFailure(
            f"lab {name!r} is already up; see `mcobserve lab status`, or remove it: mcobserve lab down"
        )
    ok, why = can_use_netns()
    if not ok:
        raise RuntimeFailure(f"cannot build a lab here: {why}")
    roles = ["server", "sensor"] + [f"observer{i}" for i in range(1, args.observers + 1)]
    lan = Lan(clients=len(roles) - 1, roles=roles, tag=name, keep=True)
    try:
        lan.start()
        hosts = {
            h.role: {"netns": h.name, "ifname": h.ifname, "addr6": h.addr6, "addr4": h.addr4}
            for h in lan.hosts
        }
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"name": name, "namespaces": lan.namespaces, "hosts": hosts, "ipv4": args.ipv4}
        _state_file(name).write_text(json.dumps(state, indent=1) + "\n")
    except BaseException:
        remove_kept(lan.namespaces)
        _state_file(name).unlink(missing_ok=True)
        raise
    print(_describe(state, lan.setup_seconds))
    return 0


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _describe(state: dict[str, Any], seconds: float | None = None) -> str:
    hosts = state["hosts"]
    took = f" in {seconds:.2f} s" if seconds is not None else ""
    pre = "" if state["name"] == DEFAULT_NAME else f"MCOBSERVE_LAB={state['name']} "
    lines = [f"lab {state['name']!r} is up{took}: one bridge, every host on eth0", ""]
    for role, h in hosts.items():
        lines.append(f"  {role:<11} {h['addr6']:<14} {h['addr4']:<11} (netns {h['netns']})")
    srv = hosts["server"]
    if state.get("ipv4"):
        bind, group, host = srv["addr4"], GROUP4, srv["addr4"]
    else:
        bind, group, host = f"[{srv['addr6']}]", GROUP6, f"[{srv['addr6']}]"
    uri = f"coap://{host}/temperature"
    lab = f"{pre}mcobserve lab exec"
    lines += [
        "",
        "Try, in three terminals (or with & at the end of the first two):",
        f"  {lab} server -- mcobserve server --bind {shlex.quote(bind + ':5683')} "
        f"--group {shlex.quote(group)} --interface eth0 --resource temperature='21.0 C'",
        f"  {lab} observer1 -- mcobserve observe {shlex.quote(uri)}",
        f"  {lab} sensor -- mcobserve publish {shlex.quote(uri)} --every 1 --count 10",
        f"a shell in a host: {lab} observer1 -- bash; remove it all: {pre}mcobserve lab down",
    ]
    return "\n".join(lines)


def _exec(args: argparse.Namespace, name: str) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("give the command after --, e.g. mcobserve lab exec observer1 -- ip addr")
    state = _load(name)
    host = state["hosts"].get(args.host)
    if host is None:
        raise UsageError(f"no host {args.host!r} in lab {name!r}; it has: {', '.join(state['hosts'])}")
    env = dict(os.environ)
    here = str(Path(sys.executable).parent)  # this mcobserve (and its Python) first on the PATH
    env["PATH"] = os.pathsep.join(p for p in (here, env.get("PATH", "")) if p)
    env["MCOBSERVE_LAB_HOST"] = args.host
    argv = ["ip", "netns", "exec", host["netns"], *cmd]
    sys.stdout.flush()
    try:
        os.execvpe("ip", argv, env)
    except OSError as e:
        reason(f"cannot run `ip netns exec` ({e.strerror}); is iproute2 installed?")
        return EXIT_FAILURE
    return EXIT_FAILURE  # pragma: no cover (execvpe does not return)


def _down(args: argparse.Namespace, name: str) -> int:
    from ..netlab import NETNS_DIR, remove_kept

    names = [n for n in _listdir(NETNS_DIR) if n.startswith(f"{name}-")]
    state_file = _state_file(name)
    if not names and not state_file.exists():
        reason(f"no lab {name!r} is up; nothing to remove")
        return 0
    removed = remove_kept(sorted(names))
    state_file.unlink(missing_ok=True)
    print(f"lab {name!r} removed ({len(removed)} namespaces)")
    return 0


def _status(args: argparse.Namespace, name: str) -> int:
    print(_describe(_load(name)))
    return 0
