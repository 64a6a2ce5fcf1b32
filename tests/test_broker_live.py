"""The broker over real multicast in private namespaces: three subscriber hosts served by one datagram per
publication, SIGKILL and restart on the same Token T, and per-topic multicast groups."""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import time

from mcobserve.wire.cbor import cbor_decode

from .livekit import GROUP6, PY, Proc, notifications, start


def broker(host, store: str, *extra: str) -> Proc:
    proc = start(
        host,
        "broker",
        [
            "broker",
            "--bind",
            f"[{host.addr6}]",
            "--interface",
            host.ifname,
            "--store",
            store,
            "--min-interval",
            "0",
            "--json",
            *extra,
        ],
    )
    proc.wait_event(lambda e: e.get("event") == "broker_started")
    return proc


def cli(host, *argv: str) -> dict:
    res = host.run([*PY, *argv], timeout=30)
    assert res.returncode == 0, (argv, res.stdout, res.stderr)
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    return lines[-1] if lines else {}


def publish(host, uri: str, values: list[str]) -> None:
    argv = [*PY, "publish", uri, "--every", "0.3", "--count", str(len(values)), "--values", ",".join(values)]
    res = host.run(argv, timeout=30)
    assert res.returncode == 0, res.stderr


def subscriber(host, base: str, name: str, count: int, label: str) -> Proc:
    argv = ["subscribe", base, name, "--json", "--count", str(count), "--timeout", "40"]
    return start(host, label, [*argv, "--interface", host.ifname])


def test_three_subscriber_hosts_one_datagram_per_publication_and_sigkill_restart(lan, tmp_path):
    srv = lan.server
    base = f"coap://[{srv.addr6}]"
    store = str(tmp_path / "broker.sqlite")
    b = broker(srv, store, "--group", GROUP6)
    try:
        created = cli(
            lan.clients[0], "topic", "create", base, "temperature", "--content-format", "0", "--json"
        )
        data_uri = base + created["topic_data"]
        publish(lan.clients[0], data_uri, ["20.0"])
        subs = [subscriber(h, base, "temperature", 6, f"sub{i}") for i, h in enumerate(lan.clients)]
        for s in subs:
            s.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        started = b.wait_event(lambda e: e.get("event") == "group_observation_started")
        token = started["token"]
        publish(lan.clients[0], data_uri, ["20.5", "21.0", "21.5"])
        for s in subs:
            s.wait_count(lambda e: e.get("via") == "multicast", 3, timeout=20)
        sent = b.wait_count(lambda e: e.get("event") == "notification_sent", 3)
        assert len(sent) == 3 and {e["token"] for e in sent} == {token}  # one datagram per publication
        published = [e for e in b.seen if e.get("event") == "published"]
        assert len(published) == 4
        # Crash: SIGKILL, no cancellation leaves; restart on the same store.
        b.popen.send_signal(signal.SIGKILL)
        b.collect(10)
        assert not [e for e in b.seen if e.get("event") == "cancelled"]
        b = broker(srv, store, "--group", GROUP6)
        resumed = b.wait_event(lambda e: e.get("event") == "group_observation_resumed")
        assert resumed["token"] == token
        before = max(n["observe"] for n in notifications(subs[0]))
        publish(lan.clients[0], data_uri, ["22.0", "22.5"])
        for s in subs:
            s.collect(30)
            got = notifications(s)
            assert [n["payload"] for n in got] == ["20.0", "20.5", "21.0", "21.5", "22.0", "22.5"], (
                s.name,
                got,
            )
            assert {n["token"] for n in got} == {token}
            assert [n["via"] for n in got] == ["last_notif"] + ["multicast"] * 5
            after = [n["observe"] for n in got[4:]]
            assert all(o > before for o in after) and after == sorted(after)
            assert s.popen.returncode == 0, s.read_stderr()
        sent = b.wait_count(lambda e: e.get("event") == "notification_sent", 2)
    finally:
        events = b.stop()
    assert len(sent) == 2 and {e["token"] for e in sent} == {token}
    # Nobody registered again with the restarted broker.
    assert [e for e in events if e.get("event") == "registration" and e["kind"] != "confirmation"] == []
    assert len([e for e in events if e.get("event") == "notification_sent"]) == 2
    assert [e["reason"] for e in events if e.get("event") == "cancelled"] == ["shutdown"]


COUNTER = r"""
import socket, struct, sys, time, ipaddress
group, port, ifindex, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("::", port))  # every datagram to the port for a group this host joined (IPV6_MULTICAST_ALL=1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
             ipaddress.IPv6Address(group).packed + struct.pack("@I", ifindex))
print("ready", flush=True)
s.settimeout(0.2)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    tkl = data[0] & 0x0F
    print(data[4 : 4 + tkl].hex(), flush=True)
"""


def test_per_topic_groups_keep_other_topics_out(lan, tmp_path):
    srv = lan.server
    base = f"coap://[{srv.addr6}]"
    b = broker(srv, str(tmp_path / "b.sqlite"), "--group-prefix", "ff35:30:2001:db8::/96")
    try:
        a = cli(lan.clients[0], "topic", "create", base, "A", "--json")
        bb = cli(lan.clients[0], "topic", "create", base, "B", "--json")
        ga = b.wait_event(lambda e: e.get("event") == "topic_created" and e["name"] == "A")["group"]
        gb = b.wait_event(lambda e: e.get("event") == "topic_created" and e["name"] == "B")["group"]
        assert ga != gb and ga.startswith("[ff35:30:2001:db8::") and gb.startswith("[ff35:30:2001:db8::")
        publish(lan.clients[0], base + a["topic_data"], ["a0"])
        publish(lan.clients[0], base + bb["topic_data"], ["b0"])
        sub_a = subscriber(lan.clients[1], base, "A", 3, "subA")
        sub_b = subscriber(lan.clients[2], base, "B", 3, "subB")
        sub_a.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        sub_b.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        host_a = lan.clients[1]
        group_a = ga[1 : ga.index("]")]
        counter = host_a.python(COUNTER, group_a, "61616", str(host_a.ifindex), "6", stdout=-1, text=True)
        assert counter.stdout.readline().strip() == "ready"
        publish(lan.clients[0], base + bb["topic_data"], ["b1", "b2"])
        publish(lan.clients[0], base + a["topic_data"], ["a1", "a2"])
        sub_a.collect(30)
        sub_b.collect(30)
        out, _ = counter.communicate(timeout=20)
        token_a = next(n["token"] for n in notifications(sub_a))
        token_b = next(n["token"] for n in notifications(sub_b))
        heard = out.split()
        assert heard == [token_a, token_a], (heard, token_a, token_b)  # nothing of topic B at this socket
        assert [n["payload"] for n in notifications(sub_a)] == ["a0", "a1", "a2"]
        assert [n["payload"] for n in notifications(sub_b)] == ["b0", "b1", "b2"]
        started = b.wait_count(lambda e: e.get("event") == "group_observation_started", 2)
        assert {e["group"] for e in started} == {ga, gb}
        sent_b = b.wait_count(lambda e: e.get("event") == "notification_sent" and e["token"] == token_b, 2)
        assert len(sent_b) == 2  # B's datagrams did leave, to B's group
        for token, group in ((token_a, ga), (token_b, gb)):  # introspection answers for every topic's T
            res = lan.clients[0].run(
                [sys.executable, "-c", GET_HEX, f"{base}/.well-known/core/mc-sender?token={token}"], 30
            )
            code, cf, payload = res.stdout.split()
            intro = cbor_decode(bytes.fromhex(payload))
            assert (code, cf, intro[0][2].hex()) == ("2.05", "65000", token)
            assert intro[0][1][1][0] == ipaddress.IPv6Address(group[1 : group.index("]")]).packed
    finally:
        events = b.stop()
    # SIGTERM: both groups' observations are cancelled with their multicast 5.03 (draft §4.5)
    cancelled = [e for e in events if e.get("event") == "cancelled"]
    assert sorted(e["token"] for e in cancelled) == sorted([token_a, token_b])
    assert {e["reason"] for e in cancelled} == {"shutdown"}


GET_HEX = r"""
import asyncio, sys, aiocoap
async def main():
    ctx = await aiocoap.Context.create_client_context()
    r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=sys.argv[1])).response
    if r.code.dotted == "4.01" and r.opt.echo is not None:  # introspection verifies first (RFC 9175)
        m = aiocoap.Message(code=aiocoap.GET, uri=sys.argv[1], echo=r.opt.echo)
        r = await ctx.request(m).response
    print(r.code.dotted, int(r.opt.content_format or 0), r.payload.hex() or "-")
    await ctx.shutdown()
asyncio.run(main())
"""


def test_topic_metadata_announces_the_group_observation_and_a_client_joins_from_it(onehost, tmp_path):
    h = onehost
    base = f"coap://[{h.addr6}]"
    # No counting rounds here: a round's confirmation (§8) would be a second registration event,
    # and this test is about the silent registration of a client that joined from the metadata.
    b = broker(h, str(tmp_path / "b.sqlite"), "--group", GROUP6, "--announce", "--no-counting")
    try:
        t = cli(h, "topic", "create", base, "meta", "--json")
        publish(h, base + t["topic_data"], ["m0"])
        started = b.wait_event(lambda e: e.get("event") == "group_observation_started")
        assert started.get("announced") is True
        got = cli(h, "topic", "get", base, "meta", "--json")
        meta = got["properties"]["-65537"]
        assert set(meta) == {"0", "1", "2", "4"}  # tp_info, ph_req, last_notif, ending (App. A.1)
        assert meta["0"][2] == started["token"]  # tpi_token
        assert meta["4"] > time.time()  # the broker commits to keep it until 'ending'
        # Introspection answers for the topic's Token (App. A.2), with the same data.
        res = h.run(
            [sys.executable, "-c", GET_HEX, f"{base}/.well-known/core/mc-sender?token={started['token']}"], 30
        )
        assert res.returncode == 0, res.stderr
        code, cf, payload = res.stdout.split()
        assert (code, cf) == ("2.05", "65000")
        intro = cbor_decode(bytes.fromhex(payload))
        assert intro[0][2].hex() == started["token"] and intro[1].hex() == meta["1"]
        sub = start(h, "sub", ["subscribe", base, "meta", "--json", "--count", "3", "--interface", h.ifname])
        topic_line = sub.wait_event(lambda e: e.get("event") == "topic", timeout=20)
        assert topic_line["join"] == "metadata"
        sub.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        b.wait_event(lambda e: e.get("event") == "registration")
        publish(h, base + t["topic_data"], ["m1", "m2"])
        sub.collect(30)
        got = notifications(sub)
        assert [(n["via"], n["payload"]) for n in got] == [
            ("last_notif", "m0"),
            ("multicast", "m1"),
            ("multicast", "m2"),
        ]
        assert {n["token"] for n in got} == {started["token"]}
    finally:
        events = b.stop()
    regs = [e for e in events if e.get("event") == "registration"]
    assert [r["kind"] for r in regs] == ["silent"]  # counted (No-Response 16), never answered (§5.1)


def test_secured_broker_takes_writes_over_oscore_only_and_protects_notifications(onehost, tmp_path):
    from mcobserve.cli.credentials import write_credentials

    h = onehost
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{h.addr6}]", 2)
    base = f"coap://[{h.addr6}]"
    client = ("--credentials", str(creds / "client-1.json"))
    b = broker(
        h,
        str(tmp_path / "b.sqlite"),
        "--group",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        "self-managed",
        "--no-counting",
        "--announce",  # the group observation (and the topic metadata) exists before the subscriber
    )
    try:
        res = h.run([*PY, "topic", "create", base, "secret"], 30)
        assert res.returncode == 1 and "4.01" in res.stderr  # unprotected configuration is refused
        t = cli(h, "topic", "create", base, "secret", "--json", *client)
        data_uri = base + t["topic_data"]
        res = h.run([*PY, "publish", data_uri, "--count", "1", "--values", "x"], 30)
        assert res.returncode != 0  # an unprotected publication is refused too
        publish_args = ["--credentials", str(creds / "client-2.json")]
        res = h.run([*PY, "publish", data_uri, "--count", "1", "--values", "s0", *publish_args], 30)
        assert res.returncode == 0, res.stderr
        sub = start(
            h,
            "sub",
            ["subscribe", base, "secret", "--json", "--count", "3", "--interface", h.ifname, *client],
        )
        assert sub.wait_event(lambda e: e.get("event") == "topic")["join"] == "metadata"
        sub.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        res = h.run(
            [*PY, "publish", data_uri, "--count", "2", "--every", "0.3", "--values", "s1,s2", *publish_args],
            30,
        )
        assert res.returncode == 0, res.stderr
        sub.collect(30)
        assert [(n["via"], n["payload"]) for n in notifications(sub)] == [
            ("last_notif", "s0"),
            ("multicast", "s1"),
            ("multicast", "s2"),
        ]
    finally:
        events = b.stop()
    # Read over OSCORE, the topic metadata carried the group's keying material (App. C): the subscriber
    # joined from it and was only counted (No-Response 16), never answered.
    assert [e["kind"] for e in events if e.get("event") == "registration"] == ["silent"]


def test_deleting_topic_data_and_topic_cancels_the_group_observation(onehost, tmp_path):
    """DELETE on topic-data (HALF CREATED) and on the topic end the group observation with the multicast
    5.03 (draft §4.5); the subscriber's iteration ends; a new publication needs a new registration."""
    h = onehost
    base = f"coap://[{h.addr6}]"
    b = broker(h, str(tmp_path / "b.sqlite"), "--group", GROUP6)
    try:
        t = cli(h, "topic", "create", base, "gone", "--json")
        data_uri = base + t["topic_data"]
        publish(h, data_uri, ["g0"])
        sub = subscriber(h, base, "gone", 5, "sub")
        sub.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        res = h.run([sys.executable, "-c", DELETE, data_uri], 30)
        assert res.stdout.strip() == "2.02", res.stderr
        sub.collect(20)
        assert sub.popen.returncode == 3  # ended before --count: the broker cancelled
        assert "cancelled" in sub.read_stderr()
        cancelled = b.wait_event(lambda e: e.get("event") == "cancelled")
        assert cancelled["reason"] == "topic-data deleted"
        res = h.run([sys.executable, "-c", GET, data_uri], 30)
        assert res.stdout.strip() == "4.04"  # HALF CREATED again
        publish(h, data_uri, ["g1"])
        sub2 = subscriber(h, base, "gone", 5, "sub2")
        sub2.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        b.wait_count(lambda e: e.get("event") == "group_observation_started", 2)  # a new one
        res = h.run([*PY, "topic", "delete", base, "gone"], 30)
        assert res.returncode == 0, res.stderr
        sub2.collect(20)
        assert sub2.popen.returncode == 3
        reasons = [e["reason"] for e in b.wait_count(lambda e: e.get("event") == "cancelled", 2)]
        assert reasons == ["topic-data deleted", "resource removed"]
    finally:
        b.stop()


DELETE = r"""
import asyncio, sys, aiocoap
async def main():
    ctx = await aiocoap.Context.create_client_context()
    r = await ctx.request(aiocoap.Message(code=aiocoap.DELETE, uri=sys.argv[1])).response
    print(r.code.dotted)
    await ctx.shutdown()
asyncio.run(main())
"""
GET = DELETE.replace("aiocoap.DELETE", "aiocoap.GET")


def test_self_managed_group_oscore_broker_resumes_after_sigkill(onehost, tools, tmp_path):
    """Self-managed Group OSCORE (App. C) with its keying material and SSN in the store: after SIGKILL the
    subscriber keeps verifying notifications on the same Token, and no Partial IV repeats (tshark)."""
    import os

    from mcobserve.capture import Capture
    from mcobserve.cli.credentials import write_credentials

    h = onehost
    creds = tmp_path / "creds"
    write_credentials(creds, f"[{h.addr6}]", 2)
    base = f"coap://[{h.addr6}]"
    store = str(tmp_path / "b.sqlite")
    secured = ("--credentials", str(creds / "server.json"), "--group-oscore", "self-managed", "--no-counting")
    pub = ("--credentials", str(creds / "client-2.json"))
    host = h.host if hasattr(h, "host") else h
    with Capture(host, h.ifname, "udp port 61616", tmp_path / "k.pcapng") as cap:
        b = broker(h, store, "--group", GROUP6, *secured)
        try:
            t = cli(h, "topic", "create", base, "sm", "--json", *pub)
            data_uri = base + t["topic_data"]
            assert (
                h.run([*PY, "publish", data_uri, "--count", "1", "--values", "s0", *pub], 30).returncode == 0
            )
            argv = [
                "subscribe",
                base,
                "sm",
                "--json",
                "--count",
                "5",
                "--timeout",
                "40",
                "--interface",
                h.ifname,
            ]
            sub = start(h, "sub", [*argv, "--credentials", str(creds / "client-1.json")])
            sub.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
            token = b.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
            vals = ["--count", "2", "--every", "0.3", "--values"]
            assert h.run([*PY, "publish", data_uri, *vals, "s1,s2", *pub], 30).returncode == 0
            sub.wait_count(lambda e: e.get("via") == "multicast", 2, timeout=20)
            b.popen.send_signal(signal.SIGKILL)
            b.collect(5)
            assert oct(os.stat(store).st_mode & 0o777) == "0o600"  # it holds keying material
            b = broker(h, store, "--group", GROUP6, *secured)
            assert b.wait_event(lambda e: e.get("event") == "group_observation_resumed")["token"] == token
            assert h.run([*PY, "publish", data_uri, *vals, "s3,s4", *pub], 30).returncode == 0
            sub.collect(30)
        finally:
            b.stop()
    got = notifications(sub)
    assert [(n["via"], n["payload"]) for n in got] == [("last_notif", "s0")] + [
        ("multicast", f"s{i}") for i in range(1, 5)
    ], (got, sub.read_stderr())
    assert {n["token"] for n in got} == {token}
    packets = [p for p in cap.decode(ports=[61616]) if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    pivs = [int(p["coap.opt.object_security_piv"], 16) for p in packets]
    assert len(pivs) >= 4 and len(set(pivs)) == len(pivs), pivs


def test_max_subscribers_counts_the_group_observation(onehost, tmp_path):
    """max-subscribers 2: two subscribers join the group observation (COUNT 2); a third gets 2.05
    without Observe (pub-sub §4.2.2, RFC 7641 §4.1) and its observation ends at once."""
    h = onehost
    base = f"coap://[{h.addr6}]"
    b = broker(h, str(tmp_path / "b.sqlite"), "--group", GROUP6)
    try:
        t = cli(h, "topic", "create", base, "few", "--max-subscribers", "2", "--json")
        data_uri = base + t["topic_data"]
        publish(h, data_uri, ["f0"])
        for i in range(2):  # one after the other: the second finds the group observation in the metadata
            s = subscriber(h, base, "few", 2, f"s{i}")
            s.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        third = start(h, "third", ["observe", data_uri, "--json", "--count", "2", "--timeout", "10"])
        third.collect(20)
        assert third.popen.returncode == 3  # one response, no observation
        assert [(n["via"], n["payload"], n["observe"]) for n in notifications(third)] == [
            ("unicast", "f0", None)
        ]
    finally:
        events = b.stop()
    # the second joined from the topic metadata and was counted with No-Response 16 (§5.1)
    assert [r["kind"] for r in events if r.get("event") == "registration"] == ["group", "silent"]
