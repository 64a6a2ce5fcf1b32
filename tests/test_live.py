"""Group observations over real IPv6 and IPv4 multicast, in private namespaces the tests create.

Every test starts the real ``mcobserve server`` and ``mcobserve observe`` processes; the bridge
LAN puts each observer on its own host, the veth pair puts many observers on one host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from aiocoap import Message

from mcobserve.capture import Capture
from mcobserve.wire import InformativeResponse, parse_message

from .livekit import GROUP4, GROUP6, PY, notifications, observer, put, server

FAMILIES = ["ipv6", "ipv4"]


def addressing(host, family: str) -> tuple[str, str, str]:
    """(bind, group, uri base) for the server on ``host``."""
    if family == "ipv6":
        return f"[{host.addr6}]", GROUP6, f"coap://[{host.addr6}]"
    return host.addr4, GROUP4, f"coap://{host.addr4}"


def check_group_run(observers, srv, values: list[str], token: str) -> None:
    for o in observers:
        got = notifications(o)
        assert [n["via"] for n in got] == ["last_notif"] + ["multicast"] * len(values), (o.name, got)
        assert [n["payload"] for n in got] == ["1234", *values]
        assert {n["token"] for n in got} == {token}
        assert all(n["code"] == "2.05" for n in got)
        observes = [n["observe"] for n in got]
        assert observes == sorted(observes) and len(set(observes)) == len(observes)
        assert o.popen.returncode == 0, o.read_stderr()
    sent = srv.wait_count(lambda e: e.get("event") == "notification_sent", len(values))
    assert len(sent) == len(values)  # one datagram per change, whatever the number of observers
    assert [e["observe"] for e in sent] == [n["observe"] for n in notifications(observers[0])[1:]]


def run_group(server_host, observer_hosts, putter, family: str) -> None:
    bind, group, base = addressing(server_host, family)
    srv = server(server_host, bind, group)
    try:
        obs = [observer(h, f"{base}/r", count=4, name=f"obs{i}") for i, h in enumerate(observer_hosts)]
        for o in obs:
            o.wait_event(lambda e: e.get("via") == "last_notif")
        started = srv.wait_event(lambda e: e.get("event") == "group_observation_started")
        regs = srv.wait_count(lambda e: e.get("event") == "registration", len(obs))
        assert len(regs) == len(obs) and {r["kind"] for r in regs} == {"group"}
        put(putter, f"{base}/r", ["a", "b", "c"])
        for o in obs:
            o.collect(20)
        check_group_run(obs, srv, ["a", "b", "c"], started["token"])
    finally:
        events = srv.stop()
    cancelled = [e for e in events if e.get("event") == "cancelled"]
    assert [e["reason"] for e in cancelled] == ["shutdown"]


@pytest.mark.parametrize("family", FAMILIES)
def test_group_observation_across_hosts(lan, family):
    """A bridge with three client hosts: each gets the informative response, then every notification."""
    run_group(lan.server, lan.clients, lan.clients[0], family)


@pytest.mark.parametrize("family", FAMILIES)
def test_many_observers_on_one_host(onehost, family):
    """Four observer processes on one host share GRP_PORT (SO_REUSEPORT, *_MULTICAST_ALL off)."""
    run_group(onehost, [onehost] * 4, onehost, family)


def test_traditional_observers_shift_into_the_group(onehost):
    """--group-after 3: two traditional observers, then the third starts the group observation and
    the first two are moved over with an informative response on their own Token (draft §4.2)."""
    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group, "--group-after", "3")
    try:
        o1 = observer(onehost, f"{base}/r", count=4, name="o1")
        o1.wait_event(lambda e: e.get("via") == "unicast")
        o2 = observer(onehost, f"{base}/r", count=4, name="o2")
        o2.wait_event(lambda e: e.get("via") == "unicast")
        put(onehost, f"{base}/r", ["t1"])
        o1.wait_event(lambda e: e.get("payload") == "t1")
        o2.wait_event(lambda e: e.get("payload") == "t1")
        assert not any(e.get("event") == "group_observation_started" for e in srv.seen)
        o3 = observer(onehost, f"{base}/r", count=2, name="o3")
        started = srv.wait_event(lambda e: e.get("event") == "group_observation_started")
        assert started["shifted"] == 2
        for o in (o1, o2, o3):
            o.wait_event(lambda e: e.get("via") == "last_notif")
        put(onehost, f"{base}/r", ["g1"])
        for o in (o1, o2, o3):
            o.collect(20)
        for o in (o1, o2):
            got = notifications(o)
            assert [(n["via"], n["payload"]) for n in got] == [
                ("unicast", "1234"),
                ("unicast", "t1"),
                ("last_notif", "t1"),
                ("multicast", "g1"),
            ]
            assert got[-1]["token"] == started["token"] != got[0]["token"]
        assert [(n["via"], n["payload"]) for n in notifications(o3)] == [
            ("last_notif", "t1"),
            ("multicast", "g1"),
        ]
        kinds = [e["kind"] for e in srv.wait_count(lambda e: e.get("event") == "registration", 3)]
        assert kinds == ["traditional", "traditional", "group"]
    finally:
        srv.stop()


def test_cancellation_reaches_observers(onehost):
    """Shutting the server down sends the multicast 5.03; observers end cleanly (draft §4.5, §5.4)."""
    bind, group, base = addressing(onehost, "ipv4")
    srv = server(onehost, bind, group)
    obs = [observer(onehost, f"{base}/r", count=10, timeout=30, name=f"o{i}") for i in range(2)]
    for o in obs:
        o.wait_event(lambda e: e.get("via") == "last_notif")
    t0 = time.monotonic()
    srv.stop()
    for o in obs:
        o.collect(10)
        assert o.popen.returncode == 3
        assert "server cancelled the group observation after 1 of 10" in o.read_stderr()
    assert time.monotonic() - t0 < 8


def test_scheduled_ending(onehost):
    """--duration: 'ending' is announced, then the group observation is cancelled on time (§4.2, §4.5)."""
    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group, "--duration", "2")
    try:
        o = observer(onehost, f"{base}/r", count=5, timeout=15)
        o.wait_event(lambda e: e.get("via") == "last_notif")
        srv.wait_event(lambda e: e.get("event") == "cancelled" and e["reason"] == "ending reached", timeout=6)
        o.collect(10)
        assert o.popen.returncode == 3
    finally:
        srv.stop()


def test_tshark_decodes_multicast_notification_and_separate_informative_response(lan, tools, tmp_path):
    """tshark sees a NON notification with Token T and Observe, from SRV_PORT to the group; and the
    informative response as an empty ACK followed by a CON 5.03 (draft §4.2, §4.3)."""
    client = lan.clients[0]
    bind, group, base = addressing(lan.server, "ipv6")
    srv = server(lan.server, bind, group)
    try:
        with Capture(client, client.ifname, "udp", tmp_path / "c.pcapng") as cap:
            o = observer(client, f"{base}/r", count=3)
            o.wait_event(lambda e: e.get("via") == "last_notif")
            put(lan.clients[1], f"{base}/r", ["x", "y"])
            o.collect(15)
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
    finally:
        srv.stop()
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    assert len(mcast) == 2
    for p in mcast:
        assert p["coap.type"] == "1"  # NON
        assert p["coap.token"] == token
        assert p["coap.opt.observe"] is not None
        assert p["udp.srcport"] == "5683" and p["udp.dstport"] == "61616"
        assert p["ipv6.src"] == lan.server.addr6
    assert int(mcast[1]["coap.opt.observe"]) > int(mcast[0]["coap.opt.observe"])
    # Registration: CON GET; then an empty ACK; then a CON 5.03 (separate), acknowledged by the client.
    # (The first registration got a 4.01 with Echo; the one that carries the Echo value is answered.)
    inf = next(p for p in packets if p["coap.code"] == "163")  # 5.03
    reg = next(
        p
        for p in packets
        if p["coap.code"] == "1"
        and p["ipv6.dst"] == lan.server.addr6
        and p["coap.token"] == inf["coap.token"]
    )
    after = [p for p in packets if float(p["frame.time_relative"]) >= float(reg["frame.time_relative"])]
    ack = next(p for p in after if p["coap.type"] == "2" and p["coap.mid"] == reg["coap.mid"])
    assert ack["coap.code"] == "0"  # empty: the response is not piggybacked
    assert inf["coap.type"] == "0" and inf["coap.token"] == reg["coap.token"] and inf["udp.srcport"] == "5683"
    assert inf["coap.opt.max_age"] == "0" and inf["coap.opt.observe"] is None
    assert "65000" in (inf["coap.opt.ctype"] or "")
    ir = InformativeResponse.decode(Message.decode(bytes.fromhex(inf["udp.payload"])).payload)
    assert ir.tp_info.tpi_token.hex() == token
    assert str(ir.tp_info.tpi_server.host) == lan.server.addr6
    assert parse_message(ir.last_notif).payload == b"1234"
    assert any(p["coap.type"] == "2" and p["coap.mid"] == inf["coap.mid"] for p in after)  # the client ACKs


def test_libcoap_legacy_observer_gets_503_and_server_stays_healthy(lan, tools):
    """coap-client-notls knows nothing of the draft: it gets a well-formed 5.03; the others go on."""
    bind, group, base = addressing(lan.server, "ipv6")
    srv = server(lan.server, bind, group)
    try:
        o = observer(lan.clients[1], f"{base}/r", count=3)
        o.wait_event(lambda e: e.get("via") == "last_notif")
        res = lan.clients[0].run(
            ["coap-client-notls", "-v", "6", "-s", "3", "-B", "3", f"{base}/r"], timeout=20
        )
        out = res.stdout + res.stderr
        assert "c:5.03" in out, out
        assert "t:CON c:5.03" in out and "Content-Format:65000, Max-Age:0" in out, out
        hexes = re.findall(r"^<<([0-9a-f]+)>>$", out, re.MULTILINE)
        assert len(hexes) == 1, out
        ir = InformativeResponse.decode(bytes.fromhex(hexes[0]))
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
        assert ir.tp_info.tpi_token.hex() == token
        put(lan.clients[2], f"{base}/r", ["after-legacy-1", "after-legacy-2"])
        o.collect(15)
        assert [n["payload"] for n in notifications(o)] == ["1234", "after-legacy-1", "after-legacy-2"]
        kinds = [e["kind"] for e in srv.wait_count(lambda e: e.get("event") == "registration", 2)]
        assert kinds.count("group") == 2
    finally:
        srv.stop()
    assert srv.popen.returncode == 0


COAP_GET = """
import asyncio, json, sys, aiocoap
async def main():
    ctx = await aiocoap.Context.create_client_context()
    out = []
    for uri in sys.argv[1:]:
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
        out.append({"code": r.code.dotted, "cf": r.opt.content_format, "payload": r.payload.hex()})
    print(json.dumps(out))
    await ctx.shutdown()
asyncio.run(main())
"""


def test_wellknown_core_and_introspection(onehost):
    """/.well-known/core marks gp-obs (draft §6); mc-sender?token= returns the observation (App. A.2)."""
    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group, "--resource", "plain=x")
    try:
        o = observer(onehost, f"{base}/r", count=1)
        o.collect(10)
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
        res = onehost.run(
            [
                sys.executable,
                "-c",
                COAP_GET,
                f"{base}/.well-known/core",
                f"{base}/.well-known/core/mc-sender?token={token}",
                f"{base}/.well-known/core/mc-sender?token=ffffff",
                f"{base}/.well-known/core/mc-sender?token=zz",
            ],
            timeout=20,
        )
        assert res.returncode == 0, res.stderr
        wkc, intro, unknown, bad = json.loads(res.stdout)
        links = bytes.fromhex(wkc["payload"]).decode()
        r_link = next(link for link in links.split(",") if link.startswith("</r>"))
        assert "gp-obs" in r_link.split(";") and "obs" in r_link.split(";")
        assert intro["code"] == "2.05" and intro["cf"] == 65000
        ir = InformativeResponse.decode(bytes.fromhex(intro["payload"]))
        assert ir.tp_info.tpi_token.hex() == token and ir.ph_req is not None and ir.ending > time.time()
        assert parse_message(ir.ph_req).opt.uri_path == ("r",)
        assert unknown["code"] == "4.04" and bad["code"] == "4.00"
    finally:
        srv.stop()


def test_several_group_observations_in_one_process(onehost):
    """Three servers (v6 and v4, two groups on one port, two ports) and one observer process that
    follows all three: each observation gets only its own notifications."""
    script = str(__import__("pathlib").Path(__file__).parent / "scenarios" / "multi_group.py")
    res = onehost.run([sys.executable, script, onehost.ifname], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result == {
        "A": ["A0", "A1", "A2"],
        "B": ["B0", "B1", "B2"],
        "C": ["C0", "C1", "C2"],
        "vias": ["last_notif", "multicast", "multicast"],
    }


def test_observe_cli_timeout_and_errors(onehost):
    """observe exits non-zero with one line: timeout before --count, 4.04, unreachable server."""
    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group)
    try:
        res = onehost.run([*PY, "observe", f"{base}/r", "--count", "3", "--timeout", "1.5"], timeout=20)
        assert res.returncode == 2 and res.stderr.strip().startswith("mcobserve: timeout after 1.5 s: 1 of 3")
        assert res.stdout.count("via=last_notif") == 1
        res = onehost.run([*PY, "observe", f"{base}/missing", "--count", "1"], timeout=20)
        assert res.returncode == 1 and "4.04" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        srv.stop()
    res = onehost.run([*PY, "observe", f"{base}/r", "--count", "1", "--timeout", "3"], timeout=20)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_put_replaces_and_is_rejected_when_not_text(onehost):
    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group)
    try:
        put(onehost, f"{base}/r", ["new"])
        res = onehost.run([sys.executable, "-c", COAP_GET, f"{base}/r"], timeout=20)
        assert bytes.fromhex(json.loads(res.stdout)[0]["payload"]) == b"new"
    finally:
        srv.stop()


def test_demo_runs(tools):
    """The README's demo: a LAN with a server, a sensor and three observers; the closing comparison line."""
    from .conftest import require_netns

    require_netns()
    res = subprocess.run(
        [*PY, "demo", "--updates", "3", "--every", "0.5"], capture_output=True, text=True, timeout=90
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.count("via=last_notif") == 3 and out.count("via=multicast") == 9
    assert "3 multicast notifications" in out and "3 x 3 = 9 unicast notifications" in out


RAW_REGISTER = """
import json, socket, sys, time
from aiocoap import CON, GET, Message
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
m = Message(code=GET, observe=0, uri_path=["r"], no_response=16)
m.mtype, m.mid, m.token = CON, 0x4242, b"\\x4a"
s.sendto(m.encode(), (host, port))
s.settimeout(0.2)
got, end = [], time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        data, _ = s.recvfrom(2048)
    except TimeoutError:
        continue
    r = Message.decode(data)
    got.append({"type": int(r.mtype), "code": r.code.dotted, "mid": r.mid, "payload": r.payload.hex()})
print(json.dumps(got))
"""


def test_no_response_16_registration_is_counted_not_answered(onehost):
    """A registration with No-Response 16 gets only the empty ACK; the server counts it (draft §5.1)."""
    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group)
    try:
        o = observer(onehost, f"{base}/r", count=1)
        o.collect(10)
        res = onehost.run([sys.executable, "-c", RAW_REGISTER, onehost.addr6, "5683"], timeout=20)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == [{"type": 2, "code": "0.00", "mid": 0x4242, "payload": ""}]
        regs = srv.wait_count(lambda e: e.get("event") == "registration", 2)
        assert [(r["kind"], r["count"]) for r in regs] == [("group", 1), ("silent", 2)]
    finally:
        srv.stop()


def test_operator_cancel_and_resource_removal(onehost):
    """SIGUSR1 cancels group observations and the server goes on (a new one starts with a new Token);
    DELETE removes the resource and cancels its group observation (draft §4.5)."""
    import signal

    bind, group, base = addressing(onehost, "ipv6")
    srv = server(onehost, bind, group)
    try:
        o1 = observer(onehost, f"{base}/r", count=5, name="o1")
        o1.wait_event(lambda e: e.get("via") == "last_notif")
        first = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
        srv.popen.send_signal(signal.SIGUSR1)
        o1.collect(10)
        assert o1.popen.returncode == 3 and "server cancelled" in o1.read_stderr()
        assert srv.wait_event(lambda e: e.get("event") == "cancelled")["reason"] == "operator"
        o2 = observer(onehost, f"{base}/r", count=5, name="o2")
        o2.wait_event(lambda e: e.get("via") == "last_notif")
        tokens = [
            e["token"] for e in srv.wait_count(lambda e: e.get("event") == "group_observation_started", 2)
        ]
        assert tokens[0] == first and len(set(tokens)) == 2  # T was freed, a new one taken
        res = onehost.run([*PY, "publish", f"{base}/r", "--count", "1"], timeout=20)
        assert res.returncode == 0
        delete = COAP_GET.replace("code=aiocoap.GET", "code=aiocoap.DELETE")
        res = onehost.run([sys.executable, "-c", delete, f"{base}/r"], timeout=20)
        assert json.loads(res.stdout)[0]["code"] == "2.02"
        o2.collect(10)
        assert o2.popen.returncode == 3
        cancels = srv.wait_count(lambda e: e.get("event") == "cancelled", 2)
        assert cancels[1]["reason"] == "resource removed"
        res = onehost.run([sys.executable, "-c", COAP_GET, f"{base}/r"], timeout=20)
        assert json.loads(res.stdout)[0]["code"] == "4.04"
        assert srv.popen.poll() is None
    finally:
        srv.stop()


def test_server_from_toml_configuration(onehost, tmp_path):
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        f'[server]\nbind = "{onehost.addr4}"\ngroup = "{GROUP4}"\ninterface = "{onehost.ifname}"\n'
        'resource = ["cfg=from-toml"]\nmin-interval = 0\njson = true\n'
    )
    from .livekit import Proc

    p = onehost.popen(
        [*PY, "server", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    srv = Proc("server", p).start()
    srv.wait_event(lambda e: e.get("event") == "started")
    try:
        o = observer(onehost, f"coap://{onehost.addr4}/cfg", count=1)
        o.collect(10)
        assert [(n["via"], n["payload"]) for n in notifications(o)] == [("last_notif", "from-toml")]
    finally:
        srv.stop()
