"""`gateway bench commands --quick` runs end to end: every command is answered ok and written once, polling goes on.

No timing is asserted and no target is judged (a quick run prints none): the machine is shared and the figures are
for people to read.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.commands import bench_commands

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_bench_commands_quick_answers_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = bench_commands(argparse.Namespace(quick=True, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "commands" and code == 0 and doc["ok"] and doc["problems"] == [], doc["problems"]
    assert doc["params"] == {"quick": True, "devices": 10, "interval": 1.0, "commands": 20, "rate": 10.0,
                             "burst": 2.0, "window": 8, "before": 1.0, "broker_nodelay": True}
    trip, sustained = doc["round_trip"], doc["sustained"]
    assert trip["sent"] == trip["answered"] == trip["n"] == 20 and trip["statuses"] == {"ok": 20}
    assert 0 < trip["p50_ms"] <= trip["p99_ms"] <= trip["max_ms"]
    assert sustained["sent"] == sustained["answered"] == sustained["latency"]["n"] > 0
    assert sustained["statuses"] == {"ok": sustained["sent"]} and sustained["answered_per_s"] > 0
    assert doc["device_writes"] == {"served": 20 + sustained["sent"], "answered_ok": 20 + sustained["sent"]}
    polling = doc["polling"]
    assert set(polling) == {"before_per_device_per_s", "before_lowest_device_per_s", "round_trip_per_device_per_s",
                            "sustained_per_device_per_s", "sustained_lowest_device_per_s",
                            "configured_per_device_per_s"}
    assert polling["before_lowest_device_per_s"] > 0 and polling["sustained_lowest_device_per_s"] > 0
    assert set(doc["derived"]) == {"polling_sustained_vs_before"} and doc["targets"] == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_commands_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_commands(argparse.Namespace(quick=True, window=0)) == 2
    assert "must be positive" in capsys.readouterr().err
