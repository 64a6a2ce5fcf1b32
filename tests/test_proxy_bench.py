"""The ``proxy`` benchmark section runs end to end on a tiny case (bench/proxy.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import proxy as proxy_bench


def test_cpu_seconds_of_this_process_grows():
    import os

    before = proxy_bench.cpu_seconds(os.getpid())
    x = 0
    for i in range(3_000_000):
        x += i
    assert proxy_bench.cpu_seconds(os.getpid()) > before


def test_proxy_section_small_case(onehost, tmp_path):
    """5 clients behind the proxy: every change reaches all, one multicast datagram per change at the
    server; directly: one unicast notification per client per change."""
    row = proxy_bench._case(onehost, "proxy", 5, 3, 0.05)
    assert row["registered"] == 5 and row["complete_updates"] == 3, row
    assert row["server_datagrams_per_change"] == 1.0
    assert row["client_notifications_per_change"] == 5.0
    direct = proxy_bench._case(onehost, "direct", 5, 3, 0.05)
    assert direct["registered"] == 5, direct  # the raw clients answer the server's Echo challenge
    assert direct["complete_updates"] == 3 and direct["server_datagrams_per_change"] == 5.0, direct
    text = proxy_bench.report([row, direct])
    assert "| 5 | proxy |" in text and "N=5:" in text
