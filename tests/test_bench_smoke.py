"""`gateway bench modbus` at toy size: it runs, leaves no process behind and prints every figure.

No timing is asserted: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import re

import psutil
import pytest

from gateway.bench import bench_modbus, point_map


def test_bench_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(devices=2, points=10, seconds=1.0, rss_devices=2, rss_points=5, rss_seconds=1.0)
    assert bench_modbus(args) == 0
    out = capsys.readouterr().out
    for label in ("points/s", "polls/s", "Modbus reads/s", "gateway CPU s per 1k points", "simulator CPU",
                  "gateway RSS after run", "failed polls", "spawn `gateway run` -> first poll",
                  "first sample stored", "daemon RSS (2 devices x 5 points", "daemon samples stored"):
        assert label in out, f"{label!r} missing from:\n{out}"
    # 9 contiguous registers points and a coil: two reads coalesced, ten one by one
    assert re.search(r"Modbus reads per poll\s+2\.0\s+10\.0\s+5\.0x", out), out
    assert psutil.Process().children(recursive=True) == []


def test_bench_skips_the_process_figures_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(devices=1, points=3, seconds=0.3, cold_start=False, rss=False)
    assert bench_modbus(args) == 0
    out = capsys.readouterr().out
    assert "points/s" in out
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
