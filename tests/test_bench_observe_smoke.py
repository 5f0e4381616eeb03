"""`gateway bench observe` at tiny size runs end to end: two daemons (watching off, then on and scraped), figures
under their stable names, every HTTP request answered, nothing left running.

Speed is not asserted (the machine is shared): the figures are only checked to be there and to make sense.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.harness import Report
from gateway.bench.observe import Options, _polls_kept, bench_observe

RUN = {"web", "textfile", "up_after_s", "window_s", "cpu_s", "cpu_percent", "rss_mb", "rss_samples_mb", "peak_rss_mb",
       "polls", "polls_span_s", "polls_per_s"}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_observe_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = bench_observe(argparse.Namespace(devices=3, interval=0.25, seconds=1.0, warmup=0.25, scrape_every=0.4,
                                            page_every=0.2, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "observe" and doc["problems"] == [], doc["problems"]
    assert doc["params"] == {"devices": 3, "interval": 0.25, "seconds": 1.0, "warmup": 0.25, "scrape_every": 0.4,
                             "page_every": 0.2, "textfile_every": 15.0, "rounds": 1}
    [off], [on] = doc["off"], doc["on"]
    assert set(off) == RUN and set(on) == RUN | {"http"}
    assert (off["web"], on["web"]) == (False, True)
    for r in (off, on):
        assert r["polls"] > 0 and r["cpu_s"] >= 0 and r["rss_mb"] > 10 and r["window_s"] >= 1.0
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


def test_an_on_run_that_polled_less_is_a_problem_however_little_cpu_it_used() -> None:
    """A starved loop polls less and uses less CPU: below 99 % of the off runs' poll rate (beyond one poll per
    device, what a window's edges cut) the bench reports a problem, so it exits 1."""
    opts = Options(devices=100)
    off = [{"polls": 1200, "polls_span_s": 60.0, "polls_per_s": 20.0}]
    kept, starved = Report("observe", opts, json_out=True), Report("observe", opts, json_out=True)
    _polls_kept(opts, kept, {"off": off, "on": [{"polls": 1150, "polls_span_s": 61.0, "polls_per_s": 18.9}]})
    _polls_kept(opts, starved, {"off": off, "on": [{"polls": 1000, "polls_span_s": 60.0, "polls_per_s": 16.7}]})
    assert kept.problems == []
    assert len(starved.problems) == 1 and "slowed the polling" in starved.problems[0]
