"""`gateway bench noise --json`: its shape, and (behaviour, not speed) no fire line lost or downgraded."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_noise_json_has_every_format_and_rate_and_loses_no_fire_line() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "bench", "noise", "--lines", "60", "--json"],
                          capture_output=True, text=True, timeout=120)
    doc = json.loads(done.stdout)
    assert doc["bench"] == "noise" and doc["params"] == {"lines": 60, "seed": 7, "max_noise": 48}
    assert set(doc["formats"]) == {"gst_cn", "notifier_en"}
    for rates in doc["formats"].values():
        assert set(rates) == {"0", "0.1", "0.3", "0.6", "1"}
        for counts in rates.values():
            assert counts["fire_lines"] == 30 and counts["downgraded"] == 0 and counts["missed"] == 0
    assert done.returncode == 0 and doc["ok"] is True
