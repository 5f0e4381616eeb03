"""The hardest field cases: lossy multi-read maps, hang-ups mid-poll, holes every few registers,
late replies, the probes of a dead unit counted, and relearn clearing what it fixed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import until
from test_field_devices import (
    HOST,
    assert_arrived,
    assert_never_offline,
    config,
    daemon_on,
    gateway_status,
    holding,
    polls,
    tcp_config,
    wire,
)
from test_field_devices_plans import GAPPY, GAPPY_POINTS, gappy_device

from drivers.modbus.codec import Table
from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from drivers.modbus.driver import ModbusDriver
from gateway.control import request
from gateway.core.data import Quality
from gateway.core.timing import wait_until
from gateway.daemon import control_path
from simulators.awkward import AwkwardDevice, serve_awkward
from simulators.converter import serve_converter


async def test_a_late_reply_on_modbus_tcp_is_a_timeout_not_garbage(tmp_path: Path) -> None:
    """A device answering in 300 ms under `timeout = "200ms"`: each reply arrives while the driver waits
    for the next request's, carrying the earlier transaction id. That is a device too slow for its
    timeout (kind ``timeout``: raise the timeout), not garbage on the wire (bad CRC, wrong unit: check
    the wiring)."""
    device = AwkwardDevice(delay=0.3)
    points = holding(*range(10))
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], points, bus={"timeout": "1s"}, timeout="200ms")
        async with daemon_on(path) as (daemon, _):
            await until(lambda: daemon.pollers["meter"].state.failures >= 3 and device.stats.answered >= 3, within=30)
            counted = wire(daemon)
            errors = dict(daemon.pollers["meter"].errors)
        assert set(errors) == {"timeout"}, errors
        assert "garbage" not in counted, counted


async def test_the_wire_counters_count_what_the_probes_of_a_dead_unit_cost(tmp_path: Path) -> None:
    """`gateway status --json` devices[].wire is what the device cost the wire, by kind. While the unit is
    offline its probes still cost the converter a serial timeout and an exception 11 each: they must be
    counted (as timeouts) like the polls' were."""
    converter = await serve_converter(HOST, 0, {1: "dead"}, serial_timeout=0.1)
    try:
        buses = [{"id": "conv", "driver": "modbus_tcp", "host": HOST, "port": converter.ports[0], "timeout": "1s"}]
        devices = [{"id": "dead", "bus": "conv", "unit": 1, "interval": "250ms", "points": holding(0, 1)}]
        async with daemon_on(config(tmp_path, buses, devices)) as (daemon, _):
            sent = converter.converter.stats.unit(1)
            driver = daemon.drivers["dead"]
            assert isinstance(driver, ModbusDriver)
            finished = driver.scheduler.stats  # transactions the driver has seen to their end
            # (until every request the converter took has been answered, and each answer heard by the driver:
            # the converter counts its timeout as it sends exception 11, the driver a moment later)
            await until(lambda: daemon.pollers["dead"].breaker_open and sent.requests >= 6
                        and sent.timeouts == sent.requests == finished.transactions, within=30)
            counted = driver.counters("dead")
    finally:
        await converter.close()
    assert sent.exceptions == {11: sent.requests}
    # 3 requests in the polls (offline_after; a unit never heard gets no retries), then one per probe; each
    # was a timeout
    assert counted.get("timeout") == sent.requests, (counted, sent)
    assert counted.get("probe") == sent.requests - 3, (counted, sent)


async def test_a_probe_cancelled_as_its_reply_arrives_ends_cancelled() -> None:
    """Shutdown cancels a probe at any moment, also when its reply has arrived and the task has not yet run
    on: pymodbus (asyncio.wait_for on Python 3.11) then returns the reply and drops the cancel. The probe
    must end cancelled all the same, or the poller goes on to wait out its probe backoff (up to probe_max)
    before it honours the cancel, and the daemon's shutdown with it."""
    async with await serve_converter(HOST, 0, {1: "dead"}, serial_timeout=0.05) as converter:
        sent = converter.converter.stats.unit(1)
        bus = ModbusTcpBus(id="conv", driver="modbus_tcp", host=HOST, port=converter.ports[0], timeout=1.0)
        device = ModbusDevice.model_validate({"id": "dead", "bus": "conv", "unit": 1, "points": holding(0)})
        driver = ModbusDriver(bus, [device])
        outcomes = []
        try:
            for turns in range(8):  # cancelled 0, 1, 2 ... loop turns after the converter answered
                probe = asyncio.create_task(driver.probe("dead"))
                answered = sent.timeouts
                # (every loop turn, not every 20 ms: the window is a few turns wide)
                await wait_until(lambda: sent.timeouts > answered, 5, "the converter's answer", every=0)  # noqa: B023
                for _ in range(turns):
                    await asyncio.sleep(0)
                if not probe.cancel():
                    outcomes.append((turns, "done before the cancel"))
                    continue
                try:
                    await probe
                except asyncio.CancelledError:
                    outcomes.append((turns, "cancelled"))
                else:
                    outcomes.append((turns, "cancel dropped"))
        finally:
            await driver.close()
    assert not [o for o in outcomes if o[1] == "cancel dropped"], outcomes
    assert [o for o in outcomes if o[1] == "cancelled"], outcomes  # (the cancels did land mid-probe)


# A meter whose map is read in three requests (three register groups far apart).
THREE_READS = holding(*range(0, 10), *range(300, 310), *range(600, 610))


async def test_a_lossy_device_read_in_three_requests_never_goes_offline(tmp_path: Path) -> None:
    """One request in five lost, as in test_a_lossy_device_is_retried_and_never_goes_offline, but the map
    takes three reads. A read whose retry is lost too must not throw away the reads that were answered in
    the same poll, nor fail the poll of a device that is answering."""
    device = AwkwardDevice(lossy=0.2)
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], THREE_READS, bus={"timeout": "100ms"}, interval="50ms")
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 120 or tape.kinds("device.offline"), within=120)
            counted = wire(daemon)
    assert_arrived(tape, "meter", {p["id"]: p["address"] for p in THREE_READS})
    assert_never_offline(tape, "meter")
    assert counted["timeout"] == device.stats.dropped


async def test_a_device_that_hangs_up_every_third_request_and_is_read_in_three_requests(tmp_path: Path) -> None:
    """It answers two requests in three and hangs up on the third (EOF, noticed at once). Read in three
    requests a poll, every poll meets one hang-up: the read it cut must be asked again on a fresh
    connection, not fail the whole poll (and with it the two reads that were answered)."""
    device = AwkwardDevice(drop_every=3)
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], THREE_READS, bus={"timeout": "5s"})
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 6 or tape.kinds("device.offline"), within=60)
            counted = wire(daemon)
    assert "timeout" not in counted  # EOF is noticed at once, as in the one-read test ...
    assert_arrived(tape, "meter", {p["id"]: p["address"] for p in THREE_READS})  # ... but nothing arrives
    assert_never_offline(tape, "meter")


async def test_a_map_with_a_hole_every_fourth_register_is_learnt_within_two_polls(tmp_path: Path) -> None:
    """A three-phase map (L1, L2, L3, N for 25 quantities, registers 0..99) on a meter without the N registers:
    every fourth register is missing. The 75 readable points must arrive good within two polls, and none of
    them be published bad on the way (only the 25 missing ones, once each)."""
    missing = set(range(3, 100, 4))
    device = AwkwardDevice(mapped={Table.HOLDING: [a for a in range(100) if a not in missing]})
    points = holding(*range(100))
    async with (await serve_awkward(HOST, 0, device) as server,
                daemon_on(tcp_config(tmp_path, server.ports[0], points)) as (daemon, tape)):
        await until(lambda: polls(daemon) >= 3)
    assert len(tape.kinds("device.point_unreadable")) == len(missing)
    bad = sorted({r.point for _, r in tape.readings if r.quality is Quality.BAD} - {f"h{a}" for a in missing})
    assert not bad, f"{len(bad)} readable points published bad: {bad[:8]} ..."
    assert_arrived(tape, "meter", {f"h{a}": a for a in range(100) if a not in missing})


async def test_a_point_readable_after_relearn_is_no_longer_listed_unreadable(tmp_path: Path) -> None:
    """The meter's firmware is updated and holding 7 now exists; the technician runs `relearn`. h7 reads
    good again, so `gateway status` must stop telling them to check its address."""
    device, _ = gappy_device()
    fixed = AwkwardDevice(mapped={**GAPPY, Table.HOLDING: [range(0, 30)]})  # holding 6, 7 and 12..19 now exist
    fixed.set(Table.HOLDING, 20, device.get(Table.HOLDING, 20, 8))
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], GAPPY_POINTS)
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 2)
            await server.stop_one(0)  # the meter is updated
            server.responders[0] = fixed
            await server.start_one(0)
            answer = await request(control_path(daemon.cfg), {"cmd": "relearn", "device": "meter"})
            assert answer["ok"]
            at = polls(daemon)
            await until(lambda: polls(daemon) >= at + 3 and 7 in tape.good_values("meter", "h7"))
            await daemon.recorder.flush()
            report = await gateway_status(path)
            listed = dict(daemon.pollers["meter"].unreadable)
    (status,) = report["devices"]
    assert set(status["unreadable"]) == {"i50"}, status["unreadable"]
    assert set(listed) == {"i50"}
