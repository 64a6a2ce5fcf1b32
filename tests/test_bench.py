"""The benchmark (``mcobserve.bench``, ``mcobserve bench``): a tiny real run, plus its pure helpers."""

from __future__ import annotations

import argparse
import json
import socket
import struct
from pathlib import Path

import pytest

from mcobserve.bench import clients, harness, report, secured
from mcobserve.bench.sections import observe as cli
from mcobserve.cli import bench as bench_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_tiny_run_counts_datagrams_and_deliveries(tmp_path):
    cfg = harness.BenchConfig(
        observers=[1, 5], updates=3, modes=["group", "traditional-non"], registration_runs=3, repeat_below=5
    )
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
        if case.n == 1:  # below repeat_below: three runs, the median one reported
            assert len(reg.runs) == 3 and reg.seconds == sorted(reg.runs)[1]
        else:
            assert reg.runs == ()
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


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_tiny_secured_run(tmp_path):
    """group-oscore: one protected multicast datagram per update; traditional-oscore(-con): N."""
    n = 3
    modes = ["group-oscore", "traditional-oscore", "traditional-oscore-con"]
    cfg = harness.BenchConfig(
        observers=[n], updates=3, modes=modes, credentials_parent=str(tmp_path), registration_runs=1
    )
    result = harness.run_bench(cfg)
    assert [(c.mode, c.n) for c in result.cases] == [(m, n) for m in modes]
    for case in result.cases:
        assert not case.errors, case.errors
        assert len(case.updates) == 3
        reg = case.registration
        assert (reg.done, reg.failed, reg.server_observers) == (n, 0, n)
        expected = 1 if case.mode == "group-oscore" else n
        acks = n if case.mode == "traditional-oscore-con" else 0
        for u in case.updates:
            assert u.ok and (u.datagrams, u.acks) == (expected, acks), (case.mode, u)
            assert u.received == n  # every observer got (and, protected, accepted) every update
            # protected: more than the plain 18 B (group) and 20 B per observer (traditional)
            assert u.bytes > (60 if case.mode == "group-oscore" else 25 * n), (case.mode, u)
        assert case.burst_cpu_ms
    assert list(tmp_path.iterdir()) == []  # the OSCORE folder went with the case
    paths = report.write(result, tmp_path / "out")
    table = paths["results.md"].read_text()
    assert all(f"| {m} | 3 |" in table for m in modes)
    assert "traditional-oscore/group-oscore >= 100x" in table
    line = report.headline(result)
    assert line is not None and line.startswith("cpu ratio traditional-oscore/group-oscore at N=3: ")


def test_secured_credentials_and_client_context(tmp_path):
    """Same files as ``mcobserve credentials`` (minus the group); a client protects, aiocoap's server
    context unprotects and answers, the client unprotects the answer."""
    from aiocoap import CONTENT, GET, Message
    from aiocoap import oscore as aiocoap_oscore

    from mcobserve.cli.credentials import write_credentials

    write_credentials(tmp_path / "cli", "[fd00::1]", 2)
    secured.write_credentials(tmp_path / "bench", "[fd00::1]", 2)

    def files(d):
        return {str(f.relative_to(d)) for f in d.rglob("*") if f.is_file() and f.suffix != ".toml"}

    assert files(tmp_path / "cli") == files(tmp_path / "bench")
    settings = json.loads((tmp_path / "bench" / "client-2" / "settings.json").read_text())
    assert settings["sender-id_hex"] == "0002" and settings["recipient-id_hex"] == "00"
    with pytest.raises(ValueError):
        secured.write_credentials(tmp_path / "x", "[fd00::1]", secured.MAX_CLIENTS + 1)

    creds = secured.server_credentials(tmp_path / "bench")
    ctx = secured.MemoryContext.load(tmp_path / "bench", 2)
    data, request_id = clients.protected_registration(ctx, b"\x00\x00\x00\x01", 7, "r")
    outer = Message.decode(data)
    assert outer.opt.oscore is not None and outer.opt.observe == 0 and outer.payload
    server_ctx = creds.find_oscore(aiocoap_oscore.verify_start(outer))
    plain, server_request_id = server_ctx.unprotect(outer)
    assert (plain.code, plain.opt.uri_path, plain.opt.observe) == (GET, ("r",), 0)
    response, _ = server_ctx.protect(Message(code=CONTENT, payload=b"00000042", observe=0), server_request_id)
    response.token, response.mtype, response.mid = outer.token, outer.mtype, outer.mid
    answer, _ = ctx.unprotect(Message.decode(response.encode()), request_id)
    assert clients.digits(answer.payload) == 42
    assert clients.digits(b"0000004") is None and clients.digits(b"0000004x") is None


def test_cli_options_map_to_a_config():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench_cli.add_parser(sub)
    args = parser.parse_args(["bench", "--quick", "--modes", "group,traditional-con", "--no-pin"])
    cfg = cli._config(args)
    assert cfg.observers == list(harness.QUICK_OBSERVERS) and cfg.updates == harness.QUICK_UPDATES
    assert cfg.modes == ["group", "traditional-con"] and not cfg.pin
    args = parser.parse_args(["bench", "--observers", "2,3", "--updates", "4"])
    cfg = cli._config(args)
    assert (cfg.observers, cfg.updates, cfg.modes) == ([2, 3], 4, list(harness.DEFAULT_MODES))
    args = parser.parse_args(["bench", "--modes", "group-oscore,traditional-oscore"])
    assert cli._config(args).modes == ["group-oscore", "traditional-oscore"]
    with pytest.raises(ValueError):
        cli._config(parser.parse_args(["bench", "--modes", "multicast"]))
    with pytest.raises(ValueError):
        cli._config(parser.parse_args(["bench", "--observers", "0"]))


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


def test_output_goes_to_a_fresh_folder_and_never_over_existing_files(tmp_path):
    from mcobserve.cli.common import UsageError

    a = bench_cli.fresh_out(None, False, "observe")
    b = bench_cli.fresh_out(None, False, "observe")
    try:
        assert a != b and a.is_dir() and not any(a.iterdir())
        assert a.name.startswith("mcobserve-bench-observe-")
        assert Path(__file__).resolve().parents[1] not in a.resolve().parents  # never the checkout
    finally:
        a.rmdir()
        b.rmdir()
    assert bench_cli.fresh_out(str(tmp_path / "new" / "deep"), False, "observe").is_dir()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "results.md").write_text("committed")
    with pytest.raises(UsageError, match="--overwrite"):
        bench_cli.fresh_out(str(tmp_path / "used"), False, "observe")
    assert bench_cli.fresh_out(str(tmp_path / "used"), True, "observe") == tmp_path / "used"
    assert (tmp_path / "used" / "results.md").read_text() == "committed"


def test_a_section_is_a_module(tmp_path, monkeypatch):
    """Adding a module to mcobserve.bench.sections adds ``mcobserve bench NAME``."""
    from mcobserve.bench import sections
    from mcobserve.cli.main import main

    extra = tmp_path / "sections"
    extra.mkdir()
    (extra / "toy_section.py").write_text(
        'HELP = "a toy"\n'
        "def add_arguments(p):\n    p.add_argument('--size', type=int, default=1)\n"
        "def run(args, out):\n"
        "    (out / 'toy.txt').write_text(str(args.size * (3 if args.quick else 1)))\n"
        "    print('toy headline', args.size)\n    return 0\n"
    )
    monkeypatch.setattr(sections, "__path__", [*sections.__path__, str(extra)])
    assert "toy_section" in sections.names() and sections.names()[0] == "observe"
    out = tmp_path / "out"
    assert main(["bench", "toy-section", "--quick", "--size", "2", "--out", str(out)]) == 0
    assert (out / "toy.txt").read_text() == "6"


def test_the_benchmark_is_in_the_package():
    import importlib.resources

    files = {p.name for p in importlib.resources.files("mcobserve.bench").iterdir()}
    assert {"harness.py", "server_proc.py", "clients.py", "report.py", "secured.py", "sections"} <= files
    assert harness.PACKAGE_ROOT == Path(harness.__file__).resolve().parents[2]


def test_the_wheel_carries_the_benchmark_and_the_dissector():
    """What setuptools puts in the wheel (pyproject.toml): the bench packages and the Lua file."""
    import tomllib

    import setuptools

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(setuptools.find_packages(str(root), include=config["packages"]["find"]["include"]))
    assert {"mcobserve.bench", "mcobserve.bench.sections", "mcobserve.dissector"} <= found
    assert "bench" not in found  # the old top-level package is gone; bench/ holds data and docs
    assert config["package-data"]["mcobserve.dissector"] == ["*.lua"]
