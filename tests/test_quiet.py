"""Quiet by default (issue 12 items 2 and 7): no third-party warnings unless -v, the confirmation request
leaves without aiocoap's on_interest_end warning, the library takes strings and tuples, and breaking
out of ``async for`` ends cleanly."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import subprocess
import sys
import textwrap

import pytest
from aiocoap import GET, NON, Message

from mcobserve.aio.client import Observer
from mcobserve.constants import DEFAULT_CODE_POINTS
from mcobserve.engine.common import Endpoint


async def test_confirmation_leaves_without_an_aiocoap_warning(caplog):
    """The §8.2 confirmation (NON GET, Observe 0, No-Response 26, Feedback-Divider 0) reaches the server
    and aiocoap logs nothing: before the fix the request was withdrawn before aiocoap had resolved the
    address, and aiocoap warned 'on_interest_end callback ... added after ... has already ended'."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    port = sink.getsockname()[1]
    observer = Observer(f"coap://127.0.0.1:{port}/t")
    await observer._context()
    try:
        with caplog.at_level(logging.DEBUG, logger="coap"):
            await observer._confirm(0)
            await observer._confirm(0)
            await asyncio.sleep(0.2)
        data = [sink.recv(2048), sink.recv(2048)]
    finally:
        await observer.aclose()
        sink.close()
    for raw in data:
        m = Message.decode(raw)
        assert (m.mtype, m.code, m.opt.observe, m.opt.no_response) == (NON, GET, 0, 26)
        assert m.opt.uri_path == ("t",)
        assert [o.value for o in m.opt.get_option(DEFAULT_CODE_POINTS.feedback_divider)] == [b""]
    assert observer.confirmations_sent == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def _log_lines(verbose: int) -> str:
    code = textwrap.dedent(
        f"""
        import logging
        from mcobserve.cli.common import configure_logging
        configure_logging({verbose})
        logging.getLogger("coap").warning("third-party warning")
        logging.getLogger("coap-server").warning("third-party server warning")
        logging.getLogger("mcobserve.aio.client").warning("our warning")
        logging.getLogger("mcobserve.aio.client").info("our info")
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stderr


def test_third_party_warnings_only_with_v():
    quiet = _log_lines(0)
    assert "our warning" in quiet
    assert "third-party" not in quiet and "our info" not in quiet
    loud = _log_lines(1)
    assert "third-party warning" in loud and "third-party server warning" in loud and "our info" in loud


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[fd00:db8::1]:5683", "[fd00:db8::1]:5683"),
        ("[ff35:30:2001:db8::23]:61616", "[ff35:30:2001:db8::23]:61616"),
        ("fd00:db8::1", "[fd00:db8::1]:5683"),
        ("10.77.0.1", "10.77.0.1:5683"),
        (("fd00:db8::1", 5684), "[fd00:db8::1]:5684"),
        (("[fd00:db8::1]", None), "[fd00:db8::1]:5683"),
        (("ff35:30:2001:db8::23", 61616, 0, 0), "[ff35:30:2001:db8::23]:61616"),
        (("239.255.0.23", 61616), "239.255.0.23:61616"),
        (ipaddress.ip_address("::ffff:10.0.0.1"), "10.0.0.1:5683"),
        (Endpoint.parse("10.0.0.1:7"), "10.0.0.1:7"),
    ],
)
def test_endpoints_as_aiocoap_users_write_them(value, expected):
    assert str(Endpoint.coerce(value)) == expected


@pytest.mark.parametrize("value", [5683, ("fd00::1", 70000), ("not-an-address", 1), "x:y", ()])
def test_bad_endpoints_are_value_or_type_errors(value):
    with pytest.raises((ValueError, TypeError)):
        Endpoint.coerce(value)


SERVER = """
import asyncio, logging, sys
logging.basicConfig(level=logging.WARNING)
from mcobserve.aio.resources import TextResource
from mcobserve.aio.server import GroupServer
from mcobserve.engine.server import GroupPolicy

async def main():
    server = await GroupServer.create("[fd00:db8::1]", ("ff35:30:2001:db8::23", 61616), interface="eth0")
    server.add_resource(["temperature"], TextResource("21.0 C"), GroupPolicy(group_after=1, min_interval=0))
    print("ready", flush=True)
    await asyncio.sleep(30)

asyncio.run(main())
"""

CLIENT = """
import asyncio, logging
logging.basicConfig(level=logging.DEBUG if False else logging.WARNING)
from mcobserve.aio.client import Observer

async def main():
    async for n in Observer("coap://[fd00:db8::1]/temperature", interface="eth0"):
        print(n.via.value, n.observe, n.payload.decode(), flush=True)
        break
    print("after the loop", flush=True)

asyncio.run(main())
print("exited", flush=True)
"""


def test_library_with_strings_and_tuples_and_break_is_clean(lan):
    """The README's library example, word for word in spirit: strings and a tuple for the endpoints;
    ``break`` out of ``async for``; nothing on stderr (no aiocoap warning, no traceback)."""
    srv = lan.server.popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        res = lan.clients[0].run([sys.executable, "-W", "always", "-c", CLIENT], timeout=30)
    finally:
        srv.terminate()
        _, server_err = srv.communicate(timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["last_notif 1 21.0 C", "after the loop", "exited"]
    assert res.stderr == ""
    assert "Traceback" not in server_err and "WARNING" not in server_err
