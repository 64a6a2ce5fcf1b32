"""Issue 13 over real multicast in private namespaces: what the wire shows (tshark) and what real
processes do. Engine-level tests of the same items are in test_conformance_engine.py."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcobserve.capture import Capture

from .livekit import GROUP6, PY, notifications, observer, put, server


def values(p: str) -> str:
    return ",".join(f"{p}{i}" for i in range(5))


SCENARIO = str(Path(__file__).parent / "scenarios" / "conformance.py")


def test_congestion_control_per_group_on_the_wire(onehost, tools, tmp_path):
    """Item 8: three busy resources share one group. With the draft's default (--min-interval 3) the
    group hears at most one multicast notification every 3 s (tshark), and every observer ends with
    the latest value of its resource."""
    host = onehost
    srv = server(
        host, f"[{host.addr6}]", GROUP6, "--min-interval", "3", "--resource", "s=1", "--resource", "t=1"
    )
    base = f"coap://[{host.addr6}]"
    try:
        with Capture(host, host.ifname, "udp", tmp_path / "cc.pcapng") as cap:
            obs = [observer(host, f"{base}/{p}", count=50, timeout=25, name=p) for p in "rst"]
            for o in obs:
                o.wait_event(lambda e: e.get("via") == "last_notif")
            putters = [
                host.popen(
                    [*PY, "publish", f"{base}/{p}", "--every", "0.2", "--count", "5", "--values", values(p)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for p in "rst"
            ]
            for p in putters:
                assert p.wait(30) == 0
            for o in obs:
                o.wait_event(lambda e, o=o: e.get("payload") == f"{o.name}4", timeout=25)
    finally:
        srv.stop()
    for o in obs:
        got = notifications(o)
        assert got[-1]["payload"] == f"{o.name}4" and got[-1]["via"] == "multicast"
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == "ff35:30:2001:db8::23" and p["coap.opt.observe"]]
    times = [float(p["frame.time_relative"]) for p in mcast]
    assert len(times) >= 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 2.9, gaps  # per group, not per resource (the old server: 3 every 3 s)
    assert len({p["coap.token"] for p in mcast}) == 3


def test_link_local_registrant_is_served_traditionally_and_critical_options_get_4_02(lan, tools):
    """Items 1 and 14 on the wire: a registration from fe80::99 gets a traditional observation
    (2.05 with Observe, then a unicast notification), never an informative response; a global
    observer still gets the group observation. A CON request with an unknown critical option gets
    4.02 Bad Option, also when it is an Observe registration (item 14); a registration asking for
    64-byte blocks gets a traditional observation (item 12)."""
    client = lan.clients[0]
    res = client.run(["ip", "-6", "addr", "add", "fe80::99/64", "dev", client.ifname, "nodad"], timeout=10)
    assert res.returncode == 0, res.stderr
    srv = server(lan.server, f"[{lan.server.addr6}]", GROUP6)
    base = f"coap://[{lan.server.addr6}]"
    try:
        o = observer(lan.clients[1], f"{base}/r", count=2, name="global")
        o.wait_event(lambda e: e.get("via") == "last_notif")
        raw = client.popen(
            [sys.executable, SCENARIO, "linklocal", lan.server.addr6, client.ifname, "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        srv.wait_count(lambda e: e.get("event") == "registration", 2)
        put(lan.clients[2], f"{base}/r", ["changed"])
        out, err = raw.communicate(timeout=30)
        assert raw.returncode == 0, err
        o.collect(10)
    finally:
        events = srv.stop()
    result = json.loads(out.strip().splitlines()[-1])
    got = result["got"]
    assert got and all(m["code"] != "5.03" for m in got), got
    assert got[0]["code"] == "2.05" and got[0]["observe"] is not None and got[0]["payload"] == "1234"
    assert any(m["payload"] == "changed" and m["observe"] is not None for m in got), got
    assert all(m["src"] == lan.server.addr6 for m in got)
    kinds = {
        e["remote"].split("]")[0].strip("[").split("%")[0]: e["kind"]
        for e in events
        if e.get("event") == "registration"
    }
    assert kinds["fe80::99"] == "traditional"
    assert kinds[lan.clients[1].addr6] == "group"
    assert [n["payload"] for n in notifications(o)] == ["1234", "changed"]
    assert result["bad_option"][0] == "4.02" and "65001" in result["bad_option"][1]
    assert result["bad_option_registration"][0] == "4.02"
    # Item 12: a registration with 64-byte Block2 gets a traditional observation (2.05, Observe),
    # never the informative response that would not come in such blocks.
    assert result["block2_registration"][:2] == ["2.05", True]


@pytest.mark.parametrize(
    ("where", "group"),
    [
        ("--bind", "[fe80::1]"),
        ("--group", "[ff02::fd]:61616"),
        ("--group", "[ff05::fd]"),
        ("--group", "224.0.1.187"),
    ],
)
def test_server_refuses_to_start_with_unusable_address(where, group):
    """Item 1: a link-local SRV_ADDR, or All CoAP Nodes as GRP_ADDR: one line, exit code 64, before
    anything is bound (no network needed)."""
    bind, grp = ("[fe80::1]", "[ff35::23]") if where == "--bind" else ("[2001:db8::1]", group)
    if group == "224.0.1.187":
        bind = "192.0.2.1"
    res = subprocess.run(
        [*PY, "server", "--bind", bind, "--group", grp, "--resource", "r"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 64, res.stderr  # EX_USAGE, as every usage error of the CLI
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcobserve: ")
    assert ("link-local" in lines[0]) or ("All CoAP Nodes" in lines[0])


def test_client_registers_again_after_group_silence(onehost):
    """Items 10 and 15: a server that goes silent (restart, lost cancellation) is noticed after the
    latest Max-Age plus the margin, and the Observer registers again by itself."""
    res = onehost.run([sys.executable, SCENARIO, "silence", onehost.addr6, onehost.ifname], timeout=40)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["silences"] == 2
    assert [p for p, _ in result["payloads"]] == ["v1", "v2", "v3"]
    assert all(1.3 <= g <= 4.0 for g in result["gaps"]), result["gaps"]  # Max-Age 1 + margin 0.5


def test_observer_cli_refuses_link_local_server():
    """Item 1, client side: never register at a link-local server address (draft §5.1)."""
    res = subprocess.run(
        [*PY, "observe", "coap://[fe80::1%25lo]/r", "--count", "1", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode != 0
    assert "link-local" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("secured", [False, True])
def test_confirmations_get_no_response_on_the_wire(lan, tools, tmp_path, secured):
    """Item 6: the Feedback-Divider 0 re-registrations (confirmations) reach the server and are
    counted, and nothing goes back to the confirming client, also when the confirmation is protected
    with OSCORE (where No-Response is encrypted). Seen with tshark on the client's interface."""
    from mcobserve.cli.credentials import write_credentials

    extra: list[str] = ["--confirmation-wait", "3"]
    creds = tmp_path / "creds"
    if secured:
        write_credentials(creds, f"[{lan.server.addr6}]", 3)
        extra += ["--credentials", str(creds / "server.json"), "--group-oscore", "self-managed"]
    srv = server(lan.server, f"[{lan.server.addr6}]", GROUP6, *extra)
    base = f"coap://[{lan.server.addr6}]"
    client = lan.clients[0]
    try:
        with Capture(client, client.ifname, "udp", tmp_path / "conf.pcapng") as cap:
            obs = []
            for i, host in enumerate(lan.clients[:2]):
                args = ["--leisure", "0.3"]
                if secured:
                    args += ["--credentials", str(creds / f"client-{i + 1}.json")]
                obs.append(observer(host, f"{base}/r", count=3, timeout=6, name=f"o{i}", extra=tuple(args)))
            for o in obs:
                o.wait_event(lambda e: e.get("via") == "last_notif")
            put_extra = ("--credentials", str(creds / "client-3.json")) if secured else ()
            put(lan.clients[2], f"{base}/r", ["counted"], 0.3, *put_extra)
            counted = srv.wait_event(lambda e: e.get("event") == "count", timeout=15)
            for o in obs:
                o.collect(10)
    finally:
        srv.stop()
    assert counted["R"] == 2 and counted["Q"] == 0  # both confirmations arrived and were counted
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    assert mcast
    t_notif = float(mcast[0]["frame.time_relative"])
    confirmations = [
        p
        for p in packets
        if p["ipv6.src"] == client.addr6 and p["ipv6.dst"] == lan.server.addr6 and p["coap.type"] == "1"
    ]
    assert confirmations, "the client sent no (NON) confirmation"
    answers = [
        p
        for p in packets
        if float(p["frame.time_relative"]) > t_notif
        and p["ipv6.src"] == lan.server.addr6
        and p["ipv6.dst"] == client.addr6
    ]
    assert answers == [], [(p["coap.type"], p["coap.code"]) for p in answers]


def test_observer_cancel_tells_the_server_and_rst_does_not_end_the_group(onehost, tools, tmp_path):
    """Item 13: Observer.cancel() ends the iteration and sends one NON GET Observe 1 with No-Response
    (COUNT goes down, nothing comes back); an RST to a multicast notification leaves the group
    observation running for the others."""
    with Capture(onehost, "lo", "udp", tmp_path / "cancel.pcapng") as cap:  # unicast to itself: lo
        res = onehost.run([sys.executable, SCENARIO, "cancel", onehost.addr6, onehost.ifname], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["count_before"] == 2 and result["count_after"] == 1
    assert result["deregistrations"] == 1
    assert result["cancelled_first"] == ["v0"]
    assert result["second"] == ["v0", "v1", "v2"] and result["still_running"]
    packets = cap.decode(ports=[5683, 61616])
    dereg = [p for p in packets if p["coap.opt.observe"] == "1" and p["coap.code"] == "1"]
    # NON, one per Observer.cancel() (the second one races the scenario's exit and the capture's end)
    assert 1 <= len(dereg) <= 2 and all(p["coap.type"] == "1" for p in dereg)
    answered = [
        p for p in packets if p["coap.token"] in {d["coap.token"] for d in dereg} and p["coap.code"] != "1"
    ]
    assert answered == []


def test_slow_reader_follows_the_shift_into_the_group(onehost):
    """Item 7: the informative response that shifts a traditional observer is never overwritten by
    the end of the traditional observation, however slowly the application reads."""
    res = onehost.run([sys.executable, SCENARIO, "slow", onehost.addr6, onehost.ifname], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["error"] == []
    assert result["slow"] == [["t0", "unicast"], ["t1", "unicast"], ["t1", "last_notif"], ["g1", "multicast"]]


#: Drops the first two 5.03 responses that reach the client (the retransmission after that passes).
DROP_FIRST_503 = """table inet mco_drop503 {
  chain in {
    type filter hook prerouting priority -300; policy accept;
    udp sport 5683 @th,72,8 0xa3 limit rate 1/minute burst 2 packets counter drop
  }
}
"""


def test_late_informative_response_is_revalidated(lan, tools, tmp_path):
    """Item 11: the first CON 5.03s are lost (nftables drops them at the client), the resource changes
    before the retransmission arrives; the client joins with the stale 'last_notif' and then gets the
    current representation within about one round trip (one GET), not at the next refresh."""
    client = lan.clients[0]
    client.nft(DROP_FIRST_503)
    srv = server(lan.server, f"[{lan.server.addr6}]", GROUP6)
    base = f"coap://[{lan.server.addr6}]"
    try:
        with Capture(client, client.ifname, "udp", tmp_path / "late.pcapng") as cap:
            o = observer(client, f"{base}/r", count=2, timeout=20)
            srv.wait_event(lambda e: e.get("event") == "group_observation_started")
            put(lan.clients[1], f"{base}/r", ["changed"])
            o.collect(20)
    finally:
        srv.stop()
    got = notifications(o)
    assert [(n["via"], n["payload"]) for n in got] == [("last_notif", "1234"), ("revalidated", "changed")]
    assert got[1]["time"] - got[0]["time"] < 1.0
    assert o.popen.returncode == 0
    packets = cap.decode(ports=[5683, 61616])
    informative = [p for p in packets if p["coap.code"] == "163"]
    assert len(informative) >= 3 and len({p["coap.mid"] for p in informative}) == 1  # retransmitted
    gets = [p for p in packets if p["coap.code"] == "1" and p["coap.opt.observe"] is None]
    assert len(gets) == 1  # exactly one re-validation GET


OFF = ("--min-interval", "0", "--run-for", "0.1")


def test_server_cli_warns_when_congestion_control_is_off():
    """Item 8: --min-interval 0 switches the per-group budget off, and says so."""
    res = subprocess.run(
        [*PY, "server", "--bind", "[2001:db8::1]", "--group", "[ff35::23]", "--resource", "r", *OFF],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "congestion control is off" in res.stderr and "3 seconds" in res.stderr


def test_self_managed_material_is_renewed_without_re_registration(lan, tools, tmp_path):
    """Items 2 and 3 on the wire: with a 15 s key lifetime the server renews the material by a
    protected multicast 5.03 (App. C) every few seconds; the observer goes on receiving under each new
    material without registering again, and the group observation is never cancelled."""
    from mcobserve.cli.credentials import write_credentials

    creds = tmp_path / "creds"
    write_credentials(creds, f"[{lan.server.addr6}]", 3)
    srv = server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--credentials",
        str(creds / "server.json"),
        "--group-oscore",
        "self-managed",
        "--key-lifetime",
        "15",
        "--no-counting",
    )
    base = f"coap://[{lan.server.addr6}]"
    client = lan.clients[0]
    try:
        with Capture(client, client.ifname, "udp", tmp_path / "renew.pcapng") as cap:
            o = observer(
                client,
                f"{base}/r",
                count=4,
                timeout=40,
                extra=("--credentials", str(creds / "client-1.json")),
            )
            o.wait_event(lambda e: e.get("via") == "last_notif")
            for i, wait in enumerate((6, 6, 6)):
                time.sleep(wait)
                put(
                    lan.clients[1], f"{base}/r", [f"k{i}"], 0.3, "--credentials", str(creds / "client-2.json")
                )
            o.collect(20)
    finally:
        events = srv.stop()
    got = notifications(o)
    assert [(n["via"], n["payload"]) for n in got] == [
        ("last_notif", "1234"),
        ("multicast", "k0"),
        ("multicast", "k1"),
        ("multicast", "k2"),
    ]
    assert o.popen.returncode == 0
    regs = [e for e in events if e.get("event") == "registration"]
    assert len(regs) == 1  # never registered again
    assert [e["reason"] for e in events if e.get("event") == "cancelled"] == ["shutdown"]
    packets = cap.decode(ports=[5683, 61616])
    mcast = [p for p in packets if p["ipv6.dst"] == "ff35:30:2001:db8::23"]
    renewals = [p for p in mcast if p["coap.opt.observe"] is None and p["coap.code"] == "68"]
    assert len(renewals) >= 2  # protected 5.03 (outer 2.04, no Observe) carrying the next material
