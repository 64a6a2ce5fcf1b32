"""``mcobserve proxy``: a CoAP forward or reverse proxy for clients that cannot join the group.

draft-ietf-core-multicast-notifications-proxy §4: the proxy registers once per target resource at the
server, follows it into the group observation, and forwards every multicast notification by unicast
to each of its clients with that client's own Token. Exit codes: 0 after a clean stop (SIGINT,
SIGTERM or ``--run-for``), 1 when it cannot serve on ``--bind``, 64 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..constants import COAP_PORT, DEFAULT_CODE_POINTS, CodePoints


class _Usage(Exception):
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proxy",
        help="CoAP proxy for legacy clients: one registration at the server, unicast to each client",
        description="Takes requests with Proxy-Uri (or Proxy-Scheme + Uri-Host), or with --reverse any "
        "request, and forwards them. Observations of one resource share one registration at the server; "
        "when the server answers with a group observation the proxy listens to the group and forwards "
        "each multicast notification by unicast to every client "
        "(draft-ietf-core-multicast-notifications-proxy §4).",
    )
    p.add_argument(
        "--bind", required=True, help="PRX_ADDR[:PRX_PORT], e.g. [fd00:db8:1::3]:5683 or 10.78.0.3"
    )
    p.add_argument("--interface", help="interface to listen for multicast notifications on (IFNAME)")
    p.add_argument(
        "--reverse",
        metavar="URI",
        help="reverse proxy: stand in for this origin (coap://SERVER[:PORT]); requests need no Proxy-Uri",
    )
    p.add_argument(
        "--credentials",
        metavar="FILE.json",
        help="aiocoap credentials (OSCORE) of the proxy toward servers: it registers over OSCORE and "
        "verifies Group OSCORE notifications itself (its clients get plaintext)",
    )
    p.add_argument(
        "--trusted-network",
        action="store_true",
        help="do not verify client addresses with Echo (RFC 9175) before sending them more than 3x the "
        "bytes received: only for networks without spoofing, for clients that cannot answer Echo "
        "(aiocoap 0.4.17)",
    )
    p.add_argument("--content-format", type=int, help="Content-Format number of informative responses")
    p.add_argument("--run-for", type=float, help="stop after SECONDS (default: until SIGINT/SIGTERM)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=run)


def _bind(text: str) -> tuple[str, int]:
    from ..engine.common import Endpoint

    try:
        ep = Endpoint.parse(text, COAP_PORT)
    except ValueError as e:
        raise _Usage(f"--bind {text!r}: {e}") from None
    return str(ep.host), ep.port


def run(args: argparse.Namespace) -> int:
    from ..errors import ProxyError
    from ..proxy.engine import parse_uri

    try:
        bind = _bind(args.bind)
        reverse = None
        if args.reverse:
            try:
                reverse = parse_uri(args.reverse)
            except ProxyError as e:
                raise _Usage(f"--reverse: {e}") from None
        if args.run_for is not None and args.run_for <= 0:
            raise _Usage("--run-for must be positive")
    except _Usage as e:
        print(f"mcobserve: {e}", file=sys.stderr, flush=True)
        return 64
    code_points = CodePoints(
        content_format=args.content_format
        if args.content_format is not None
        else DEFAULT_CODE_POINTS.content_format
    )
    return asyncio.run(_serve(args, bind, reverse, code_points))


def _printer(as_json: bool) -> Any:
    def out(event: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(event), flush=True)
        else:
            fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
            print(f"{event['event']:<26} {fields}", flush=True)

    return out


async def _serve(
    args: argparse.Namespace, bind: tuple[str, int], reverse: Any, code_points: CodePoints
) -> int:
    from ..proxy.aio import Proxy

    out = _printer(args.json)
    credentials = None
    if args.credentials:
        from .main import UsageError, load_credentials

        try:
            credentials = load_credentials(args.credentials)
        except UsageError as e:
            print(f"mcobserve: {e}", file=sys.stderr, flush=True)
            return 64
    proxy = Proxy(
        reverse=reverse,
        interface=args.interface,
        code_points=code_points,
        on_event=out,
        credentials=credentials,
        trusted_network=args.trusted_network,
    )
    try:
        await proxy.start(bind)
    except OSError as e:
        await proxy.shutdown()
        print(
            f"mcobserve: cannot serve on {args.bind}: {e} (is the address configured here?)", file=sys.stderr
        )
        return 1
    from .common import until_stopped

    try:
        await until_stopped(args.run_for)
    finally:
        await proxy.shutdown()
        out(
            {
                "event": "stopped",
                "time": round(time.time(), 3),
                "upstream_registrations": proxy.upstream_registrations,
            }
        )
    return 0
