"""``mcobserve broker``, ``mcobserve topic ...`` and ``mcobserve subscribe``: the pub-sub broker and its
client side (draft-ietf-core-coap-pubsub -21 with group observations of topics).

Exit codes: 0 success; 1 the broker answered an error or the network failed; 2 timeout; 3 the
subscription ended early; 64 bad usage; 65 the store is not usable (foreign, corrupt, newer schema).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import ipaddress
import json
import sys
import time
from typing import Any

from ..constants import (
    CONTENT_FORMAT_PUBSUB,
    DEFAULT_CODE_POINTS,
    DEFAULT_MIN_INTERVAL,
    TOPIC_PROPERTY_GROUP_OBSERVATION,
)
from .security import add_server_arguments, server_options

EXIT_STORE = 65


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``broker``, ``topic`` and ``subscribe``."""
    from ..broker.bench import add_parser as add_bench_broker

    _broker_parser(sub)
    _topic_parser(sub)
    _subscribe_parser(sub)
    add_bench_broker(sub)


def _reason(text: str) -> None:
    print(f"mcobserve: {text}", file=sys.stderr, flush=True)


def _usage_guard(fn: Any) -> Any:
    """Usage errors become one line and exit 64, also when run as ``python -m mcobserve.cli.main``
    (where ``main.UsageError`` exists twice, as ``__main__`` and as ``mcobserve.cli.main``)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except Exception as e:
            if type(e).__name__ != "UsageError":
                raise
            _reason(str(e))
            return 64

    return run


# -- broker ------------------------------------------------------------------------------------------


def _broker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker",
        help="run a CoAP pub-sub broker whose topics are group observations",
        description="A CoAP publish-subscribe broker (draft-ietf-core-coap-pubsub -21). Subscribers of a "
        "topic are served by one group observation (multicast notifications, "
        "draft-ietf-core-observe-multicast-notifications); state survives restarts in --store.",
    )
    p.add_argument("--bind", required=True, help="SRV_ADDR[:SRV_PORT], e.g. [fd00:db8:1::1]:5683")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--group", help="GRP_ADDR[:GRP_PORT]: one multicast group for every topic")
    g.add_argument(
        "--group-prefix",
        metavar="PREFIX/LEN",
        help="IPv6 multicast prefix, e.g. ff35:30:2001:db8::/96: one group per topic "
        "(hash of its topic-data path)",
    )
    p.add_argument(
        "--group-port", type=int, default=61616, help="GRP_PORT with --group-prefix (default 61616)"
    )
    p.add_argument("--interface", help="interface for multicast notifications (IFNAME)")
    p.add_argument(
        "--store",
        help="SQLite state file (default: ~/.local/share/mcobserve/broker.sqlite; ':memory:' keeps nothing)",
    )
    p.add_argument(
        "--store-sync",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite synchronous mode: FULL survives power loss, NORMAL only a crash (default FULL)",
    )
    p.add_argument("--collection", default="/ps", help="path of the topic collection (default /ps)")
    p.add_argument(
        "--group-after", type=int, default=1, help="start group observation at the N-th subscriber"
    )
    p.add_argument(
        "--min-interval",
        type=float,
        default=DEFAULT_MIN_INTERVAL,
        help=f"seconds between multicast notifications of a topic (default {DEFAULT_MIN_INTERVAL})",
    )
    p.add_argument("--duration", type=float, help="cancel each group observation after SECONDS ('ending')")
    p.add_argument("--token-length", type=int, default=2, help="length of the Token T in bytes (default 2)")
    p.add_argument("--hops", type=int, default=1, help="multicast hop limit (default 1)")
    p.add_argument(
        "--publish-rate", type=float, default=50.0, help="publications per second and topic before 4.29"
    )
    p.add_argument("--publish-burst", type=int, default=50, help="burst of publications allowed (default 50)")
    p.add_argument(
        "--max-topics", type=int, default=100_000, help="largest number of topics (default 100000)"
    )
    p.add_argument(
        "--announce",
        action="store_true",
        help="start a topic's group observation at its first publication, for the topic metadata (App. A.1)",
    )
    p.add_argument(
        "--pubsub-content-format",
        type=int,
        default=CONTENT_FORMAT_PUBSUB,
        help=f"Content-Format of application/core-pubsub+cbor (default {CONTENT_FORMAT_PUBSUB})",
    )
    p.add_argument(
        "--group-property",
        type=int,
        default=TOPIC_PROPERTY_GROUP_OBSERVATION,
        help=f"topic property carrying the group observation (default {TOPIC_PROPERTY_GROUP_OBSERVATION})",
    )
    p.add_argument(
        "--content-format",
        type=int,
        default=DEFAULT_CODE_POINTS.content_format,
        help="Content-Format of informative responses",
    )
    p.add_argument("--no-counting", action="store_true", help="keep COUNT only, no rough counting rounds")
    s = p.add_argument_group("security (observe-multicast §9, Appendix C)")
    s.add_argument("--credentials", metavar="FILE.json", help="aiocoap credentials (OSCORE) for the broker")
    s.add_argument("--group-oscore", metavar="self-managed|GROUP.toml", help="protect notifications")
    s.add_argument("--key-lifetime", type=float, default=3600.0, help="self-managed key lifetime (s)")
    add_server_arguments(s)  # --publishers, --trusted-network: as `mcobserve server` (docs/security.md)
    p.add_argument(
        "--cluster", metavar="URLS", help="keep topics in a cluster (mcobserve.cluster), e.g. nats://h:4222"
    )
    _cluster_options(p)
    p.add_argument("--run-for", type=float, help="shut down (cancelling group observations) after SECONDS")
    p.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=_usage_guard(_cmd_broker))


def _cluster_options(p: argparse.ArgumentParser) -> None:
    """The ``--nats-*`` options of mcobserve.cluster (if installed; it does not import nats-py here)."""
    with contextlib.suppress(ImportError):
        from ..cluster.options import add_arguments

        add_arguments(p)


def _cmd_broker(args: argparse.Namespace) -> int:
    from ..broker.core import BrokerConfig
    from ..engine.common import Endpoint
    from ..engine.counting import CountingPolicy
    from ..engine.server import GroupPolicy
    from .main import UsageError

    try:
        bind = Endpoint.parse(args.bind)
        group = Endpoint.parse(args.group) if args.group else None
        prefix = None
        if args.group_prefix:
            try:
                prefix = ipaddress.IPv6Network(args.group_prefix, strict=False)
            except ValueError as e:
                raise UsageError(f"--group-prefix: {e}") from None
        if group is not None and not group.host.is_multicast:
            raise UsageError(f"--group {group.host} is not a multicast address")
        if not 0 < args.group_port < 65536:
            raise UsageError("--group-port must be 1..65535")
        collection = tuple(p for p in args.collection.split("/") if p)
        if not collection:
            raise UsageError("--collection must be a path such as /ps")
        policy = GroupPolicy(
            group_after=args.group_after,
            min_interval=args.min_interval,
            duration=args.duration,
            counting=None if args.no_counting else CountingPolicy(),
        )
        config = BrokerConfig(
            collection=collection,
            pubsub_content_format=args.pubsub_content_format,
            group_property=args.group_property,
            policy=policy,
            publish_rate=args.publish_rate,
            publish_burst=args.publish_burst,
            max_topics=args.max_topics,
            group_prefix=prefix,
            announce=args.announce,
            protected_writes=bool(args.credentials),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.group_oscore and not args.credentials:
        raise UsageError("--group-oscore needs --credentials: registrations MUST be protected (§9)")
    server_options(args)  # usage errors (e.g. --publishers without --credentials) before anything starts
    return asyncio.run(_run_broker(args, bind, group, config))


def _open_store(path: str | None, sync: str = "FULL") -> Any:
    from ..store import Store, default_store_path

    return Store.open(path if path else default_store_path(), synchronous=sync)


async def _run_broker(args: argparse.Namespace, bind: Any, group: Any, config: Any) -> int:
    from ..broker.core import Broker
    from ..constants import CodePoints
    from ..engine.server import CongestionControl
    from ..errors import ForeignStoreError, McObserveError, StoreError, UnusableAddressError
    from .main import UsageError, _EventPrinter, _server_security, server_credentials_map

    out = _EventPrinter(args.json)
    try:
        store = _open_store(args.store, args.store_sync)
    except ForeignStoreError as e:
        _reason(f"{e}")
        return EXIT_STORE
    except StoreError as e:
        _reason(f"{e}")
        return EXIT_STORE
    backend = None
    if args.cluster:
        try:
            import importlib

            cluster = importlib.import_module("mcobserve.cluster")
        except ImportError:
            store.close()
            raise UsageError(
                "--cluster needs mcobserve.cluster, which is not installed in this build"
            ) from None
        try:
            backend = cluster.make_backend(args.cluster, args, store=store, on_event=out)
            if inspect.isawaitable(backend):
                backend = await backend
        except McObserveError as e:
            store.close()
            _reason(str(e))
            return 1
    if args.group_oscore == "self-managed" and store.path != ":memory:":
        from ..broker.durable_oscore import load_self_managed

        try:  # its keying material and SSN live in the store: observations resume after a crash
            security = load_self_managed(store, lifetime=args.key_lifetime, now=time.time())
        except StoreError as e:
            store.close()
            _reason(str(e))
            return EXIT_STORE
    else:
        security = _server_security(args.group_oscore, args.key_lifetime)
    server_credentials = server_credentials_map(args.credentials)
    try:
        broker = await Broker.create(
            bind,
            group,
            config=config,
            group_port=args.group_port,
            interface=args.interface,
            store=store,
            backend=backend,
            code_points=CodePoints(content_format=args.content_format),
            token_length=args.token_length,
            hops=args.hops,
            security=security,
            server_credentials=server_credentials,
            on_event=out,
            congestion=CongestionControl(interval=args.min_interval),  # per group (draft §4.4)
            **server_options(args),
        )
    except UnusableAddressError as e:  # link-local or All CoAP Nodes group (draft §3, §4.2)
        store.close()
        _reason(f"cannot serve on {bind}: {e}")
        return 64
    except (OSError, ValueError) as e:
        store.close()
        _reason(f"cannot serve on {bind}: {e}")
        return 1
    except McObserveError as e:
        store.close()
        _reason(str(e))
        return EXIT_STORE if isinstance(e, StoreError) else 1
    from .common import until_stopped

    try:
        await until_stopped(args.run_for)
    finally:
        await broker.shutdown()
        store.close()
        out({"event": "stopped", "time": round(time.time(), 3), "topics": len(broker.topics)})
    return 0


# -- topic -------------------------------------------------------------------------------------------


def _topic_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "topic",
        help="create, list, read, update and delete topics of a pub-sub broker",
        description="Topic configuration (draft-ietf-core-coap-pubsub §3). BROKER_URI is coap://HOST[:PORT] "
        "(the collection is discovered with rt=core.ps.coll) or the collection's URI.",
    )
    tsub = p.add_subparsers(dest="topic_command", required=True)
    c = tsub.add_parser("create", help="POST a new topic to the collection")
    c.add_argument("broker")
    c.add_argument("name", help="topic-name")
    c.add_argument("--resource-type", default="core.ps.data", help="resource-type (default core.ps.data)")
    c.add_argument("--data", help="topic-data path of your choice (default: the broker chooses)")
    c.add_argument("--content-format", type=int, help="topic-content-format")
    c.add_argument("--type", help="topic-type, e.g. temperature")
    c.add_argument("--expires-in", type=float, metavar="S", help="expiration-date SECONDS from now")
    c.add_argument("--max-subscribers", type=int)
    c.add_argument("--observer-check", type=int, metavar="S")
    c.add_argument("--initialize", metavar="HEX", help="initial representation (needs --content-format)")
    l_ = tsub.add_parser("list", help="GET the collection (or FETCH with --name / --type)")
    l_.add_argument("broker")
    l_.add_argument("--name", help="only the topic with this topic-name")
    l_.add_argument("--type", help="only topics with this topic-type")
    l_.add_argument("--data", action="store_true", help="list topic-data resources (rt=core.ps.data)")
    g = tsub.add_parser("get", help="GET a topic by name or path (and its group observation)")
    g.add_argument("broker")
    g.add_argument("topic", help="topic-name, or the topic's path such as /ps/1a2b3c")
    g.add_argument("--keys", help="comma-separated property keys: FETCH only these (Content-Format 60)")
    u = tsub.add_parser("update", help="iPATCH (or POST with --replace) a topic")
    u.add_argument("broker")
    u.add_argument("topic")
    u.add_argument("--replace", action="store_true", help="POST: replace the whole representation")
    u.add_argument("--type")
    u.add_argument("--content-format", type=int)
    u.add_argument("--expires-in", type=float, metavar="S")
    u.add_argument("--max-subscribers", type=int)
    u.add_argument("--observer-check", type=int)
    d = tsub.add_parser("delete", help="DELETE a topic (its topic-data goes too)")
    d.add_argument("broker")
    d.add_argument("topic")
    for q in (c, l_, g, u, d):
        q.add_argument("--json", action="store_true", help="JSON output")
        q.add_argument("--credentials", metavar="FILE.json", help="aiocoap credentials (OSCORE)")
        q.add_argument(
            "--pubsub-content-format", type=int, default=CONTENT_FORMAT_PUBSUB, help="core-pubsub+cbor number"
        )
        q.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the broker")
    p.set_defaults(func=_usage_guard(_cmd_topic))


def _props_from(args: argparse.Namespace, *, create: bool) -> dict[int, Any]:
    from ..broker import properties as P
    from ..wire.cbor import CborTag

    props: dict[int, Any] = {}
    if create:
        props[P.TOPIC_NAME] = args.name
        props[P.RESOURCE_TYPE] = args.resource_type
        if args.data:
            props[P.TOPIC_DATA] = args.data
        if args.initialize is not None:
            props[P.INITIALIZE] = bytes.fromhex(args.initialize.replace(" ", ""))
    if args.content_format is not None:
        props[P.TOPIC_CONTENT_FORMAT] = args.content_format
    if args.type:
        props[P.TOPIC_TYPE] = args.type
    if args.expires_in is not None:
        props[P.EXPIRATION_DATE] = CborTag(1, int(time.time() + args.expires_in))
    if args.max_subscribers is not None:
        props[P.MAX_SUBSCRIBERS] = args.max_subscribers
    if args.observer_check is not None:
        props[P.OBSERVER_CHECK] = args.observer_check
    return props


def _jsonable(value: Any) -> Any:
    from ..wire.cbor import CborTag

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, CborTag):
        return {"tag": value.tag, "value": _jsonable(value.value)}
    return value


def _show(props: dict[int, Any], as_json: bool, extra: dict[str, Any] | None = None) -> None:
    from ..broker import properties as P
    from ..wire.diag import cbor_diag

    if as_json:
        print(json.dumps({**(extra or {}), "properties": _jsonable(props)}), flush=True)
        return
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")
    for k, v in props.items():
        name = P.NAMES.get(k, "group-observation" if k == TOPIC_PROPERTY_GROUP_OBSERVATION else str(k))
        print(f"{name} ({k}): {cbor_diag(v) if not isinstance(v, str) else json.dumps(v)}")


def _cmd_topic(args: argparse.Namespace) -> int:
    from .main import UsageError

    if getattr(args, "initialize", None) is not None:
        try:
            bytes.fromhex(args.initialize.replace(" ", ""))
        except ValueError:
            raise UsageError("--initialize takes hexadecimal bytes, e.g. 80") from None
    return asyncio.run(_client_call(args, _topic))


async def _client_call(args: argparse.Namespace, fn: Any) -> int:
    import aiocoap

    from ..broker.client import PubSubClient, PubSubError
    from ..errors import McObserveError
    from .main import load_credentials

    ctx = await aiocoap.Context.create_client_context()
    try:
        if getattr(args, "credentials", None):
            ctx.client_credentials.load_from_dict(load_credentials(args.credentials))
        client = PubSubClient(ctx, args.broker, pubsub_content_format=args.pubsub_content_format)
        return int(await asyncio.wait_for(fn(args, client), args.timeout) or 0)
    except PubSubError as e:
        _reason(f"the broker answered {e}")
        return 1
    except TimeoutError:
        _reason(f"no answer from {args.broker} within {args.timeout} s")
        return 2
    except McObserveError as e:
        _reason(str(e))
        return 1
    except OSError as e:
        _reason(f"network error: {e}")
        return 1
    except Exception as e:  # aiocoap's errors (resolution, timeouts) have many types
        if type(e).__name__ == "UsageError":
            raise
        _reason(f"{type(e).__name__}: {e}")
        return 1
    finally:
        await ctx.shutdown()


async def _resolve_topic(client: Any, topic: str) -> str:
    return topic if topic.startswith("/") else await client.by_name(topic)


async def _topic(args: argparse.Namespace, client: Any) -> int:
    from ..broker import properties as P

    cmd = args.topic_command
    if cmd == "create":
        location, props = await client.create(_props_from(args, create=True))
        _show(props, args.json, {"topic": location, "topic_data": props.get(P.TOPIC_DATA)})
    elif cmd == "list":
        if args.data:
            links = await client.list(P.RT_DATA)
        elif args.name or args.type:
            flt: dict[int, Any] = {}
            if args.name:
                flt[P.TOPIC_NAME] = args.name
            if args.type:
                flt[P.TOPIC_TYPE] = args.type
            links = await client.find(flt)
        else:
            links = await client.list()
        if args.json:
            print(json.dumps({"topics": links}), flush=True)
        else:
            for link in links:
                print(link)
    elif cmd == "get":
        path = await _resolve_topic(client, args.topic)
        if args.keys:
            try:
                keys = [int(k) for k in args.keys.split(",")]
            except ValueError:
                from .main import UsageError

                raise UsageError("--keys takes comma-separated integers, e.g. 1,3") from None
            props = await client.fetch(path, keys)
        else:
            props = await client.get(path)
        _show(props, args.json, {"topic": path})
    elif cmd == "update":
        path = await _resolve_topic(client, args.topic)
        props = _props_from(args, create=False)
        if args.replace:
            current = await client.get(path)
            props = {**{k: current[k] for k in P.IMMUTABLE if k in current}, **props}
        _show(await client.update(path, props, partial=not args.replace), args.json, {"topic": path})
    elif cmd == "delete":
        path = await _resolve_topic(client, args.topic)
        await client.delete(path)
        if args.json:
            print(json.dumps({"deleted": path}), flush=True)
        else:
            print(f"deleted {path}")
    return 0


# -- subscribe ---------------------------------------------------------------------------------------


def _subscribe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "subscribe",
        help="subscribe to a topic by name (follows its group observation)",
        description="Find the topic NAME at the broker (FETCH on the collection), read its topic-data URI "
        "and "
        "its group observation metadata, and observe it; multicast notifications are followed "
        "transparently (draft §5).",
    )
    p.add_argument("broker", help="coap://HOST[:PORT] or the collection's URI")
    p.add_argument("name", help="topic-name")
    p.add_argument("--count", type=int, help="exit 0 after N notifications")
    p.add_argument("--timeout", type=float, help="give up after SECONDS (exit 2 with --count)")
    p.add_argument("--interface", help="interface to listen for multicast notifications on")
    p.add_argument("--content-format", type=int, default=DEFAULT_CODE_POINTS.content_format)
    p.add_argument("--pubsub-content-format", type=int, default=CONTENT_FORMAT_PUBSUB)
    p.add_argument("--credentials", metavar="FILE.json", help="aiocoap credentials (OSCORE)")
    p.add_argument(
        "--group-property",
        type=int,
        default=TOPIC_PROPERTY_GROUP_OBSERVATION,
        help=f"topic property of the group observation (default {TOPIC_PROPERTY_GROUP_OBSERVATION})",
    )
    p.add_argument(
        "--register", action="store_true", help="always register (ignore the topic's group observation data)"
    )
    p.add_argument(
        "--group-oscore", metavar="GROUP.toml", help="pre-arranged Group OSCORE group (client side)"
    )
    p.add_argument(
        "--no-count",
        action="store_true",
        help="joining from metadata, do not send the No-Response 16 registration that gets us counted",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per notification")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=_usage_guard(_cmd_subscribe))


def _cmd_subscribe(args: argparse.Namespace) -> int:
    return asyncio.run(_subscribe(args))


async def _subscribe(args: argparse.Namespace) -> int:
    import aiocoap

    from ..broker.client import PubSubError
    from ..errors import McObserveError

    ctx = await aiocoap.Context.create_client_context()
    try:  # one context: its OSCORE contexts (and their file locks) serve discovery and observation
        return await _discover_and_follow(args, ctx)
    except PubSubError as e:
        _reason(f"the broker answered {e}")
        return 1
    except TimeoutError:
        _reason(f"no answer from {args.broker}")
        return 2
    except McObserveError as e:
        _reason(str(e))
        return 1
    except Exception as e:
        if type(e).__name__ == "UsageError":
            raise
        _reason(f"{type(e).__name__}: {e}")
        return 1
    finally:
        await ctx.shutdown()


async def _discover_and_follow(args: argparse.Namespace, ctx: Any) -> int:
    from ..broker import properties as P
    from ..broker.client import PubSubClient, group_observation_metadata
    from .main import load_credentials

    if args.credentials:
        ctx.client_credentials.load_from_dict(load_credentials(args.credentials))
    client = PubSubClient(ctx, args.broker, pubsub_content_format=args.pubsub_content_format)
    path = await asyncio.wait_for(client.by_name(args.name), 20.0)
    props = await asyncio.wait_for(client.get(path), 20.0)
    data = props.get(P.TOPIC_DATA)
    if not isinstance(data, str):
        _reason(f"topic {args.name!r} has no topic-data URI")
        return 1
    group = props.get(args.group_property)
    metadata = group_observation_metadata(props, args.group_property)
    if args.json:
        print(
            json.dumps(
                {
                    "event": "topic",
                    "topic": path,
                    "topic_data": client.uri(data),
                    "group_observation": _jsonable(group) if group is not None else None,
                    "join": "metadata" if metadata is not None and not args.register else "register",
                }
            ),
            flush=True,
        )
    return await _follow(args, client.uri(data), metadata, ctx)


async def _follow(args: argparse.Namespace, uri: str, metadata: bytes | None, ctx: Any) -> int:
    """Observe ``uri`` (or join from ``metadata``) and print notifications like ``mcobserve observe``."""
    from ..aio.client import Observer
    from ..broker.client import MetadataObserver
    from ..constants import CodePoints
    from ..errors import McObserveError
    from .main import _notification_json
    from .security import client_group_security

    group_security = client_group_security(args.group_oscore)
    kwargs: dict[str, Any] = {
        "group_security": group_security,
        "interface": args.interface,
        "code_points": CodePoints(content_format=args.content_format),
        "context": ctx,
    }
    observer = (
        MetadataObserver(uri, metadata, counted=not args.no_count, protected=bool(args.credentials), **kwargs)
        if metadata is not None and not args.register
        else Observer(uri, **kwargs)
    )
    received = 0
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    it = observer.__aiter__()
    try:
        while args.count is None or received < args.count:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                n = await asyncio.wait_for(it.__anext__(), remaining)
            except StopAsyncIteration:
                ended = observer.ended_by_server is not None
                why = "the broker cancelled the group observation" if ended else "subscription ended"
                _reason(f"{why} after {received} notifications")
                return 0 if args.count is None and ended else 3
            except TimeoutError:
                if args.count is None:
                    return 0
                _reason(f"timeout after {args.timeout} s: {received} of {args.count} notifications")
                return 2
            received += 1
            if args.json:
                print(json.dumps(_notification_json(n, received)), flush=True)
            else:
                text = n.payload.decode("utf-8", "replace")
                print(f"{n.code} observe={n.observe} via={n.via.value}: {text}", flush=True)
        return 0
    except McObserveError as e:
        _reason(str(e))
        return 1
    except OSError as e:
        _reason(f"network error: {e}")
        return 1
    except Exception as e:  # aiocoap errors have many types
        _reason(f"{type(e).__name__}: {e}")
        return 1
    finally:
        await it.aclose()
