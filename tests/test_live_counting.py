"""Rough counting over real multicast (draft §8): dozens of observers on three hosts, half leave."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from .livekit import GROUP6, Proc, put, server

SCENARIO = str(Path(__file__).parent / "scenarios" / "many_observers.py")
PER_HOST = 10
WAIT = "2"


def start_observers(host, uri: str, n: int) -> Proc:
    p = host.popen(
        [sys.executable, SCENARIO, uri, str(n), "--interface", host.ifname, "--leisure", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Proc(f"observers@{host.name}", p).start()


def test_estimate_follows_observers_that_leave_and_loss(lan):
    base = f"coap://[{lan.server.addr6}]"
    srv = server(
        lan.server,
        f"[{lan.server.addr6}]",
        GROUP6,
        "--confirmations",
        "1000",
        "--dampener",
        "1",
        "--confirmation-wait",
        WAIT,
        "--count-every",
        "0",
    )
    groups = [start_observers(h, f"{base}/r", PER_HOST) for h in lan.clients]
    total = PER_HOST * len(groups)
    try:
        for g in groups:
            g.wait_count(lambda e: e.get("event") == "joined", PER_HOST, timeout=20)
        regs = srv.wait_count(lambda e: e.get("event") == "registration" and e["kind"] == "group", total)
        assert regs[-1]["count"] == total

        def round_after_put(value: str, k: int) -> dict:
            put(lan.clients[0], f"{base}/r", [value])
            return srv.wait_count(lambda e: e.get("event") == "count", k, timeout=15)[-1]

        # Q = 0 (M >= N): every active observer confirms; D = 1: the estimate is R.
        first = round_after_put("v1", 1)
        assert (first["Q"], first["R"], first["estimate"]) == (0, total, total)
        sent = srv.wait_count(lambda e: e.get("event") == "notification_sent", 1)
        assert sent[0]["feedback_divider"] == 0
        for g in groups:
            g.popen.send_signal(signal.SIGUSR1)
            g.wait_event(lambda e: e.get("event") == "stopped")
        second = round_after_put("v2", 2)
        assert (second["N"], second["R"], second["estimate"]) == (total, total // 2, total // 2)

        # 10 % of the confirmations are lost (nftables on the server's CoAP port).
        lan.server.set_loss(10, 5683)
        estimates = [round_after_put(f"l{i}", 3 + i)["estimate"] for i in range(5)]
        active = total // 2
        assert all(active // 2 <= e <= active for e in estimates), estimates  # R ~ Bin(15, 0.9)
        assert sum(estimates) / len(estimates) < active  # loss biases the estimate low (§8.3.3)
        assert sum(estimates) / len(estimates) >= 0.75 * active
    finally:
        lan.server.clear_nft()
        srv.stop()
        for g in groups:
            g.stop()
    confirmations = [e["confirmations"] for g in groups for e in g.seen if e.get("event") == "done"]
    assert len(confirmations) == 3
    # Observers that stayed confirmed every round; those that left only the first.
    for per_host in confirmations:
        assert per_host[: PER_HOST // 2] == [1] * (PER_HOST // 2)
        assert per_host[PER_HOST // 2 :] == [7] * (PER_HOST - PER_HOST // 2)
