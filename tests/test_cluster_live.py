"""Broker nodes at three sites on one NATS cluster, over real multicast in private namespaces.

Each site is its own LAN (namespace bridge) with one broker node (``mcobserve broker --cluster``)
and one client host; the three nats-servers (JetStream, replicas 3) run in a backbone namespace
reached by a veth from each broker host. See tests/clusterkit.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mcobserve.cluster.natsrun import find_nats_server

from .clusterkit import COUNTER, GETTER, LEADER, PUBLISHER, Sites
from .conftest import unavailable
from .livekit import GROUP6, PY, Proc, notifications, start

pytestmark = pytest.mark.netns
GROUP = GROUP6[1 : GROUP6.index("]")]


@pytest.fixture
def sites(tmp_path):
    if find_nats_server() is None:
        unavailable("nats-server is not installed (apt-get install nats-server)")
    with Sites(tmp_path) as s:
        yield s


def cli(host, *argv: str) -> dict:
    res = host.run([*PY, *argv], timeout=30)
    assert res.returncode == 0, (argv, res.stdout, res.stderr)
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    return lines[-1] if lines else {}


def publish(host, uri: str, values: list[str], every: float = 0.3, patience: float = 0.0) -> list[dict]:
    res = host.run([sys.executable, "-c", PUBLISHER, uri, ",".join(values), str(every), str(patience)], 90)
    assert res.returncode == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]


def subscriber(host, base: str, name: str, count: int, label: str, timeout: float = 60) -> Proc:
    argv = ["subscribe", base, name, "--json", "--count", str(count), "--timeout", str(timeout)]
    return start(host, label, [*argv, "--interface", host.ifname])


def counter(host, seconds: float) -> subprocess.Popen[str]:
    p = host.python(COUNTER, GROUP, "61616", str(host.ifindex), str(seconds), stdout=-1, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def get(host, uri: str) -> tuple[str, str]:
    res = host.run([sys.executable, "-c", GETTER, uri], 30)
    assert res.returncode == 0, res.stderr
    code, _, payload = res.stdout.strip().partition(" ")
    return code, payload


def test_three_sites_one_datagram_per_publication_per_site_and_node_restart(sites):
    b = {k: sites.broker(k) for k in (1, 2, 3)}
    try:
        for k, p in b.items():
            joined = p.wait_event(lambda e: e.get("event") == "cluster_joined")
            assert joined["node"] == f"site{k}" and joined["server"].startswith(f"10.79.{k}.1:")
        created = cli(sites.client(1), "topic", "create", sites.base(1), "temperature",
                      "--content-format", "0", "--json")
        topic_id = created["topic"].rsplit("/", 1)[-1]
        data = created["topic_data"]
        ev = {k: b[k].wait_event(lambda e: e.get("event") == "topic_created", timeout=10) for k in b}
        assert {e["topic"] for e in ev.values()} == {topic_id}
        spread_ms = 1000 * (max(e["time"] for e in ev.values()) - min(e["time"] for e in ev.values()))
        assert spread_ms < 2000, spread_ms  # topic configuration at every node within a bounded time
        # the link-format lists agree at every site
        lists = [cli(sites.client(k), "topic", "list", sites.base(k), "--json")["topics"] for k in b]
        assert lists[0] == lists[1] == lists[2] == [created["topic"]]
        first = publish(sites.client(1), sites.base(1) + data, ["20.0"])
        assert [r["code"] for r in first] == ["2.01"]
        for k in (2, 3):
            b[k].wait_event(lambda e: e.get("event") == "published", timeout=10)
            assert get(sites.client(k), sites.base(k) + data) == ("2.05", "20.0")
        subs = {k: subscriber(sites.client(k), sites.base(k), "temperature", 6, f"sub{k}") for k in (2, 3)}
        for s in subs.values():
            s.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        tokens = {k: b[k].wait_event(lambda e: e.get("event") == "group_observation_started")["token"]
                  for k in (2, 3)}
        counters = {k: counter(sites.client(k), 6.0) for k in (1, 2, 3)}
        t0 = time.time()
        out = publish(sites.client(1), sites.base(1) + data, ["20.5", "21.0", "21.5"])
        assert [r["code"] for r in out] == ["2.04"] * 3
        for s in subs.values():
            s.wait_count(lambda e: e.get("via") == "multicast", 3, timeout=20)
        heard = {k: c.communicate(timeout=20)[0].split() for k, c in counters.items()}
        # each site saw exactly one datagram per publication, from its own node with its own T
        assert heard[2] == [tokens[2]] * 3 and heard[3] == [tokens[3]] * 3, (heard, tokens)
        assert heard[1] == []  # no subscriber at site 1: no group observation, nothing on its air
        for k in (2, 3):
            sent = b[k].wait_count(lambda e: e.get("event") == "notification_sent", 3)
            assert len(sent) == 3 and {e["token"] for e in sent} == {tokens[k]}
        last = [e for e in subs[2].seen if e.get("via") == "multicast"][-1]
        assert last["payload"] == "21.5"
        print(f"\ncross-site: topic spread {spread_ms:.1f} ms, 3 publications in {time.time() - t0:.2f} s")

        # Restart the node of site 2 (SIGKILL): its subscriber continues on the same T.
        before = max(n["observe"] for n in notifications(subs[2]))
        b[2].popen.send_signal(signal.SIGKILL)
        b[2].collect(10)
        b[2] = sites.broker(2)
        resumed = b[2].wait_event(lambda e: e.get("event") == "group_observation_resumed", timeout=20)
        assert resumed["token"] == tokens[2]
        out = publish(sites.client(1), sites.base(1) + data, ["22.0", "22.5"])
        assert [r["code"] for r in out] == ["2.04"] * 2
        for k, s in subs.items():
            s.collect(30)
            got = notifications(s)
            assert [n["payload"] for n in got] == ["20.0", "20.5", "21.0", "21.5", "22.0", "22.5"], (k, got)
            assert {n["token"] for n in got} == {tokens[k]}
            assert s.popen.returncode == 0, s.read_stderr()
        after = [n["observe"] for n in notifications(subs[2])[4:]]
        assert all(o > before for o in after) and after == sorted(after)
    finally:
        events = {k: p.stop() for k, p in b.items()}
    # nobody at site 2 registered again with the restarted node
    assert [e for e in events[2] if e.get("event") == "registration" and e["kind"] != "confirmation"] == []


def _data_leader(sites) -> str:
    for srv in sites.nats.servers:
        if not srv.running:
            continue
        res = sites.backbone.run(["python3", "-c", LEADER, str(srv.http_port), "mcobserve_data"], 10)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    raise AssertionError("no leader for the data stream")


def test_nats_faults_lose_nothing_refuse_with_503_and_recover(sites):
    b = {k: sites.broker(k) for k in (1, 2, 3)}
    try:
        created = cli(sites.client(1), "topic", "create", sites.base(1), "t", "--content-format", "0",
                      "--json")
        data = created["topic_data"]
        publish(sites.client(1), sites.base(1) + data, ["v0"])
        subs = {k: subscriber(sites.client(k), sites.base(k), "t", 200, f"sub{k}", timeout=120)
                for k in (2, 3)}
        for s in subs.values():
            s.wait_event(lambda e: e.get("via") == "last_notif", timeout=20)
        # 1. a stream of publications at site 1; the data stream's leader dies in the middle
        values = [f"v{i}" for i in range(1, 31)]
        pub = sites.client(1).python(PUBLISHER, sites.base(1) + data, ",".join(values), "0.1", "30",
                                     stdout=-1, text=True)
        time.sleep(1.0)
        leader = _data_leader(sites)
        victim = next(s for s in sites.nats.servers if s.name == leader)
        sites.nats.kill(victim)
        out, _ = pub.communicate(timeout=120)
        replies = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        accepted = [r["value"] for r in replies if r["code"] in ("2.01", "2.04")]
        assert accepted == values  # every value accepted in the end (after 5.03s, if any)
        refused = [r for r in replies if r["code"] == "5.03"]
        assert all(r["max_age"] == 2 for r in refused)
        for k, s in subs.items():
            s.wait_event(lambda e: e.get("payload") == "v30", timeout=30)
            got = [n["payload"] for n in notifications(s)]
            assert got == ["v0", *values], (k, got)  # nothing lost, one order, at both sites
        # 2. NATS entirely down: 5.03 + Max-Age to publishers, subscribers keep their values
        for srv in sites.nats.servers:
            sites.nats.kill(srv)
        for p in b.values():
            p.wait_event(lambda e: e.get("event") == "cluster_disconnected", timeout=15)
        r = publish(sites.client(1), sites.base(1) + data, ["down"])
        assert [(x["code"], x["max_age"]) for x in r] == [("5.03", 2)]
        assert get(sites.client(2), sites.base(2) + data) == ("2.05", "v30")
        assert get(sites.client(3), sites.base(3) + data) == ("2.05", "v30")
        # 3. NATS back (same store folders): the nodes recover by themselves
        for srv in sites.nats.servers:
            sites.nats.start_server(srv)
        r = publish(sites.client(1), sites.base(1) + data, ["back"], patience=60)
        assert r[-1]["code"] == "2.04", r
        for p in b.values():
            p.wait_event(lambda e: e.get("event") == "cluster_reconnected", timeout=15)
        for k, s in subs.items():
            s.wait_event(lambda e: e.get("payload") == "back", timeout=30)
            got = [n["payload"] for n in notifications(s)]
            assert got == ["v0", *values, "back"], (k, got)
            assert {n["token"] for n in notifications(s)} == {notifications(s)[0]["token"]}
    finally:
        events = {k: p.stop() for k, p in b.items()}
        for s in locals().get("subs", {}).values():
            s.stop()
    for k in (1, 2, 3):
        assert not [e for e in events[k] if e.get("event") == "cancelled" and e.get("reason") != "shutdown"]
