"""The cluster benchmark (mcobserve.cluster.bench) in a tiny run: it measures, writes its files, and
every publication reaches both subscriber sites."""

from __future__ import annotations

import json

import pytest

from mcobserve.cluster.bench import BenchConfig, run
from mcobserve.cluster.natsrun import find_nats_server

from .conftest import unavailable


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_bench_cluster_tiny_run(tmp_path):
    if find_nats_server() is None:
        unavailable("nats-server is not installed (apt-get install nats-server)")
    cfg = BenchConfig.make(True, publications=15, load_seconds=1.0, concurrency=2, topics_per_site=1)
    r = run(tmp_path / "out", cfg, progress=lambda m: None)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["headline"] == r["headline"]
    assert "cross-site p50" in (tmp_path / "out" / "results.md").read_text()
    lat = r["latency"]
    assert lat["accepted"] == 15 and lat["delivered_at_both_sites"] == 15
    assert lat["datagrams_per_site"] == {2: 15, 3: 15}  # one datagram per publication per site
    assert 0 < lat["last_site_ms_p50"] <= lat["last_site_ms_p99"] < 5000
    for setup in ("cluster_3_nodes", "single_node"):
        assert r[setup]["accepted"] > 0 and r[setup]["publications_per_s"] > 0
    assert r["topic_spread"]["topics"] == 4


def test_bench_config_refuses_bad_sizes():
    with pytest.raises(ValueError):
        BenchConfig.make(True, publications=3)
    with pytest.raises(ValueError):
        BenchConfig.make(False, load_seconds=0)
