"""Serial fire panels: a simulated panel on a pty pair -> the daemon -> a real Mosquitto -> a subscriber.

The parser and the panel's latched state are also tested on their own (pure, fast), with
hypothesis throwing arbitrary bytes and lines at them: nothing crashes and no line is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import Broker, Collector, free_ports, running, until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.firepanel import formats
from drivers.firepanel.config import FirePanel, SerialLineBus, compile_pattern, load_format
from drivers.firepanel.driver import FirePanelDriver, PanelMonitor
from drivers.firepanel.parser import Line, LineParser, LineSplitter, decode
from gateway.config import load_config
from gateway.core.data import Event, Priority, Reading
from gateway.core.errors import DeviceUnreachable, DriverError
from gateway.daemon import Daemon
from simulators.firepanel import FirePanelSimulator
from simulators.meter import METER_POINTS, serve_meters

FORMATS = formats.available()
EXPECTED: dict[str, tuple[str, str]] = {
    # template -> (event kind, priority)
    "fire": ("fire.alarm", "alarm"),
    "prealarm": ("fire.prealarm", "alarm"),
    "supervisory": ("fire.supervisory", "alarm"),
    "fault": ("fire.fault", "event"),
    "fault_clear": ("fire.fault_cleared", "event"),
    "panel_fault": ("fire.fault", "event"),
    "panel_fault_clear": ("fire.fault_cleared", "event"),
    "disable": ("fire.disable", "event"),
    "enable": ("fire.enable", "event"),
    "activation": ("fire.activation", "event"),
    "silence": ("fire.silence", "event"),
    "reset": ("fire.reset", "alarm"),
}
LOCATED = {"fire", "prealarm", "supervisory", "fault", "fault_clear", "disable", "enable", "activation"}


# -- helpers -------------------------------------------------------------------------------------


def panel_config(tmp: Path, port: str, mqtt_port: int | None, *, fmt: str = "gst_cn", heartbeat: str = "0s",
                 bus: dict[str, Any] | None = None, more_buses: tuple[dict[str, Any], ...] = (),
                 more_devices: tuple[dict[str, Any], ...] = ()) -> Path:
    return write_config(
        tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port,
        buses=[{"id": "fire-port", "driver": "serial_lines", "port": port, **(bus or {})}, *more_buses],
        devices=[{"id": "panel", "bus": "fire-port", "format": fmt, "heartbeat": heartbeat}, *more_devices],
    )


async def listening(daemon: Daemon) -> FirePanelDriver:
    driver = daemon.drivers["panel"]
    assert isinstance(driver, FirePanelDriver)
    await until(lambda: driver.listening)
    return driver


def alarms_and_events(collector: Collector) -> list[tuple[str, dict[str, Any]]]:
    return [(t, m) for t, m in collector.messages if m.get("type") in ("alarm", "event")
            and m.get("source") == "panel"]


def raw_lines(db: Path) -> list[tuple[bytes, str | None]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [(bytes(d), p) for d, p in conn.execute("SELECT data, parsed FROM raw_lines ORDER BY seq")]


def latest(db: Path) -> dict[str, Any]:
    """Each point's last value in the panel's readings history."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT points FROM samples WHERE device = 'panel' ORDER BY ts, rowid").fetchall()
    return {point: reading["v"] for (points,) in rows for point, reading in json.loads(points).items()}


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_event_type_arrives_with_kind_priority_and_zone(fmt: str, tmp_path: Path, broker: Broker,
                                                                   collector: Collector) -> None:
    spec = load_format(fmt)
    ignore = next(p.sample for p in spec.patterns if p.event == "ignore")
    assert ignore is not None
    garbage = b"\x00\xff\xfeNOT A PANEL LINE \x81\r\n"
    mentions = "报警信号 (unknown layout)" if fmt == "gst_cn" else "FIRE DRILL IN PROGRESS"
    async with FirePanelSimulator(fmt, heartbeat=0) as sim:
        daemon = Daemon(load_config(panel_config(tmp_path, sim.port, broker.port, fmt=fmt)))
        async with running(daemon):
            await listening(daemon)
            sent: list[str] = []
            for name in spec.templates:
                await sim.send(name, loop=2, address=11, zone=7)
                sent.append(name)
            await sim.send_line(ignore)
            await sim.send_bytes(garbage)
            await sim.send_line(mentions)
            expected = len(EXPECTED) + 2
            await collector.wait_for(lambda: len(alarms_and_events(collector)) >= expected)
            await collector.wait_for(lambda: any(m["points"].get("fire_zones_active", {}).get("v") == 0
                                                 and m["points"]["comm_ok"]["v"] is True
                                                 for _, m in collector.of_type("telemetry")))
        got = alarms_and_events(collector)
        by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for topic, message in got:
            by_kind.setdefault(message["kind"], []).append((topic, message))
        for name in sent:
            if name == "heartbeat":
                continue
            kind, priority = EXPECTED[name]
            topic, message = by_kind[kind].pop(0)
            assert message["priority"] == priority, (name, message)
            assert topic == f"community/test-site/{priority}/{kind}", name
            data = message["data"]
            assert data["pattern"].startswith(f"{fmt}."), data
            assert data["panel_time"], data
            if name == "reset":
                assert len(data["cleared"]["fire"]) == 1, data  # it says what it cleared
            if name in LOCATED:
                assert int(data["zone"]) == 7 and data["address"].endswith("011"), (name, data)
            else:
                assert "zone" not in data, (name, data)
        # Alarms overtake events on the way: match unparsed lines by what they carry, not by order.
        unparsed = sorted((m for _, m in by_kind.pop("panel.unparsed")), key=lambda m: m["priority"])
        assert [m["priority"] for m in unparsed] == ["alarm", "event"]
        assert unparsed[0]["data"]["text"] == mentions
        assert bytes.fromhex(unparsed[1]["data"]["raw_hex"]) == garbage
        assert unparsed[1]["data"].get("decode_errors", False) is (spec.format.encoding != "latin-1")
        assert all(not rest for rest in by_kind.values()), by_kind  # nothing more, nothing less

    db = tmp_path / "data" / "gateway.db"
    stored = raw_lines(db)
    assert [data for data, _ in stored] == [data for _, data in sim.sent]  # byte for byte, in order
    assert [parsed is None for _, parsed in stored] == [False] * (len(sent) + 1) + [True, True]
    state = latest(db)
    assert (state["fire_zones_active"], state["faults_active"], state["disabled_active"]) == (0, 0, 0)


async def test_gbk_text_arrives_intact_upstream(tmp_path: Path, broker: Broker) -> None:
    place = "堃喆苑3号楼B座十二层 消防电梯前室"  # 堃 and 喆 are GBK but not GB2312, as panels print them
    async with FirePanelSimulator("gst_cn", heartbeat=0) as sim:
        config = panel_config(tmp_path, sim.port, broker.port, bus={"encoding": "gb2312"})
        daemon = Daemon(load_config(config))
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="raw-reader") as client:
            await client.subscribe("community/test-site/alarm/fire.alarm", qos=1)
            async with running(daemon):
                await listening(daemon)
                await sim.send("fire", zone=12, description=place)
                async with asyncio.timeout(10):
                    message = await anext(aiter(client.messages))
        payload = bytes(message.payload)  # type: ignore[arg-type]
        assert place.encode("utf-8") in payload  # UTF-8 JSON, not \u escapes
        assert b"\\u" not in payload
    assert sim.sent[0][1].decode("gbk").startswith("火警 001-023 光电感烟 12区 " + place)


async def test_heartbeat_loss_raises_comm_lost_and_recovery_clears_it(tmp_path: Path, broker: Broker,
                                                                      collector: Collector) -> None:
    def comm_ok() -> list[bool]:
        return [m["points"]["comm_ok"]["v"] for _, m in collector.of_type("telemetry")]

    def kinds() -> list[str]:
        return [m["kind"] for _, m in alarms_and_events(collector)]

    async with FirePanelSimulator("notifier_en", heartbeat=0.2) as sim:
        daemon = Daemon(load_config(panel_config(tmp_path, sim.port, broker.port, fmt="notifier_en",
                                                 heartbeat="800ms")))
        async with running(daemon):
            await listening(daemon)
            await collector.wait_for(lambda: True in comm_ok())
            assert "panel.comm_lost" not in kinds()
            sim.go_silent()
            await collector.wait_for(lambda: "panel.comm_lost" in kinds())
            await collector.wait_for(lambda: comm_ok()[-1] is False)
            silent = daemon.sink.states["panel"]  # a silent panel is the device's state, as a dead meter's is
            assert silent.state == "offline" and silent.errors == {"timeout": 1}
            sim.speak()
            await collector.wait_for(lambda: "panel.comm_restored" in kinds())
            await collector.wait_for(lambda: comm_ok()[-1] is True)
            assert daemon.sink.states["panel"].state == "online"
    (lost,) = [m for _, m in alarms_and_events(collector) if m["kind"] == "panel.comm_lost"]
    (restored,) = [m for _, m in alarms_and_events(collector) if m["kind"] == "panel.comm_restored"]
    assert lost["type"] == "alarm" and lost["data"]["reason"] == "silent" and lost["data"]["silent_for"] >= 0.8
    assert restored["priority"] == "alarm" and restored["ts"] > lost["ts"]
    stale = [m for _, m in collector.of_type("telemetry") if m["points"]["comm_ok"]["v"] is False]
    assert stale[0]["points"]["fire_zones_active"]["q"] == "stale"  # unheard, the panel's state is not known


async def test_unplugged_port_is_reported_and_the_stream_comes_back(tmp_path: Path) -> None:
    async with FirePanelSimulator("gst_cn", heartbeat=0) as sim:
        daemon = Daemon(load_config(panel_config(tmp_path, sim.port, None)))
        events: list[Event] = []
        daemon.bus.on_event(events.append)
        async with running(daemon):
            driver = await listening(daemon)
            await sim.send("heartbeat")
            await until(lambda: driver.monitor.comm is True)
            await sim.unplug()
            await until(lambda: any(e.kind == "panel.comm_lost" for e in events))
            await sim.replug()
            await until(lambda: driver.listening, within=15)  # the stream opens the port again by itself
            await sim.send("fire", zone=2)
            await until(lambda: any(e.kind == "fire.alarm" for e in events))
    lost = next(e for e in events if e.kind == "panel.comm_lost")
    assert lost.priority is Priority.ALARM and lost.payload["reason"] == "port"
    assert not any(e.kind == "gateway.task_crashed" for e in events)  # a field failure is no crash
    assert daemon.sink.states["panel"].state == "online" and daemon.sink.states["panel"].failures >= 1
    kinds = [e.kind for e in events if e.source == "panel"]
    assert kinds == ["panel.comm_lost", "panel.comm_restored", "fire.alarm"]


async def test_fire_alarm_overtakes_a_telemetry_backlog(tmp_path: Path, broker: Broker,
                                                        collector: Collector) -> None:
    meters = await serve_meters("127.0.0.1", free_ports(1), count=1)
    meter_bus = {"id": "meters", "driver": "modbus_tcp", "host": "127.0.0.1", "port": meters.ports[0]}
    meter = {"id": "meter", "bus": "meters", "interval": "50ms", "points": METER_POINTS}
    try:
        async with FirePanelSimulator("gst_cn", heartbeat=0) as sim:
            config = panel_config(tmp_path, sim.port, broker.port, more_buses=(meter_bus,), more_devices=(meter,))
            daemon = Daemon(load_config(config))
            async with running(daemon):
                await listening(daemon)
                await collector.wait_for(lambda: len(collector.of_type("telemetry")) >= 3)
                broker.stop()
                before, stopped = len(collector.messages), time.time()
                await asyncio.sleep(1.5)
                await sim.send("fire", zone=9)
                await asyncio.sleep(0.3)
                depth = await daemon.store.run(daemon.store.store.outbox_depth)
                assert depth["telemetry"] >= 20 and depth["alarm"] >= 1, depth
                broker.start()
                await collector.wait_for(lambda: any(m.get("kind") == "fire.alarm" for _, m in collector.messages),
                                         within=20)
        # Made during the outage (what the broker still held for the subscriber is older and comes first).
        after = [m for _, m in collector.messages[before:]
                 if m.get("type") not in ("status", "meta", "state") and m["ts"] >= stopped]
        assert after[0]["kind"] == "fire.alarm", [m.get("kind", m["type"]) for m in after[:5]]
        assert after[0]["data"]["zone"] == "09"
    finally:
        await meters.close()


# -- the shipped formats ---------------------------------------------------------------------------


def parser_for(fmt: str, encoding: str | None = None) -> LineParser:
    spec = load_format(fmt)
    patterns = [(f"{fmt}.{i}", p.event, compile_pattern(p.regex)) for i, p in enumerate(spec.patterns)]
    return LineParser(patterns, encoding or spec.format.encoding)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_sample_is_read_as_its_own_event(fmt: str) -> None:
    parser = parser_for(fmt)
    events = set()
    for pattern in load_format(fmt).patterns:
        assert pattern.sample is not None
        parsed = parser.parse(decode(pattern.sample.encode(parser.encoding) + b"\r\n", parser.encoding)[0])
        assert parsed is not None and parsed.event == pattern.event, pattern.sample
        events.add(pattern.event)
    assert events >= {"fire", "prealarm", "fault", "fault_clear", "supervisory", "disable", "enable", "silence",
                      "reset", "heartbeat"}


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=60, deadline=None)
@given(zone=st.integers(1, 999), loop=st.integers(1, 9), address=st.integers(1, 199), data=st.data())
def test_every_template_reads_back(fmt: str, zone: int, loop: int, address: int, data: st.DataObject) -> None:
    sim = FirePanelSimulator(fmt, heartbeat=0)
    parser = parser_for(fmt)
    letters = st.characters(codec="gbk" if parser.encoding == "gbk" else "ascii", categories=["L", "N"])
    description = data.draw(st.text(letters, min_size=1, max_size=20))
    for name, template in sim.panel_format.templates.items():
        fields: dict[str, Any] = {"zone": zone, "loop": loop, "address": address}
        if template.description is None:  # panel-wide lines keep their own wording
            fields["description"] = description
        line = sim.encode(sim.render(name, **fields))
        parsed = parser.parse(decode(line, parser.encoding)[0])
        assert parsed is not None and parsed.event == template.event, (name, line)
        if template.event in LOCATED and name.startswith(template.event):
            assert int(parsed.fields["zone"]) == zone and parsed.fields["address"].endswith(f"{address:03d}")
            if template.description is None:
                assert parsed.fields["description"] == description


# -- latching --------------------------------------------------------------------------------------


def monitor(fmt: str = "gst_cn") -> tuple[PanelMonitor, FirePanelSimulator]:
    return PanelMonitor("panel", parser_for(fmt), alarm_words=load_format(fmt).format.alarm_words), \
        FirePanelSimulator(fmt, heartbeat=0)


def feed(m: PanelMonitor, sim: FirePanelSimulator, name: str, **fields: Any) -> list[Event]:
    return m.take(Line(sim.encode(sim.render(name, **fields))), 0.0, 0.0).events


def state(m: PanelMonitor) -> dict[str, Any]:
    return {r.point: r.value for r in m.readings(0.0)}


def test_reset_clears_latched_fire_but_not_disablements() -> None:
    m, sim = monitor()
    feed(m, sim, "fire", zone=3, address=1)
    feed(m, sim, "fire", zone=3, address=2)  # a second detector in the same zone
    (repeat,) = feed(m, sim, "fire", zone=5, address=9)
    assert repeat.payload["repeat"] is False
    assert feed(m, sim, "fire", zone=5, address=9)[0].payload["repeat"] is True
    feed(m, sim, "prealarm", zone=6)
    feed(m, sim, "supervisory", zone=8)
    feed(m, sim, "fault", address=40)
    feed(m, sim, "panel_fault")
    feed(m, sim, "disable", address=77)
    feed(m, sim, "silence")
    assert state(m) == {"comm_ok": True, "fire_zones_active": 2, "fire_zones": "03,05", "prealarms_active": 1,
                        "supervisory_active": 1, "faults_active": 2, "disabled_active": 1, "silenced": True}
    (reset,) = feed(m, sim, "reset")
    assert reset.priority is Priority.ALARM
    assert reset.payload["cleared"] == {"fire": ["001-001", "001-002", "001-009"], "prealarm": ["001-023"],
                                        "supervisory": ["001-023"], "faults": ["001-040", "主电故障"]}
    assert state(m) == {"comm_ok": True, "fire_zones_active": 0, "fire_zones": "", "prealarms_active": 0,
                        "supervisory_active": 0, "faults_active": 0, "disabled_active": 1, "silenced": False}
    feed(m, sim, "enable", address=77)
    assert state(m)["disabled_active"] == 0


def test_faults_clear_one_by_one_and_a_new_fire_ends_a_silence() -> None:
    m, sim = monitor("notifier_en")
    feed(m, sim, "fault", address=11)
    feed(m, sim, "panel_fault")
    (cleared,) = feed(m, sim, "fault_clear", address=11)
    assert cleared.payload["was_active"] is True
    assert state(m)["faults_active"] == 1
    feed(m, sim, "panel_fault_clear")
    assert state(m)["faults_active"] == 0
    feed(m, sim, "fire", zone=1)
    feed(m, sim, "silence")
    feed(m, sim, "fire", zone=1)  # the same fire printed again: still silenced
    assert state(m)["silenced"] is True
    feed(m, sim, "fire", zone=2, address=5)
    assert state(m)["silenced"] is False


def test_readings_only_when_the_state_changes_or_on_heartbeat() -> None:
    m, sim = monitor()
    assert m.take(Line(sim.encode(sim.render("heartbeat"))), 0.0, 0.0).readings  # first contact
    assert m.take(Line(sim.encode(sim.render("heartbeat"))), 0.0, 0.0).readings  # every heartbeat
    assert not m.take(Line(sim.encode(sim.render("activation"))), 0.0, 0.0).readings
    assert m.take(Line(sim.encode(sim.render("fire"))), 0.0, 0.0).readings


def test_silence_longer_than_the_heartbeat_is_comm_lost_once() -> None:
    m = PanelMonitor("panel", parser_for("gst_cn"), heartbeat=10.0)
    m.listening(100.0)
    assert m.deadline() == 110.0
    assert not m.check(1.0, 109.9).events
    (lost,) = m.check(1.0, 110.0).events
    assert (lost.kind, lost.priority, lost.payload["reason"]) == ("panel.comm_lost", Priority.ALARM, "silent")
    assert not m.check(1.0, 500.0).events and not m.port_lost("gone", 1.0).events  # said once
    restored, _ = m.take(Line(b"\xb8\xb4\xce\xbb\r\n"), 2.0, 130.0).events  # 复位
    assert restored.kind == "panel.comm_restored" and restored.payload["silent_for"] == 30.0


def test_unparsed_line_that_mentions_fire_is_an_alarm() -> None:
    m, _ = monitor()
    (ev,) = m.take(Line("3号楼 火警 确认\r\n".encode("gbk")), 0.0, 0.0).events
    assert (ev.kind, ev.priority, ev.payload["mentions"]) == ("panel.unparsed", Priority.ALARM, "火警")
    m.take(Line(b"hello\r\n"), 0.0, 0.0)
    (quiet,) = m.take(Line(b"system check\r\n"), 0.0, 0.0).events
    assert quiet.priority is Priority.EVENT and "mentions" not in quiet.payload


# -- hypothesis: never crash, never lose a line ----------------------------------------------------


class RecordingSink:
    def __init__(self) -> None:
        self.raw_records: list[tuple[bytes, dict[str, Any] | None]] = []
        self.events: list[Event] = []
        self.failures: list[tuple[str, DriverError]] = []

    def readings(self, device: str, readings: list[Reading]) -> None:
        pass

    def event(self, event: Event) -> None:
        self.events.append(event)

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        self.raw_records.append((data, parsed))

    def device_failed(self, device: str, error: DriverError) -> None:
        self.failures.append((device, error))

    def device_ok(self, device: str) -> None:
        self.failures.clear()


def driver_for(fmt: str, **bus: Any) -> FirePanelDriver:
    return FirePanelDriver(SerialLineBus(id="b", driver="serial_lines", port="/dev/null", **bus),
                           [FirePanel(id="panel", bus="b", format=fmt)])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=20),
       terminator=st.sampled_from(["\n", "\r\n", "\r"]), max_line=st.integers(16, 300))
def test_splitter_keeps_every_byte(data: bytes, cuts: list[int], terminator: str, max_line: int) -> None:
    splitter = LineSplitter(terminator.encode(), max_line)
    lines: list[Line] = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        lines += splitter.feed(data[previous:cut])
        previous = cut
        assert splitter.pending < max_line
    tail = splitter.flush()
    if tail is not None:
        lines.append(tail)
    assert b"".join(line.data for line in lines) == data
    for line in lines:
        assert 0 < len(line.data) <= max_line
        if line.complete:
            assert line.data.endswith(terminator.encode())
            assert terminator.encode() not in line.data[:-len(terminator)]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), fmt=st.sampled_from(FORMATS),
       encoding=st.sampled_from(["utf-8", "gbk", "gb2312", "gb18030", "latin-1"]))
def test_arbitrary_bytes_never_crash_and_each_line_is_one_raw_record(data: bytes, fmt: str, encoding: str) -> None:
    driver = driver_for(fmt, encoding=encoding, max_line=128)
    sink = RecordingSink()
    splitter = LineSplitter(b"\n", 128)
    lines = [*splitter.feed(data), *filter(None, [splitter.flush()])]
    for line in lines:
        before = len(sink.raw_records)
        driver.take(sink, line, 0.0, 0.0)
        assert len(sink.raw_records) == before + 1
        assert sink.raw_records[-1][0] == line.data
    assert b"".join(d for d, _ in sink.raw_records) == data
    assert not any(p is not None and p.get("event") == "error" for _, p in sink.raw_records)  # no bug path taken
    unparsed = sum(1 for _, p in sink.raw_records if p is None)
    assert unparsed == sum(1 for e in sink.events if e.kind == "panel.unparsed")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200), fmt=st.sampled_from(FORMATS))
def test_arbitrary_lines_never_crash_the_parser(text: str, fmt: str) -> None:
    parser = parser_for(fmt)
    data = text.encode(parser.encoding, errors="replace") + b"\r\n"
    decoded, _ = decode(data, parser.encoding)
    parsed = parser.parse(decoded)
    if parsed is not None:
        assert set(parsed.fields) <= {"zone", "loop", "address", "device", "description", "time", "state"}
    driver = driver_for(fmt)
    sink = RecordingSink()
    driver.take(sink, Line(data), 0.0, 0.0)
    assert [d for d, _ in sink.raw_records] == [data]


async def test_a_missing_port_is_unreachable_and_reported() -> None:
    driver = driver_for("gst_cn")
    driver.bus = SerialLineBus(id="b", driver="serial_lines", port="/nonexistent/ttyUSB9")
    sink = RecordingSink()
    stream = asyncio.create_task(driver.stream(sink))
    await until(lambda: bool(sink.failures))
    stream.cancel()  # the stream keeps trying: a missing port is the panel's state, never the end of the bus
    with contextlib.suppress(asyncio.CancelledError):
        await stream
    (device, error), *_ = sink.failures
    assert device == "panel" and isinstance(error, DeviceUnreachable) and "cannot open" in str(error)
    (ev,) = sink.events
    assert (ev.kind, ev.priority, ev.payload["reason"]) == ("panel.comm_lost", Priority.ALARM, "port")


# -- the simulator -----------------------------------------------------------------------------------

SCRIPT = """\
# a fire on the 5th floor, silenced, then reset
@send fire zone=5 address=31 description=2号楼5层电梯前室
@sleep 0.05
@hex c4e3bac30d0a
消音 {time}
@silent 0.1
@send reset
"""


async def test_a_script_reaches_the_driver_as_events() -> None:
    async with FirePanelSimulator("gst_cn", heartbeat=0) as sim:
        driver = driver_for("gst_cn")
        driver.bus = SerialLineBus(id="b", driver="serial_lines", port=sim.port)
        sink = RecordingSink()
        stream = asyncio.create_task(driver.stream(sink))
        try:
            await until(lambda: driver.listening)
            await sim.run_script(SCRIPT.splitlines())
            await sim.run_random(50.0, count=20)
            await until(lambda: len(sink.raw_records) == 24)
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
    kinds = [e.kind for e in sink.events][:4]
    assert kinds == ["fire.alarm", "panel.unparsed", "fire.silence", "fire.reset"]
    assert sink.events[0].payload["description"] == "2号楼5层电梯前室"
    assert sink.raw_records[1] == (bytes.fromhex("c4e3bac30d0a"), None)  # "你好": no pattern, kept as is
    assert [d for d, _ in sink.raw_records] == [d for _, d in sim.sent]
    with pytest.raises(ValueError, match="script line 2: "):
        await sim.run_script(["# ok", "@send no_such_template"])


async def test_run_firepanel_runs_until_cancelled(tmp_path: Path) -> None:
    from simulators.firepanel import run_firepanel

    script = tmp_path / "panel.txt"
    script.write_text(SCRIPT, encoding="utf-8")
    task = asyncio.create_task(run_firepanel("notifier_en", script=script, random_rate=20.0, heartbeat=0.05,
                                             silent_after=0.1, silent_for=0.1, seed=3))
    await asyncio.sleep(0.6)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
