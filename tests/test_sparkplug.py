"""Sparkplug B 3.0 (``encoding = "sparkplug_b"``) against a real Mosquitto, a real daemon and simulated Modbus meters.

Every message is decoded with the Eclipse Tahu proto through the protobuf runtime and checked by
``sparkplug_host.Host`` (seq continuity with its wrap, bdSeq of NBIRTH and NDEATH, aliases only after their birth,
births before data). On top: the will when the gateway dies, DDEATH/DBIRTH as a meter goes and comes back, a
rebirth asked by NCMD, DCMD writes through the platform command checks, replay flagged ``is_historical``, data
held while the primary host's STATE says offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from conftest import Broker, free_ports, running, until, write_config
from sparkplug_host import Host, host

from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.northbound.sparkplug_proto import datatype, payload_class
from simulators.meter import METER_POINTS, MeterServer, serve_meters

SITE = "test-site"
SPB = f"spBv1.0/community/%s/{SITE}"
pytestmark = pytest.mark.timeout(120)


def _points() -> list[dict[str, Any]]:
    points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]
    for p in points:
        if p["id"] == "relay_closed":
            p.update(writable=True, remote=True)
        if p["id"] == "voltage_a":
            p.update(writable=True)  # writable on the box, not from the platform
    return points


def config(tmp: Path, ports: list[int], mqtt_port: int, *, interval: str = "100ms", mqtt: str = "",
           sparkplug: str = "", extra: str = "") -> Path:
    buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
             for i, p in enumerate(ports)]
    devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval=interval, offline_after=2, points=_points())
               for i in range(len(ports))]
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=buses,
                        devices=devices)
    text = path.read_text(encoding="utf-8").replace("[mqtt]\n", f'[mqtt]\nencoding = "sparkplug_b"\n{mqtt}', 1)
    path.write_text(f"{text}\n[mqtt.sparkplug]\n{sparkplug}\n{extra}", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def meters(count: int) -> AsyncIterator[MeterServer]:
    server = await serve_meters("127.0.0.1", free_ports(count), count=count, tick_interval=0.05)
    try:
        yield server
    finally:
        await server.close()


def command(*metrics: dict[str, Any]) -> bytes:
    """An NCMD/DCMD payload as a host writes it (Tahu proto): a timestamp, the metrics, no seq."""
    payload = payload_class()()
    payload.timestamp = int(time.time() * 1000)
    for fields in metrics:
        payload.metrics.add(**fields)
    return bytes(payload.SerializeToString())


async def publish(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"host-cmd-{time.monotonic_ns()}") as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def clean(h: Host) -> None:
    assert not h.violations, "\n".join(h.violations[:20])


# -- birth, data, seq, will -------------------------------------------------------------------------------------

async def test_births_then_data_by_alias_seq_wraps_and_the_will_carries_the_birth_bdseq(
        tmp_path: Path, broker: Broker) -> None:
    async with meters(4) as server, host(broker.port) as h:
        path = config(tmp_path, server.ports, broker.port, interval="50ms")
        log = (tmp_path / "gateway.log").open("ab")
        child = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                     stdout=log, stderr=log)
        try:
            await until(lambda: h.violations or (h.wraps >= 1 and h.count("DDATA") > 300), within=60)
            child.send_signal(signal.SIGKILL)  # no goodbye: the broker says the will
            await child.wait()
            await until(lambda: h.count("NDEATH") == 1)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            log.close()
    clean(h)
    kinds = [s.kind for s in h.seen]
    assert kinds[:5] == ["NBIRTH", "DBIRTH", "DBIRTH", "DBIRTH", "DBIRTH"], kinds[:8]  # every birth before data
    nbirth, (ndeath,) = h.of("NBIRTH")[0], h.of("NDEATH")
    assert [m.long_value for m in ndeath.payload.metrics] == [nbirth.payload.metrics[0].long_value] == [h.bdseq]
    dbirth = {m["name"]: m for m in h.of("DBIRTH", "meter-0")[0].metrics()}
    assert dbirth["voltage_a"]["datatype"] == datatype("Double")
    assert dbirth["status"]["datatype"] == datatype("Int64")
    assert dbirth["relay_closed"]["datatype"] == datatype("Boolean")
    assert dbirth["Properties/Driver"]["string_value"] == "modbus"
    props = dbirth["voltage_a"]["properties"]
    assert dict(zip(props["keys"], props["values"], strict=True))["engUnit"]["string_value"] == "V"
    data = h.of("DDATA", "meter-0")[-1].metrics()
    voltage = next(m for m in data if int(m["alias"]) == int(dbirth["voltage_a"]["alias"]))
    assert 150 < voltage["double_value"] < 300 and "name" not in voltage and "datatype" not in voltage


# -- devices going and coming back, a rebirth asked for -------------------------------------------------------

async def test_a_meter_gone_is_a_ddeath_back_a_dbirth_and_an_ncmd_rebirth_births_everything_again(
        tmp_path: Path, broker: Broker) -> None:
    async with meters(2) as server, host(broker.port) as h:
        daemon = Daemon(load_config(config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await until(lambda: h.count("DDATA", "meter-0") >= 3)
            await server.stop_one(0)
            await until(lambda: h.count("DDEATH", "meter-0") == 1)
            dead_at = len(h.seen)
            await asyncio.sleep(0.5)
            await server.start_one(0)
            await until(lambda: h.count("DBIRTH", "meter-0") == 2 and h.count("DDATA", "meter-0") >= 6)
            between = [s for s in h.seen[dead_at:] if s.device == "meter-0"]
            assert between[0].kind == "DBIRTH", [s.kind for s in between[:3]]
            assert h.count("DDATA", "meter-1") > 10  # the other meter went on

            births = h.count("NBIRTH")
            await publish(broker.port, SPB % "NCMD", b"\x00\xff not protobuf")  # counted, nothing happens
            await publish(broker.port, SPB % "NCMD", command({"name": "Node Control/Rebirth", "boolean_value": True,
                                                              "datatype": datatype("Boolean")}))
            await until(lambda: h.count("NBIRTH") == births + 1 and h.count("DDATA", "meter-0") >= 10)
            dropped = daemon.uplink.encoder.dropped if daemon.uplink else None
    clean(h)
    assert dropped is not None and dropped["NCMD: not a Sparkplug B payload"] == 1
    first, second = h.of("NBIRTH")
    assert second.payload.seq == 0 and first.payload.metrics[0].long_value == second.payload.metrics[0].long_value
    after = [s.kind for s in h.seen[h.seen.index(second):]]
    assert after[1:3] == ["DBIRTH", "DBIRTH"], after[:5]  # the same session (no NDEATH), born again


# -- commands --------------------------------------------------------------------------------------------------

async def test_a_dcmd_write_reaches_a_remote_point_and_a_local_only_point_is_refused_and_audited(
        tmp_path: Path, broker: Broker) -> None:
    extra = '[commands]\nenabled = true\nallow = ["read", "write"]\n'
    async with meters(1) as server, host(broker.port) as h:
        meter = server.meters[0]
        meter.set_point("relay_closed", False)
        daemon = Daemon(load_config(config(tmp_path, server.ports, broker.port, sparkplug="commands = true\n",
                                           extra=extra)))
        async with running(daemon):
            await until(lambda: h.count("DDATA", "meter-0") >= 2)
            aliases = h.born_aliases("meter-0")
            await publish(broker.port, f"{SPB % 'DCMD'}/meter-0",  # by alias, as hosts write after a birth
                          command({"alias": aliases["relay_closed"], "boolean_value": True}))
            await until(lambda: meter.get_point("relay_closed") is True)
            before = meter.get_point("voltage_a")
            await publish(broker.port, f"{SPB % 'DCMD'}/meter-0",
                          command({"name": "voltage_a", "datatype": datatype("Double"), "double_value": 99.0}))

            async def refused() -> list[dict[str, Any]]:
                await daemon.recorder.flush()
                audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
                return [e for e in audit if e["action"] == "command" and e.get("target") == "meter-0.voltage_a"]

            entries: list[dict[str, Any]] = []
            for _ in range(150):  # 15 s at most
                entries = await refused()
                if entries:
                    break
                await asyncio.sleep(0.1)
            (entry,) = entries
            relay = aliases["relay_closed"]
            await until(lambda: any(m.get("alias") == str(relay) and m.get("boolean_value") is True
                                    for m in h.of("DDATA", "meter-0")[-1].metrics()))
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
    clean(h)
    assert entry["result"] == "rejected" and "not open to remote writes" in entry["error"]
    assert entry["actor"].endswith(f"sparkplug:{SITE}")
    assert abs(meter.get_point("voltage_a") - before) < 50  # never 99: the simulator's own wander only
    ok = [e for e in audit if e["action"] == "command" and e.get("target") == "meter-0.relay_closed"]
    assert [e["result"] for e in ok] == ["ok"]


# -- replay ----------------------------------------------------------------------------------------------------

async def test_what_waited_for_the_broker_is_replayed_is_historical_and_live_data_is_not(
        tmp_path: Path, broker: Broker) -> None:
    async with meters(1) as server, host(broker.port) as h:
        path = config(tmp_path, server.ports, broker.port,
                      mqtt='live_window = "1s"\nreplay_delay = "0s"\nreplay_batch = 20\n')
        broker.stop()
        daemon = Daemon(load_config(path))
        async with running(daemon):
            poller = daemon.pollers["meter-0"]
            await until(lambda: poller.state.polls >= 30)  # stored, older than the live window by the time they go
            back = time.time()
            broker.start()
            await until(lambda: any(_hist(s) is False and s.payload.metrics[0].timestamp > (back + 1) * 1000
                                    for s in h.of("DDATA", "meter-0")), within=30)
    clean(h)
    ddata = h.of("DDATA", "meter-0")
    assert all(_hist(s) is not None for s in ddata)  # a message is replay or live, never both
    replayed = [s for s in ddata if _hist(s)]
    assert any(len(s.payload.metrics) > len(METER_POINTS) for s in replayed)  # several polls to a message
    waited = {m.timestamp for s in ddata for m in s.payload.metrics if m.timestamp < (back - 1.5) * 1000}
    assert len(waited) >= 10 and all(_hist(s) for s in ddata if s.payload.metrics[0].timestamp in waited)


def _hist(seen: Any) -> bool | None:
    """True: every metric historical; False: none; None: mixed (never expected)."""
    flags = {m.is_historical for m in seen.payload.metrics}
    return None if len(flags) > 1 else flags.pop()


# -- the primary host ------------------------------------------------------------------------------------------

async def test_data_waits_while_the_primary_host_is_offline_and_it_coming_online_asks_for_a_birth(
        tmp_path: Path, broker: Broker) -> None:
    state = "spBv1.0/STATE/scada"
    async with meters(1) as server, host(broker.port) as h:
        daemon = Daemon(load_config(config(tmp_path, server.ports, broker.port, sparkplug='primary_host = "scada"\n')))
        async with running(daemon):
            polls = daemon.pollers["meter-0"]
            await until(lambda: polls.state.polls >= 10)
            assert h.seen == []  # no STATE yet: not even a birth, though ten polls are stored
            t1 = int(time.time() * 1000)
            await publish(broker.port, state, orjson.dumps({"online": True, "timestamp": t1}), retain=True)
            await until(lambda: h.count("DDATA") >= 3)
            await publish(broker.port, state, orjson.dumps({"online": False, "timestamp": t1}), retain=True)
            encoder = daemon.uplink.encoder if daemon.uplink else None
            await until(lambda: encoder is not None and not encoder.ready())
            await asyncio.sleep(0.5)  # what was on its way arrives
            held, polled = len(h.seen), polls.state.polls
            await until(lambda: polls.state.polls >= polled + 10)
            assert len(h.seen) == held, [s.kind for s in h.seen[held:]]  # ten more polls stored, none sent
            await publish(broker.port, state, orjson.dumps({"online": True, "timestamp": t1 + 10}), retain=True)
            await until(lambda: h.count("NBIRTH") == 2 and h.count("DDATA") >= held + 3)
            # an older will arriving late changes nothing
            await publish(broker.port, state, orjson.dumps({"online": False, "timestamp": t1 + 5}))
            count = h.count("DDATA")
            await until(lambda: h.count("DDATA") >= count + 3)
            dropped = daemon.uplink.encoder.dropped if daemon.uplink else None
    clean(h)
    assert dropped is not None and dropped["STATE: older than the last"] == 1
    _, second = h.of("NBIRTH")
    assert second.payload.seq == 0
    resumed = h.seen[h.seen.index(second):]
    assert [s.kind for s in resumed[:2]] == ["NBIRTH", "DBIRTH"]
    # the polls made while held were kept and sent after the new birth, none lost
    stamps = sorted({m.timestamp for s in h.of("DDATA") for m in s.payload.metrics})
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1000, max(gaps)
