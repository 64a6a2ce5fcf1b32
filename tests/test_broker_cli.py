"""Errors of ``mcobserve broker`` / ``topic``: one line ``mcobserve: ...``, documented exit codes."""

from __future__ import annotations

import subprocess

from .livekit import PY


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PY, *argv], capture_output=True, text=True, timeout=timeout)


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcobserve: "), res.stderr
    return lines[0]


def test_foreign_store_is_refused_with_exit_65(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    res = run("broker", "--bind", "[::1]:0", "--group", "[ff35::1]:61616", "--store", str(notes))
    assert res.returncode == 65
    assert "not an SQLite file" in one_line(res)
    assert notes.read_text() == "keep me\n"


def test_bad_group_and_prefix_are_usage_errors(tmp_path):
    store = str(tmp_path / "s.sqlite")
    res = run("broker", "--bind", "[::1]:0", "--group", "[2001:db8::1]:61616", "--store", store)
    assert res.returncode == 64 and "not a multicast" in one_line(res)
    res = run("broker", "--bind", "[::1]:0", "--group-prefix", "2001:db8::/96", "--store", store)
    assert res.returncode == 64 and "multicast prefix" in one_line(res)
    res = run("broker", "--bind", "[::1]:0", "--group-prefix", "ff35::/127", "--store", store)
    assert res.returncode == 64 and "at least 8 bits" in one_line(res)


def test_cluster_without_the_cluster_package_is_one_line(tmp_path):
    import importlib.util

    res = run(
        "broker",
        "--bind",
        "[::1]:0",
        "--group",
        "[ff35::1]:61616",
        "--store",
        str(tmp_path / "s.sqlite"),
        "--cluster",
        "nats://127.0.0.1:1",
        "--run-for",
        "0.1",
    )
    if importlib.util.find_spec("mcobserve.cluster") is None:
        assert res.returncode == 64 and "mcobserve.cluster" in one_line(res)
    else:  # the cluster package exists in this build: it must fail cleanly without a server
        assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("mcobserve: ")


def test_topic_against_nobody_times_out_cleanly():
    res = run("topic", "list", "coap://[::1]:9/ps", "--timeout", "1")
    assert res.returncode in (1, 2)
    one_line(res)
    res = run("topic", "create", "http://example.com", "x")
    assert res.returncode == 1 and "coap://" in one_line(res)
    res = run("topic", "create", "coap://[::1]:9", "x", "--initialize", "zz")
    assert res.returncode == 64 and "hexadecimal" in one_line(res)
