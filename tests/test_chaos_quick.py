"""`gateway bench chaos --quick --json`: through every fault it can make here, the daemon loses nothing.

This is the one bench a test judges, and only on loss, which is behaviour, not speed: every message
stored (outbox, event log, readings history) reaches the persistent platform subscriber, and every
fire line the panel printed arrives as a fire.alarm. Duplicates and order inversions are allowed
(delivery is at least once; a clock jump reorders timestamps) and only have to be reported. A
scenario this machine cannot run must say why and must not count as passed. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SCENARIOS = {"broker_kill", "gateway_kill", "disk_full", "clock_jump", "device_flap", "serial_unplug"}
FIGURES = {"method", "faults", "fault_count", "stored_not_delivered", "telemetry_not_delivered", "dropped_by_policy",
           "alarm_lines",
           "duplicates", "order_inversions", "drain_s", "daemon", "delivered", "stored", "seconds"}
DAEMON = {"rss_mb_start", "rss_mb_end", "rss_growth_mb", "fds_start", "fds_end", "fd_growth", "processes",
          "unexpected_exits", "exit_code"}

# The bench makes its own load (six worlds in waves of three) and judges each world's drain within a limit; it runs
# alone after the parallel part so that what it judges is its own daemons, not another test file's load. (Its -1 h
# clock jump once looked unseen beside another file: the bench took the newest row by storage order, a poll begun
# before the jump; tests/test_chaos_clock.py holds that fix.)
pytestmark = pytest.mark.solo


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short TMPDIR for the bench: the daemon's control socket path must fit in 107 bytes (pytest's are long)."""
    with tempfile.TemporaryDirectory(prefix="chaos-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.mark.slow
def test_chaos_quick_loses_nothing(short_tmp: Path) -> None:
    tmp_path = short_tmp
    done = subprocess.run([sys.executable, "-m", "gateway", "bench", "chaos", "--quick", "--json"],
                          capture_output=True, text=True, timeout=170, env={**os.environ, "TMPDIR": str(tmp_path)})
    doc = json.loads(done.stdout)
    assert doc["bench"] == "chaos" and done.returncode == (0 if doc["ok"] else 1), done.stderr[-2000:]
    assert doc["params"]["quick"] is True and doc["params"]["plan"]["faults"] == 2
    ran, skipped = set(doc["ran"]), set(doc["skipped"])
    assert ran | skipped == SCENARIOS == set(doc["scenarios"]) and not ran & skipped
    assert {"broker_kill", "gateway_kill", "disk_full", "device_flap", "serial_unplug"} <= ran  # need no extras
    for key in skipped:
        assert doc["scenarios"][key] == {"ran": False, "skipped": doc["skipped"][key]} and doc["skipped"][key]
    for key in ran:
        r = doc["scenarios"][key]
        assert "error" not in r, (key, r.get("error"))
        assert set(r) >= FIGURES and set(r["daemon"]) >= DAEMON, (key, sorted(r))
        assert r["fault_count"] == len(r["faults"]) == 2, (key, r["faults"])
        assert r["stored_not_delivered"] == {"outbox": 0, "events": 0, "total": 0}, (key, r["stored_not_delivered"])
        assert r["telemetry_not_delivered"] == 0, key
        lines = r["alarm_lines"]
        assert lines["sent"] > 0 and lines["sent"] == lines["delivered"] and lines["missing"] == [], (key, lines)
        assert r["drain_s"] is not None and r["daemon"]["unexpected_exits"] == [], (key, r["drain_s"], r["daemon"])
        assert r["duplicates"]["count"] >= 0 and r["duplicates"]["max_copies"] >= 1 and r["order_inversions"] >= 0
        for figure in ("rss_mb_start", "rss_mb_end", "fds_start", "fds_end"):
            assert r["daemon"][figure] > 0, (key, figure)
        assert r["delivered"]["telemetry"] > 0 and r["stored"]["events"] > 0
    assert doc["problems"] == [] and doc["ok"] and doc["derived"]["lost_total"]["value"] == 0, doc["problems"]
    if "clock_jump" in ran:  # the jumps really happened, and were undone
        jumps = doc["scenarios"]["clock_jump"]["faults"]
        assert all(abs(f["skew_seen_s"] - f["jump_s"]) < 60 and abs(f["skew_after_s"]) < 60 for f in jumps), jumps
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"the bench left processes behind: {left}"
    assert str(tmp_path) not in Path("/proc/mounts").read_text(), "the bench left its tmpfs mounted"
