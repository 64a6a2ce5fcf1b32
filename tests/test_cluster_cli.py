"""``mcobserve broker --cluster``: bad cluster options are one line with an exit code, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

PY = [sys.executable, "-m", "mcobserve.cli.main"]


def broker(tmp_path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [*PY, "broker", "--bind", "[::1]:0", "--group", "[ff35::1]:61616", "--store",
            str(tmp_path / "s.sqlite"), "--run-for", "0.1", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--cluster", "http://h:4222"], "expected nats://HOST:PORT"),
        (["--cluster", "nats://127.0.0.1:4222", "--nats-creds", "/nonexistent.creds"], "--nats-creds"),
        (["--cluster", "nats://127.0.0.1:4222", "--nats-prefix", "a.b"], "--nats-prefix"),
        (["--cluster", "nats://127.0.0.1:1", "--nats-start-timeout", "0.5"], "cannot join the NATS cluster"),
    ],
)
def test_bad_cluster_options_are_one_line(tmp_path, extra, words):
    res = broker(tmp_path, *extra)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mcobserve: ") and words in last, res.stderr
    assert "Traceback" not in res.stderr


def test_nats_options_are_in_the_broker_help():
    res = subprocess.run([*PY, "broker", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for opt in ("--nats-creds", "--nats-tls-ca", "--nats-tls-cert", "--nats-prefix", "--nats-retry-after"):
        assert opt in res.stdout
