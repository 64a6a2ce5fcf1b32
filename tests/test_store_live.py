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
