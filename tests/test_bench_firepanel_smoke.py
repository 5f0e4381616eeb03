"""`gateway bench firepanel` at toy size: it runs, every line arrives, no process is left behind.

No timing is asserted: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import re

import psutil
import pytest

from gateway.bench_firepanel import bench_firepanel


def test_bench_firepanel_prints_the_latency_table(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    args = argparse.Namespace(devices=2, points=5, lines=8, rate=20.0, warmup=0.3, format="notifier_en")
    assert bench_firepanel(args) == 0  # 0: every fire line reached the subscriber
    out = capsys.readouterr().out
    assert re.search(r"^serial line written -> MQTT message received\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), out
    assert "fire lines sent 8, alarms received 8\n" in out
    assert re.search(r"^target p99 < 50 ms: (met|NOT met)", out, re.M), out
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_firepanel_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_firepanel(argparse.Namespace(lines=0)) == 2
    assert "must be positive" in capsys.readouterr().err
