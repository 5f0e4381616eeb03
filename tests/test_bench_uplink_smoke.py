"""`bench_uplink` runs end to end on a small backlog and prints every row; no timing is asserted."""

from __future__ import annotations

import argparse
import re

import psutil
import pytest
from conftest import MOSQUITTO

from gateway.bench_uplink import bench_uplink


@pytest.mark.slow
def test_bench_uplink_runs_and_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = bench_uplink(argparse.Namespace(events=2000))
    out = capsys.readouterr().out
    assert code == 0, out  # 0 means: every message arrived, in per-device order, and every alarm too
    assert "uplink replay: 2000 telemetry messages (15 points" in out
    for label in ("100", "500", "2000", "naive"):
        row = re.search(rf"^\s*{label}\s+.*$", out, re.M)
        assert row, f"no row {label}:\n{out}"
        cells = row.group(0).split()
        assert cells[4] == "100.00%" and cells[6] == "kept", row.group(0)
        if label != "naive":
            assert int(cells[7]) > 0 and float(cells[8]) > 0, row.group(0)  # alarms were raised and timed
    assert re.search(r"^uplink replay vs naive: batch 100 [\d.]+x, batch 500 [\d.]+x, batch 2000 [\d.]+x$", out,
                     re.M), out
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"bench left processes behind: {left} (broker {MOSQUITTO})"
