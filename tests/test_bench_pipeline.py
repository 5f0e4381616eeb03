"""`gateway bench pipeline` at toy size: the real daemon, a real broker, points counted at the subscriber.

No timing is asserted and no target is judged (the toy size is no preset, so none is printed): what is
asserted is that one JSON object holds every figure under its stable name, that points polled in the
window arrived, and that the figures are the subscriber's own counts.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.pipeline import bench_pipeline
from gateway.bench.pipeline_baseline import summarise, telemetry_items

FIGURES = ("window_s", "first_delivery_s", "points", "points_per_s", "polled_points", "expected_points", "cpu_s",
           "rss_mb", "peak_rss_mb", "latency", "helpers_cpu_percent", "subscriber", "profile", "baseline")
SUBSCRIBER = ("telemetry_messages", "telemetry_batches", "other_messages", "polls", "duplicates", "malformed",
              "points", "points_polled_before", "points_polled_in_window", "points_polled_after",
              "points_arrived_in_window", "devices_in_window")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_pipeline_json_counts_what_the_subscriber_saw(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    args = argparse.Namespace(devices=2, points=10, interval=0.2, seconds=1.5, warmup=0.5, grace=1.0,
                              baseline=True, json=True)
    code = bench_pipeline(args)
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON object, nothing else on stdout
    assert doc["bench"] == "pipeline" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    assert doc["params"] | {"preset": "base", "devices": 2, "points": 10, "interval": 0.2, "seconds": 1.5,
                            "warmup": 0.5, "grace": 1.0, "synchronous": "full", "baseline": True,
                            "profile": None} == doc["params"]
    assert doc["targets"] == []  # targets hold at a preset's parameters only
    for run in (doc, doc["baseline"]):
        assert set(FIGURES) - {"profile", "baseline"} <= set(run) and set(SUBSCRIBER) <= set(run["subscriber"])
        seen = run["subscriber"]
        assert run["points"] == seen["points_arrived_in_window"] > 0
        assert run["polled_points"] == seen["points_polled_in_window"] > 0
        assert seen["points"] == seen["points_polled_before"] + run["polled_points"] + seen["points_polled_after"]
        assert seen["points"] == 10 * seen["polls"] and seen["malformed"] == 0 and seen["devices_in_window"] == 2
        assert run["expected_points"] == round(2 * 10 * run["window_s"] / 0.2)
        assert run["latency"]["n"] == run["polled_points"] // 10 and run["rss_mb"] > 0
    assert set(FIGURES) <= set(doc) and doc["profile"] is None
    store = doc["store"]  # every poll is in the history: at least what reached the broker in the window
    assert store["history_points"] >= doc["points"] and store["body_bytes_per_point"] > 0
    for name in ("cpu_s_per_1k_points", "delivered_percent", "baseline_cpu_s_per_1k_points",
                 "baseline_delivered_percent", "cpu_per_1k_vs_baseline"):
        assert {"value", "from"} <= set(doc["derived"][name]), name
    assert doc["derived"]["delivered_percent"]["value"] > 0
    assert doc["derived"]["delivered_percent"]["from"] == "100 * polled_points / expected_points"
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"bench left processes behind: {left}"


def test_points_are_counted_in_telemetry_and_in_v2_batches_only() -> None:
    def telemetry(n: int, ts: float = 100.0, **extra: object) -> dict[str, object]:
        return {"type": "telemetry", "id": f"t{n}-{ts}", "device": "d", "ts": ts,
                "points": {f"p{i}": {"v": i} for i in range(n)}, **extra}

    assert [i[1:3] for i in telemetry_items(telemetry(3))] == [(100.0, 3)]
    batch = {"type": "batch", "class": "telemetry", "items": [telemetry(2, 101.0), telemetry(4, 102.0, hist=True)]}
    assert [i[1:3] for i in telemetry_items(batch)] == [(101.0, 2), (102.0, 4)]
    assert [i[1:3] for i in telemetry_items(telemetry(1, 1_700_000_000_123))] == [(1_700_000_000.123, 1)]  # ms
    for other in ("status", "meta", "state", "event", "alarm", "summary"):
        assert telemetry_items({"type": other, "ts": 1.0, "points": {"a": 1}}) == []
    assert telemetry_items({"type": "batch", "class": "event", "items": [telemetry(5)]}) == []
    assert telemetry_items({"type": "telemetry", "points": {}}) == [(None, None, 0, "")]  # no ts: malformed
    records = [(10.5, 9.0, 3, "a"), (11.2, 10.0, 4, "a"), (12.4, 11.9, 5, "b"), (13.1, 12.0, 6, "b")]
    summary = summarise(records, 10.0, 12.0)
    assert summary | {"points_polled_before": 3, "points_polled_in_window": 9, "points_polled_after": 6,
                      "points_arrived_in_window": 7, "devices_in_window": 2} == summary
    assert summary["latency"]["n"] == 2


def test_bench_pipeline_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ({"devices": 0}, {"interval": 0.0}, {"seconds": -1.0}, {"preset": "fast"}, {"cpu": 4096}):
        assert bench_pipeline(argparse.Namespace(**bad)) == 2, bad
        assert capsys.readouterr().err.startswith("bench: "), bad
