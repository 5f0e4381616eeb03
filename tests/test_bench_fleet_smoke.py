"""`gateway bench fleet --quick` runs end to end: gateways through a broker outage, paced and not, nothing lost.

Two gateways and a 5 s outage (the quick size's 3 and 8 s, made smaller) keep the test short: still more than one
gateway to spread over, and an outage longer than the 3 s live window, so the replay has history to send.

Loss is behaviour, so it is asserted; speed is not (the machine is shared): the figures are only checked to be
there, under their stable names, and to make sense together.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.fleet import bench_fleet

RUN = {"gateways", "meters", "settings", "steady", "outage", "online_after_s", "replay_started_after_s",
       "platform_online_after_s", "drained_after_s", "drain_s", "drained_gateways", "peak", "recovery",
       "messages_per_second_after_return", "readings", "gateway_rss_mb", "unexpected_exits"}
SPREAD = {"first", "last", "median", "n"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_fleet_quick_drains_and_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = bench_fleet(argparse.Namespace(quick=True, gateways=2, outage=5.0, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "fleet" and doc["problems"] == [] and doc["ok"] and code == 0, doc["problems"]
    assert doc["params"] == {"quick": True, "gateways": 2, "meters": 2, "interval": 1.0, "steady": 2.0, "outage": 5.0,
                             "replay_rate": 100.0, "replay_delay": 2.0, "live_window": 3.0, "reconnect_max": 1.0,
                             "drain_limit": 60.0, "pacing": True, "baseline": True}
    assert set(doc["machine"]) == {"cpus", "memory_available_mb"}
    for name, settings in (("paced", (100.0, 2.0)), ("unpaced", (0.0, 0.0))):
        r = doc[name]
        assert set(r) == RUN and r["gateways"] == 2 and r["meters"] == 4
        assert (r["settings"]["replay_rate"], r["settings"]["replay_delay_s"]) == settings
        assert r["readings"]["lost"] == 0 and r["readings"]["stored"] > 0 and r["unexpected_exits"] == {}
        assert r["drained_gateways"] == 2 and r["drain_s"] is not None and r["drain_s"] >= 0
        assert r["outage"]["seconds"] >= 5 and r["outage"]["readings_stored"] > 0
        assert r["outage"]["outbox_rows_at_return"] > 0
        for spread in ("online_after_s", "replay_started_after_s", "drained_after_s"):
            assert set(r[spread]) == SPREAD and r[spread]["n"] == 2
        assert r["drained_after_s"]["last"] == pytest.approx(r["drain_s"])
        assert r["recovery"]["hist_readings"] > 0 and r["recovery"]["batch_messages"] > 0  # a 3 s live window
        assert r["peak"]["messages_per_s_1s"] > 0 and r["steady"]["messages_per_s"] > 0
        assert sum(r["messages_per_second_after_return"]) == r["recovery"]["messages"]
    assert set(doc["derived"]) == {"budget_messages_per_s", "paced_peak_of_budget", "peak_unpaced_to_paced",
                                   "drain_paced_to_unpaced"}
    budget = doc["derived"]["budget_messages_per_s"]["value"]
    assert budget == pytest.approx(2 * 100 + doc["paced"]["steady"]["messages_per_s"], rel=1e-4)
    [target] = doc["targets"]
    assert target["figure"] == "paced.peak.messages_per_s_1s" and target["value"] == budget and target["met"]
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_fleet_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_fleet(argparse.Namespace(quick=True, gateways=0)) == 2
    assert "must be positive" in capsys.readouterr().err
    assert bench_fleet(argparse.Namespace(quick=True, pacing=False, baseline=False)) == 2
    assert "nothing to run" in capsys.readouterr().err
