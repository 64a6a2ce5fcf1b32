"""``mcobserve server --store``: group observations survive SIGKILL, observers stay on the same Token."""

from __future__ import annotations

import signal

from .livekit import GROUP6, notifications, observer, put, server


def test_server_store_resumes_group_observation_after_sigkill(onehost, tmp_path):
    h = onehost
    bind, base = f"[{h.addr6}]", f"coap://[{h.addr6}]"
    store = str(tmp_path / "server.sqlite")
    srv = server(h, bind, GROUP6, "--store", store)
    try:
        obs = [observer(h, f"{base}/r", count=5, timeout=40, name=f"o{i}") for i in range(2)]
        for o in obs:
            o.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
        put(h, f"{base}/r", ["a", "b"])
        for o in obs:
            o.wait_count(lambda e: e.get("via") == "multicast", 2, timeout=20)
        srv.popen.send_signal(signal.SIGKILL)
        srv.collect(10)
        srv = server(h, bind, GROUP6, "--store", store)
        resumed = srv.wait_event(lambda e: e.get("event") == "group_observation_resumed", timeout=10)
        assert resumed["token"] == token and resumed["resource"] == "/r"
        put(h, f"{base}/r", ["c", "d"])
        for o in obs:
            o.collect(30)
            got = notifications(o)
            assert [n["payload"] for n in got] == ["1234", "a", "b", "c", "d"], (o.name, got)
            assert {n["token"] for n in got} == {token}
            observes = [n["observe"] for n in got]
            assert observes == sorted(observes) and len(set(observes)) == 5
            assert o.popen.returncode == 0, o.read_stderr()
    finally:
        events = srv.stop()
    assert not [e for e in events if e.get("event") == "registration" and e["kind"] != "confirmation"]


def test_server_store_resumes_a_self_managed_group_observation(onehost, tmp_path):
    """``mcobserve server --store --group-oscore self-managed``: the group material lives in the store."""
    from mcobserve.cli.credentials import write_credentials

    creds = tmp_path / "creds"
    write_credentials(creds, f"[{onehost.addr6}]", 2)
    bind, base = f"[{onehost.addr6}]", f"coap://[{onehost.addr6}]"
    args = ("--credentials", str(creds / "server.json"), "--group-oscore", "self-managed", "--no-counting")
    args += ("--store", str(tmp_path / "server.sqlite"))
    srv = server(onehost, bind, GROUP6, *args)
    try:
        o = observer(
            onehost, f"{base}/r", count=3, timeout=40, extra=("--credentials", str(creds / "client-1.json"))
        )
        o.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
        put(onehost, f"{base}/r", ["m1"], 0.3, "--credentials", str(creds / "client-2.json"))
        o.wait_count(lambda e: e.get("via") == "multicast", 1, timeout=20)
        srv.popen.send_signal(signal.SIGKILL)
        srv.collect(5)
        srv = server(onehost, bind, GROUP6, *args)
        assert (
            srv.wait_event(lambda e: e.get("event") == "group_observation_resumed", timeout=10)["token"]
            == token
        )
        put(onehost, f"{base}/r", ["m2"], 0.3, "--credentials", str(creds / "client-2.json"))
        o.collect(30)
    finally:
        srv.stop()
    assert [(n["via"], n["payload"]) for n in notifications(o)] == [
        ("last_notif", "1234"),
        ("multicast", "m1"),
        ("multicast", "m2"),
    ]
    assert {n["token"] for n in notifications(o)} == {token}


def test_server_store_refuses_a_foreign_file(onehost, tmp_path):
    from .livekit import PY

    notes = tmp_path / "notes.txt"
    notes.write_text("not a store\n")
    res = onehost.run(
        [
            *PY,
            "server",
            "--bind",
            f"[{onehost.addr6}]",
            "--group",
            GROUP6,
            "--resource",
            "r=1",
            "--store",
            str(notes),
        ],
        timeout=30,
    )
    assert res.returncode == 65 and res.stderr.strip().startswith("mcobserve: ") and "SQLite" in res.stderr
    assert notes.read_text() == "not a store\n"


def test_secured_group_observation_resumes_on_the_same_token_without_partial_iv_reuse(
    onehost, tools, tmp_path
):
    """Pre-arranged Group OSCORE (draft §9): after SIGKILL the server resumes the observation with the
    stored protected phantom request; the observer keeps verifying notifications on the same Token and
    every Partial IV on the wire is new (SSN ceiling persisted before use)."""
    from mcobserve.capture import Capture
    from mcobserve.cli.credentials import write_credentials

    creds = tmp_path / "creds"
    write_credentials(creds, f"[{onehost.addr6}]", 2)
    bind, base = f"[{onehost.addr6}]", f"coap://[{onehost.addr6}]"
    args = (
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        str(creds / "group.toml"),
        "--no-counting",
        "--store",
        str(tmp_path / "server.sqlite"),
    )
    host = onehost.host if hasattr(onehost, "host") else onehost
    with Capture(host, onehost.ifname, "udp port 61616", tmp_path / "k.pcapng") as cap:
        srv = server(onehost, bind, GROUP6, *args)
        try:
            o = observer(
                onehost,
                f"{base}/r",
                count=5,
                timeout=40,
                extra=(
                    "--credentials",
                    str(creds / "client-1.json"),
                    "--group-oscore",
                    str(creds / "group-client.toml"),
                ),
            )
            o.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
            token = srv.wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
            put(onehost, f"{base}/r", ["k1", "k2"], 0.3, "--credentials", str(creds / "client-2.json"))
            o.wait_count(lambda e: e.get("via") == "multicast", 2, timeout=20)
            srv.popen.send_signal(signal.SIGKILL)
            srv.collect(5)
            srv = server(onehost, bind, GROUP6, *args)
            resumed = srv.wait_event(lambda e: e.get("event") == "group_observation_resumed", timeout=10)
            assert resumed["token"] == token
            put(onehost, f"{base}/r", ["r1", "r2"], 0.3, "--credentials", str(creds / "client-2.json"))
            o.collect(30)
        finally:
            srv.stop()
    got = notifications(o)
    assert [(n["via"], n["payload"]) for n in got] == [
        ("last_notif", "1234"),
        ("multicast", "k1"),
        ("multicast", "k2"),
        ("multicast", "r1"),
        ("multicast", "r2"),
    ], got
    assert {n["token"] for n in got} == {token} and o.popen.returncode == 0
    packets = [p for p in cap.decode(ports=[61616]) if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    pivs = [int(p["coap.opt.object_security_piv"], 16) for p in packets]
    assert len(pivs) >= 4 and len(set(pivs)) == len(pivs), pivs
    assert min(pivs[2:]) > max(pivs[:2])
