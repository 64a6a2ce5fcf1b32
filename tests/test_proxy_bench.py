"""The ``proxy`` benchmark section (``mcobserve bench proxy``) runs end to end on a tiny case."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from mcobserve.bench import sections
from mcobserve.bench.sections import proxy as proxy_bench
from mcobserve.cli.common import UsageError


def test_cpu_seconds_of_this_process_grows():
    before = proxy_bench.cpu_seconds(os.getpid())
    x = 0
    for i in range(3_000_000):
        x += i
    assert proxy_bench.cpu_seconds(os.getpid()) - before > 0.01


def test_a_chatty_server_never_blocks_on_its_stdout_pipe():
    """The server writes one JSON event per registration; the section reads them only at the start and
    the end. At N = 1000 a full 64 KiB pipe stopped the server (464 registrations, no notification)."""
    import subprocess
    import sys
    import time

    code = (
        "import json,sys\n"
        "print(json.dumps({'event': 'started'}), flush=True)\n"
        "for i in range(5000): print(json.dumps({'event': 'registration', 'n': i, 'pad': 'x' * 100}))\n"
        "print(json.dumps({'event': 'stopped'}), flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proxy_bench._json_lines(proc, lambda e: e.get("event") == "started", 10)["event"] == "started"
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # nobody asks for a line meanwhile, as while the section measures
        assert proc.poll() == 0  # it wrote 600 KB without blocking
        assert proxy_bench._json_lines(proc, lambda e: e.get("event") == "stopped", 10)["event"] == "stopped"
    finally:
        proc.kill()
        proc.wait()


def test_the_section_is_registered():
    assert "proxy" in sections.names() and sections.load("proxy") is proxy_bench


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_proxy_section_small_case(tmp_path, capsys):
    """5 clients behind the proxy: every change reaches all, one multicast datagram per change at the
    server; directly: one unicast notification per client per change; files, ratio and headline."""
    args = argparse.Namespace(quick=True, observers="5", updates=3, gap=0.05)
    assert proxy_bench.run(args, tmp_path) == 0
    rows = json.loads((tmp_path / "proxy.json").read_text())
    by = {r["mode"]: r for r in rows}
    row, direct = by["proxy"], by["direct"]
    assert row["registered"] == 5 and row["complete_updates"] == 3, row
    assert row["server_datagrams_per_change"] == 1.0
    assert row["client_notifications_per_change"] == 5.0
    assert row["proxy_cpu_ms_per_change"] > 0 and direct["server_cpu_ms_per_change"] > 0
    assert direct["registered"] == 5, direct  # the raw clients answer the server's Echo challenge
    assert direct["complete_updates"] == 3 and direct["server_datagrams_per_change"] == 5.0, direct
    text = (tmp_path / "proxy.md").read_text()
    assert "| 5 | proxy |" in text and "N=5: proxy per-client forwarding" in text
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("proxy per-client forwarding / aiocoap per-observer notification at N=5: ")
    assert proxy_bench.ratios(rows)[5] is not None


def test_bad_sizes_are_usage_errors(tmp_path):
    for observers, updates in (("0", 3), ("x", 3), ("5", 0)):
        with pytest.raises(UsageError):
            proxy_bench.run(
                argparse.Namespace(quick=True, observers=observers, updates=updates, gap=0.05), tmp_path
            )
