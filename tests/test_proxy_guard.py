"""The proxy's client-facing side verifies addresses before it amplifies (RFC 9175 §2.4), with the
server's :class:`~mcobserve.aio.sourceguard.SourceGuard`: a spoofed registration through the proxy must
not make it send notifications to a victim."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from aiocoap import GET, NOT_FOUND, Message

from mcobserve.proxy.aio import Proxy, ProxySite

from .livekit import GROUP6, observer, put, server, start

#: A client that registers through the proxy and never answers anything (the victim of a spoofed
#: registration): prints the bytes it sent and received and the codes it got.
RAW = textwrap.dedent(
    """
    import json, socket, sys, time
    from aiocoap import CON, GET, Message
    proxy, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.connect((proxy, 5683, 0, 0))
    sent = received = 0
    codes = []
    for mid in (1, 1, 2):  # a registration, its retransmission, another registration
        m = Message(mtype=CON, code=GET, observe=0, mid=mid, token=bytes([mid]), proxy_uri=target)
        sent += s.send(m.encode())
        time.sleep(0.2)
    s.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = s.recv(4096)
        except TimeoutError:
            continue
        received += len(data)
        r = Message.decode(data)
        codes.append([r.code.dotted, r.opt.echo is not None, r.payload.decode(errors="replace")])
    print(json.dumps({"sent": sent, "received": received, "codes": codes}), flush=True)
    """
)


def test_unverified_address_gets_at_most_3x_while_libcoap_and_ours_observe(lan, tools):
    srv_host, prx_host = lan.server, lan.clients[0]
    target = f"coap://[{srv_host.addr6}]/r"
    srv = server(srv_host, f"[{srv_host.addr6}]", GROUP6)
    prx = start(
        prx_host, "proxy", ["proxy", "--bind", f"[{prx_host.addr6}]", "--interface", "eth0", "--json"]
    )
    prx.wait_event(lambda e: e.get("event") == "started")
    values = ["g1", "g2", "g3"]
    try:
        libcoap = lan.clients[1].popen(
            ["coap-client-notls", "-P", f"coap://[{prx_host.addr6}]", "-s", "20", "-B", "20", target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        prx.wait_event(lambda e: e.get("event") == "client_registered", timeout=15)
        ours = observer(lan.clients[1], target, 4, 20, "ours", ("--proxy", f"coap://[{prx_host.addr6}]"))
        ours.wait_event(lambda e: e.get("index") == 1, timeout=15)
        raw = lan.clients[2].popen(
            [sys.executable, "-c", RAW, prx_host.addr6, target, "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        put(lan.clients[0], target, values, 0.5)  # changes while the raw client would be an observer
        raw_out, raw_err = raw.communicate(timeout=20)
        assert raw.returncode == 0, raw_err
        ours.collect(20)
        libcoap.terminate()
        lib_out, lib_err = libcoap.communicate(timeout=10)
        events = prx.stop()
    finally:
        srv.stop()
    got = json.loads(raw_out)
    # At most 3x the bytes received from the unverified address, and only 4.01 + Echo challenges.
    assert got["received"] <= 3 * got["sent"], got
    assert got["codes"] and all(c[:2] == ["4.01", True] for c in got["codes"]), got
    registered = [e["remote"] for e in events if e.get("event") == "client_registered"]
    assert not any(r.startswith(f"[{lan.clients[2].addr6}]") for r in registered), registered
    # libcoap (answers Echo by itself) and ours (Observer answers it) get every change.
    assert lib_out.strip() == "1234" + "".join(values), (lib_out, lib_err)
    assert [e["payload"] for e in ours.seen if "via" in e] == ["1234", *values]
    assert len(registered) == 2


def test_trusted_network_answers_at_once(lan, tools):
    """``--trusted-network``: the same raw client is an observer at once (no Echo), as documented."""
    srv_host, prx_host = lan.server, lan.clients[0]
    target = f"coap://[{srv_host.addr6}]/r"
    srv = server(srv_host, f"[{srv_host.addr6}]", GROUP6)
    prx = start(
        prx_host,
        "proxy",
        ["proxy", "--bind", f"[{prx_host.addr6}]", "--interface", "eth0", "--json", "--trusted-network"],
    )
    prx.wait_event(lambda e: e.get("event") == "started")
    try:
        raw = lan.clients[2].popen(
            [sys.executable, "-c", RAW, prx_host.addr6, target, "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        raw_out, _ = raw.communicate(timeout=20)
        prx.stop()
    finally:
        srv.stop()
    got = json.loads(raw_out)
    assert [c[0] for c in got["codes"]][:1] == ["2.05"] and got["codes"][0][2] == "1234", got


@pytest.mark.parametrize("trusted", [False, True])
async def test_render_is_a_real_answer(trusted):
    """``ProxySite.render`` (aiocoap's one-response entry point) answers like ``render_to_pipe``: a
    request without Proxy-Uri to a forward proxy gets 4.04."""
    proxy = Proxy(trusted_network=trusted)
    response = await ProxySite(proxy).render(Message(code=GET, uri_path=["r"]))
    assert response.code == NOT_FOUND and b"Proxy-Uri" in response.payload


async def test_client_socket_takes_a_burst_of_acks():
    """N clients ACK N Confirmable notifications at once: the client-facing socket has the server's
    4 MiB receive buffer (with the default one, ACKs were dropped and about 7 % of the notifications
    at N = 300 were sent twice, ``mcobserve bench proxy``)."""
    import socket

    from mcobserve.aio import _glue

    proxy = Proxy()
    await proxy.start(("::1", 0))
    try:
        sock = _glue.server_socket(proxy.server_ctx)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 << 20
    finally:
        await proxy.shutdown()
