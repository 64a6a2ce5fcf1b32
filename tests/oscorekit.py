"""Loopback servers for the tests: a free UDP port on 127.0.0.1, a GroupServer with OSCORE contexts from
files, and aiocoap clients using them (authorisation, OSCORE path, hardening tests). Unicast only."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import aiocoap

from mcobserve.aio.server import GroupServer
from mcobserve.cli.credentials import write_oscore_contexts
from mcobserve.cli.main import load_credentials
from mcobserve.engine.common import Endpoint

LOCAL = "127.0.0.1"
GROUP = Endpoint(ipaddress.ip_address("239.255.0.23"), 61616)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


async def oscore_server(tmp_path: Path, clients: int = 3, **kw: Any) -> tuple[GroupServer, int]:
    """A server with contexts for ``clients`` clients (``mcobserve credentials`` layout in ``tmp_path``)."""
    port = free_port()
    write_oscore_contexts(tmp_path, f"{LOCAL}:{port}", clients)
    creds = aiocoap.credentials.CredentialsMap()
    creds.load_from_dict(load_credentials(str(tmp_path / "server.json")))
    server = await GroupServer.create(
        Endpoint(ipaddress.ip_address(LOCAL), port), GROUP, server_credentials=creds, **kw
    )
    return server, port


async def client(tmp_path: Path, i: int | None) -> aiocoap.Context:
    """An aiocoap client with client ``i``'s context (None: unprotected)."""
    ctx = await aiocoap.Context.create_client_context()
    if i is not None:
        ctx.client_credentials.load_from_dict(load_credentials(str(tmp_path / f"client-{i}.json")))
    return ctx
