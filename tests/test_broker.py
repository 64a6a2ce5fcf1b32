"""The pub-sub broker against the examples of draft-ietf-core-coap-pubsub -21 §2.3, §3 and §4 (real CoAP
over loopback; no group observation starts here: --group-after is out of reach, multicast is tested in
tests/test_broker_live.py inside private namespaces)."""

from __future__ import annotations

import asyncio
import socket
import time

import aiocoap
import pytest
from aiocoap import DELETE, FETCH, GET, POST, PUT, Message
from aiocoap.numbers.codes import Code

from mcobserve.broker import Broker, BrokerConfig, LocalBackend
from mcobserve.engine.common import Endpoint
from mcobserve.engine.server import GroupPolicy
from mcobserve.errors import BackendUnavailable
from mcobserve.store import Store
from mcobserve.wire.cbor import CborTag, cbor_decode, cbor_encode

IPATCH = Code(7)
CF = 606
#: The draft's example dates (2023, 2024) must lie ahead: the broker's clock runs in early 2022.
OFFSET = 1_646_000_000 - time.time()


def clock() -> float:
    return time.time() + OFFSET


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


class Env:
    def __init__(self, broker: Broker, ctx: aiocoap.Context, base: str) -> None:
        self.broker = broker
        self.ctx = ctx
        self.base = base
        self.events: list[dict] = []

    async def req(self, code, path: str, payload: bytes = b"", **opts) -> Message:
        """One request; a 4.01 + Echo challenge (RFC 9175 §2.4) is answered once, as a client with Echo
        support does (the broker verifies addresses before registrations and large answers)."""
        msg = Message(code=code, uri=self.base + path, payload=payload, **opts)
        r = await asyncio.wait_for(self.ctx.request(msg).response, 10)
        if r.code == Code.UNAUTHORIZED and r.opt.echo is not None and "echo" not in opts:
            msg = Message(code=code, uri=self.base + path, payload=payload, echo=r.opt.echo, **opts)
            r = await asyncio.wait_for(self.ctx.request(msg).response, 10)
        return r

    async def create(self, props: dict) -> tuple[str, dict]:
        r = await self.req(POST, "/ps", cbor_encode(props), content_format=CF)
        assert r.code.dotted == "2.01", r
        return "/" + "/".join(r.opt.location_path), cbor_decode(r.payload)


async def observe_verified(env: Env, path: str) -> tuple[aiocoap.protocol.Request, Message]:
    """An Observe registration that answers the server's 4.01 + Echo (RFC 9175 §2.4) once, as a client
    that can do Echo does (aiocoap 0.4.17 does not on plain CoAP)."""
    request = env.ctx.request(Message(code=GET, uri=env.base + path, observe=0))
    first = await asyncio.wait_for(request.response, 10)
    if first.code == Code.UNAUTHORIZED and first.opt.echo is not None:
        request = env.ctx.request(Message(code=GET, uri=env.base + path, observe=0, echo=first.opt.echo))
        first = await asyncio.wait_for(request.response, 10)
    return request, first


async def make_env(store: Store | None = None, backend=None, **config) -> Env:
    port = free_port()
    events: list[dict] = []
    cfg = BrokerConfig(policy=GroupPolicy(group_after=10**6), **config)
    broker = await Broker.create(
        Endpoint.parse(f"[::1]:{port}"),
        Endpoint.parse("[ff35::beef]:61616"),
        config=cfg,
        store=store,
        backend=backend,
        clock=clock,
        on_event=events.append,
    )
    ctx = await aiocoap.Context.create_client_context()
    env = Env(broker, ctx, f"coap://[::1]:{port}")
    env.events = events
    return env


@pytest.fixture
async def env():
    e = await make_env(Store.open(":memory:"))
    yield e
    await e.ctx.shutdown()
    await e.broker.shutdown()


# -- discovery (§2.3) ------------------------------------------------------------------------------


async def test_discovery_of_the_collection_with_rt_filtering(env):
    r = await env.req(GET, "/.well-known/core", uri_query=["rt=core.ps.coll"])
    assert r.code.dotted == "2.05" and r.opt.content_format == 40
    links = r.payload.decode()
    assert "</ps>;" in links and 'rt="core.ps.coll"' in links
    assert "core.ps.conf" not in links and "/ps/data" not in links
    loc, props = await env.create({0: "room2", 2: "core.ps.data"})
    r = await env.req(GET, "/.well-known/core", uri_query=["rt=core.ps.conf"])
    assert f"<{loc}>" in r.payload.decode() and "</ps>" not in r.payload.decode()
    r = await env.req(GET, "/.well-known/core", uri_query=["rt=core.ps.data"])
    assert f"<{props[1]}>" in r.payload.decode()
    # Topic-data discovery on the collection (§2.3.4): the links only, no attributes.
    r = await env.req(GET, "/ps", uri_query=["rt=core.ps.data"])
    assert (r.code.dotted, r.opt.content_format, r.payload.decode()) == ("2.05", 40, f"<{props[1]}>")


# -- collection (§3.1) -----------------------------------------------------------------------------


async def test_create_topic_as_in_the_draft(env):
    r = await env.req(
        POST, "/ps", cbor_encode({0: "living-room-sensor", 2: "core.ps.data"}), content_format=CF
    )
    assert r.code.dotted == "2.01"
    assert r.opt.content_format == CF
    assert r.opt.location_path[0] == "ps" and len(r.opt.location_path) == 2
    body = cbor_decode(r.payload)
    assert body[0] == "living-room-sensor" and body[2] == "core.ps.data"
    assert isinstance(body[1], str) and body[1].startswith("/ps/data/")
    assert set(body) == {0, 1, 2}
    assert [e["event"] for e in env.events if e["event"] == "topic_created"] == ["topic_created"]


@pytest.mark.parametrize(
    ("props", "why"),
    [
        ({0: "x"}, "resource-type"),
        ({2: "core.ps.data"}, "topic-name"),
        ({0: "x", 2: "core.ps.data", 99: 1}, "unrecognized"),
        ({0: 7, 2: "core.ps.data"}, "topic-name"),
        ({0: "x", 2: "core.ps.data", 5: 1680393599}, "expiration-date"),
        ({0: "x", 2: "core.ps.data", 8: b"\x80"}, "topic-content-format"),
        ({0: "x", 2: "core.ps.data", 7: 0}, "observer-check"),
    ],
)
async def test_create_refuses_invalid_properties(env, props, why):
    r = await env.req(POST, "/ps", cbor_encode(props), content_format=CF)
    assert r.code.dotted == "4.00" and why in r.payload.decode()


async def test_create_refuses_duplicate_name_and_bad_payloads(env):
    await env.create({0: "dup", 2: "core.ps.data"})
    r = await env.req(POST, "/ps", cbor_encode({0: "dup", 2: "core.ps.data"}), content_format=CF)
    assert r.code.dotted == "4.00" and "in use" in r.payload.decode()
    r = await env.req(POST, "/ps", b"\xff\x00", content_format=CF)
    assert r.code.dotted == "4.00"
    r = await env.req(POST, "/ps", cbor_encode([1, 2]), content_format=CF)
    assert r.code.dotted == "4.00"
    r = await env.req(POST, "/ps", cbor_encode({0: "y", 2: "core.ps.data"}), content_format=50)
    assert r.code.dotted == "4.15"


async def test_get_and_fetch_the_collection(env):
    a, _ = await env.create({0: "temperature", 2: "core.ps.data", 4: "temperature"})
    b, _ = await env.create({0: "humidity", 2: "core.ps.data"})
    r = await env.req(GET, "/ps")
    assert (r.code.dotted, r.opt.content_format) == ("2.05", 40)
    assert r.payload.decode() == f"<{a}>,<{b}>"
    # §3.1.2: FETCH with a filter, the draft's example filter.
    r = await env.req(FETCH, "/ps", cbor_encode({0: "temperature", 2: "core.ps.data"}), content_format=CF)
    assert (r.code.dotted, r.opt.content_format, r.payload.decode()) == ("2.05", 40, f"<{a}>")
    r = await env.req(FETCH, "/ps", cbor_encode({2: "core.ps.data"}), content_format=CF)
    assert r.payload.decode() == f"<{a}>,<{b}>"
    r = await env.req(FETCH, "/ps", cbor_encode({4: "pressure"}), content_format=CF)
    assert (r.code.dotted, r.payload) == ("2.05", b"")
    r = await env.req(FETCH, "/ps", b"\x01", content_format=CF)
    assert r.code.dotted == "4.00"


# -- topic (§3.2) ----------------------------------------------------------------------------------

DRAFT_TOPIC = {
    0: "living-room-sensor",
    2: "core.ps.data",
    3: 112,
    4: "temperature",
    5: CborTag(1, 1680393599),
    6: 100,
}


async def test_get_fetch_post_ipatch_as_in_the_draft(env):
    loc, created = await env.create(DRAFT_TOPIC)
    data = created[1]
    r = await env.req(GET, loc)
    assert (r.code.dotted, r.opt.content_format) == ("2.05", CF)
    assert cbor_decode(r.payload) == {**DRAFT_TOPIC, 1: data}
    # §3.2.2 FETCH [1, 3], Content-Format 60.
    r = await env.req(FETCH, loc, cbor_encode([1, 3]), content_format=60)
    assert (r.code.dotted, r.opt.content_format) == ("2.05", CF)
    assert cbor_decode(r.payload) == {1: data, 3: 112}
    r = await env.req(FETCH, loc, cbor_encode([1, 3]), content_format=CF)
    assert r.code.dotted == "4.15"
    r = await env.req(FETCH, loc, cbor_encode({1: 3}), content_format=60)
    assert r.code.dotted == "4.00"
    # §3.2.3 POST: full replacement; max-subscribers not given is reset.
    new = {
        0: "living-room-sensor",
        1: data,
        2: "core.ps.data",
        3: 112,
        4: "temperature",
        5: CborTag(1, 1682719199),
    }
    r = await env.req(POST, loc, cbor_encode(new), content_format=CF)
    assert (r.code.dotted, r.opt.content_format) == ("2.04", CF)
    assert cbor_decode(r.payload) == new
    # §3.2.4 iPATCH: the draft's example.
    r = await env.req(IPATCH, loc, cbor_encode({5: CborTag(1, 1709164799), 6: 5}), content_format=CF)
    assert r.code.dotted == "2.04"
    assert cbor_decode(r.payload) == {**new, 5: CborTag(1, 1709164799), 6: 5}
    # Immutable keys 0, 1, 2: 4.00 when changed (same value accepted).
    for key, value in ((0, "other"), (1, "/ps/data/x"), (2, "core.ps.other")):
        r = await env.req(IPATCH, loc, cbor_encode({key: value}), content_format=CF)
        assert r.code.dotted == "4.00", key
        r = await env.req(POST, loc, cbor_encode({**new, key: value}), content_format=CF)
        assert r.code.dotted == "4.00", key
    r = await env.req(IPATCH, loc, cbor_encode({0: "living-room-sensor", 6: 7}), content_format=CF)
    assert cbor_decode(r.payload)[6] == 7


async def test_delete_topic_and_its_data(env):
    loc, props = await env.create({0: "t", 2: "core.ps.data"})
    assert (await env.req(PUT, props[1], b"1")).code.dotted == "2.01"
    r = await env.req(DELETE, loc)
    assert r.code.dotted == "2.02"
    assert (await env.req(GET, loc)).code.dotted == "4.04"
    assert (await env.req(GET, props[1])).code.dotted == "4.04"
    assert (await env.req(PUT, props[1], b"2")).code.dotted == "4.04"
    assert (await env.req(DELETE, loc)).code.dotted == "4.04"  # idempotent
    assert (await env.req(GET, "/ps")).payload == b""
    assert any(e["event"] == "topic_deleted" for e in env.events)


# -- topic-data (§4) -------------------------------------------------------------------------------


async def test_publish_read_and_lifecycle(env):
    _, props = await env.create({0: "s", 2: "core.ps.data", 3: 110})
    data = props[1]
    # HALF CREATED: read and subscribe are 4.04 (§4.2.2, §4.3).
    assert (await env.req(GET, data)).code.dotted == "4.04"
    # ... at once, without an Echo round trip first: the 4.04 is small (RFC 9175 §2.4 allows it)
    bare = Message(code=GET, uri=env.base + data, observe=0)
    assert (await asyncio.wait_for(env.ctx.request(bare).response, 10)).code.dotted == "4.04"
    senml = cbor_encode({"n": "coaps://dev1.example.com/temperature", "u": "Cel", "t": 1621452122, "v": 23.5})
    assert (await env.req(PUT, data, senml, content_format=112)).code.dotted == "4.15"
    assert (await env.req(PUT, data, senml)).code.dotted == "4.15"
    assert (await env.req(PUT, data, senml, content_format=110)).code.dotted == "2.01"
    assert (await env.req(PUT, data, senml, content_format=110)).code.dotted == "2.04"
    r = await env.req(GET, data)
    assert (r.code.dotted, r.opt.content_format, r.payload) == ("2.05", 110, senml)
    # §4.2.4 DELETE topic-data: HALF CREATED again; the next publication is a 2.01.
    assert (await env.req(DELETE, data)).code.dotted == "2.02"
    assert (await env.req(GET, data)).code.dotted == "4.04"
    assert (await env.req(DELETE, data)).code.dotted == "4.04"
    assert (await env.req(PUT, data, senml, content_format=110)).code.dotted == "2.01"
    assert [e["event"] for e in env.events].count("published") == 3


async def test_initialize_makes_the_topic_fully_created(env):
    _, props = await env.create({0: "init", 2: "core.ps.data", 3: 60, 8: b"\x80"})
    r = await env.req(GET, props[1])
    assert (r.code.dotted, r.opt.content_format, r.payload) == ("2.05", 60, b"\x80")
    assert (await env.req(PUT, props[1], b"\x81\x01", content_format=60)).code.dotted == "2.04"


async def test_rate_limit_429_with_max_age():
    e = await make_env(Store.open(":memory:"), publish_rate=0.2, publish_burst=2)
    try:
        _, props = await e.create({0: "fast", 2: "core.ps.data"})
        codes = [(await e.req(PUT, props[1], b"x")).code.dotted for _ in range(2)]
        assert codes == ["2.01", "2.04"]
        r = await e.req(PUT, props[1], b"x")
        assert r.code.dotted == "4.29"
        assert 1 <= r.opt.max_age <= 5
    finally:
        await e.ctx.shutdown()
        await e.broker.shutdown()


async def test_traditional_subscriber_notified_then_final_404(env):
    _, props = await env.create({0: "obs", 2: "core.ps.data"})
    await env.req(PUT, props[1], b"v1")
    request, first = await observe_verified(env, props[1])
    assert (first.code.dotted, first.payload) == ("2.05", b"v1") and first.opt.observe is not None
    it = request.observation.__aiter__()
    await env.req(PUT, props[1], b"v2")
    n = await asyncio.wait_for(it.__anext__(), 10)
    assert (n.payload, n.opt.observe > first.opt.observe) == (b"v2", True)
    await env.req(DELETE, props[1])  # topic-data deleted: final 4.04 (RFC 7641 §3.2)
    with pytest.raises(StopAsyncIteration):  # aiocoap ends the iteration on the unsuccessful notification
        await asyncio.wait_for(it.__anext__(), 10)


async def test_max_subscribers_answers_without_observe(env):
    _, props = await env.create({0: "m", 2: "core.ps.data", 6: 1})
    await env.req(PUT, props[1], b"v")
    first = await env.req(GET, props[1], observe=0)
    assert first.opt.observe is not None
    second = await env.req(GET, props[1], observe=0)
    assert (second.code.dotted, second.opt.observe, second.payload) == ("2.05", None, b"v")


async def test_expiration_removes_the_topic(env):
    loc, _ = await env.create({0: "exp", 2: "core.ps.data", 5: CborTag(1, int(clock()) + 2)})
    assert (await env.req(GET, loc)).code.dotted == "2.05"
    await asyncio.sleep(3.2)
    assert (await env.req(GET, loc)).code.dotted == "4.04"
    assert any(e["event"] == "topic_expired" for e in env.events)


class FailingBackend(LocalBackend):
    fail = False

    async def publish(self, topic_id, payload, content_format):
        if self.fail:
            raise BackendUnavailable("cluster has no quorum", retry_after=7)
        await super().publish(topic_id, payload, content_format)


async def test_backend_unavailable_is_503_with_max_age():
    backend = FailingBackend(None)
    e = await make_env(None, backend=backend)
    try:
        _, props = await e.create({0: "b", 2: "core.ps.data"})
        backend.fail = True
        r = await e.req(PUT, props[1], b"x")
        assert (r.code.dotted, r.opt.max_age) == ("5.03", 7)
        assert (await e.req(GET, props[1])).code.dotted == "4.04"  # nothing was applied
    finally:
        await e.ctx.shutdown()
        await e.broker.shutdown()


async def test_topics_and_data_survive_a_restart(tmp_path):
    path = tmp_path / "b.sqlite"
    e = await make_env(Store.open(path))
    loc, props = await e.create({0: "keep", 2: "core.ps.data", 3: 0})
    await e.req(PUT, props[1], b"21.5", content_format=0)
    _, props2 = await e.create({0: "gone-data", 2: "core.ps.data", 3: 60, 8: b"\x80"})
    await e.req(DELETE, props2[1])
    await e.ctx.shutdown()
    await e.broker.shutdown()
    e.broker.store.close()
    e = await make_env(Store.open(path))
    try:
        r = await e.req(GET, loc)
        assert cbor_decode(r.payload)[0] == "keep"
        r = await e.req(GET, props[1])
        assert (r.code.dotted, r.payload) == ("2.05", b"21.5")
        assert (await e.req(PUT, props[1], b"22", content_format=0)).code.dotted == "2.04"
        # Deleted topic-data stays deleted although "initialize" is set (§4.2.4).
        assert (await e.req(GET, props2[1])).code.dotted == "4.04"
    finally:
        await e.ctx.shutdown()
        await e.broker.shutdown()


async def test_observer_check_makes_a_notification_confirmable(env):
    _, props = await env.create({0: "oc", 2: "core.ps.data", 7: 1})
    await env.req(PUT, props[1], b"v1")
    request, _ = await observe_verified(env, props[1])
    it = request.observation.__aiter__()
    await env.req(PUT, props[1], b"v2")
    n2 = await asyncio.wait_for(it.__anext__(), 10)
    await env.req(PUT, props[1], b"v3")
    n3 = await asyncio.wait_for(it.__anext__(), 10)
    await asyncio.sleep(1.1)  # observer-check (7) is 1 s: the next notification is Confirmable
    await env.req(PUT, props[1], b"v4")
    n4 = await asyncio.wait_for(it.__anext__(), 10)
    assert [(n.payload, n.mtype.name) for n in (n2, n3, n4)] == [
        (b"v2", "NON"),
        (b"v3", "NON"),
        (b"v4", "CON"),
    ]


async def test_protected_writes_and_the_authorisation_hook():
    calls = []

    def authorize(request, action, topic_id):
        calls.append((action, topic_id))
        return action != "delete"

    e = await make_env(Store.open(":memory:"), authorize=authorize)
    try:
        loc, props = await e.create({0: "auth", 2: "core.ps.data"})
        assert (await e.req(PUT, props[1], b"1")).code.dotted == "2.01"
        r = await e.req(DELETE, loc)
        assert r.code.dotted == "4.03" and (await e.req(GET, loc)).code.dotted == "2.05"
        assert [c[0] for c in calls] == ["create", "publish", "delete"]
    finally:
        await e.ctx.shutdown()
        await e.broker.shutdown()
    e = await make_env(Store.open(":memory:"), protected_writes=True)
    try:
        r = await e.req(POST, "/ps", cbor_encode({0: "x", 2: "core.ps.data"}), content_format=CF)
        assert r.code.dotted == "4.01"  # an unprotected write to a secured broker
        assert (await e.req(GET, "/ps")).code.dotted == "2.05"  # reading stays open
    finally:
        await e.ctx.shutdown()
        await e.broker.shutdown()


@pytest.mark.parametrize(
    "data", ["/ps/abc", "/.well-known/core", "/ps/data/", "/ps/data/../x", "ps/data/x", "/ps/data/a?b"]
)
async def test_topic_data_of_the_clients_choice_stays_under_the_data_root(env, data):
    r = await env.req(POST, "/ps", cbor_encode({0: "t", 1: data, 2: "core.ps.data"}), content_format=CF)
    assert r.code.dotted == "4.00" and "topic-data" in r.payload.decode()


async def test_topic_data_of_the_clients_choice(env):
    _, props = await env.create({0: "mine", 1: "/ps/data/kitchen/temp", 2: "core.ps.data"})
    assert props[1] == "/ps/data/kitchen/temp"
    assert (await env.req(PUT, "/ps/data/kitchen/temp", b"1")).code.dotted == "2.01"
    r = await env.req(
        POST,
        "/ps",
        cbor_encode({0: "mine2", 1: "/ps/data/kitchen/temp", 2: "core.ps.data"}),
        content_format=CF,
    )
    assert r.code.dotted == "4.00" and "in use" in r.payload.decode()


async def test_max_topics_bounds_the_broker():
    e = await make_env(Store.open(":memory:"), max_topics=2)
    try:
        await e.create({0: "a", 2: "core.ps.data"})
        await e.create({0: "b", 2: "core.ps.data"})
        r = await e.req(POST, "/ps", cbor_encode({0: "c", 2: "core.ps.data"}), content_format=CF)
        assert r.code.dotted == "4.03"
        assert len(e.broker.topics) == 2
    finally:
        await e.ctx.shutdown()
        await e.broker.shutdown()


async def test_metadata_that_cannot_be_joined_falls_back_to_registering(env):
    from mcobserve.broker.client import MetadataObserver

    _, props = await env.create({0: "fb", 2: "core.ps.data"})
    await env.req(PUT, props[1], b"v1")
    bogus = cbor_encode({1: b"\x01", 2: b"\x45"})  # no 'tp_info': not joinable (draft §5.2)
    observer = MetadataObserver(env.base + props[1], bogus, counted=False, context=env.ctx)
    it = observer.__aiter__()
    first = await asyncio.wait_for(it.__anext__(), 10)
    assert (first.via.value, first.payload) == ("unicast", b"v1")
    await it.aclose()
