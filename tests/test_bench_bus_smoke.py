"""`gateway bench bus` at toy size: it runs, leaves no process (socat, simulator) behind, reports every scenario.

No timing is asserted and no target is judged: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.bus import bench_bus
from gateway.bench.bus_line import dead_units, wire_figures


def test_bench_bus_json_has_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(devices=3, seconds=1.5, writes=5, tcp_devices=3, timeout=0.2, json=True)
    code = bench_bus(args)
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "bus" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    assert doc["params"] == {"devices": 3, "seconds": 1.5, "baud": 9600, "timeout": 0.2, "writes": 5,
                             "tcp_devices": 3, "tcp_points": 20}
    # three dead units of three would leave nobody to measure
    assert set(doc["cycles"]) == {"all_healthy", "dead_1", "dead_1_breaker_off"}
    for key, run in doc["cycles"].items():
        assert run["healthy"] + run["dead"] == 3 and run["cycles"] > 0 and run["mean_cycle_ms"] > 0, key
        assert run["requests_per_poll"] > 0 and run["bus_busy_percent"] > 0, key
        assert (run["dead_unit_requests"] > 0) == (run["dead"] > 0), key
    assert "recovered_after_s" in doc["cycles"]["dead_1"] and doc["cycles"]["dead_1"]["recovery_limit_s"] == 1.5
    assert set(doc["derived"]) >= {"cycle_ratio_dead_1", "cycle_ratio_dead_1_breaker_off",
                                   "write_p99_poll_over_write_no_read_back"}
    for urgency in ("write_urgency", "poll_urgency"):
        for mode in ("no_read_back", "with_read_back"):
            writes = doc["writes"][urgency][mode]
            assert writes["ok"] == writes["total"] == writes["n"] == 5, (urgency, mode, writes)
            assert 0 < writes["p50_ms"] <= writes["p99_ms"] <= writes["max_ms"]
    assert doc["tcp"]["devices"] == 3 and doc["tcp"]["points_per_s"] > 0 and doc["tcp"]["requests_per_poll"] == 2.0
    assert [t["figure"] for t in doc["targets"]] == ["cycle_ratio_dead_1", "writes.write_urgency.*.p99_ms"]
    assert all(isinstance(t["met"], bool) and isinstance(t["actual"], float) for t in doc["targets"])
    assert psutil.Process().children(recursive=True) == []


def test_bench_bus_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_bus(argparse.Namespace(devices=1)) == 2
    assert bench_bus(argparse.Namespace(seconds=0)) == 2
    assert bench_bus(argparse.Namespace(baud=12)) == 2
    assert "bench:" in capsys.readouterr().err


def test_wire_accounting() -> None:
    # unit 1 healthy (polls at 0.0, 1.0, 2.0, with a coil read after each), unit 2 dead (asked at 0.5 and 1.5)
    log = [(0.0, 1, 3), (0.1, 1, 1), (0.5, 2, 3), (1.0, 1, 3), (1.1, 1, 1), (1.5, 2, 3), (2.0, 1, 3), (2.1, 1, 1)]
    wire = wire_figures(log, 0.0, 2.5, {1}, {2})
    assert wire.cycles == [1.0, 1.0] and wire.healthy_polls == 3 and wire.healthy_requests == 6
    assert wire.dead_requests == 2 and wire.dead_bus_seconds == pytest.approx(1.0)  # 0.5 -> 1.0 and 1.5 -> 2.0
    assert dead_units(10, 1) == {5} and len(dead_units(10, 3)) == 3 and dead_units(10, 0) == set()
