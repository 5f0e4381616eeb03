"""`gateway bench bus` at toy size: it runs, leaves no process (socat, simulator) behind, prints every table.

No timing is asserted: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse

import psutil
import pytest

from gateway.bench_bus import _wire_figures, bench_bus, dead_units, percentile


def test_bench_bus_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(devices=3, seconds=1.5, writes=5, tcp_devices=3, timeout=0.2)
    assert bench_bus(args) == 0
    out = capsys.readouterr().out
    for label in ("3 units on one simulated RS-485 line at 9600 baud", "mean cycle ms", "all healthy", "1 dead",
                  "1 dead, breaker off", "dead bus %", "came back online after", "p99 ms",
                  "WRITE urgency (as shipped), with read-back", "POLL urgency (baseline), no read-back",
                  "3 devices x 20 points", "points/s", "failed polls"):
        assert label in out, f"{label!r} missing from:\n{out}"
    assert "3 dead" not in out  # three dead units of three would leave nobody to measure
    assert "5/5" in out  # every write went through, in every configuration
    assert psutil.Process().children(recursive=True) == []


def test_bench_bus_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_bus(argparse.Namespace(devices=1)) == 2
    assert bench_bus(argparse.Namespace(seconds=0)) == 2
    assert bench_bus(argparse.Namespace(baud=12)) == 2
    assert "bench:" in capsys.readouterr().err


def test_wire_accounting() -> None:
    # unit 1 healthy (polls at 0.0, 1.0, 2.0, with a coil read between), unit 2 dead (asked at 0.5 and 1.5)
    log = [(0.0, 1, 3), (0.1, 1, 1), (0.5, 2, 3), (1.0, 1, 3), (1.1, 1, 1), (1.5, 2, 3), (2.0, 1, 3), (2.1, 1, 1)]
    cycles, dead_requests, dead_bus = _wire_figures(log, 0.0, 2.5, {1}, {2})
    assert cycles == [1.0, 1.0]
    assert dead_requests == 2 and dead_bus == pytest.approx(1.0)  # 0.5 -> 1.0 and 1.5 -> 2.0
    assert dead_units(10, 1) == {5} and len(dead_units(10, 3)) == 3 and dead_units(10, 0) == set()
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert percentile([], 0.5) != percentile([], 0.5)  # nan
