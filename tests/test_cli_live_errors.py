"""User errors that need a network, in a lab: one line each, what to do, the documented exit code;
and the same exit code 3 whenever the server ends the observation."""

from __future__ import annotations

import subprocess

import pytest

from .livekit import PY, server


def _observe(host, *args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return host.run([*PY, "observe", *args], timeout=timeout)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcobserve: "), res.stderr
    assert "Traceback" not in res.stderr and "WARNING" not in res.stderr
    return lines[0]


@pytest.fixture
def creds(tmp_path):
    res = subprocess.run(
        [*PY, "credentials", str(tmp_path / "c"), "--server", "[fd00:db8::1]", "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return tmp_path / "c"


def test_secured_server_errors_say_what_to_give(lan, creds):
    srv = server(
        lan.server, "[fd00:db8::1]", "[ff35:30:2001:db8::23]:61616",
        "--credentials", str(creds / "server.json"), "--group-oscore", str(creds / "group.toml"),
    )  # fmt: skip
    plain = server(lan.server, "[fd00:db8::1]:5690", "[ff35:30:2001:db8::24]:61616")
    try:
        c = lan.clients[0]
        res = _observe(c, "coap://[fd00:db8::1]/r", "--timeout", "10")
        assert res.returncode == 1 and "--credentials" in _one_line(res) and "4.01" in res.stderr
        one = str(creds / "client-1.json")
        res = _observe(c, "coap://[fd00:db8::1]/r", "--timeout", "10", "--credentials", one)
        line = _one_line(res)
        assert res.returncode == 1 and "--group-oscore" in line and "malformed" not in line
        res = _observe(c, "coap://[fd00:db8::1]:5690/nothere", "--timeout", "10")
        assert res.returncode == 1 and "no such resource" in _one_line(res)
        other = creds / "client-2-plain.json"
        other.write_text((creds / "client-2.json").read_text().replace("[fd00:db8::1]", "[fd00:db8::1]:5690"))
        res = _observe(c, "coap://[fd00:db8::1]:5690/r", "--timeout", "10", "--credentials", str(other))
        assert res.returncode == 1 and "without OSCORE" in _one_line(res)
        ok = _observe(
            c, "coap://[fd00:db8::1]/r", "--count", "1", "--timeout", "10",
            "--credentials", str(creds / "client-1.json"), "--group-oscore", str(creds / "group-client.toml"),
        )  # fmt: skip
        assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    finally:
        srv.stop()
        plain.stop()


@pytest.mark.parametrize("count", [None, 5])
def test_server_ending_the_observation_exits_3_with_or_without_count(lan, count):
    srv = server(lan.server, "[fd00:db8::1]", "[ff35:30:2001:db8::23]:61616", "--run-for", "3")
    try:
        extra = [] if count is None else ["--count", str(count)]
        res = _observe(lan.clients[0], "coap://[fd00:db8::1]/r", "--timeout", "20", *extra)
    finally:
        srv.stop()
    assert res.returncode == 3, res
    assert res.stdout.startswith("2.05 observe=")  # last_notif arrived first
    of = "" if count is None else f" of {count}"
    want = f"mcobserve: the server cancelled the group observation after 1{of} notifications"
    assert _one_line(res) == want
