"""Interoperability with independent implementations (run from where they are, never copied):

* the pub-sub draft editor's client (``/work/shared/peers/aiocoap-pubsub-broker/client.py``, -19) and
  ``aiocoap-client`` against our broker;
* our client (``mcobserve topic``, ``publish``, ``observe``, ``subscribe``) against the editor's broker
  (``broker.py``, traditional RFC 7641 observe).

Known, expected differences (the peer follows -19): its ``create`` omits resource-type (key 2, required by
-21), so our broker answers 4.00; its broker names resource-type "core.ps.conf" and returns a relative
topic-data path; its FETCH filter is a different map (key 10), so our client falls back to GET.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcobserve.wire.cbor import cbor_decode, cbor_encode

from .livekit import PY, notifications, start
from .test_broker_live import broker, cli

PEER = Path("/work/shared/peers/aiocoap-pubsub-broker")
AIOCOAP_CLIENT = str(Path(sys.executable).with_name("aiocoap-client"))


@pytest.fixture(scope="module")
def peer() -> Path:
    if not (PEER / "client.py").exists():
        pytest.fail(f"the peer implementation is missing at {PEER}")
    return PEER


def peer_client(host, *argv: str) -> subprocess.CompletedProcess[str]:
    # cwd is the peer's folder: its client imports its own codec.py from there.
    return subprocess.run(
        host.host.argv([sys.executable, str(PEER / "client.py"), *argv]),
        cwd=PEER,
        capture_output=True,
        text=True,
        timeout=30,
    )


def aiocoap_client(host, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """aiocoap-client with its raw output (CBOR payloads are bytes)."""
    return subprocess.run(host.host.argv([AIOCOAP_CLIENT, *argv]), capture_output=True, timeout=30)


def test_editors_client_and_aiocoap_client_against_our_broker(onehost, tmp_path, peer):
    h = onehost
    base = f"coap://[{h.addr6}]"
    # The editor's client and aiocoap-client 0.4.17 do not answer Echo (RFC 9175) on plain CoAP: on a
    # network without spoofing the broker runs with --trusted-network (README, docs/security.md).
    b = broker(
        h,
        str(tmp_path / "b.sqlite"),
        "--group",
        "[ff35:30:2001:db8::23]:61616",
        "--group-after",
        "2",
        "--trusted-network",
    )
    try:
        # The peer's create omits resource-type (required by -21): a 4.00, as the draft says.
        res = peer_client(h, "create", base, "peer-topic")
        assert res.returncode == 1 and "4.00" in res.stderr, (res.stdout, res.stderr)
        # aiocoap-client creates a topic with a CBOR payload from a file.
        body = tmp_path / "create.cbor"
        body.write_bytes(cbor_encode({0: "peer-topic", 2: "core.ps.data", 3: 0}))
        res = aiocoap_client(
            h, "-m", "POST", "--content-format", "606", "--payload", f"@{body}", f"{base}/ps"
        )
        assert res.returncode == 0, res.stderr
        reply = cbor_decode(res.stdout.rstrip(b"\n"))
        assert reply[0] == "peer-topic" and reply[2] == "core.ps.data" and reply[1].startswith("/ps/data/")
        created = b.wait_event(lambda e: e.get("event") == "topic_created")
        data = created["topic_data"]
        # The peer's list, publish, read and subscribe work unchanged.
        res = peer_client(h, "list", base)
        assert res.returncode == 0 and f"</ps/{created['topic']}>" in res.stdout
        res = peer_client(h, "publish", f"{base}{data}", "19.5", "--format", "0")
        assert (res.returncode, res.stdout.strip()) == (0, "2.01 Created"), res
        res = peer_client(h, "read", f"{base}{data}")
        assert (res.returncode, res.stdout.strip()) == (0, "19.5")
        sub = h.popen(
            [sys.executable, "-u", str(PEER / "client.py"), "sub", f"{base}{data}"],
            cwd=PEER,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sub.stdout is not None
        assert sub.stdout.readline().strip() == "[subscribe] 19.5"  # a traditional subscriber (group-after 2)
        res = peer_client(h, "publish", f"{base}{data}", "20.0", "--format", "0")
        assert res.stdout.strip() == "2.04 Changed"
        assert sub.stdout.readline().strip() == "[update]    20.0"
        sub.kill()
        sub.wait(5)
        # aiocoap-client reads the topic (Content-Format 606) and the data, and deletes the topic.
        res = aiocoap_client(h, f"{base}/ps/{created['topic']}")
        assert res.returncode == 0 and cbor_decode(res.stdout.rstrip(b"\n"))[1] == data, res.stderr
        res = aiocoap_client(h, f"{base}{data}")
        assert (res.returncode, res.stdout.strip()) == (0, b"20.0")
        res = aiocoap_client(h, "-m", "DELETE", f"{base}/ps/{created['topic']}")
        assert res.returncode == 0, res.stderr
        b.wait_event(lambda e: e.get("event") == "topic_deleted")
        res = peer_client(h, "read", f"{base}{data}")
        assert res.returncode == 1 and "4.04" in res.stderr
    finally:
        b.stop()


def test_our_client_against_the_editors_broker(onehost, peer):
    h = onehost
    port = 5683
    base = f"coap://[{h.addr6}]"
    srv = h.popen(
        [sys.executable, str(PEER / "broker.py"), "--host", h.addr6, "--port", str(port)],
        cwd=PEER,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):  # wait until it answers
            if h.run([*PY, "topic", "list", f"{base}/ps", "--timeout", "1"], 10).returncode == 0:
                break
            time.sleep(0.1)
        created = cli(h, "topic", "create", f"{base}/ps", "ours", "--content-format", "0", "--json")
        assert created["properties"]["0"] == "ours"
        data = created["topic_data"]
        data_uri = f"{base}/{data.lstrip('/')}"
        listed = cli(h, "topic", "list", f"{base}/ps", "--json")
        assert created["topic"] in listed["topics"] or created["topic"].lstrip("/") in str(listed["topics"])
        got = cli(h, "topic", "get", f"{base}/ps", "ours", "--json")  # by name: FETCH falls back to GET
        assert got["properties"]["1"] == data
        res = h.run([*PY, "publish", data_uri, "--count", "1", "--values", "7"], 30)
        assert res.returncode == 0, res.stderr
        obs = start(h, "observe", ["observe", data_uri, "--json", "--count", "3", "--timeout", "20"])
        obs.wait_event(lambda e: e.get("payload") == "7", timeout=20)
        res = h.run([*PY, "publish", data_uri, "--count", "2", "--every", "0.2", "--values", "8,9"], 30)
        assert res.returncode == 0, res.stderr
        obs.collect(20)
        got_n = notifications(obs)
        assert [n["payload"] for n in got_n] == ["7", "8", "9"] and {n["via"] for n in got_n} == {"unicast"}
        sub = start(
            h, "subscribe", ["subscribe", f"{base}/ps", "ours", "--json", "--count", "1", "--timeout", "20"]
        )
        sub.collect(20)
        first = next(e for e in sub.seen if e.get("event") == "topic")
        assert first["join"] == "register" and first["group_observation"] is None
        assert [n["payload"] for n in notifications(sub)] == ["9"]
        res = h.run([*PY, "topic", "delete", f"{base}/ps", created["topic"], "--json"], 30)
        assert res.returncode == 0 and json.loads(res.stdout)["deleted"] == created["topic"]
    finally:
        srv.terminate()
        srv.wait(10)


def test_cbor_of_our_broker_decodes_with_cbor2():
    """Our deterministic encoding of a topic with expiration-date is what cbor2 reads as tag 1."""
    import cbor2

    from mcobserve.wire.cbor import CborTag

    raw = cbor_encode({0: "living-room-sensor", 5: CborTag(1, 1680393599), 6: 100})
    assert cbor2.loads(raw)[0] == "living-room-sensor"
    assert cbor_decode(cbor2.dumps({0: "x", 5: cbor2.CBORTag(1, 1680393599)}))[5] == CborTag(1, 1680393599)
