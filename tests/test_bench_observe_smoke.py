"""`gateway bench observe` at tiny size runs end to end: two daemons (watching off, then on and scraped), figures
under their stable names, every HTTP request answered, nothing left running.

Speed is not asserted (the machine is shared): the figures are only checked to be there and to make sense.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.observe import bench_observe

RUN = {"web", "textfile", "up_after_s", "window_s", "cpu_s", "cpu_percent", "rss_mb", "peak_rss_mb", "polls"}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_observe_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = bench_observe(argparse.Namespace(devices=3, interval=0.5, seconds=2.0, warmup=0.5, scrape_every=0.5,
                                            page_every=0.25, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "observe" and doc["problems"] == [], doc["problems"]
    assert doc["params"] == {"devices": 3, "interval": 0.5, "seconds": 2.0, "warmup": 0.5, "scrape_every": 0.5,
                             "page_every": 0.25, "textfile_every": 15.0, "rounds": 1}
    [off], [on] = doc["off"], doc["on"]
    assert set(off) == RUN and set(on) == RUN | {"http"}
    assert (off["web"], on["web"]) == (False, True)
    for r in (off, on):
        assert r["polls"] > 0 and r["cpu_s"] >= 0 and r["rss_mb"] > 10 and r["window_s"] >= 2.0
    for path in ("/metrics", "/api/state"):
        seen = on["http"][path]
        assert seen["requests"] >= 2 and seen["failed"] == 0 and seen["body_bytes"] > 0 and seen["p50_ms"] > 0
    assert set(doc["derived"]) == {"extra_cpu_percent", "extra_rss_mb"}
    assert doc["derived"]["extra_rss_mb"]["value"] == pytest.approx(on["rss_mb"] - off["rss_mb"], abs=1e-3)
    assert [t["figure"] for t in doc["targets"]] == ["extra_cpu_percent", "extra_rss_mb"]
    assert code == (0 if doc["ok"] else 1)
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_observe_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_observe(argparse.Namespace(devices=0)) == 2
    assert "must be positive" in capsys.readouterr().err
    assert bench_observe(argparse.Namespace(textfile_every=0.5)) == 2
