"""The point catalog (`DeviceConfig.describe`): what each driver's points hold, may be written with, and where
they live; checked against shipped profiles, real configs and what the drivers' decoders actually produce."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from drivers.bacnet.config import BacnetBus, BacnetDevice
from drivers.bacnet.driver import BacnetDriver
from drivers.firepanel.config import STATE_POINTS, FirePanel, compile_pattern, load_format
from drivers.firepanel.driver import PanelMonitor
from drivers.firepanel.parser import Line, LineParser
from drivers.modbus import profiles
from drivers.modbus.codec import BIT_TABLES, DataType, Order, Table
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import DevicePlan
from gateway.cli import main
from gateway.config import load_config
from gateway.core.data import Quality, Value
from gateway.core.points import PointInfo
from simulators.bacnet import serve_bacnet
from simulators.firepanel import FirePanelSimulator

REPO = Path(__file__).resolve().parent.parent
PYTHON_TYPE = {"bool": bool, "int": int, "float": float, "string": str}


def holds(datatype: str, value: Value) -> bool:
    """Whether a reading's value is of the catalog's datatype (a bool is not an int here)."""
    return type(value) is PYTHON_TYPE[datatype]


def by_id(infos: list[PointInfo]) -> dict[str, PointInfo]:
    return {info.id: info for info in infos}


# -- Modbus ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", profiles.available())
def test_a_profile_device_lists_every_profile_point_in_order(name: str) -> None:
    device = ModbusDevice(id="d", bus="b", profile=name)
    assert device.point_ids() == [p["id"] for p in profiles.load(name)["points"]]
    assert [info.id for info in device.describe()] == [p.id for p in device.points]


def test_modbus_meter_profiles() -> None:
    single = by_id(ModbusDevice(id="m", bus="b", profile="single_phase_meter").describe())
    assert single["voltage"] == PointInfo("voltage", "float", "V", description="uint16 * 0.1", address="holding 0")
    assert single["power"] == PointInfo("power", "int", "W", description="int16", address="holding 2")
    assert (single["energy_import"].datatype, single["energy_import"].unit) == ("float", "kWh")
    assert single["relay_closed"] == PointInfo("relay_closed", "bool", writable=True, address="coil 0")
    three = by_id(ModbusDevice(id="m", bus="b", profile="three_phase_meter").describe())
    assert (three["voltage_a"].datatype, three["voltage_a"].description) == ("float", "float32")
    assert (three["energy_import"].datatype, three["energy_import"].description) == ("float", "float64")
    assert (three["serial_number"].datatype, three["serial_number"].address) == ("int", "input 0")
    assert three["tamper"] == PointInfo("tamper", "bool", address="discrete 0")
    water = by_id(ModbusDevice(id="w", bus="b", profile="water_meter").describe())
    assert water["total_volume"] == PointInfo("total_volume", "float", "m3", description="uint32 * 0.001",
                                              address="holding 2")
    assert [i.id for i in water.values() if i.writable] == ["valve_command"]


def test_modbus_elevator_profile_states_and_the_override_of_a_profile_point() -> None:
    device = ModbusDevice.model_validate({"id": "lift", "bus": "b", "profile": "elevator", "exclude": ["load_kg"],
                                          "points": [{"id": "fault_code", "writable": True, "min": 0, "max": 99}]})
    lift = by_id(device.describe())
    assert "load_kg" not in lift and device.point_ids()[0] == "fault_code"  # own points first, then the profile's
    assert lift["direction"] == PointInfo("direction", "string", states={0: "stopped", 1: "up", 2: "down"},
                                          description="uint16", address="holding 1")
    assert lift["current_floor"].datatype == "int"
    assert lift["fault_code"] == PointInfo("fault_code", "int", writable=True, min=0, max=99, description="uint16",
                                           address="holding 4")
    assert lift["fire_recall"] == PointInfo("fire_recall", "bool", writable=True, address="coil 0")


def test_modbus_encoding_address_and_write_limits() -> None:
    device = ModbusDevice.model_validate({"id": "ahu", "bus": "b", "points": [
        {"id": "supply", "address": 0, "type": "int16", "scale": 0.1, "offset": -40, "unit": "°C"},
        {"id": "setpoint", "address": 1, "type": "int32", "word_order": "little", "byte_order": "little",
         "scale": 2, "writable": True, "min": 10, "max": 30, "unit": "°C"},
        {"id": "speed", "address": 3, "writable": True, "allowed": [0, 50, 100], "unit": "%"},
        {"id": "alarm", "address": 4, "type": "bool", "bit": 3},
        {"id": "running", "address": 5, "type": "bool"},
        {"id": "fan", "address": 6, "writable": True, "states": {0: "off", 1: "low", 2: "high"}},
        {"id": "limit", "address": 7, "type": "float32", "min": 0, "max": 5},  # limits of a read-only point: none
    ]})
    ahu = by_id(device.describe())
    assert ahu["supply"] == PointInfo("supply", "float", "°C", description="int16 * 0.1 - 40", address="holding 0")
    assert ahu["setpoint"] == PointInfo("setpoint", "float", "°C", writable=True, min=10, max=30,
                                        description="int32 * 2, words little-endian, bytes swapped",
                                        address="holding 1")
    assert (ahu["speed"].datatype, ahu["speed"].allowed) == ("int", (0.0, 50.0, 100.0))
    assert ahu["alarm"] == PointInfo("alarm", "bool", address="holding 4 bit 3")
    assert ahu["running"] == PointInfo("running", "bool", description="non-zero register", address="holding 5")
    assert ahu["fan"] == PointInfo("fan", "string", writable=True, states={0: "off", 1: "low", 2: "high"},
                                   description="uint16", address="holding 6")
    assert (ahu["limit"].min, ahu["limit"].max) == (None, None)


# The property: whatever a valid point and whatever the registers, a good reading holds the catalog's type.

ORDERS = st.sampled_from(list(Order))
STATES = st.none() | st.dictionaries(st.integers(-3, 70000), st.sampled_from(["off", "on", "auto", "fault"]),
                                     max_size=4)
SCALES = st.sampled_from([1.0, 1.0, 2.0, 0.1, -1.0, 0.001]) | st.floats(-1e6, 1e6).filter(lambda x: x != 0)
OFFSETS = st.sampled_from([0.0, 0.0, -40.0, 1.0]) | st.floats(-1e6, 1e6)


@st.composite
def modbus_points(draw: st.DrawFn, index: int) -> dict[str, Any]:
    table = draw(st.sampled_from(list(Table)))
    dtype = DataType.BOOL if table in BIT_TABLES else draw(st.sampled_from(list(DataType)))
    point: dict[str, Any] = {"id": f"p{index}", "table": table.value, "type": dtype.value,
                             "address": draw(st.integers(0, 40)), "word_order": draw(ORDERS),
                             "byte_order": draw(ORDERS), "scale": draw(SCALES), "offset": draw(OFFSETS),
                             "states": draw(STATES)}
    if dtype is DataType.BOOL and table not in BIT_TABLES:
        point["bit"] = draw(st.none() | st.integers(0, 15))
    return point


@st.composite
def modbus_devices(draw: st.DrawFn) -> ModbusDevice:
    points = [draw(modbus_points(i)) for i in range(draw(st.integers(1, 6)))]
    return ModbusDevice.model_validate({"id": "d", "bus": "b", "points": points, "max_gap": draw(st.integers(0, 8))})


@settings(max_examples=300, deadline=None)
@given(device=modbus_devices(), data=st.data())
def test_modbus_readings_hold_the_catalog_datatype(device: ModbusDevice, data: st.DataObject) -> None:
    catalog = by_id(device.describe())
    plan = DevicePlan(device)
    seen = 0
    for block in plan.blocks:
        if block.table in BIT_TABLES:
            raw: list[Any] = data.draw(st.lists(st.booleans(), min_size=block.count, max_size=block.count))
        else:
            raw = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count))
        for reading in plan.decode_block(block, raw, 0.0):
            seen += 1
            if reading.quality is Quality.GOOD:
                assert holds(catalog[reading.point].datatype, reading.value), (catalog[reading.point], reading)
            else:
                assert reading.value is None  # only a NaN or infinity decodes to nothing
    assert seen == len(device.points)


def test_the_property_sees_every_datatype() -> None:
    """The strategy above reaches all four datatypes (else the property would prove less than it says)."""
    every = {"bool", "int", "float", "string"}
    device = find(modbus_devices(), lambda d: {p.datatype for p in d.points} == every,
                  settings=settings(max_examples=2000, database=None))
    assert {i.datatype for i in device.describe()} == every


# -- BACnet ----------------------------------------------------------------------------------------

MODES = {1: "off", 2: "auto", 3: "manual"}
BACNET_POINTS: list[dict[str, Any]] = [
    {"id": "temperature", "object": "analog-input:1"},
    {"id": "pressure", "object": "ai:3", "unit": "bar(g)"},
    {"id": "pump", "object": "binary-input:1", "on_change": "event"},
    {"id": "fan", "object": "bo:2", "writable": True},
    {"id": "mode", "object": "multi-state-value:1", "states": MODES, "writable": True},
    {"id": "stage", "object": "msv:2", "writable": True, "max": 4},
    {"id": "valve", "object": "analog-output:1", "writable": True, "min": 0, "max": 100, "write_priority": 9},
    {"id": "setpoint", "object": "av:4", "writable": True, "allowed": [18, 21, 24], "unit": "°C"},
    {"id": "runtime", "object": "accumulator:1"},
    {"id": "energy", "object": "large-analog-value:1"},
    {"id": "label", "object": "characterstring-value:1"},
    {"id": "temp_units", "object": "ai:1", "property": "units"},
    {"id": "temp_name", "object": "ai:1", "property": "object-name"},
    {"id": "valve_manual", "object": "ao:1", "property": "out-of-service"},
    {"id": "vendor_thing", "object": "ai:1", "property": "1234"},
]


def bacnet_device(points: list[dict[str, Any]] = BACNET_POINTS, address: str = "10.0.0.30") -> BacnetDevice:
    return BacnetDevice.model_validate({"id": "ahu", "bus": "bacnet", "address": address, "device_instance": 1001,
                                        "points": points})


def test_bacnet_catalog_follows_the_object_type() -> None:
    device = bacnet_device()
    assert device.point_ids() == [p["id"] for p in BACNET_POINTS]
    ahu = by_id(device.describe())
    assert ahu["temperature"] == PointInfo("temperature", "float", address="analog-input:1")
    assert ahu["pressure"] == PointInfo("pressure", "float", "bar(g)", address="analog-input:3")
    assert ahu["pump"] == PointInfo("pump", "bool", address="binary-input:1")
    assert ahu["fan"] == PointInfo("fan", "bool", writable=True, description="written at priority 8",
                                   address="binary-output:2")
    assert ahu["mode"] == PointInfo("mode", "string", writable=True, min=1, states=MODES,
                                    description="written at priority 8", address="multi-state-value:1")
    assert (ahu["stage"].datatype, ahu["stage"].min, ahu["stage"].max, ahu["stage"].states) == ("int", 1, 4, None)
    assert ahu["valve"] == PointInfo("valve", "float", writable=True, min=0, max=100,
                                     description="written at priority 9", address="analog-output:1")
    assert (ahu["setpoint"].allowed, ahu["setpoint"].unit) == ((18.0, 21.0, 24.0), "°C")
    assert [ahu[p].datatype for p in ("runtime", "energy", "label")] == ["int", "float", "string"]
    assert ahu["temp_units"] == PointInfo("temp_units", "int", address="analog-input:1 units")
    assert ahu["temp_name"].datatype == "string" and ahu["valve_manual"].datatype == "bool"
    assert ahu["vendor_thing"] == PointInfo("vendor_thing", "string", address="analog-input:1 1234")


def test_bacnet_write_spec_and_catalog_agree() -> None:
    device = bacnet_device()
    for info in device.describe():
        spec = device.write_spec(info.id)
        assert (spec is not None) == info.writable
        if spec is not None:
            assert (spec.min, spec.max, spec.allowed) == (info.min, info.max, info.allowed)


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bacnet_readings_hold_the_catalog_datatype_and_the_driver_adds_the_device_units() -> None:
    points = [
        {"id": "temperature", "object": "analog-input:1"},
        {"id": "pressure", "object": "analog-input:3", "unit": "bar(g)"},
        {"id": "pump", "object": "binary-input:1"},
        {"id": "mode", "object": "multi-state-value:1", "states": MODES, "writable": True},
        {"id": "mode_code", "object": "multi-state-value:1"},
        {"id": "valve", "object": "analog-output:1", "writable": True},
        {"id": "temp_name", "object": "ai:1", "property": "object-name"},
        {"id": "temp_units", "object": "ai:1", "property": "units"},
        {"id": "valve_manual", "object": "ao:1", "property": "out-of-service"},
    ]
    sim = await serve_bacnet(f"127.0.0.1:{_udp_port()}", 1001, tick=0)
    bus = BacnetBus(id="bacnet", driver="bacnet_ip", bind=f"127.0.0.1:{_udp_port()}", instance=999, timeout=0.5,
                    retries=0)
    driver = BacnetDriver(bus, [bacnet_device(points, f"127.0.0.1:{sim.port}")])
    try:
        assert by_id(driver.describe("ahu"))["temperature"].unit is None  # nothing learned before first contact
        readings = await driver.read("ahu")
    finally:
        await driver.close()
        await sim.close()
    catalog = by_id(driver.describe("ahu"))
    assert all(r.quality is Quality.GOOD for r in readings), readings
    for reading in readings:
        assert holds(catalog[reading.point].datatype, reading.value), (catalog[reading.point], reading)
    assert (catalog["temperature"].unit, catalog["pressure"].unit, catalog["valve"].unit) == ("°C", "bar(g)", "%")
    assert catalog["pump"].unit is None
    assert by_id(driver.devices["ahu"].describe())["temperature"].unit is None  # the config itself is unchanged


# -- fire panel ------------------------------------------------------------------------------------


def test_fire_panel_catalog_is_its_latched_state_read_only() -> None:
    panel = FirePanel(id="panel", bus="fire-port", format="gst_cn")
    catalog = panel.describe()
    assert panel.point_ids() == list(STATE_POINTS) == [
        "comm_ok", "fire_zones_active", "fire_zones", "prealarms_active", "supervisory_active", "faults_active",
        "disabled_active", "silenced"]
    assert [i.datatype for i in catalog] == ["bool", "int", "string", "int", "int", "int", "int", "bool"]
    assert not any(i.writable or i.unit or i.min is not None or i.states for i in catalog)
    assert all(i.description for i in catalog)


@pytest.mark.parametrize("fmt", ["gst_cn", "notifier_en"])
def test_fire_panel_readings_hold_the_catalog_datatype(fmt: str) -> None:
    spec = load_format(fmt)
    parser = LineParser([(f"{fmt}.{i}", p.event, compile_pattern(p.regex)) for i, p in enumerate(spec.patterns)],
                        spec.format.encoding)
    monitor, sim = PanelMonitor("panel", parser), FirePanelSimulator(fmt, heartbeat=0)
    catalog = by_id(FirePanel(id="panel", bus="fire-port", format=fmt).describe())
    for template in ("fire", "prealarm", "fault", "silence"):
        if template in sim.panel_format.templates:
            monitor.take(Line(sim.encode(sim.render(template, zone=7))), 0.0, 0.0)
    readings = monitor.readings(0.0)
    assert [r.point for r in readings] == list(catalog)
    for reading in readings:
        assert holds(catalog[reading.point].datatype, reading.value), (catalog[reading.point], reading)
    assert {r.point: r.value for r in readings}["fire_zones_active"] == 1


# -- `gateway points` ------------------------------------------------------------------------------

SITE = """\
[site]
id = "tower-a"

[mqtt]
enabled = false

[[buses]]
id = "rs485"
driver = "modbus_rtu"
port = "/dev/ttyUSB0"

[[buses]]
id = "bacnet"
driver = "bacnet_ip"
bind = "10.0.0.5/24"
instance = 999

[[buses]]
id = "fire-port"
driver = "serial_lines"
port = "/dev/ttyUSB1"

[[devices]]
id = "lift"
bus = "rs485"
unit = 5
profile = "elevator"

[[devices]]
id = "ahu"
bus = "bacnet"
address = "10.0.0.30"
device_instance = 1001

[[devices.points]]
id = "valve"
object = "analog-output:1"
writable = true
min = 0
max = 100
write_priority = 9

[[devices.points]]
id = "mode"
object = "msv:1"
states = { 1 = "off", 2 = "auto" }

[[devices]]
id = "panel"
bus = "fire-port"
format = "gst_cn"
"""
JSON_KEYS = ["device", "point", "datatype", "unit", "writable", "min", "max", "allowed", "states", "description",
             "address"]


def points_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str,
               text: str = SITE) -> tuple[int, str, str]:
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    code = main(["points", *args, "-c", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_points_json_is_the_whole_catalog_in_a_stable_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = points_cli(tmp_path, capsys, "--json")
    assert code == 0
    rows = json.loads(out)
    cfg = load_config(tmp_path / "config.toml")
    assert [(r["device"], r["point"]) for r in rows] == [(d.id, p) for d in cfg.devices for p in d.point_ids()]
    assert all(list(r) == JSON_KEYS for r in rows)
    by_point = {(r["device"], r["point"]): r for r in rows}
    assert by_point[("ahu", "valve")] == {
        "device": "ahu", "point": "valve", "datatype": "float", "unit": None, "writable": True, "min": 0, "max": 100,
        "allowed": None, "states": None, "description": "written at priority 9", "address": "analog-output:1"}
    assert by_point[("ahu", "mode")]["states"] == {"1": "off", "2": "auto"}
    assert by_point[("lift", "door_state")]["datatype"] == "string"
    assert by_point[("panel", "fire_zones")]["datatype"] == "string"


def test_points_table_for_one_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = points_cli(tmp_path, capsys, "ahu")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["device", "point", "type", "unit", "rw", "limits", "/", "states", "address", "about"]
    assert lines[2].split() == ["ahu", "valve", "float", "rw", "0..100", "analog-output:1", "written", "at",
                                "priority", "9"]
    assert lines[3].split() == ["ahu", "mode", "string", "r", "1=off", "2=auto", "multi-state-value:1"]
    assert len(lines) == 4


def test_points_unknown_device_and_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = points_cli(tmp_path, capsys, "nope")
    assert (code, out) == (2, "") and "no device 'nope'" in err
    bad = SITE.replace("write_priority = 9", "write_priority = 6")
    with pytest.raises(SystemExit) as caught:
        points_cli(tmp_path, capsys, text=bad)
    assert caught.value.code == 2
    line = bad.splitlines().index("write_priority = 6") + 1
    assert f"config.toml:{line}: devices.1.points.0.write_priority: priority 6 is reserved" in capsys.readouterr().err


def test_points_runs_on_the_shipped_example_without_a_daemon() -> None:
    example = REPO / "config.example.toml"
    done = subprocess.run([sys.executable, "-m", "gateway", "points", "--json", "-c", str(example)],
                          capture_output=True, text=True, timeout=60, check=True)
    rows = json.loads(done.stdout)
    assert {r["device"] for r in rows} == {"meter-main", "lift-b3-a", "water-main", "fire-panel"}
    assert next(r for r in rows if r["point"] == "total_volume")["description"] == "uint32 * 0.001"
