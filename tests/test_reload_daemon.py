"""Twenty reloads under load: one device changes back and forth while five others poll on, untouched.

Time is a ManualClock stepped one poll period at a time (every meter's poll then completes over real TCP before
the next step), so a poll's timestamp is its slot exactly: an unchanged device keeps its rhythm if and only if its
consecutive polls are exactly one period apart, through every reload. Each reload runs while that step's polls are
on the wire. What the bus carried is compared with what the store kept and what reached the broker, reading by
reading. A fire alarm raised and acknowledged before the reloads must come out of twenty rule swaps as it went in.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Collector, free_ports, running, until
from test_reload import FIRE, POINTS, config_text

from gateway.commands import AlarmCommand
from gateway.config import load_config
from gateway.core.data import Event, Priority, Reading
from gateway.core.timing import ManualClock
from gateway.daemon import Daemon
from simulators.meter import serve_meters

pytestmark = pytest.mark.timeout(150)
METERS = 6
STEP = 1.0
"""Manual seconds per step: every meter's interval but the changing one's (1.0 or 0.5)."""
CHANGING = "meter-0"
EXTRA_RULE = '\n[[rules]]\nid = "noise"\nwhen = { event = "noise.heard" }\nalarm = { class = "equipment", ' \
             'message = "noise" }\n'
MQTT = 'host = "127.0.0.1"\nport = {port}\nkeepalive = {keepalive}\nreconnect_min = "200ms"\nreconnect_max = "1s"\n'


def variant(i: int) -> dict[str, Any]:
    """The config after reload ``i`` (0: the start). Odd reloads toggle the changing meter's tamper point (its bus
    is rebuilt), even ones its interval (only its poller restarts); every fifth also adds or drops a rule; the
    tenth also changes [mqtt] (the uplink reconnects)."""
    points_toggles, interval_toggles, rule_toggles = (i + 1) // 2, i // 2, i // 5
    return {"tamper": points_toggles % 2 == 0, "interval": 1.0 if interval_toggles % 2 == 0 else 0.5,
            "rule": rule_toggles % 2 == 1, "keepalive": 30 if i < 10 else 45}


def render(tmp: Path, ports: list[int], broker: int, v: dict[str, Any]) -> str:
    points = POINTS if v["tamper"] else [p for p in POINTS if p["id"] != "tamper"]
    return config_text(tmp / "data", ports=ports, mqtt=MQTT.format(port=broker, keepalive=v["keepalive"]),
                       devices={CHANGING: {"interval": v["interval"], "points": points}},
                       extra=FIRE + (EXTRA_RULE if v["rule"] else ""))


def expected(i: int) -> dict[str, list[str]]:
    before, after = variant(i - 1), variant(i)
    out: dict[str, list[str]] = {"devices_changed": [CHANGING]}
    if before["tamper"] != after["tamper"]:
        out["rebuild"] = ["bus-0"]
    else:
        out["restart"] = [CHANGING]
    if before["rule"] != after["rule"]:
        out["rules"] = ["rules"]
    if before["keepalive"] != after["keepalive"]:
        out["mqtt"] = ["keepalive"]
    return out


def samples(db: Path) -> dict[str, list[float]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT device, ts FROM samples ORDER BY rowid").fetchall()
    out: dict[str, list[float]] = defaultdict(list)
    for device, ts in rows:
        out[device].append(ts)
    return out


async def test_twenty_reloads_under_load_lose_nothing_and_keep_the_others_rhythm(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(METERS), count=METERS)
    path = tmp_path / "gateway.toml"
    path.write_text(render(tmp_path, server.ports, broker.port, variant(0)))
    clock = ManualClock(epoch=time.time())  # stored readings are judged against the real date (retention)
    try:
        daemon = Daemon(load_config(path), config_hash=hashlib.sha256(path.read_bytes()).hexdigest(), clock=clock,
                        config_path=path)
        carried: dict[str, list[float]] = defaultdict(list)
        points_seen: list[tuple[float, frozenset[str]]] = []

        def heard(device: str, readings: list[Reading], ts: float) -> None:
            carried[device].append(ts)
            if device == CHANGING:
                points_seen.append((ts, frozenset(r.point for r in readings)))

        daemon.bus.on_readings(heard)
        steady = {i: p for i, p in daemon.pollers.items() if i != CHANGING}
        assert len(steady) == METERS - 1

        async def step(*also: Any) -> list[Any]:
            """One period: every steady meter polls once, over real TCP; ``also`` runs meanwhile."""
            before = {i: p.state.polls for i, p in steady.items()}
            results = await asyncio.gather(clock.advance(STEP), *also)
            await until(lambda: all(p.state.polls == before[i] + 1 for i, p in steady.items()), within=20)
            return results[1:]

        async with running(daemon):
            await until(lambda: daemon.uplink is not None and daemon.uplink.status.state == "connected")
            for _ in range(3):
                await step()
            daemon.bus.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "2F"}, ts=clock.time()))
            await daemon.commands.execute(AlarmCommand(cmd="alarm", action="acknowledge", key="fire/2F",
                                                       actor="guard-7", note="on my way"))
            assert daemon.automation is not None
            alarm_before = daemon.automation.book.export_one("fire/2F")
            hashes = [daemon.config_hash]
            for i in range(1, 21):
                path.write_text(render(tmp_path, server.ports, broker.port, variant(i)))
                driver, uplink = daemon.drivers[CHANGING], daemon.uplink
                [answer] = await step(daemon.reload("test"))
                assert answer["applied"] is True and answer["changed"] == expected(i), (i, answer)
                hashes.append(answer["config"])
                assert all(daemon.pollers[d] is p for d, p in steady.items()), i  # the very same pollers
                assert (daemon.drivers[CHANGING] is driver) == ("rebuild" not in expected(i)), i
                assert (daemon.uplink is uplink) == ("mqtt" not in expected(i)), i
                assert daemon.pollers[CHANGING].device.interval == variant(i)["interval"]
                await collector.wait_for(lambda: any(m.get("config") == hashes[-1] and m.get("state") == "online"
                                                     for _, m in collector.of_type("status")))
                reloaded = clock.time()
                for _ in range(2):
                    await step()
                await until(lambda t=reloaded: points_seen[-1][0] > t)  # the new poller has polled
                assert all(("tamper" in points) == variant(i)["tamper"] for ts, points in points_seen
                           if ts > reloaded), i  # the changing meter polls its new map, and only that
            assert daemon.automation.book.export_one("fire/2F") == alarm_before  # acknowledged, never escalated
            daemon.bus.event(Event("fire.reset", "panel", Priority.ALARM, {}, ts=clock.time()))
            assert daemon.automation.book.export_one("fire/2F")["state"] == "latched"  # the rule owns it still
            await daemon.recorder.flush()
            total = sum(len(ts) for ts in carried.values())
            await collector.wait_for(lambda: len(delivered(collector)) >= total, within=30)
        stored = samples(tmp_path / "data" / "gateway.db")
    finally:
        await server.close()

    for device, stamps in carried.items():  # every reading the bus carried was stored once and delivered once
        assert Counter(stored[device]) == Counter(stamps), device
        assert len(set(stamps)) == len(stamps), device
    assert Counter(delivered(collector)) == Counter((d, round(t, 3)) for d, ts in carried.items() for t in ts)
    for device in steady:  # the rhythm: one poll per period, every period, from the first to the last
        gaps = [b - a for a, b in itertools.pairwise(stored[device])]
        assert len(gaps) >= 3 + 20 * 3 - 1 and all(abs(g - STEP) < 1e-6 for g in gaps), (device, gaps)
    applied = list({m["id"]: m["data"] for _, m in collector.of_type("event")  # a redelivery counted once
                    if m["kind"] == "config.applied"}.values())
    assert [a["changed"] for a in applied] == [expected(i) for i in range(1, 21)]
    assert [(a["previous"], a["config"]) for a in applied] == list(itertools.pairwise(hashes))
    births = [m for _, m in collector.of_type("status") if m.get("state") == "online"]
    assert [b["config"] for b in births][-1] == hashes[-1]
    assert {b["bdseq"] for b in births} == {births[0]["bdseq"], births[0]["bdseq"] + 1}  # one reconnect: [mqtt]


def delivered(collector: Collector) -> list[tuple[str, float]]:
    """(device, ts) of each telemetry message at the broker, a redelivery (the same id) counted once."""
    seen: dict[str, tuple[str, float]] = {}
    for _, message in collector.of_type("telemetry"):
        seen.setdefault(message["id"], (message["device"], round(message["ts"], 3)))
    return list(seen.values())
