"""``mcobserve``: command line for servers, observers and the tools around them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import signal
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..constants import DEFAULT_CODE_POINTS, DEFAULT_MIN_INTERVAL, CodePoints
from ..engine.counting import DEFAULT_LEISURE
from ..errors import MalformedError, McObserveError
from .common import (
    EXIT_ENDED,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    UsageError,
    configure_logging,
    describe_network_error,
    describe_os_error,
    reason,
)
from .security import SERVER_DEFAULTS, add_server_arguments, server_options

#: Every setting of ``mcobserve server`` with its default; a TOML ``[server]`` table may set any of them.
_SERVER_DEFAULTS: dict[str, Any] = {
    "bind": None,
    "group": None,
    "interface": None,
    "resource": [],
    "group_after": 1,
    "min_interval": DEFAULT_MIN_INTERVAL,
    "duration": None,
    "token_length": 2,
    "hops": 1,
    "run_for": None,
    "json": False,
    "control": None,
    "content_format": DEFAULT_CODE_POINTS.content_format,
    "confirmations": 8,
    "dampener": 4,
    "confirmation_wait": None,
    "count_every": 10,
    "cancel_below": 0.2,
    "retry_threshold": 4.0,
    "max_unconfirmed": 50,
    "no_counting": False,
    "credentials": None,
    "group_oscore": None,
    "key_lifetime": 3600.0,
    "reverse_proxy": None,
    **SERVER_DEFAULTS,
    "store": None,
}
#: Every setting of ``mcobserve observe`` with its default (TOML ``[observe]``).
_OBSERVE_DEFAULTS: dict[str, Any] = {
    "uri": None,
    "count": None,
    "timeout": None,
    "json": False,
    "interface": None,
    "content_format": DEFAULT_CODE_POINTS.content_format,
    "leisure": DEFAULT_LEISURE,
    "credentials": None,
    "group_oscore": None,
    "proxy": None,
}
_CONFIG_KEYS = {"server": set(_SERVER_DEFAULTS), "observe": set(_OBSERVE_DEFAULTS)}
#: The type each command-line option converts to, per command (filled when the parser is built):
#: a TOML value must have it too.
_CONFIG_TYPES: dict[str, dict[str, Any]] = {}


def _record_types(command: str, parser: argparse.ArgumentParser) -> None:
    types: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._StoreTrueAction):
            types[action.dest] = bool
        elif isinstance(action, argparse._AppendAction):
            types[action.dest] = list
        elif action.dest not in ("help", "verbose", "config"):
            types[action.dest] = action.type or str
    _CONFIG_TYPES[command] = types


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}


def _typed(key: str, value: Any, kind: Any, where: str) -> Any:
    """``value`` from a TOML file, checked against the option's type (one line when it is wrong)."""
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is list:
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind is str:
        ok = isinstance(value, str)
    elif callable(kind):
        try:
            value = kind(value if isinstance(value, str) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            ok = False
    if not ok:
        what = _TYPE_WORDS.get(kind, "a valid value")
        raise UsageError(f"{key} in {where} must be {what}, not {value!r} (fix the file)")
    return value


def _load_config(path: str | None, command: str) -> dict[str, Any]:
    """The ``[command]`` table of a TOML file (or its top level), keys normalised to underscores."""
    if not path:
        return {}
    if command not in _CONFIG_TYPES:
        build_parser()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read configuration {path}: {describe_os_error(e, name=False)}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"configuration {path} is not valid TOML: {e}") from None
    table = data.get(command, data)
    if not isinstance(table, dict):
        raise UsageError(f"[{command}] in {path} is not a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            continue
        name = key.replace("-", "_")
        if name not in _CONFIG_KEYS[command]:
            raise UsageError(f"unknown setting {key!r} in [{command}] of {path}")
        kind = _CONFIG_TYPES.get(command, {}).get(name)
        out[name] = value if kind is None else _typed(key, value, kind, f"[{command}] of {path}")
    if "code_points" in data and isinstance(data["code_points"], dict):
        out.setdefault("content_format", data["code_points"].get("content_format"))
    return out


def _merge(args: argparse.Namespace, config: dict[str, Any], defaults: dict[str, Any]) -> None:
    for name, default in defaults.items():
        if getattr(args, name, None) in (None, []):
            setattr(args, name, config.get(name, default))


# -- server ------------------------------------------------------------------------------------


def _server_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "server",
        help="serve observable text resources, with group observation (draft §4)",
        description="Serve text/plain observable resources; PUT replaces a value (2.04) and notifies. "
        "From the --group-after'th observer on, a resource is delivered as multicast notifications.",
    )
    p.add_argument("--bind", help="SRV_ADDR[:SRV_PORT], e.g. [fd00:db8:1::1]:5683 or 10.78.0.1")
    p.add_argument("--group", help="GRP_ADDR[:GRP_PORT], e.g. [ff35:30:2001:db8::23]:61616 or 239.255.0.1")
    p.add_argument("--interface", help="interface for multicast notifications (IFNAME)")
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="PATH[=TEXT]",
        help="an observable text resource (repeatable)",
    )
    p.add_argument("--group-after", type=int, help="start group observation at the N-th observer (default 1)")
    p.add_argument(
        "--min-interval",
        type=float,
        help="seconds between multicast notifications, per resource and per multicast group; changes "
        f"coalesce (default {DEFAULT_MIN_INTERVAL}, the draft's §4.4; 0 turns congestion control off)",
    )
    p.add_argument("--duration", type=float, help="cancel each group observation after SECONDS ('ending')")
    p.add_argument("--token-length", type=int, help="length of the Token T in bytes (default 2)")
    p.add_argument("--hops", type=int, help="multicast hop limit / TTL (default 1)")
    p.add_argument(
        "--content-format",
        type=int,
        help=f"Content-Format number of informative responses (default {DEFAULT_CODE_POINTS.content_format})",
    )
    p.add_argument("--run-for", type=float, help="shut down (cancelling group observations) after SECONDS")
    p.add_argument("--store", help="SQLite file: group observations survive a crash (docs/broker.md)")
    s = p.add_argument_group("security (draft §9, Appendix C)")
    s.add_argument(
        "--credentials",
        metavar="FILE.json",
        help="aiocoap credentials (OSCORE) for registrations and informative responses",
    )
    s.add_argument(
        "--group-oscore",
        metavar="self-managed|FILE.toml",
        help="protect notifications with Group OSCORE: a self-managed group or a pre-arranged one",
    )
    s.add_argument(
        "--reverse-proxy",
        metavar="PRX_ADDR[:PRX_PORT]",
        help="a reverse proxy stands in for this server (proxy draft §10): protected informative "
        "responses and /.well-known/core/mc-sender name it as tpi_server, without tpi_details "
        "(needs --group-oscore FILE.toml with a [deterministic] table)",
    )
    s.add_argument(
        "--key-lifetime",
        type=float,
        metavar="SECONDS",
        help="lifetime of self-managed keying material, 'exi' (default 3600)",
    )
    add_server_arguments(s)
    c = p.add_argument_group("rough counting of observers (draft §8, Appendix B)")
    c.add_argument(
        "--confirmations", type=int, metavar="M", help="confirmations wanted per round (default 8)"
    )
    c.add_argument("--dampener", type=int, metavar="D", help="dampener of the update (default 4)")
    c.add_argument(
        "--confirmation-wait",
        type=float,
        metavar="SECONDS",
        help="MAX_CONFIRMATION_WAIT (default 452 = MAX_RTT + MAX_CLIENT_REQUEST_DELAY)",
    )
    c.add_argument(
        "--count-every",
        type=int,
        metavar="K",
        help="notifications between rounds when the estimate agrees (default 10)",
    )
    c.add_argument("--cancel-below", type=float, metavar="X", help="cancel below this estimate (default 0.2)")
    c.add_argument(
        "--retry-threshold", type=float, help="count again at once if E/N or N/E exceeds it (default 4)"
    )
    c.add_argument(
        "--max-unconfirmed",
        type=int,
        help="never more notifications than this without a counting round (default 50, §13.1)",
    )
    c.add_argument("--no-counting", action="store_true", default=None, help="keep COUNT only, no rounds")
    p.epilog = (
        "SIGINT/SIGTERM cancel every group observation and exit; SIGUSR1 cancels them and keeps serving "
        "(the next registration starts a new one); DELETE on a resource removes it and cancels its group "
        "observation."
    )
    p.add_argument("--json", action="store_true", default=None, help="one JSON object per event on stdout")
    p.add_argument(
        "--control",
        metavar="PATH.sock",
        help="a local Unix socket streaming the events as JSON lines (for: mcobserve top --socket PATH)",
    )
    p.add_argument("--config", help="TOML file with the same settings ([server] table)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=_cmd_server)
    _record_types("server", p)


def _parse_resource(spec: str) -> tuple[tuple[str, ...], str]:
    path, _, text = spec.partition("=")
    parts = tuple(s for s in path.strip("/").split("/") if s)
    if not parts:
        raise UsageError(f"resource {spec!r} has an empty path")
    return parts, text


def _cmd_server(args: argparse.Namespace) -> int:
    from ..engine.common import Endpoint
    from ..engine.counting import CountingPolicy
    from ..engine.server import GroupPolicy, ServerEngine

    _merge(args, _load_config(args.config, "server"), _SERVER_DEFAULTS)
    if not args.bind or not args.group:
        raise UsageError("--bind and --group are required (or set them in --config)")
    if not args.resource:
        raise UsageError("give at least one --resource PATH[=TEXT]")
    if not 0 <= args.hops <= 255:
        raise UsageError("--hops must be within 0..255 (the multicast hop limit)")
    if not 1 <= args.token_length <= 8:
        raise UsageError("--token-length must be within 1..8 bytes")
    check_content_format(args.content_format)
    check_interface(args.interface)
    try:
        bind = Endpoint.parse(args.bind)
        group = Endpoint.parse(args.group)
        counting = (
            None
            if args.no_counting
            else CountingPolicy(
                confirmations=args.confirmations,
                dampener=args.dampener,
                confirmation_wait=args.confirmation_wait,
                count_every=args.count_every,
                cancel_below=args.cancel_below,
                retry_threshold=args.retry_threshold,
                max_unconfirmed=args.max_unconfirmed,
            )
        )
        policy = GroupPolicy(
            group_after=args.group_after,
            min_interval=args.min_interval,
            duration=args.duration,
            counting=counting,
        )
        ServerEngine(bind, group)  # validates the pair: multicast group, same IP version
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.group_oscore and not args.credentials:
        raise UsageError(
            "--group-oscore needs --credentials: registrations and informative responses "
            "MUST be protected (§9)"
        )
    if args.reverse_proxy is not None:
        try:
            stand_in = Endpoint.parse(args.reverse_proxy)
        except ValueError as e:
            raise UsageError(f"--reverse-proxy {args.reverse_proxy!r}: {e}") from None
        if stand_in.host.is_multicast or stand_in.host.is_unspecified:
            raise UsageError(
                f"--reverse-proxy {args.reverse_proxy!r}: a unicast address of the proxy expected"
            )
        if not args.group_oscore or args.group_oscore == "self-managed":
            raise UsageError(
                "--reverse-proxy needs --group-oscore FILE.toml with a [deterministic] table: clients "
                "send the Deterministic phantom request to the proxy (proxy draft §10)"
            )
        args.reverse_proxy = stand_in
    resources = [_parse_resource(r) for r in args.resource]
    code_points = CodePoints(content_format=args.content_format)
    return asyncio.run(_serve(args, bind, group, policy, resources, code_points))


async def _serve(
    args: argparse.Namespace,
    bind: Any,
    group: Any,
    policy: Any,
    resources: list[tuple[tuple[str, ...], str]],
    code_points: CodePoints,
) -> int:
    from ..aio.resources import TextResource
    from ..aio.server import GroupServer
    from ..engine.server import CongestionControl

    out: Any = _EventPrinter(args.json)
    hub = None
    if args.control:  # the same events for `mcobserve top --socket` (cli/control.py)
        from .control import EventHub

        hub = out = EventHub(out)
    security = _server_security(args.group_oscore, args.key_lifetime)
    if args.reverse_proxy is not None:
        from ..oscore.deterministic import DeterministicGroup

        if not isinstance(security, DeterministicGroup):
            raise UsageError(
                f"--reverse-proxy: {args.group_oscore} has no [deterministic] table (proxy draft §10)"
            )
    server_credentials = server_credentials_map(args.credentials)
    try:
        server = await GroupServer.create(
            bind,
            group,
            interface=args.interface,
            code_points=code_points,
            token_length=args.token_length,
            hops=args.hops,
            on_event=out,
            security=security,
            server_credentials=server_credentials,
            congestion=CongestionControl(interval=args.min_interval),  # per group (draft §4.4)
            **server_options(args),
        )
    except OSError as e:
        _reason(f"cannot serve on {bind} for group {group}: {describe_os_error(e)}")
        return EXIT_FAILURE
    except ValueError as e:
        _reason(f"cannot serve on {bind} for group {group}: {e}")
        return EXIT_FAILURE
    added = {path: TextResource(text) for path, text in resources}
    for path, resource in added.items():
        server.add_resource(path, resource, policy)
    if args.store:  # resume stored group observations on their Token T (broker/persist.py)
        from ..broker.persist import open_server_store

        if not await open_server_store(server, args.store, out, added, args):
            await server.shutdown()
            return 65
    from ..oscore.deterministic import DeterministicGroup

    if isinstance(security, DeterministicGroup):
        from ..proxy.origin import serve_deterministic_phantoms, stand_in_cri

        serve_deterministic_phantoms(server)  # recognize the phantom request through proxies (App. D)
        if args.reverse_proxy is not None:  # proxy draft §10: 'tpi_server' names the reverse proxy
            server.engine.stand_in = stand_in_cri(args.reverse_proxy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def cancel_all() -> None:  # the operator ends every group observation, the server goes on (§4.5)
        for obs in list(server.engine.observations()):
            server.cancel(obs.path, "operator")

    loop.add_signal_handler(signal.SIGUSR1, cancel_all)
    try:
        if hub is not None:
            try:
                await hub.start(args.control)
            except OSError as e:
                raise UsageError(f"--control {args.control}: {describe_os_error(e, name=False)}") from None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.run_for)
    finally:
        await server.shutdown()
        out({"event": "stopped", "time": round(time.time(), 3), "datagrams_sent": server.datagrams_sent})
        if hub is not None:
            await hub.close()
    return 0


def server_credentials_map(path: str | None) -> Any:
    """The server's aiocoap CredentialsMap from ``--credentials`` (None without it)."""
    if not path:
        return None
    import aiocoap.credentials

    credentials = aiocoap.credentials.CredentialsMap()
    credentials.load_from_dict(load_credentials(path))
    return credentials


def load_credentials(path: str) -> dict[str, Any]:
    """aiocoap's credentials JSON; relative OSCORE ``basedir`` entries are taken relative to the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read credentials {path}: {describe_os_error(e, name=False)}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"credentials {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"credentials {path}: a JSON object expected")
    base = Path(path).resolve().parent
    for entry in data.values():
        oscore = entry.get("oscore") if isinstance(entry, dict) else None
        if isinstance(oscore, dict) and isinstance(oscore.get("basedir"), str):
            oscore["basedir"] = str(base / oscore["basedir"]) + "/"
    return data


def _server_security(spec: str | None, lifetime: float) -> Any:
    """``self-managed`` (App. C) or a pre-arranged group's TOML file (§9), or None."""
    if not spec:
        return None
    from ..oscore import SelfManagedGroup
    from ..oscore.config import GroupConfigError, load_group
    from ..oscore.groupobs import PreArrangedGroup, SelfManagedGroupSecurity

    if spec == "self-managed":
        return SelfManagedGroupSecurity(
            SelfManagedGroup.create(os.urandom), lifetime=lifetime, now=time.time()
        )
    from ..oscore.deterministic import DeterministicGroup, load_deterministic

    try:
        det = load_deterministic(spec, server=True)  # a [deterministic] table: App. D phantom requests
        if det is not None:
            return DeterministicGroup(det.context, det.dc)
        cfg = load_group(spec, server=True)
    except GroupConfigError as e:
        raise UsageError(str(e)) from None
    return PreArrangedGroup(cfg.context, sec_gp=cfg.sec_gp, join_uri=cfg.join_uri, as_uri=cfg.as_uri)


def _line(text: str) -> None:
    """One line on stdout in one write, so lines of processes sharing a pipe never interleave (even
    with PYTHONUNBUFFERED, where print() writes the text and the newline separately)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class _EventPrinter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            _line(json.dumps(event))
        else:
            fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
            _line(f"{event['event']:<26} {fields}")


# -- observe -----------------------------------------------------------------------------------


def _observe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "observe",
        help="observe a CoAP resource; follows the server into a group observation (draft §5)",
        description="Prints one line per notification. Exits 0 after --count notifications; non-zero "
        "with a one-line reason on errors, on a timeout before --count, or when the server ends it early.",
    )
    p.add_argument("uri", nargs="?", help="coap://HOST[:PORT]/PATH")
    p.add_argument("--count", type=int, help="exit 0 after N notifications")
    p.add_argument(
        "--timeout",
        type=float,
        help="give up after SECONDS (non-zero exit if --count was not reached; without --count: "
        "observe for SECONDS and exit 0)",
    )
    p.add_argument("--interface", help="interface to listen for multicast notifications on")
    p.add_argument("--proxy", metavar="coap://PROXY", help="send the registration through this forward proxy")
    p.add_argument(
        "--credentials", metavar="FILE.json", help="aiocoap credentials (OSCORE) for the registration"
    )
    p.add_argument(
        "--group-oscore",
        metavar="FILE.toml",
        help="a pre-arranged OSCORE group (a self-managed group's material is taken from the server)",
    )
    p.add_argument(
        "--leisure",
        type=float,
        help=f"upper bound of the random wait before a confirmation (default {DEFAULT_LEISURE} s, §8.2)",
    )
    p.add_argument("--content-format", type=int, help="Content-Format number of informative responses")
    p.add_argument("--json", action="store_true", default=None, help="one JSON object per notification")
    p.add_argument("--config", help="TOML file with the same settings ([observe] table)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=_cmd_observe)
    _record_types("observe", p)


def _cmd_observe(args: argparse.Namespace) -> int:
    _merge(args, _load_config(args.config, "observe"), _OBSERVE_DEFAULTS)
    if not args.uri:
        raise UsageError("give the URI to observe, e.g. mcobserve observe 'coap://[fd00:db8::1]/temperature'")
    check_uri(args.uri)
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError("--timeout must be a positive number of seconds")
    if args.leisure is not None and not (math.isfinite(args.leisure) and args.leisure >= 0):
        raise UsageError("--leisure must be a number of seconds >= 0")
    check_interface(args.interface)
    check_content_format(args.content_format)
    return asyncio.run(_observe(args))


def check_content_format(number: int) -> None:
    """A Content-Format number (RFC 7252 §12.3: 0..65535), or a UsageError."""
    if not 0 <= number <= 0xFFFF:
        raise UsageError(f"--content-format must be within 0..65535, not {number}")


def check_uri(uri: str) -> None:
    """A ``coap://HOST[:PORT]/PATH`` URI, or a UsageError saying what is wrong."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"{uri!r} is not a valid URI ({e}); use coap://HOST[:PORT]/PATH") from None
    if parts.scheme != "coap":
        what = f"is a {parts.scheme}:// URI" if parts.scheme else "has no scheme"
        raise UsageError(f"{uri!r} {what}; mcobserve speaks CoAP over UDP: use coap://HOST[:PORT]/PATH")
    if not parts.hostname:
        raise UsageError(f"{uri!r} names no host; use coap://HOST[:PORT]/PATH")
    if port == 0:
        raise UsageError(f"{uri!r}: port 0 cannot be reached; leave it out for 5683")


def check_interface(name: str | None) -> None:
    """An interface this host has, or a UsageError naming the ones it has."""
    if not name:
        return
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        have = ", ".join(n for _, n in socket.if_nameindex())
        raise UsageError(f"no interface {name!r} on this host (it has: {have}); see `ip link`") from None


def _notification_json(n: Any, index: int) -> dict[str, Any]:
    payload = n.payload
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    out: dict[str, Any] = {
        "index": index,
        "observe": n.observe,
        "code": n.code,
        "payload": text if text is not None else payload.hex(),
        "via": n.via.value,
        "token": n.message.token.hex(),
        "time": round(n.received_at, 3),
    }
    if text is None:
        out["payload_encoding"] = "hex"
    return out


async def _observe(args: argparse.Namespace) -> int:
    from ..aio.client import Observer, ResponseError
    from .security import client_group_security

    group_security = client_group_security(args.group_oscore)
    from ..proxy.client import observer_for  # --proxy, Deterministic phantom requests (App. D)

    try:
        kind, det_security = observer_for(args, CodePoints(content_format=args.content_format))
    except McObserveError as e:
        raise UsageError(f"--proxy / --group-oscore: {e}") from None
    kind = kind or Observer
    group_security = det_security or group_security
    observer = kind(
        args.uri,
        interface=args.interface,
        code_points=CodePoints(content_format=args.content_format),
        leisure=args.leisure,
        credentials=load_credentials(args.credentials) if args.credentials else None,
        group_security=group_security,
    )
    received = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = None if args.timeout is None else started + args.timeout
    it = observer.__aiter__()
    try:
        while args.count is None or received < args.count:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                n = await asyncio.wait_for(it.__anext__(), remaining)
            except StopAsyncIteration:
                # The server ended it: a cancellation 5.03 (§4.5) or a resource that is not observable.
                why = (
                    "the server cancelled the group observation"
                    if observer.ended_by_server is not None
                    else "the server ended the observation"
                )
                of = "" if args.count is None else f" of {args.count}"
                _reason(f"{why} after {received}{of} notifications")
                return EXIT_ENDED
            except TimeoutError:
                if received == 0:
                    _reason(
                        f"nothing received from {args.uri} within {args.timeout:g} s (no answer: is the "
                        "server running at that address and port? -v shows more)"
                    )
                    return EXIT_TIMEOUT
                if args.count is None:
                    return EXIT_OK
                _reason(f"timeout after {args.timeout:g} s: {received} of {args.count} notifications")
                return EXIT_TIMEOUT
            received += 1
            if args.json:
                _line(json.dumps(_notification_json(n, received)))
            else:
                text = n.payload.decode("utf-8", "replace")
                _line(f"{n.code} observe={n.observe} via={n.via.value}: {text}")
        return EXIT_OK
    except UsageError:
        raise
    except Exception as e:  # aiocoap's errors (network, timeouts, OSCORE) have many types
        if isinstance(e, ResponseError):
            _reason(f"{args.uri}: {e}{response_hint(e.response.code.dotted)}")
        else:
            _reason(describe_network_error(e, args.uri, loop.time() - started))
        return EXIT_FAILURE
    finally:
        with contextlib.suppress(Exception):
            await it.aclose()


_reason = reason

_RESPONSE_HINTS = {
    "4.01": "the server wants OSCORE: give --credentials FILE.json (mcobserve credentials writes them)",
    "4.03": "these credentials may not do that on this server",
    "4.04": "no such resource: check the path (GET /.well-known/core lists what the server has)",
    "4.05": "the resource does not allow this method",
    "5.03": "the server is unavailable for now; try again later",
}


def response_hint(code: str) -> str:
    """What to do about an error response, as ``"; ..."``, or ``""``."""
    hint = _RESPONSE_HINTS.get(code)
    return f"; {hint}" if hint else ""


# -- inspect -----------------------------------------------------------------------------------


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="decode an informative-response payload into CBOR diagnostic notation (draft §4.2)",
    )
    p.add_argument("hex", help="the payload in hex (spaces and a 0x prefix allowed); '-' reads stdin")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..wire.diag import informative_response_diag

    text = sys.stdin.read() if args.hex == "-" else args.hex
    cleaned = "".join(text.split()).removeprefix("0x").removeprefix("h'").removesuffix("'")
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError("the argument is not hexadecimal") from None
    try:
        print(informative_response_diag(data))
    except MalformedError as e:
        raise UsageError(f"not an informative-response payload: {e}") from None
    return 0


# -- publish -----------------------------------------------------------------------------------


def _publish_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="PUT a changing text value to a resource, like a sensor would")
    p.add_argument("uri")
    p.add_argument("--every", type=float, default=1.0, help="seconds between updates (default 1)")
    p.add_argument("--count", type=int, default=10, help="number of updates (default 10)")
    p.add_argument("--values", help="comma-separated values to cycle through (default: a temperature walk)")
    p.add_argument("--credentials", metavar="FILE.json", help="aiocoap credentials (OSCORE) for the PUTs")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=_cmd_publish)


def _cmd_publish(args: argparse.Namespace) -> int:
    check_uri(args.uri)
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if not (math.isfinite(args.every) and args.every >= 0):
        raise UsageError("--every must be a number of seconds >= 0")
    if args.values is not None and not args.values.strip(","):
        raise UsageError("--values needs at least one value, e.g. --values on,off")
    return asyncio.run(_publish(args))


async def _publish(args: argparse.Namespace) -> int:
    import aiocoap

    ctx = await aiocoap.Context.create_client_context()
    if args.credentials:
        ctx.client_credentials.load_from_dict(load_credentials(args.credentials))
    values = args.values.split(",") if args.values else None
    try:
        for i in range(args.count):
            value = values[i % len(values)] if values else f"{21.0 + 2.5 * math.sin(i / 3):.1f} C"
            response = await ctx.request(
                aiocoap.Message(code=aiocoap.PUT, uri=args.uri, payload=value.encode(), content_format=0)
            ).response
            if not response.code.is_successful():
                _reason(f"PUT answered {response.code.dotted}")
                return 1
            if i + 1 < args.count:
                await asyncio.sleep(args.every)
    except Exception as e:  # aiocoap's network errors have many types
        _reason(f"PUT failed: {describe_network_error(e, args.uri)}")
        return EXIT_FAILURE
    finally:
        await ctx.shutdown()
    return 0


# -- main --------------------------------------------------------------------------------------

#: Subcommands defined in this module, in the order of ``mcobserve --help``.
_BUILTIN = (_server_parser, _observe_parser, _inspect_parser, _publish_parser)

#: Subcommands in their own module of ``mcobserve.cli``. Each module has ``add_parser(subparsers)``,
#: which sets ``func`` on its parser (``set_defaults(func=...)``), or a ``run(args) -> int`` used
#: instead. A new subcommand is one more line here.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "simulate",
    "credentials",
    "bench",
    "lab",
    "broker",
    "proxy",
    "dissector",
    "top",
)


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 64 (EX_USAGE) for usage errors, as documented."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mcobserve: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mcobserve",
        description="Observe notifications as CoAP multicast responses "
        "(draft-ietf-core-observe-multicast-notifications)",
        epilog="Exit codes: 0 success, 1 runtime error (network, security, server), 2 timeout, "
        "3 observation ended by the server, 64 usage error, 70 internal error, 130 interrupted.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest="verbose_global",
        action="count",
        default=0,
        help="more output: -v shows INFO lines and third-party warnings, -vv debugging",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _BUILTIN:
        add(sub)
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        before = set(sub.choices)
        module.add_parser(sub)
        run = getattr(module, "run", None)
        for new in set(sub.choices) - before:
            if run is not None and sub.choices[new].get_default("func") is None:
                sub.choices[new].set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = (getattr(args, "verbose", 0) or 0) + args.verbose_global
    configure_logging(verbose)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        _reason(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except McObserveError as e:
        _reason(str(e))
        return 1
    except OSError as e:
        _reason(describe_os_error(e))
        return 1
    except Exception as e:  # a bug: one line unless -v asked for the traceback
        if verbose:
            raise
        _reason(f"internal error: {type(e).__name__}: {e} (run with -v for the traceback and report it)")
        return EXIT_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
