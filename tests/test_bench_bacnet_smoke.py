"""`gateway bench bacnet` at toy size: it runs, leaves no process behind and prints every figure.

No timing is asserted: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import re

import psutil
import pytest

from gateway.bench_bacnet import bench_bacnet


def test_bench_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_bacnet(argparse.Namespace(devices=2, points=30, seconds=0.5)) == 0
    out = capsys.readouterr().out
    for label in ("points/s", "polls/s (all devices)", "BACnet requests/s", "gateway CPU s per 1k points",
                  "simulator CPU", "good points", "failed polls"):
        assert label in out, f"{label!r} missing from:\n{out}"
    # 30 objects, 25 per ReadPropertyMultiple: 2 requests a poll; alone, value + status flags each: 60
    assert re.search(r"BACnet requests per poll\s+2\.0\s+60\.0\s+30\.0x", out), out
    assert re.search(r"good points\s+100\.0%\s+100\.0%", out), out
    assert psutil.Process().children(recursive=True) == []


def test_bench_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_bacnet(argparse.Namespace(devices=0, points=10, seconds=1.0)) == 2
    assert "must be positive" in capsys.readouterr().err
