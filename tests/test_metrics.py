"""Prometheus exposition (gateway.metrics) and the textfile collector, read back with prometheus-client's own parser.

A live daemon (a simulated meter, a black hole where a meter should be, a real Mosquitto) is scraped: the values
are what the daemon did (the device online, the dead one offline with its failures by kind, the outbox filling
while the broker is away). The HTTP scrape of /metrics is the web server's test (tests/test_web*.py).
"""

from __future__ import annotations

import asyncio
import math
import stat
from collections.abc import Callable
from pathlib import Path

from conftest import Broker, free_ports, running, until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.metrics import CONTENT_TYPE, exposition
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """The families' types by name, and every sample by (name, labels); the parser refuses a bad exposition."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape_until(daemon: Daemon, condition: Callable[[Samples], bool], within: float = 15.0) -> Samples:
    """Scrape until the figures say what the test waits for (the store's are counted every 2 s at most)."""
    async with asyncio.timeout(within):
        while True:
            _, samples = parse(exposition(await daemon.observer.snapshot()).decode())
            if condition(samples):
                return samples
            await asyncio.sleep(0.1)


def test_every_family_follows_the_naming_rules_and_parses() -> None:
    snapshot = {"site": "b3", "version": "1.2.3", "started": 1.0, "uptime_s": 5.0, "clock_synced": None,
                "devices": [{"id": "m1", "bus": "b", "state": "online", "polls": 3, "failures": 1,
                             "errors": {"timeout": 1}, "interval_s": 1.0, "actual_interval_s": 1.5, "retries": 0,
                             "overruns": 0, "last_ok_age_s": 0.5}],
                "buses": [{"id": "b", "driver": "modbus_tcp", "utilisation": 0.25, "transactions": 9,
                           "busy_seconds": 0.3}],
                "outbox": {"alarm": {"depth": 0, "oldest_age_s": None}, "telemetry": {"depth": 4,
                                                                                    "oldest_age_s": 2.5}},
                "uplinks": [{"name": "mqtt", "state": "connected", "connects": 2, "delivered": 7, "rows_delivered": 30,
                             "backlog": 4}],
                "alarms": {"active": 1, "by_state": {"active_unack": 1}, "unacknowledged": 1},
                "rules": {"evaluations": 11},
                "cameras": [{"id": "lobby", "state": "streaming", "frames": 100, "analysed": 40, "gated": 50,
                             "bad": 1, "errors": 0, "fps": 9.5, "inference_ms": {"faces": 25.0}}],
                "commands": {"answered": {"ok": 2}, "dropped": {"flood": 1}},
                "process": {"rss_bytes": 1000, "cpu_seconds": 1.5, "open_fds": 9, "threads": 3,
                            "disk_free_bytes": 10**9, "store_bytes": 4096}}
    text = exposition(snapshot).decode()
    _, samples = parse(text)
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("gateway_"), family.name
        assert family.type in ("counter", "gauge", "info"), family.name
        for sample in family.samples:
            assert sample.name == family.name + {"counter": "_total", "info": "_info", "gauge": ""}[family.type]
            if family.type == "gauge" and sample.name.endswith("_seconds"):
                assert not sample.name.endswith("_ms")
    assert math.isnan(value(samples, "gateway_clock_synced"))
    assert value(samples, "gateway_build_info", version="1.2.3", site="b3") == 1
    assert value(samples, "gateway_device_failures_total", device="m1", bus="b", kind="timeout") == 1
    assert value(samples, "gateway_device_up", device="m1", bus="b") == 1
    per_device = [n for n, labels in samples if ("device", "m1") in labels]
    assert len(per_device) == 9 and not any(n.startswith("gateway_device_state") for n in per_device)  # lean
    assert value(samples, "gateway_outbox_oldest_age_seconds", **{"class": "alarm"}) == 0
    assert value(samples, "gateway_alarms", state="active_unack") == 1
    assert value(samples, "gateway_alarms", state="shelved") == 0
    assert value(samples, "gateway_camera_dropped_frames_total", camera="lobby") == 60  # 100 read, 40 analysed
    assert value(samples, "gateway_camera_inference_seconds", camera="lobby", model="faces") == 0.025
    assert value(samples, "gateway_uplink_connects_total", uplink="mqtt") == 2
    assert value(samples, "gateway_uplink_messages_delivered_total", uplink="mqtt") == 7
    assert value(samples, "gateway_uplink_rows_delivered_total", uplink="mqtt") == 30
    assert value(samples, "gateway_commands_dropped_total", reason="flood") == 1


def test_a_snapshot_with_parts_missing_or_wrong_still_gives_a_valid_exposition() -> None:
    """A part the daemon does not have (no rules, no cameras) or a value a bug made odd is left out, not fatal."""
    types, samples = parse(exposition({"devices": "nonsense", "outbox": {"alarm": {"depth": float("inf")}},
                                       "process": {"rss_bytes": "12", "open_fds": -1}}).decode())
    assert "gateway_device_polls" in types and not any(n == "gateway_device_polls_total" for n, _ in samples)
    assert not any(n in ("gateway_outbox_messages", "gateway_process_open_fds") for n, _ in samples)


@settings(max_examples=60, deadline=None)
@given(device=st.text(min_size=1, max_size=30), kind=st.text(min_size=1, max_size=30),
       polls=st.integers(0, 2**53), state=st.text(max_size=12))
def test_any_device_id_and_error_kind_come_back_as_they_went(device: str, kind: str, polls: int, state: str) -> None:
    """Label values are escaped by the library: quotes, backslashes, newlines and any script survive."""
    snapshot = {"devices": [{"id": device, "bus": "b\"\\\n", "state": state, "polls": polls,
                             "errors": {kind: 3}}]}
    _, samples = parse(exposition(snapshot).decode())
    assert value(samples, "gateway_device_polls_total", device=device, bus="b\"\\\n") == float(polls)
    assert value(samples, "gateway_device_failures_total", device=device, bus="b\"\\\n", kind=kind) == 3


async def test_a_live_daemon_scraped_and_its_textfile(tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms"),
             dict(id="bus-1", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS),
               dict(id="dead-1", bus="bus-1", interval="200ms", points=POINTS)]
    textfile = tmp_path / "node-exporter" / "gateway.prom"
    textfile.parent.mkdir()
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra=f'\n[web]\nenabled = false\n\n[metrics]\ntextfile = "{textfile}"\n'
                                               'every = "1s"\n')
    try:
        async with running(Daemon(load_config(path))) as daemon:
            meter, dead = daemon.pollers["meter-0"], daemon.pollers["dead-1"]
            uplink = daemon.uplinks["mqtt"]
            await until(lambda: meter.state.polls >= 3 and dead.state.state == "offline"
                        and uplink.status.delivered > 0)
            polls_before, failed_before = meter.state.polls, dead.state.failures
            kinds_before = dict(dead.state.errors)
            types, samples = parse(exposition(await daemon.observer.snapshot()).decode())
            polls_after, failed_after, kinds_after = meter.state.polls, dead.state.failures, dict(dead.state.errors)

            assert value(samples, "gateway_device_up", device="meter-0", bus="bus-0") == 1
            assert value(samples, "gateway_device_up", device="dead-1", bus="bus-1") == 0
            assert polls_before <= value(samples, "gateway_device_polls_total", device="meter-0",
                                         bus="bus-0") <= polls_after
            assert failed_before <= value(samples, "gateway_device_failed_polls_total", device="dead-1",
                                          bus="bus-1") <= failed_after
            assert set(kinds_before) == {"timeout"}, kinds_before  # a black hole never answers
            assert kinds_before["timeout"] <= value(samples, "gateway_device_failures_total", device="dead-1",
                                                    bus="bus-1", kind="timeout") <= kinds_after["timeout"]
            assert ("gateway_device_failures_total", frozenset({("device", "meter-0"), ("bus", "bus-0"),
                                                                ("kind", "timeout")})) not in samples
            assert value(samples, "gateway_device_poll_interval_seconds", device="meter-0", bus="bus-0") == 0.2
            assert value(samples, "gateway_device_last_success_age_seconds", device="meter-0", bus="bus-0") < 60
            assert value(samples, "gateway_bus_transactions_total", bus="bus-0", driver="modbus_tcp") > 0
            assert value(samples, "gateway_uplink_up", uplink="mqtt") == 1
            assert value(samples, "gateway_uplink_connects_total", uplink="mqtt") == 1
            messages = value(samples, "gateway_uplink_messages_delivered_total", uplink="mqtt")
            assert 0 < messages <= value(samples, "gateway_uplink_rows_delivered_total", uplink="mqtt")
            assert value(samples, "gateway_process_resident_memory_bytes") > 10 * 2**20
            assert value(samples, "gateway_store_bytes") > 0 and value(samples, "gateway_disk_free_bytes") > 0
            assert types["gateway_process_cpu_seconds"] == "counter"

            # the textfile: written atomically, readable by node-exporter's user, the same families
            await until(lambda: textfile.exists())
            file_types, file_samples = parse(textfile.read_text("utf-8"))
            assert file_types == types
            assert value(file_samples, "gateway_device_up", device="dead-1", bus="bus-1") == 0
            assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
            assert [p.name for p in textfile.parent.iterdir()] == ["gateway.prom"]  # no temp file left behind

            # the broker goes away: the uplink is down and the outbox fills, as the metrics say
            broker.stop()
            await until(lambda: uplink.status.state == "disconnected")
            store = daemon.store.store
            samples = await scrape_until(daemon, lambda s: value(s, "gateway_outbox_messages",
                                                                **{"class": "telemetry"}) > 0)
            queued = store.outbox_depth().get("telemetry", 0)  # nothing leaves it now: only grows
            assert value(samples, "gateway_uplink_up", uplink="mqtt") == 0
            assert value(samples, "gateway_uplink_state", uplink="mqtt", state="disconnected") == 1
            assert 0 < value(samples, "gateway_outbox_messages", **{"class": "telemetry"}) <= queued
            assert value(samples, "gateway_uplink_backlog_messages", uplink="mqtt") > 0
            assert value(samples, "gateway_outbox_messages", **{"class": "alarm"}) == 0
    finally:
        await server.close()
        await hole.close()
