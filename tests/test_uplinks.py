"""Several uplinks at once, each draining the one outbox with its own cursor, against real Mosquitto brokers.

A dead uplink never blocks another: meters poll over real Modbus TCP, one of two brokers is SIGKILLed under load,
and the other keeps its latency (each reading's arrival at a subscriber minus its ``ts``) and receives every
reading; the dead one's backlog stays in the outbox and arrives, in order, when its broker is back. An uplink
carries only its classes and kinds, and a command's result goes back on the uplink it came in on. A reload adds,
changes and removes an ``[[uplinks]]`` entry live, touching no other uplink, and a removed uplink holds no row back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiomqtt
import pytest
from conftest import Broker, free_ports, running, until
from uplink_sites import (
    ROOT,
    Timed,
    broker_at,
    duplicates,
    heard,
    p50,
    p99,
    per_device,
    persist_sessions,
    received,
    site_config,
    store_says,
)

from gateway.config import load_config
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.daemon import Daemon
from simulators.meter import serve_meters

pytestmark = pytest.mark.timeout(150)
METERS = 8


async def test_a_dead_uplink_never_blocks_another_and_gets_its_backlog_in_order_when_back(
        tmp_path: Path, broker: Broker, second: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(METERS), count=METERS)
    path = tmp_path / "gateway.toml"
    path.write_text(site_config(tmp_path / "data", server.ports, broker_at(broker.port),
                                uplinks=(broker_at(second.port, name="backup", more='replay_delay = "0s"\n'),)))
    live, dead = Timed(broker.port), Timed(second.port)
    await live.start()
    await dead.start()
    persist_sessions(second)  # the dead one's subscriber is waiting on its disk when it comes back
    try:
        daemon = Daemon(load_config(path), config_path=path)
        carried = heard(daemon)
        async with running(daemon):
            backup = daemon.uplinks["backup"]
            await until(lambda: daemon.uplink is not None and daemon.uplink.status.state == "connected"
                        and backup.status.state == "connected")
            await until(lambda: len(dead.readings()) >= 10 * METERS and len(live.readings()) >= 10 * METERS)
            steady = time.time()  # the baseline: both alive, under the same load
            await until(lambda: sum(1 for _, ts in carried if ts > steady) >= 300, within=60)

            killed = time.time()
            second.stop(kill=True)  # a crash: nothing said, in-flight state lost
            await until(lambda: backup.status.state == "disconnected")
            # under load while it is dead: at least 300 readings polled and stored after the kill
            await until(lambda: sum(1 for _, ts in carried if ts > killed + 0.5) >= 300, within=60)
            back = time.time()
            outage = {r for r in carried if killed + 0.5 < r[1] < back}
            assert await daemon.store.run(daemon.store.store.backlog, "backup") >= len(outage)
            await received(live, outage)  # every reading of the outage reached the live uplink ...
            second.start()

            await until(lambda: backup.status.state == "connected", within=30)
            wanted = {r for r in carried if r[1] < back + 1.0}
            await until(lambda: any(ts > back + 1.5 for _, ts in list(carried)))
            await received(dead, wanted, within=60)  # ... and the dead one's backlog, once it was back
            await received(live, wanted)

        live_rows, dead_rows = live.readings(), dead.readings()
        before = [at - ts for at, _, ts, _ in live_rows if steady < ts < killed]
        during = [at - ts for at, _, ts, _ in live_rows if killed + 0.5 < ts < back]
        assert len(during) >= len(outage)
        print(f"\nlive uplink latency p50/p99: {p50(before) * 1000:.0f}/{p99(before) * 1000:.0f} ms with both alive, "
              f"{p50(during) * 1000:.0f}/{p99(during) * 1000:.0f} ms while the other was dead ({len(during)} readings, "
              f"{METERS} meters every 100 ms); duplicates: live {duplicates(live_rows)}, dead {duplicates(dead_rows)}")
        assert p99(during) < 1.0, "the live uplink slowed down while the other was dead"
        # the backlog arrived after the broker came back, and in order per device (at least once: dups dropped)
        assert all(at > back for at, _, ts, _ in dead_rows if killed + 0.5 < ts < back)
        for device, rows in per_device(dead_rows).items():
            stamps = [ts for _, ts, _ in rows]
            assert stamps == sorted(stamps), f"{device}: out of order on the uplink that was dead"
        for device, rows in per_device(live_rows).items():
            stamps = [ts for _, ts, _ in rows]
            assert stamps == sorted(stamps), f"{device}: out of order on the live uplink"
    finally:
        await live.stop()
        await dead.stop()
        await server.close()


async def command(port: int, rid: str) -> None:
    """A platform's ``status`` request, on one broker."""
    body = {"v": 1, "id": rid, "expires_at": time.time() + 30, "actor": "ops", "cmd": "status"}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"platform-{rid}") as client:
        await client.publish(f"{ROOT}/cmd/req", json.dumps(body), qos=1)


async def test_each_uplink_carries_its_classes_and_kinds_and_answers_the_commands_it_heard(
        tmp_path: Path, broker: Broker, second: Broker) -> None:
    path = tmp_path / "gateway.toml"
    fire = broker_at(second.port, name="fire", more='carries = ["alarm"]\nkinds = ["fire.*"]\n')
    path.write_text(site_config(tmp_path / "data", [], broker_at(broker.port), uplinks=(fire,),
                                extra='\n[commands]\nenabled = true\nallow = ["status"]\n'))
    everything, brigade = Timed(broker.port), Timed(second.port)
    await everything.start()
    await brigade.start()
    try:
        daemon = Daemon(load_config(path), config_path=path)
        async with running(daemon):
            await until(lambda: all(u.status.state == "connected" for u in daemon.uplinks.values()))
            now = time.time()
            for kind, priority in [("fire.alarm", Priority.ALARM), ("door.open", Priority.EVENT),
                                   ("elevator.entrapment", Priority.ALARM), ("fire.drill", Priority.EVENT)]:
                daemon.bus.event(Event(kind, "panel", priority, {"zone": "2F"}, now))
            daemon.bus.snapshot("meter-x", [Reading("meter-x", "power", 1.5, "kW", Quality.GOOD, now)], now)
            await command(broker.port, "asked-on-mqtt")
            await command(second.port, "asked-on-fire")
            await until(lambda: len(everything.of("cmd_result")) == 1 and len(brigade.of("cmd_result")) == 1)
            await until(lambda: {"fire.alarm", "door.open", "elevator.entrapment", "fire.drill"}
                        <= {m["kind"] for m in everything.of("event", "alarm")})
            # whatever the brigade's uplink passed over is acknowledged for it: the outbox empties
            await store_says(daemon, lambda store: sum(store.outbox_depth().values()) == 0)
        assert [m["kind"] for m in brigade.of("event", "alarm")] == ["fire.alarm"]  # an alarm of its kinds only
        assert not brigade.of("telemetry", "summary", "state")
        assert [m["req"] for m in everything.of("cmd_result")] == ["asked-on-mqtt"]
        answer = brigade.of("cmd_result")[0]
        assert answer["req"] == "asked-on-fire" and answer["status"] == "ok" and "_via" not in answer
        assert {"mqtt", "fire"} <= set(answer["result"]["uplinks"])
        assert [m["device"] for m in everything.of("telemetry")] == ["meter-x"]
    finally:
        await everything.stop()
        await brigade.stop()


async def test_a_reload_adds_changes_and_removes_an_uplink_alone_and_a_removed_one_holds_nothing_back(
        tmp_path: Path, broker: Broker, second: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    path = tmp_path / "gateway.toml"

    def write(*uplinks: str) -> None:
        path.write_text(site_config(tmp_path / "data", server.ports, broker_at(broker.port), uplinks=uplinks,
                                    interval="200ms"))

    write()
    backup = Timed(second.port)
    await backup.start()
    try:
        daemon = Daemon(load_config(path), config_path=path)
        async with running(daemon):
            main = daemon.uplink
            assert main is not None and daemon.store.store.uplinks == ("mqtt",)
            await until(lambda: main.status.state == "connected")
            write(broker_at(second.port, name="backup"))
            answer = await daemon.reload("test")
            assert answer["changed"] == {"uplinks_added": ["backup"]}
            assert daemon.uplink is main and daemon.store.store.uplinks == ("mqtt", "backup")
            await until(lambda: daemon.uplinks["backup"].status.state == "connected")
            await until(lambda: len(backup.readings()) >= 10)  # the new uplink delivers

            first = daemon.uplinks["backup"]
            write(broker_at(second.port, name="backup", more="keepalive = 45\n"))
            assert (await daemon.reload("test"))["changed"] == {"uplinks_changed": ["backup"]}
            assert daemon.uplink is main and daemon.uplinks["backup"] is not first
            assert "uplink:backup" in daemon.supervisor.tasks and daemon.uplinks["backup"].config.keepalive == 45
            await until(lambda: daemon.uplinks["backup"].status.state == "connected")

            second.stop(kill=True)  # its uplink dies and keeps a backlog in the outbox ...
            await until(lambda: daemon.uplinks["backup"].status.state == "disconnected")
            await store_says(daemon, lambda store: store.backlog("backup") >= 20)
            write()
            assert (await daemon.reload("test"))["changed"] == {"uplinks_removed": ["backup"]}
            assert set(daemon.uplinks) == {"mqtt"} and "uplink:backup" not in daemon.supervisor.tasks
            assert daemon.uplink is main and daemon.store.store.uplinks == ("mqtt",)
            # ... which, once it is removed, holds nothing back: the outbox drains as [mqtt] delivers
            await daemon.recorder.flush()
            await store_says(daemon, lambda store: store.outbox_depth()["telemetry"] <= 2 * 2)
    finally:
        await backup.stop()
        await server.close()
