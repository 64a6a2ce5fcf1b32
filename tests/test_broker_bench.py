"""``mcobserve bench-broker`` runs end to end (tiny sizes; the real run is a benchmark, not a test)."""

from __future__ import annotations

import json
import subprocess

import pytest

from .livekit import PY


@pytest.mark.netns
def test_bench_broker_small_run(tmp_path):
    argv = [*PY, "bench-broker", "--topics", "1,40", "--publications", "5", "--per-topic-groups"]
    res = subprocess.run([*argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "broker.json").read_text())
    assert [r["topics"] for r in data["rows"]] == [1, 40]
    assert [r["observations"] for r in data["rows"]] == [1, 40]  # a live group observation per topic
    assert all(r["datagrams_per_publication"] == 1.0 for r in data["rows"])  # one datagram per publication
    assert all(r["cpu_us_p50"] > 0 and r["rss_kib_per_topic"] >= 0 for r in data["rows"])
    assert "| 40 | 40 |" in (tmp_path / "broker.md").read_text()


@pytest.mark.netns
def test_bench_broker_one_group_counts_only_the_topics_own_notifications(tmp_path):
    """With one group for all topics, other topics' Max-Age refreshes share the server's counter and
    the group's §4.4 budget (one per 3 s): the section measures the publication, not those."""
    argv = [*PY, "bench", "broker", "--subscribers", "1", "--modes", "group", "--topics", "1,40",
            "--publications", "5"]
    res = subprocess.run([*argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "broker.json").read_text())
    assert [r["observations"] for r in data["rows"]] == [1, 40]
    assert all(r["datagrams_per_publication"] == 1.0 for r in data["rows"])
    # CPU of one publication, not a busy wait for the group's next congestion-control token (3 s)
    assert all(r["cpu_us_p50"] < 500_000 for r in data["rows"])


def test_bench_broker_rejects_bad_sizes():
    res = subprocess.run([*PY, "bench-broker", "--topics", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 64 and res.stderr.startswith("mcobserve: ")
