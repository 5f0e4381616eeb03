"""Broker failover: an uplink lists two Mosquitto brokers (``hosts``, as the nodes of a cluster), walks them when one
dies, says which one it is on, and replays its backlog wherever it lands: nothing stored is lost, each device's
readings arrive in order, and duplicates come only from at-least-once (counted).

Meters poll over real Modbus TCP throughout. The first broker is SIGKILLed: the uplink moves to the second. Then
the second is killed too, so the backlog builds while the uplink walks both with backoff; the first comes back, and
the uplink lands there and delivers everything.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Broker, free_ports, running, until
from uplink_sites import (
    RECONNECT,
    Timed,
    duplicates,
    heard,
    per_device,
    persist_sessions,
    received,
    site_config,
    store_says,
)

from gateway.config import load_config
from gateway.config.uplink import MqttConfig
from gateway.daemon import Daemon
from gateway.northbound.brokers import BrokerWalk, first_broker
from simulators.meter import serve_meters

pytestmark = pytest.mark.timeout(150)
METERS = 4


def test_a_fleet_sharing_one_hosts_list_spreads_over_the_nodes() -> None:
    config = MqttConfig(hosts=["node-1", "node-2", "node-3"])
    starts = Counter(BrokerWalk(config.brokers(), 1, 2, first_broker(config, f"site-{i}")).current[0]
                     for i in range(300))
    assert set(starts) == {"node-1", "node-2", "node-3"} and min(starts.values()) > 60, starts
    assert first_broker(config, "site-7") == first_broker(config, "site-7")  # the same node after a restart
    listed = MqttConfig(hosts=["node-1", "node-2"], hosts_order="listed")
    assert {BrokerWalk(listed.brokers(), 1, 2, first_broker(listed, f"s{i}")).current[0] for i in range(20)} == {
        "node-1"}


def test_the_walk_moves_on_at_once_and_backs_off_only_after_a_whole_round() -> None:
    walk = BrokerWalk([("a", 1883), ("b", 1884), ("c", 1885)], 1.0, 8.0)
    assert walk.label == "a:1883"
    delays = []
    for _ in range(9):
        delays.append(walk.failed())
    assert [walk.brokers[i][0] for i in (0, 1, 2)] == ["a", "b", "c"] and walk.label == "a:1883"
    assert delays[0] == delays[1] == 0 and delays[3] == delays[4] == 0 and delays[6] == delays[7] == 0
    assert 0.5 <= delays[2] <= 1.0 and 1.0 <= delays[5] <= 2.0 and 2.0 <= delays[8] <= 4.0  # doubling, jittered
    walk.failed()
    walk.connected()  # on b: a success resets the round and the backoff
    assert walk.label == "b:1884" and walk.failed() == 0 and walk.failed() == 0 and 0.5 <= walk.failed() <= 1.0
    one = BrokerWalk([("only", 1883)], 0.2, 1.0)
    assert all(0 < one.failed() <= 1.0 for _ in range(5)) and one.label == "only:1883"  # plain backoff
    assert BrokerWalk([("::1", 8883)], 1, 2).label == "[::1]:8883"


async def test_the_uplink_moves_to_the_live_broker_and_replays_its_backlog_wherever_it_lands(
        tmp_path: Path, broker: Broker, second: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(METERS), count=METERS)
    first_label, second_label = f"127.0.0.1:{broker.port}", f"127.0.0.1:{second.port}"
    path = tmp_path / "gateway.toml"
    hosts = f'hosts = ["{first_label}", "{second_label}"]\nhosts_order = "listed"\n'
    path.write_text(site_config(tmp_path / "data", server.ports, hosts + f'{RECONNECT}replay_delay = "0s"\n'))
    one, two = Timed(broker.port), Timed(second.port)
    await one.start()
    await two.start()
    persist_sessions(broker)  # each subscriber's session is on its broker's disk through the kills
    persist_sessions(second)
    try:
        daemon = Daemon(load_config(path), config_path=path)
        carried = heard(daemon)
        async with running(daemon):
            up = daemon.uplink
            assert up is not None

            def on(label: str) -> bool:
                return up.status.state == "connected" and up.status.broker == label

            await until(lambda: on(first_label))
            await store_says(daemon, lambda s: dict(s.meta().get("uplink", {})).get("broker") == first_label)
            await until(lambda: len(one.readings()) >= 10 * METERS)

            killed = time.time()
            broker.stop(kill=True)
            await until(lambda: on(second_label))
            moved = time.time() - killed
            await until(lambda: any(at > killed for at, *_ in two.readings()))
            first_there = min(at for at, *_ in two.readings() if at > killed) - killed
            await store_says(daemon, lambda s: dict(s.meta().get("uplink", {})).get("broker") == second_label)
            await until(lambda: len(two.readings()) >= 10 * METERS)

            both_down = time.time()
            second.stop(kill=True)  # nowhere to go: the backlog builds while the uplink walks both, backing off
            await until(lambda: up.status.state == "disconnected")
            await until(lambda: sum(1 for _, ts in carried if ts > both_down + 0.5) >= 100, within=60)
            backlog: int = await daemon.store.run(daemon.store.store.backlog)
            assert backlog >= 100
            broker.start()
            returned = time.time()

            await until(lambda: on(first_label), within=30)
            landed = time.time() - returned
            await until(lambda: any(ts > returned + 1.5 for _, ts in list(carried)))
            wanted = {r for r in carried if r[1] < returned + 1.0}
            merged = Merged(one, two)
            await received(merged, wanted, within=60)

        readings = merged.readings()
        for device, rows in per_device(readings).items():
            stamps = [ts for _, ts, _ in rows]
            assert stamps == sorted(stamps), f"{device}: out of order across the brokers"
        print(f"\nfailover: on the second broker {moved * 1000:.0f} ms after the first was killed, its first reading "
              f"there {first_there * 1000:.0f} ms after; back on the first {landed:.2f} s after it returned, with a "
              f"backlog of {backlog}; {len(readings)} readings, {duplicates(readings)} duplicates (at least once)")
        assert moved < 5.0  # a bound, not a speed target: the walk moves on at once
    finally:
        await one.stop()
        await two.stop()
        await server.close()


class Merged:
    """What both subscribers received, as one stream in arrival order (the platform behind a cluster sees one)."""

    def __init__(self, *collectors: Timed) -> None:
        self.collectors = collectors

    def readings(self) -> list[tuple[float, str, float, str]]:
        return sorted((r for c in self.collectors for r in c.readings()), key=lambda r: r[0])
