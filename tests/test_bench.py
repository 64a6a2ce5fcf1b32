"""The benchmark (``bench/``, ``mcobserve bench``): a tiny real run, plus its pure helpers."""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import clients, harness, report  # noqa: E402
from mcobserve.cli import bench as cli  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_tiny_run_counts_datagrams_and_deliveries(tmp_path):
    cfg = harness.BenchConfig(observers=[1, 5], updates=3, modes=["group", "traditional-non"])
    result = harness.run_bench(cfg)
    assert [(c.mode, c.n) for c in result.cases] == [
        ("group", 1),
        ("traditional-non", 1),
        ("group", 5),
        ("traditional-non", 5),
    ]
    for case in result.cases:
        assert not case.errors, case.errors
        assert len(case.updates) == 3
        reg = case.registration
        assert (reg.done, reg.failed, reg.server_observers) == (case.n, 0, case.n)
        expected = 1 if case.mode == "group" else case.n
        for u in case.updates:
            assert u.ok
            assert u.datagrams == expected, (case.mode, case.n, u)
            assert u.bytes >= 10 * expected
            assert u.received == case.n  # every observer got every update
            assert u.cpu_ms > 0
            assert u.latency_kernel_ms is not None and 0 < u.latency_kernel_ms < 1000
        if case.mode == "group":
            # N empty ACKs + N CON 5.03 informative responses, each ACKed by its client
            assert reg.server_sent >= 2 * case.n and reg.server_received >= 2 * case.n
    paths = report.write(result, tmp_path)
    assert paths["plot.png"].read_bytes().startswith(PNG)
    table = paths["results.md"].read_text()
    assert "| group | 5 |" in table and "| traditional-non | 5 |" in table
    data = json.loads(paths["results.json"].read_text())
    assert len(data["summary"]) == 4
    assert "Python" in paths["machine.md"].read_text()
    line = report.headline(result)
    assert line is not None and line.startswith("cpu ratio traditional-non/group at N=5: ")


def test_cli_options_map_to_a_config():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.add_parser(sub)
    args = parser.parse_args(["bench", "--quick", "--modes", "group,traditional-con", "--no-pin"])
    cfg = cli._config(args, harness)
    assert cfg.observers == list(harness.QUICK_OBSERVERS) and cfg.updates == harness.QUICK_UPDATES
    assert cfg.modes == ["group", "traditional-con"] and not cfg.pin
    args = parser.parse_args(["bench", "--observers", "2,3", "--updates", "4"])
    cfg = cli._config(args, harness)
    assert (cfg.observers, cfg.updates, cfg.modes) == ([2, 3], 4, list(harness.MODES))
    with pytest.raises(ValueError):
        cli._config(parser.parse_args(["bench", "--modes", "multicast"]), harness)
    with pytest.raises(ValueError):
        cli._config(parser.parse_args(["bench", "--observers", "0"]), harness)


def test_client_wire_helpers():
    from aiocoap import CONTENT, NON, Message

    m = Message(code=CONTENT, payload=b"00000042", observe=3)
    m.mtype, m.mid, m.token = NON, 7, b"\x01\x02"
    assert clients.payload_seq(m.encode()) == 42
    assert clients.payload_seq(b"\x50\x45\x00\x07") is None
    assert clients.empty_ack(bytes((0x44, 0x45, 0x12, 0x34))) == b"\x60\x00\x12\x34"
    req = Message.decode(clients.registration(b"\x00\x00\x00\x09", 99, "r"))
    assert (req.opt.observe, req.opt.uri_path, req.token, req.mid) == (0, ("r",), b"\x00\x00\x00\x09", 99)
    ts = struct.pack("@qq", 1_700_000_000, 500_000_000)
    assert clients.kernel_time([(socket.SOL_SOCKET, clients.SO_TIMESTAMPNS, ts)]) == 1_700_000_000.5
    assert clients.kernel_time([]) is None
