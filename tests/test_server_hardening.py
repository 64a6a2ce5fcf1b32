"""Server hardening on loopback (issue 8): one server per address and port; quiet, cheap bad input."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys

import aiocoap
import aiocoap.resource
import pytest

from mcobserve.aio.server import GroupServer, ensure_unserved
from mcobserve.engine.common import Endpoint
from mcobserve.errors import AddressInUseError

from .oscorekit import GROUP, LOCAL, free_port


def here(port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(LOCAL), port)


@pytest.mark.asyncio
async def test_a_second_server_on_the_same_address_and_port_is_refused():
    port = free_port()
    first = await GroupServer.create(here(port), GROUP)
    try:
        with pytest.raises(AddressInUseError, match=f"already serves udp 127.0.0.1:{port}"):
            await GroupServer.create(here(port), GROUP)
    finally:
        await first.shutdown()
    second = await GroupServer.create(here(port), GROUP)  # free again once the first is gone
    await second.shutdown()


@pytest.mark.asyncio
async def test_a_plain_aiocoap_server_holding_the_port_counts_too():
    port = free_port()
    other = await aiocoap.Context.create_server_context(
        aiocoap.resource.Site(), bind=(LOCAL, port), transports=["udp6"]
    )
    try:
        with pytest.raises(AddressInUseError):
            ensure_unserved(here(port))
    finally:
        await other.shutdown()
    ensure_unserved(here(port))


def test_group_sockets_of_observers_on_the_same_port_do_not_count():
    port = free_port()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # as mcobserve.aio.client.open_group_socket
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("239.255.0.23", port))
    try:
        ensure_unserved(here(port))
    finally:
        s.close()


def test_cli_refuses_with_one_line_and_exit_1():
    port = free_port()
    argv = [sys.executable, "-m", "mcobserve.cli.main", "server", "--bind", f"{LOCAL}:{port}"]
    argv += ["--group", "239.255.0.23:61616", "--resource", "r=1"]
    first = subprocess.Popen([*argv, "--json", "--run-for", "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and '"started"' in first.stdout.readline()
        second = subprocess.run([*argv, "--run-for", "5"], capture_output=True, text=True, timeout=30)
    finally:
        first.terminate()
        first.wait(10)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcobserve: ") and "already serves" in lines[0]
    assert "Traceback" not in second.stderr


@pytest.mark.asyncio
async def test_informative_responses_in_flight_are_capped():
    """Clients that never ACK their CON 5.03: beyond ``max_in_flight`` open exchanges, registrations get
    a plain piggybacked 5.03 with Max-Age (come back later), and no state is kept for them."""
    import asyncio

    from aiocoap import ACK, CON, EMPTY, GET, SERVICE_UNAVAILABLE, Message

    from mcobserve.aio.resources import TextResource
    from mcobserve.aio.sourceguard import GuardLimits

    port = free_port()
    limits = GuardLimits(max_in_flight=2, busy_max_age=7)
    server = await GroupServer.create(
        here(port), GROUP, interface="lo", trusted_network=True, guard_limits=limits
    )
    server.add_resource(["r"], TextResource("1234"))
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for i in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LOCAL, 0))
            s.setblocking(False)
            socks.append(s)
            m = Message(code=GET, uri_path=("r",), observe=0)
            m.mtype, m.mid, m.token = CON, 0x500 + i, bytes([i, i])
            s.sendto(m.encode(), (LOCAL, port))
            await asyncio.sleep(0.2)  # one after the other
        got = []
        for s in socks:
            msgs = []
            while True:
                try:
                    msgs.append(Message.decode(await asyncio.wait_for(loop.sock_recv(s, 2048), 0.5)))
                except TimeoutError:
                    break
            got.append([(m.mtype, m.code, m.opt.max_age, len(m.payload)) for m in msgs])
    finally:
        for s in socks:
            s.close()
        await server.shutdown()
    for answers in got[:2]:  # the separate CON informative response (ready at once), then the empty ACK
        assert [a[:2] for a in answers] == [(CON, SERVICE_UNAVAILABLE), (ACK, EMPTY)] and answers[0][3] > 0
    for answers in got[2:]:
        assert answers == [(ACK, SERVICE_UNAVAILABLE, 7, 0)]
    assert server.busy == 2


@pytest.mark.parametrize("trusted", [False, True])
def test_aiocoap_client_registers_only_with_trusted_network(trusted):
    """aiocoap-client 0.4.17 does not answer Echo on plain CoAP (README): its registration gets 4.01 from an
    unverified address, and the informative 5.03 once the server runs with --trusted-network."""
    import os

    port = free_port()
    argv = [sys.executable, "-m", "mcobserve.cli.main", "server", "--bind", f"{LOCAL}:{port}"]
    argv += ["--group", "239.255.0.23:61616", "--interface", "lo", "--resource", "r=1234", "--json"]
    argv += ["--trusted-network"] if trusted else []
    srv = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and '"started"' in srv.stdout.readline()
        client = os.path.join(os.path.dirname(sys.executable), "aiocoap-client")
        res = subprocess.run(
            [client, "--observe", f"coap://{LOCAL}:{port}/r"], capture_output=True, timeout=30
        )
    finally:
        srv.terminate()
        srv.communicate(timeout=20)
    out = (res.stdout + res.stderr).decode("utf-8", "replace")  # the 5.03 payload is CBOR
    if trusted:
        assert "5.03 Service Unavailable" in out and "4.01" not in out, out
    else:
        assert "4.01 Unauthorized" in out and "5.03" not in out, out
