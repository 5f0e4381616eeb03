"""Every message the gateway publishes matches the documented, versioned upstream schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jsonschema
from conftest import Broker, Collector, free_ports, running
from test_spine import meter_config

from gateway.config import load_config
from gateway.core.data import Event, Priority
from gateway.daemon import Daemon
from gateway.northbound.contract import upstream_schema
from simulators.meter import serve_meters

SCHEMA = upstream_schema()


async def test_published_messages_match_the_schema(tmp_path: Path, broker: Broker, collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    try:
        daemon = Daemon(load_config(meter_config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await collector.wait_for(lambda: len(collector.of_type("telemetry")) >= 4)
            daemon.bus.event(Event("fire.alarm", "panel-1", Priority.ALARM,
                                  {"zone": "B3-2F", "text": "火警", "pattern": "gst_cn.fire"}))
            await server.stop_one(1)
            await collector.wait_for(lambda: any(m.get("kind") == "device.offline" for _, m in collector.messages))
        await asyncio.sleep(0.3)
    finally:
        await server.close()
    validator = jsonschema.Draft202012Validator(SCHEMA)
    kinds = set()
    for topic, message in collector.messages:
        errors = [e.message for e in validator.iter_errors(message)]
        assert not errors, f"{topic}: {errors}"
        kinds.add(message.get("kind", message["type"]))
        if message["type"] in ("event", "alarm"):  # one rule: every alarm and alarm transition on alarm/
            alarm = message["priority"] == "alarm" or message["kind"].startswith("alarm.")
            assert message["type"] == ("alarm" if alarm else "event")
            assert topic == f"community/test-site/{message['type']}/{message['kind']}"
    assert {"telemetry", "status", "fire.alarm", "device.offline", "gateway.started"} <= kinds
    alarm = next(m for _, m in collector.messages if m.get("kind") == "fire.alarm")
    assert alarm["data"]["text"] == "火警"  # UTF-8 end to end, not \\u escapes lost on the way


def test_schema_rejects_a_message_without_id() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    bad = {"v": 2, "site": "s", "type": "telemetry", "device": "m", "ts": 1.0, "points": {}}
    assert list(validator.iter_errors(bad))
