"""``mcobserve bench broker`` parses and is a registered section."""

import json
import subprocess

import pytest

from .livekit import PY


def test_bench_broker_help_parses():
    res = subprocess.run([*PY, "bench", "broker", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--subscribers" in res.stdout and "--topics" in res.stdout


def test_bench_broker_rejects_bad_sizes(tmp_path):
    res = subprocess.run(
        [*PY, "bench", "broker", "--out", str(tmp_path / "o"), "--subscribers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert res.stderr.startswith("mcobserve: ") and "--subscribers" in res.stderr


@pytest.mark.netns
def test_bench_broker_tiny_run(tmp_path):
    out = tmp_path / "o"
    argv = [*PY, "bench", "broker", "--out", str(out), "--subscribers", "2", "--modes", "group"]
    argv += ["--topics", "1,40", "--publications", "5"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("broker: cost at 40 topics / at 1: ")
    rows = json.loads((out / "broker.json").read_text())["rows"]
    assert [r["topics"] for r in rows] == [1, 40]
    fan = json.loads((out / "broker-fanout.json").read_text())
    assert fan[0]["mode"] == "group" and fan[0]["n"] == 2 and fan[0]["all_delivered"]
