"""The authorisation hook (mcobserve.aio.authz): unprotected requests to a secured server get 4.01 for
every method, non-publishers 4.03, and a resource may decide per request. Unicast on loopback only."""

from __future__ import annotations

import argparse
import ipaddress

import aiocoap
import pytest
from aiocoap import (
    CHANGED,
    CONTENT,
    DELETE,
    FETCH,
    FORBIDDEN,
    GET,
    POST,
    PUT,
    UNAUTHORIZED,
    Code,
    Message,
)

from mcobserve.aio.authz import Policy, requester
from mcobserve.aio.resources import TextResource
from mcobserve.aio.server import GroupServer
from mcobserve.cli.main import UsageError
from mcobserve.cli.security import server_options
from mcobserve.engine.common import Endpoint

from .oscorekit import GROUP, LOCAL, client, free_port, oscore_server

pytestmark = pytest.mark.asyncio


async def secured_server(tmp_path, **kw) -> tuple[GroupServer, TextResource, str]:
    server, port = await oscore_server(tmp_path, **kw)
    resource = TextResource("secret")
    server.add_resource(["r"], resource)
    return server, resource, f"coap://{LOCAL}:{port}"


async def ask(ctx: aiocoap.Context, code: Code, uri: str, **kw) -> Message:
    return await ctx.request(Message(code=code, uri=uri, **kw)).response


async def test_unprotected_requests_get_401_for_every_method_and_nothing_reaches_the_group(tmp_path):
    server, resource, base = await secured_server(tmp_path)
    plain = await client(tmp_path, None)
    try:
        for code, kw in [
            (GET, {}),
            (GET, {"observe": 0}),
            (FETCH, {"payload": b"x"}),
            (PUT, {"payload": b"attacker", "content_format": 0}),
            (POST, {"payload": b"attacker"}),
            (Code.PATCH, {"payload": b"attacker"}),
            (Code.iPATCH, {"payload": b"attacker"}),
            (DELETE, {}),
        ]:
            r = await ask(plain, code, f"{base}/r", **kw)
            assert r.code == UNAUTHORIZED, (code, r.code)
            assert b"secret" not in r.payload
        # the introspection resource discloses the group observation: protected the same way
        r = await ask(plain, GET, f"{base}/.well-known/core/mc-sender?token=00")
        assert r.code == UNAUTHORIZED
        assert resource.value == b"secret"
        assert server.engine.is_group_observable(("r",))  # DELETE did not remove it
        assert list(server.engine.observations()) == []  # no group observation was started
        assert server.datagrams_sent == 0  # nothing went to the group
        # discovery stays open (once the client's address is verified with Echo, RFC 9175 §2.4)
        r = await ask(plain, GET, f"{base}/.well-known/core")
        if r.code == UNAUTHORIZED and r.opt.echo is not None:
            r = await ask(plain, GET, f"{base}/.well-known/core", echo=r.opt.echo)
        assert r.code == CONTENT and b"</r>" in r.payload
    finally:
        await plain.shutdown()
        await server.shutdown()


async def test_authenticated_clients_may_write_without_a_publishers_list(tmp_path):
    server, resource, base = await secured_server(tmp_path)
    ctx = await client(tmp_path, 2)
    try:
        r = await ask(ctx, PUT, f"{base}/r", payload=b"new", content_format=0)
        assert r.code == CHANGED
        assert resource.value == b"new"
        r = await ask(ctx, GET, f"{base}/r")
        assert (r.code, r.payload) == (CONTENT, b"new")
    finally:
        await ctx.shutdown()
        await server.shutdown()


async def test_publishers_list_restricts_writes_to_named_identities(tmp_path):
    server, resource, base = await secured_server(
        tmp_path, authorize=Policy(require_oscore=True, publishers=["client-1"])
    )
    writer, reader = await client(tmp_path, 1), await client(tmp_path, 2)
    try:
        for code in (PUT, POST, DELETE):
            r = await ask(reader, code, f"{base}/r", payload=b"nope", content_format=0)
            assert r.code == FORBIDDEN, code
        assert resource.value == b"secret"
        r = await ask(reader, GET, f"{base}/r")  # reading stays allowed to every authenticated client
        assert (r.code, r.payload) == (CONTENT, b"secret")
        r = await ask(writer, PUT, f"{base}/r", payload=b"by-publisher", content_format=0)
        assert r.code == CHANGED and resource.value == b"by-publisher"
    finally:
        await writer.shutdown()
        await reader.shutdown()
        await server.shutdown()


class Guarded(TextResource):
    """A resource that decides per request: only a query 'key=ok' may read it."""

    def authorize(self, request: Message, method: Code) -> Code | None:
        if "key=ok" not in request.opt.uri_query:
            return FORBIDDEN
        return super().authorize(request, method)


async def test_a_resource_decides_per_request():
    port = free_port()
    server = await GroupServer.create(
        Endpoint(ipaddress.ip_address(LOCAL), port), GROUP, trusted_network=True
    )
    server.add_resource(["g"], Guarded("v"))
    ctx = await aiocoap.Context.create_client_context()
    try:
        base = f"coap://{LOCAL}:{port}"
        assert (await ask(ctx, GET, f"{base}/g")).code == FORBIDDEN
        r = await ask(ctx, GET, f"{base}/g?key=ok")
        assert (r.code, r.payload) == (CONTENT, b"v")
    finally:
        await ctx.shutdown()
        await server.shutdown()


async def test_policy_decisions_and_requester():
    m = Message(code=PUT)
    assert requester(m).protected is False
    assert Policy()(m, ("r",), PUT) is None
    assert Policy(require_oscore=True)(m, ("r",), GET) == UNAUTHORIZED
    assert Policy(publishers=[":client-1"])(m, ("r",), PUT) == UNAUTHORIZED
    assert Policy(publishers=["client-1"])(m, ("r",), GET) is None
    assert Policy(publishers=[":client-1"]).publishers == frozenset({"client-1"})


async def test_cli_settings():
    ns = argparse.Namespace(credentials="s.json", publishers="client-1, client-2")
    assert server_options(ns)["authorize"].publishers == frozenset({"client-1", "client-2"})
    ns = argparse.Namespace(credentials="s.json", publishers=["client-3"])
    assert server_options(ns)["authorize"].publishers == frozenset({"client-3"})
    with pytest.raises(UsageError, match="needs --credentials"):
        server_options(argparse.Namespace(credentials=None, publishers="client-1"))
    with pytest.raises(UsageError, match="list of identity names"):
        server_options(argparse.Namespace(credentials="s.json", publishers=[1]))
    open_policy = server_options(argparse.Namespace(credentials=None, publishers=None))["authorize"]
    assert open_policy.publishers is None and not open_policy.require_oscore
