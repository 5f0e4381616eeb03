"""`gateway bench modbus` at toy size: it runs, prints one JSON object with every figure, leaves no process behind.

No timing is asserted and no target is judged: the machine is shared and the figures are for people to read.
What is asserted is what the run measured: points arrived, and requests were counted on the wire.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.modbus import bench_modbus, point_map

RUN_FIGURES = ("seconds", "points", "polls", "failed_polls", "requests", "points_per_s", "polls_per_s",
               "requests_per_s", "requests_per_poll", "cpu_s_per_1k_points", "cpu_percent_of_one_core",
               "simulator_cpu_percent_of_one_core", "good_points_percent", "rss_mb")


def test_bench_json_has_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(devices=2, points=10, seconds=1.0, rss_devices=2, rss_points=5, rss_seconds=1.0,
                              json=True)
    code = bench_modbus(args)
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON object, nothing else on stdout
    assert doc["bench"] == "modbus" and code == (0 if doc["ok"] else 1)
    assert doc["params"] | {"devices": 2, "points": 10, "seconds": 1.0, "rss_devices": 2, "rss_points": 5,
                            "rss_seconds": 1.0, "cold_start": True, "rss": True} == doc["params"]
    assert doc["params"]["point_types"] == {"uint16": 5, "int16": 2, "float32": 2, "coil": 1}
    for run in (doc, doc["one_read_per_point"]):
        for key in RUN_FIGURES:
            assert isinstance(run[key], int | float), (key, run[key])
        assert run["points"] > 0 and run["points_per_s"] > 0 and run["cpu_s_per_1k_points"] > 0
        assert run["good_points_percent"] == 100.0 and run["failed_polls"] == 0
    # counted by the simulated devices: 9 contiguous registers and a coil are two reads; spaced out, ten
    assert doc["requests_per_poll"] == 2.0 and doc["one_read_per_point"]["requests_per_poll"] == 10.0
    assert doc["derived"]["requests_per_poll_saved"] == {
        "value": 5.0, "from": "one_read_per_point.requests_per_poll / requests_per_poll"}
    assert {"gain_points_per_s", "gain_cpu_s_per_1k_points"} <= set(doc["derived"])
    assert 0 < doc["cold_start"]["spawn_to_first_poll_s"] <= doc["cold_start"]["spawn_to_first_sample_stored_s"]
    assert doc["daemon"]["rss_mb"] > 0 and doc["daemon"]["peak_rss_mb"] >= doc["daemon"]["rss_mb"]
    assert doc["targets"] == [] and doc["problems"] == []
    assert psutil.Process().children(recursive=True) == []


def test_bench_tables_without_the_process_figures(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(devices=1, points=3, seconds=0.3, cold_start=False, rss=False)
    assert bench_modbus(args) == 0
    out = capsys.readouterr().out
    for label in ("points/s", "requests per poll (counted by the devices)", "gateway CPU s per 1k points",
                  "simulator CPU", "gain (derived)", "failed polls"):
        assert label in out, f"{label!r} missing from:\n{out}"
    assert "cold start" not in out and "daemon RSS" not in out
    assert psutil.Process().children(recursive=True) == []


def test_bench_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_modbus(argparse.Namespace(devices=0, points=10, seconds=1.0)) == 2
    assert "must be positive" in capsys.readouterr().err


def test_point_mix() -> None:
    points = point_map(100)
    types = [p["type"] if p["table"] == "holding" else "coil" for p in points]
    assert types.count("coil") == 2 and types.count("uint16") > types.count("float32") > types.count("int32") > 0
    ends = [p["address"] for p in points if p["table"] == "holding"]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
