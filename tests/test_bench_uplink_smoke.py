"""`gateway bench uplink` runs end to end on a small backlog and reports every run; no timing is asserted."""

from __future__ import annotations

import argparse
import json

import psutil
import pytest
from conftest import MOSQUITTO

from gateway.bench.uplink import bench_uplink


@pytest.mark.slow
def test_bench_uplink_json_has_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = bench_uplink(argparse.Namespace(events=2000, json=True))
    doc = json.loads(capsys.readouterr().out)
    # 0 means: every message arrived, in per-device order, and every alarm too (the bench has no targets)
    assert code == 0 and doc["ok"] and doc["problems"] == [] and doc["targets"] == [], doc["problems"]
    assert doc["params"] | {"events": 2000, "batches": [100, 500, 2000], "synchronous": "full", "naive": True,
                            "points_per_message": 15} == doc["params"]
    assert [r["batch"] for r in doc["replays"]] == [100, 500, 2000]
    for run in [*doc["replays"], doc["naive"]]:
        assert run["arrived"] == run["expected"] == 2000 and run["order_breaks"] == 0 and not run["timed_out"]
        assert run["replay_s"] > 0 and run["messages_per_s"] > 0
    for run in doc["replays"]:
        assert run["alarms_sent"] > 0 and run["alarm_latency"]["n"] == run["alarms_sent"], run
        # the alarm task samples its timer once per wake: every alarm but the last (cancelled asleep) has a sample
        assert (run["loop_lag"] or {"n": 0})["n"] == run["alarms_sent"] - 1, run
    assert set(doc["derived"]) == {f"replay_vs_naive_batch_{b}" for b in (100, 500, 2000)}
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"bench left processes behind: {left} (broker {MOSQUITTO})"
