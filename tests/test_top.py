"""``mcobserve top``: server events folded into per-observation figures, shown as a table."""

from __future__ import annotations

import json
import subprocess
import time

from mcobserve.cli.top import TopState

from .livekit import PY

T0 = 1_800_000_000.0
GROUP = "[ff35:30:2001:db8::23]:61616"


def _events() -> list[dict]:
    ev = [
        {"event": "started", "time": T0, "server": "[fd00:db8::1]:5683", "group": GROUP},
        {"event": "registration", "time": T0 + 1, "resource": "/t", "kind": "group", "count": 1},
        {"event": "group_observation_started", "time": T0 + 1, "resource": "/t", "token": "c6dc",
         "group": GROUP, "server": "[fd00:db8::1]:5683", "shifted": 0},
        {"event": "registration", "time": T0 + 2, "resource": "/t", "kind": "group", "count": 2},
        {"event": "registration", "time": T0 + 2.5, "resource": "/t", "kind": "group", "count": 3},
    ]  # fmt: skip
    for i in range(10):  # one notification a second, 6 payload bytes each
        q = 0 if i == 0 else None
        ev.append({"event": "notification_sent", "time": T0 + 3 + i, "resource": "/t", "token": "c6dc",
                   "observe": i + 2, "how": "multicast", "size": 6, "feedback_divider": q})  # fmt: skip
    ev += [
        {"event": "registration", "time": T0 + 5, "resource": "/t", "kind": "confirmation", "count": 3},
        {"event": "count", "time": T0 + 8, "resource": "/t", "token": "c6dc", "estimate": 40.0, "Q": 0,
         "R": 3, "N": 40.0, "E": 3},
        {"event": "notification_sent", "time": T0 + 13, "resource": "/t", "token": "c6dc", "observe": 12,
         "how": "multicast", "size": 10, "feedback_divider": None},
        {"event": "cancelled", "time": T0 + 14, "resource": "/t", "token": "c6dc", "reason": "shutdown"},
        {"event": "stopped", "time": T0 + 14, "datagrams_sent": 12},
    ]  # fmt: skip
    return ev


def test_events_become_observers_rates_and_savings():
    state = TopState()
    for e in _events():
        state.feed_line(json.dumps(e))
    state.feed_line("not an event")
    (obs,) = state.observations.values()
    assert (obs.resource, obs.token, obs.group) == ("/t", "c6dc", GROUP)
    assert obs.observers == 40.0  # the counting round's estimate replaced the registrations' 3
    assert obs.notifications == 11 and obs.payload_bytes == 70
    # 10 notifications while 3 observers were known (2 saved each), then one with 40 (39 saved)
    assert obs.datagrams_saved == 10 * 2 + 39
    assert obs.bytes_saved == 10 * 2 * 6 + 39 * 10
    assert obs.rounds == 1 and obs.state == "cancelled (shutdown)"
    assert abs(obs.rate(T0 + 13) - 1.0) < 0.11  # 10 or 11 in the last 10 s
    assert state.registrations == 3 and state.confirmations == 1 and state.ignored == 1
    assert state.stopped and state.totals() == (11, 59, 510)


def test_notifications_before_the_observation_are_ignored_and_rates_decay():
    state = TopState()
    state.feed({"event": "notification_sent", "time": T0, "resource": "/x", "token": "01", "size": 3})
    assert state.observations == {}
    state.feed({"event": "group_observation_started", "time": T0, "resource": "/x", "token": "01"})
    state.feed({"event": "notification_sent", "time": T0 + 1, "resource": "/x", "token": "01", "size": 3})
    (obs,) = state.observations.values()
    assert obs.observers == 1.0 and obs.datagrams_saved == 0  # one observer: nothing saved
    assert obs.rate(T0 + 100) == 0.0


def test_top_reads_a_file_or_stdin_and_prints_the_table(tmp_path):
    lines = "\n".join(json.dumps(e) for e in _events()) + "\n"
    path = tmp_path / "events.jsonl"
    path.write_text(lines)
    for argv, stdin in (([*PY, "top", "--once", str(path)], None), ([*PY, "top"], lines)):
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        out = res.stdout
        assert "1 group observations, 11 multicast notifications, 59 datagrams and 510 payload bytes" in out
        row = next(line for line in out.splitlines() if "c6dc" in line)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[:5] == ["/t", "c6dc", GROUP, "40.0", "11"]
        assert cells[6:9] == ["59", "510", "1"] and cells[9] == "cancelled (shutdown)"


def test_text_output_gets_a_hint():
    res = subprocess.run([*PY, "top"], input="started server=x\n", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "is the server running with --json?" in res.stdout


def test_top_reads_a_servers_control_socket(lan, tmp_path):
    """server --control PATH: a reader that connects late gets a snapshot (the observation, its
    observers, the notifications so far), then the live events until the server stops."""
    from .livekit import observer, put, server

    sock = tmp_path / "ctl.sock"
    base = f"coap://[{lan.server.addr6}]"
    srv = server(lan.server, f"[{lan.server.addr6}]", "[ff35:30:2001:db8::23]:61616", "--control", str(sock))
    try:
        o1 = observer(lan.clients[0], f"{base}/r", count=4)
        o2 = observer(lan.clients[1], f"{base}/r", count=4, name="o2")
        o1.wait_event(lambda e: e.get("via") == "last_notif")
        o2.wait_event(lambda e: e.get("via") == "last_notif")
        put(lan.clients[2], f"{base}/r", ["a", "bb"])  # before top connects: in the snapshot
        assert sock.is_socket() and oct(sock.stat().st_mode & 0o777) == "0o600"
        top = subprocess.Popen([*PY, "top", "--socket", str(sock)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        put(lan.clients[2], f"{base}/r", ["ccc"])  # while top reads
        o1.collect(15)
        o2.collect(15)
    finally:
        events = srv.stop()
    out, _ = top.communicate(timeout=30)
    assert top.returncode == 0
    sent = [e for e in events if e.get("event") == "notification_sent"]
    assert len(sent) == 3
    assert "1 group observations, 3 multicast notifications, 3 datagrams and 6 payload bytes saved" in out
    row = next(line for line in out.splitlines() if "/r" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[3:5] == ["2.0", "3"] and cells[9] == "cancelled (shutdown)"
    assert not sock.exists()  # removed at exit
