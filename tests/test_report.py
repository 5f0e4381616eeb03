"""Upstream report policies: every, on change with deadband, periodic, windowed aggregates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jsonschema
from conftest import Broker, Collector, free_ports, running
from test_spine import meter_config

from gateway.config import load_config
from gateway.core.data import Quality, Reading
from gateway.daemon import Daemon
from gateway.northbound.contract import upstream_schema
from rules.report import Reporter, ReportPolicy
from simulators.meter import serve_meters

SCHEMA = upstream_schema()


def r(value: object, t: float, point: str = "p", quality: Quality = Quality.GOOD) -> Reading:
    return Reading("m", point, value, "V", quality, t)  # type: ignore[arg-type]


def test_change_mode_respects_deadband_and_max_interval() -> None:
    rep = Reporter()
    rep.configure("m", ReportPolicy(mode="change", deadband=0.5, max_interval=60), {})
    sent = [len(rep.offer("m", [r(v, t)], t)) for t, v in [(0, 230.0), (5, 230.3), (10, 230.6), (15, 230.9),
                                                              (20, 231.2), (80, 231.2), (85, 231.2)]]
    assert sent == [1, 0, 1, 0, 1, 1, 0]  # first, moves > 0.5 from the last *reported*, heartbeat at 60 s


def test_every_poll_goes_up_as_it_came_and_leaves_nothing_behind() -> None:
    """The default policy: the poll's own list goes up, and no point state is kept (it was 126 bytes a point)."""
    rep = Reporter()
    rep.configure("m", ReportPolicy(), {})
    poll = [r(1.0, 0), r(None, 0, "q", Quality.BAD)]
    assert rep.offer("m", poll, 0) is poll
    assert rep.devices["m"].points == {}


def test_an_every_point_under_another_policy_goes_every_poll_without_state() -> None:
    rep = Reporter()
    rep.configure("m", ReportPolicy(mode="change", deadband=1.0), {"alarm": ReportPolicy(mode="every")})
    sent = [[x.point for x in rep.offer("m", [r(230.0 + t / 10, t), r(False, t, "alarm")], t)] for t in range(3)]
    assert sent == [["p", "alarm"], ["alarm"], ["alarm"]]
    assert list(rep.devices["m"].points) == ["p"]


def test_quality_change_is_reported_at_once_whatever_the_policy() -> None:
    rep = Reporter()
    rep.configure("m", ReportPolicy(mode="periodic", period=3600), {})
    assert len(rep.offer("m", [r(1.0, 0)], 0)) == 1
    assert rep.offer("m", [r(2.0, 10)], 10) == []
    assert [x.quality for x in rep.offer("m", [r(None, 20, quality=Quality.BAD)], 20)] == [Quality.BAD]


def test_aggregate_windows_and_per_point_override() -> None:
    rep = Reporter()
    rep.configure("m", ReportPolicy(mode="aggregate", window=60, functions=["min", "max", "mean", "count"]),
                  {"alarm": ReportPolicy(mode="every")})
    for t in range(0, 60, 10):
        out = rep.offer("m", [r(float(t), t), r(t % 20 == 0, t, "alarm")], t)
        assert [x.point for x in out] == ["alarm"]  # the override still goes every poll
    assert rep.due(59) == []
    (summary,) = rep.due(60)
    assert summary.points["p"] == {"min": 0.0, "max": 50.0, "mean": 25.0, "count": 6, "q": "good", "u": "V"}
    assert rep.due(61) == []  # a new window has started


async def test_summaries_reach_the_broker_and_match_the_schema(tmp_path: Path, broker: Broker,
                                                               collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    try:
        extra = ""
        config = meter_config(tmp_path, server.ports, broker.port, interval="100ms", extra=extra)
        text = config.read_text(encoding="utf-8").replace(
            '[[devices.points]]', '[devices.report]\nmode = "aggregate"\nwindow = "1s"\n\n[[devices.points]]', 1)
        config.write_text(text, encoding="utf-8")
        daemon = Daemon(load_config(config))
        async with running(daemon):
            await collector.wait_for(lambda: len([m for _, m in collector.messages if m["type"] == "summary"]) >= 2)
            await asyncio.sleep(0.2)
    finally:
        await server.close()
    summaries = [m for _, m in collector.messages if m["type"] == "summary"]
    assert not collector.of_type("telemetry")  # nothing per poll: only the windows
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for message in summaries:
        assert not list(validator.iter_errors(message))
    volts = summaries[0]["points"]["voltage_a"]
    assert volts["min"] <= volts["mean"] <= volts["max"] and volts["count"] >= 5 and volts["u"] == "V"
