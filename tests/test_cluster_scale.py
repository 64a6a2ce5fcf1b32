"""The cost model of docs/scale.md: its simulation agrees with the closed forms it summarises."""

from __future__ import annotations

import math

from mcobserve.cluster.scale import Scenario, main, simulate


def test_small_scenario_matches_closed_forms():
    sc = Scenario(topics=200, sites=10, subscribers=5000, zipf=1.0, replicas=3)
    r = simulate(sc, seed=7)
    assert r["nats_messages_per_publication"] == 1 + 2 + 1 + 2 * 10
    # never more datagrams on the air than sites, nor than subscribers
    unicast = r["rfc7641_notifications_per_publication_uniform"]
    assert r["air_datagrams_per_publication_uniform"] <= min(10, unicast)
    assert math.isclose(r["rfc7641_notifications_per_publication_uniform"], 5000 / 200)
    # the drawn site occupancy is consistent with S (1 - (1 - 1/S)^n)
    assert abs(r["occupancy_check"] - 1) < 0.05
    assert r["air_saving_by_popularity"] > 1


def test_one_site_means_one_datagram_per_publication_with_subscribers():
    r = simulate(Scenario(topics=50, sites=1, subscribers=10_000, zipf=0.0), seed=1)
    assert r["topics_with_subscribers"] == 50
    assert r["air_datagrams_per_publication_uniform"] == 1.0


def test_cli_prints_json_and_refuses_bad_sizes(capsys):
    assert main(["--topics", "100", "--sites", "5", "--subscribers", "1000"]) == 0
    assert '"nats_messages_per_publication": 14' in capsys.readouterr().out
    assert main(["--topics", "0"]) == 64
