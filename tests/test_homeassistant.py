"""Home Assistant MQTT discovery (``encoding = "homeassistant"``), checked against HA's documented discovery schema.

The models below are written from the Home Assistant MQTT documentation (the configuration variables of the MQTT
sensor, binary sensor, switch, number, select and event integrations, the discovery topic format, and the sensor
device classes with their units and state classes). They forbid any key HA does not document, so a typo, an
abbreviation or an invented key fails; every config the gateway publishes is validated against them, and every
``value_template`` is rendered with Jinja2 (the engine HA templates are) against the state messages the gateway
really published, to the payload HA compares. End to end: a real daemon, a simulated Modbus meter and Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Self

import aiomqtt
import orjson
import pytest
import tomli_w
from conftest import Broker, free_ports, running, until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from wiring import WireWrites

from gateway import facts
from gateway.config import load_config
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.daemon import Daemon
from gateway.facts import StoredFact
from gateway.northbound.catalog import device_meta
from gateway.northbound.dialects import make_encoder
from gateway.northbound.encoder import Session
from gateway.northbound.homeassistant import ALARM_TYPES, HomeAssistantEncoder
from gateway.remote.envelope import decode
from simulators.meter import METER_POINTS, MeterServer, serve_meters

SITE = "test-site"
ROOT = f"community/{SITE}"
pytestmark = pytest.mark.timeout(90)
JINJA = ImmutableSandboxedEnvironment()

# -- HA's documented discovery schema -------------------------------------------------------------------------------

DISCOVERY_TOPIC = re.compile(r"^homeassistant/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
                             r"(?P<object_id>[a-zA-Z0-9_-]+)/config$")
"""``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config``; ids of the class [a-zA-Z0-9_-]."""
SENSOR_CLASSES: dict[str, tuple[set[str | None], set[str]]] = {
    # device class: (units it takes, state classes it takes), from the sensor integration's device class list
    "apparent_power": ({"VA"}, {"measurement"}),
    "battery": ({"%"}, {"measurement"}),
    "carbon_dioxide": ({"ppm"}, {"measurement"}),
    "current": ({"A", "mA"}, {"measurement"}),
    "energy": ({"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"},
               {"total", "total_increasing"}),
    "frequency": ({"Hz", "kHz", "MHz", "GHz"}, {"measurement"}),
    "gas": ({"m³", "ft³", "CCF"}, {"total", "total_increasing"}),
    "humidity": ({"%"}, {"measurement"}),
    "illuminance": ({"lx"}, {"measurement"}),
    "power": ({"W", "kW", "MW", "GW", "TW"}, {"measurement"}),
    "power_factor": ({"%", None}, {"measurement"}),
    "pressure": ({"Pa", "kPa", "hPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}, {"measurement"}),
    "reactive_power": ({"var"}, {"measurement"}),
    "temperature": ({"°C", "°F", "K"}, {"measurement"}),
    "voltage": ({"V", "mV", "µV", "kV", "MV"}, {"measurement"}),
    "volume": ({"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"}, {"total", "total_increasing"}),
    "volume_flow_rate": ({"m³/h", "ft³/min", "L/min", "gal/min", "mL/s"}, {"measurement"}),
    "water": ({"L", "gal", "m³", "ft³", "CCF"}, {"total", "total_increasing"}),
}
BINARY_CLASSES = {"battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door",
                  "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug",
                  "power", "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update",
                  "vibration", "window"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Availability(Strict):
    topic: str
    payload_available: str = "online"
    payload_not_available: str = "offline"
    value_template: str | None = None


class Device(Strict):
    configuration_url: str | None = None
    connections: list[list[str]] | None = None
    hw_version: str | None = None
    identifiers: list[str] | str | None = None
    manufacturer: str | None = None
    model: str | None = None
    model_id: str | None = None
    name: str | None = None
    serial_number: str | None = None
    suggested_area: str | None = None
    sw_version: str | None = None
    via_device: str | None = None

    @model_validator(mode="after")
    def _identified(self) -> Self:
        assert self.identifiers or self.connections, "at least one of identifiers or connections"
        return self


class Origin(Strict):
    name: str
    sw_version: str | None = None
    support_url: str | None = None


class Entity(Strict):
    """The keys every MQTT entity documents."""

    availability: list[Availability] | None = None
    availability_mode: Literal["all", "any", "latest"] = "latest"
    availability_template: str | None = None
    availability_topic: str | None = None
    default_entity_id: str | None = None
    device: Device | None = None
    enabled_by_default: bool = True
    encoding: str = "utf-8"
    entity_category: Literal["config", "diagnostic"] | None = None
    entity_picture: str | None = None
    icon: str | None = None
    json_attributes_template: str | None = None
    json_attributes_topic: str | None = None
    name: str | None = None
    object_id: str | None = None
    origin: Origin | None = None
    payload_available: str = "online"
    payload_not_available: str = "offline"
    qos: int = Field(0, ge=0, le=2)
    unique_id: str | None = None

    @model_validator(mode="after")
    def _common(self) -> Self:
        assert not (self.availability and self.availability_topic), "availability with availability_topic"
        assert self.device is None or self.unique_id, "device only works when unique_id is set"
        return self


class Sensor(Entity):
    device_class: str | None = None
    expire_after: int | None = None
    force_update: bool = False
    last_reset_value_template: str | None = None
    options: list[str] | None = None
    state_class: Literal["measurement", "total", "total_increasing"] | None = None
    state_topic: str
    suggested_display_precision: int | None = None
    unit_of_measurement: str | None = None
    value_template: str | None = None

    @model_validator(mode="after")
    def _classes(self) -> Self:
        if self.options is not None:
            assert self.options and self.device_class == "enum", "options need device_class enum"
            assert self.state_class is None and self.unit_of_measurement is None, "options with a unit/state class"
        elif self.device_class is not None:
            units, state_classes = SENSOR_CLASSES[self.device_class]
            assert self.unit_of_measurement in units, f"{self.unit_of_measurement!r} for {self.device_class}"
            assert self.state_class is None or self.state_class in state_classes, (self.device_class,
                                                                                   self.state_class)
        return self


class BinarySensor(Entity):
    device_class: str | None = None
    expire_after: int | None = None
    force_update: bool = False
    off_delay: int | None = None
    payload_off: str = "OFF"
    payload_on: str = "ON"
    state_topic: str
    value_template: str | None = None

    @model_validator(mode="after")
    def _class(self) -> Self:
        assert self.device_class is None or self.device_class in BINARY_CLASSES, self.device_class
        return self


class Switch(Entity):
    command_template: str | None = None
    command_topic: str | None = None
    device_class: Literal["outlet", "switch"] | None = None
    optimistic: bool | None = None
    payload_off: str = "OFF"
    payload_on: str = "ON"
    retain: bool = False
    state_off: str | None = None
    state_on: str | None = None
    state_topic: str | None = None
    value_template: str | None = None


class Number(Entity):
    command_template: str | None = None
    command_topic: str
    device_class: str | None = None
    max: float = 100.0
    min: float = 1.0
    mode: Literal["auto", "box", "slider"] = "auto"
    optimistic: bool | None = None
    payload_reset: str = "None"
    retain: bool = False
    state_topic: str | None = None
    step: float = Field(1.0, ge=0.001)
    unit_of_measurement: str | None = None
    value_template: str | None = None

    model_config = ConfigDict(extra="forbid", strict=False)  # min, max and step are floats: an int is one

    @model_validator(mode="after")
    def _range(self) -> Self:
        assert self.min < self.max, "min below max"
        if self.device_class is not None:
            assert self.unit_of_measurement in SENSOR_CLASSES[self.device_class][0], self.device_class
        return self


class Select(Entity):
    command_template: str | None = None
    command_topic: str
    optimistic: bool | None = None
    options: list[str]
    retain: bool = False
    state_topic: str | None = None
    value_template: str | None = None


class EventEntity(Entity):
    device_class: Literal["button", "doorbell", "motion"] | None = None
    event_types: list[str] = Field(min_length=1)
    state_topic: str
    value_template: str | None = None


MODELS: dict[str, type[Entity]] = {"sensor": Sensor, "binary_sensor": BinarySensor, "switch": Switch,
                                   "number": Number, "select": Select, "event": EventEntity}


def validated(configs: dict[str, dict[str, Any]]) -> dict[str, Entity]:
    """Every config checked as HA documents it; unique ids unique; the entity id's domain the component's."""
    out: dict[str, Entity] = {}
    for topic, config in configs.items():
        match = DISCOVERY_TOPIC.match(topic)
        assert match, f"not a discovery topic: {topic}"
        component = match["component"]
        entity = MODELS[component].model_validate(config)
        assert entity.default_entity_id and re.fullmatch(rf"{component}\.[a-z0-9_]+", entity.default_entity_id)
        out[topic] = entity
    unique = [e.unique_id for e in out.values()]
    assert len(set(unique)) == len(unique), "a unique_id used twice"
    return out


def render(template: str | None, payload: bytes) -> str:
    """What HA compares: the template rendered with ``value`` and ``value_json`` (the raw payload without one)."""
    text = payload.decode()
    if template is None:
        return text
    return JINJA.from_string(template).render(value=text, value_json=orjson.loads(payload)).strip()


# -- configs ------------------------------------------------------------------------------------------------------

def meter_points(extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]
    for p in points:
        p.update((extra or {}).get(p["id"], {}))
    return points


REMOTE: dict[str, dict[str, Any]] = {"relay_closed": {"writable": True, "remote": True},
          "status": {"writable": True, "remote": True, "min": 0, "max": 10},
          "voltage_a": {"writable": True},  # writable on the box, not from a platform
          "tamper": {"on_change": "alarm"}}


def ha_config(tmp: Path, ports: list[int], mqtt_port: int, *, commands: bool = True, drop: tuple[str, ...] = (),
              meters: int | None = None) -> Path:
    count = len(ports) if meters is None else meters
    buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
             for i, p in enumerate(ports[:count])]
    devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval="200ms", name=f"Meter {i}",
                    points=[p for p in meter_points(REMOTE) if p["id"] not in drop]) for i in range(count)]
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=buses,
                        devices=devices)
    text = path.read_text(encoding="utf-8").replace("[mqtt]\n", '[mqtt]\nencoding = "homeassistant"\n', 1)
    text += (f"\n[mqtt.homeassistant]\ncommands = {'true' if commands else 'false'}\n"
             '\n[commands]\nenabled = true\nallow = ["read", "write", "status"]\n')
    path.write_text(text, encoding="utf-8")
    return path


def synthetic(tmp: Path) -> dict[str, dict[str, Any]]:
    """A device of every shape of point (never polled: its catalog is all this needs)."""
    points = [
        {"id": "supply_temp", "table": "holding", "address": 0, "type": "int16", "scale": 0.1, "unit": "degC"},
        {"id": "room_humidity", "table": "holding", "address": 1, "unit": "%"},
        {"id": "valve_open", "table": "holding", "address": 2, "unit": "%"},
        {"id": "water_total", "table": "holding", "address": 3, "type": "uint32", "unit": "m³"},
        {"id": "pressure", "table": "holding", "address": 5, "type": "float32", "unit": "bar"},
        {"id": "run_hours", "table": "holding", "address": 7, "unit": "h"},
        {"id": "power_factor", "table": "holding", "address": 8, "scale": 0.01},
        {"id": "mode", "table": "holding", "address": 9, "states": {"0": "off", "1": "auto", "2": "manual"},
         "writable": True, "remote": True},
        {"id": "alarm_code", "table": "holding", "address": 10, "states": {"0": "ok", "7": "overheat"}},
        {"id": "setpoint", "table": "holding", "address": 11, "type": "float32", "unit": "°C", "writable": True,
         "remote": True, "min": 5, "max": 30},
        {"id": "speed", "table": "holding", "address": 13, "writable": True, "remote": True,
         "allowed": [0, 50, 100]},
        {"id": "pump_on", "table": "coil", "address": 0, "type": "bool", "writable": True, "remote": True},
        {"id": "door_open", "table": "discrete", "address": 0, "type": "bool"},
    ]
    config = {"site": {"id": SITE}, "store": {"data_dir": str(tmp / "syn")}, "mqtt": {"enabled": False},
              "buses": [{"id": "plant", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 1502}],
              "devices": [{"id": "ahu-1", "bus": "plant", "points": points},
                          {"id": "ahu", "bus": "plant", "unit": 2,
                           "points": [{"id": "1_mode", "table": "coil", "address": 1, "type": "bool"}]},
                          {"id": "ahu_1", "bus": "plant", "unit": 3,
                           "points": [{"id": "mode", "table": "coil", "address": 2, "type": "bool"}]}]}
    path = tmp / "synthetic.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return device_meta(load_config(path))


def described(devices: dict[str, dict[str, Any]], *, commands: bool = True,
              obeyed: bool = True) -> tuple[HomeAssistantEncoder, dict[str, dict[str, Any]]]:
    encoder = HomeAssistantEncoder(SITE, commands=commands)
    encoder.listens(ROOT, obeyed)
    messages = encoder.describe(Session(1, 0.0, "abc"), devices, 0.0)
    return encoder, {m.topic: orjson.loads(m.payload) for m in messages if m.payload}


# -- the configs, without a broker ----------------------------------------------------------------------------------

def test_every_config_follows_the_documented_schema_and_the_unit_tells_the_class(tmp_path: Path) -> None:
    _, configs = described(synthetic(tmp_path))
    entities = validated(configs)
    by_id = {e.unique_id: (t.split("/")[1], e) for t, e in entities.items()}

    def of(point: str, device: str = "ahu-1") -> tuple[str, Any]:
        return by_id[f"{SITE}.{device}.{point}"]

    assert of("supply_temp")[0] == "sensor"
    temp = of("supply_temp")[1]
    assert (temp.device_class, temp.unit_of_measurement, temp.state_class) == ("temperature", "°C", "measurement")
    humid = of("room_humidity")[1]
    assert (humid.device_class, humid.unit_of_measurement) == ("humidity", "%")
    valve = of("valve_open")[1]
    assert (valve.device_class, valve.unit_of_measurement, valve.state_class) == (None, "%", "measurement")
    water = of("water_total")[1]
    assert (water.device_class, water.unit_of_measurement, water.state_class) == ("water", "m³", "total_increasing")
    assert (of("pressure")[1].device_class, of("run_hours")[1].device_class) == ("pressure", None)
    assert of("power_factor")[1].device_class == "power_factor"
    assert of("mode")[0] == "select" and of("mode")[1].options == ["off", "auto", "manual"]
    assert of("alarm_code")[1].device_class == "enum" and of("alarm_code")[1].options == ["ok", "overheat"]
    setpoint = of("setpoint")[1]
    assert of("setpoint")[0] == "number" and (setpoint.min, setpoint.max, setpoint.device_class) == (5, 30,
                                                                                                  "temperature")
    assert (of("speed")[1].min, of("speed")[1].max, of("speed")[1].step) == (0, 100, 1)
    assert of("pump_on")[0] == "switch" and of("pump_on")[1].command_topic == f"{ROOT}/ha/ahu-1/pump_on/set"
    assert of("door_open")[0] == "binary_sensor" and of("door_open")[1].device_class == "door"
    # ids that would meet in one object id are told apart
    topics = [t for t in configs if "/ahu_1_mode" in t]
    assert len(topics) == 2 and len({*topics}) == 2
    # the gateway itself: connectivity, alarms, events
    gateway = [e for e in entities.values() if e.device and e.device.identifiers == [f"gateway:{SITE}"]]
    assert {type(e).__name__ for e in gateway} == {"BinarySensor", "EventEntity"}
    assert all(e.device and e.device.via_device == f"gateway:{SITE}" for e in entities.values()
               if e not in gateway)
    # every point entity is available only while both the gateway and its device say so
    for entity in entities.values():
        if entity not in gateway:
            assert entity.availability_mode == "all" and entity.availability
            assert entity.availability[0].topic == f"{ROOT}/ha/status"


def test_without_ha_commands_or_platform_commands_no_entity_takes_commands(tmp_path: Path) -> None:
    devices = synthetic(tmp_path)
    for commands, obeyed in ((False, True), (True, False)):
        encoder, configs = described(devices, commands=commands, obeyed=obeyed)
        validated(configs)
        assert not any("command_topic" in c for c in configs.values())
        assert encoder.listens(ROOT, obeyed) == ["homeassistant/status"]


def test_an_uplink_without_events_announces_no_event_entity_and_no_device_availability(tmp_path: Path) -> None:
    """A device's state travels as an event-class fact: an uplink that does not carry events never gets it, so its
    entities must not wait for it (they would stay unavailable)."""
    encoder = HomeAssistantEncoder(SITE, carries=("alarm", "telemetry"))
    configs = {m.topic: orjson.loads(m.payload)
               for m in encoder.describe(Session(1, 0.0, ""), synthetic(tmp_path), 0.0)}
    entities = validated(configs)
    assert not any(t.endswith("/_event/config") for t in configs) and any(t.endswith("/_alarm/config") for t in configs)
    assert all([a.topic for a in e.availability or []] == [f"{ROOT}/ha/status"] for e in entities.values()
               if e.availability)


def test_the_schema_models_refuse_what_ha_would(tmp_path: Path) -> None:
    """The models can fail: an unknown key, an abbreviation, a class whose unit or state class HA refuses."""
    _, configs = described(synthetic(tmp_path))
    topic = next(t for t, c in configs.items() if c.get("device_class") == "energy" or "supply_temp" in t)
    for broken in ({"state_class": "total_increasing"}, {"unit_of_measurement": "degC"}, {"stat_t": "x"},
                   {"availability_topic": "x"}, {"device": {"name": "no identifiers"}}):
        with pytest.raises(ValidationError):
            validated({topic: {**configs[topic], **broken}})
    with pytest.raises(AssertionError):
        validated({topic.replace("/sensor/", "/sensor/a/b/"): configs[topic]})


def test_templates_read_the_state_message_to_what_ha_compares(tmp_path: Path) -> None:
    encoder, configs = described(synthetic(tmp_path))
    entities = validated(configs)
    now = time.time()
    poll = facts.readings("ahu-1", now, [Reading("ahu-1", "supply_temp", 21.5, "°C", Quality.GOOD, now),
                                         Reading("ahu-1", "pump_on", True, None, Quality.GOOD, now),
                                         Reading("ahu-1", "door_open", False, None, Quality.GOOD, now),
                                         Reading("ahu-1", "mode", "auto", None, Quality.GOOD, now),
                                         Reading("ahu-1", "pressure", None, "bar", Quality.BAD, now)])
    [state] = encoder.encode([StoredFact(1, now, poll)], now)
    assert state.message is not None and state.message.topic == "ha/ahu-1/state" and state.message.retain
    payload = state.message.payload
    rendered = {e.unique_id.rsplit(".", 1)[1]: render(getattr(e, "value_template", None), payload)
                for e in entities.values() if e.unique_id and e.unique_id.startswith(f"{SITE}.ahu-1.")}
    assert rendered["supply_temp"] == "21.5" and rendered["pump_on"] == "ON" and rendered["door_open"] == "OFF"
    assert rendered["mode"] == "auto"
    assert rendered["pressure"] == "None" and rendered["water_total"] == "None"  # HA: unknown
    # a bad read of a state name keeps the last one (an enum cannot say unknown); a newer value wins, an older not
    later = facts.readings("ahu-1", now + 1, [Reading("ahu-1", "mode", None, None, Quality.BAD, now + 1),
                                             Reading("ahu-1", "supply_temp", 22.0, "°C", Quality.GOOD, now + 1)])
    older = facts.readings("ahu-1", now - 5, [Reading("ahu-1", "supply_temp", 19.0, "°C", Quality.GOOD, now - 5)])
    [state] = encoder.encode([StoredFact(2, now, later), StoredFact(3, now, older)], now + 1)
    assert state.seqs == (2, 3) and state.message is not None
    assert orjson.loads(state.message.payload)["mode"] == "auto"
    assert orjson.loads(state.message.payload)["supply_temp"] == 22.0
    # availability: the device's state fact, read by the template every point entity carries
    avail = next(e for e in entities.values() if e.unique_id == f"{SITE}.ahu-1.pump_on").availability
    assert avail is not None
    session = Session(7, now, "abc")  # the gateway's birth, last will and goodbye, as the first check reads them
    for message, expected in ((encoder.birth(session, now), "online"), (encoder.will(session), "offline"),
                              (encoder.goodbye(session, now), "offline")):
        assert f"{ROOT}/{message.topic}" == avail[0].topic and message.retain
        assert render(avail[0].value_template, message.payload) == expected
    for device_state, expected in (("online", "online"), ("offline", "offline"), ("unknown", "offline")):
        fact = facts.Fact(Priority.EVENT, "state", "ahu-1", "x", now, orjson.dumps({"state": device_state}))
        [encoded] = encoder.encode([StoredFact(4, now, fact)], now)
        assert encoded.message is not None and encoded.message.topic == "ha/ahu-1/availability"
        assert render(avail[1].value_template, encoded.message.payload) == expected


def test_alarms_and_events_become_ha_events_and_replay_is_judged(tmp_path: Path) -> None:
    encoder, _ = described(synthetic(tmp_path))
    now = time.time()
    alarm = facts.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": 3}, now - 3600))
    mine = facts.event(Event("rule.pump_stuck", "ahu-1", Priority.ALARM, {}, now))
    plain = facts.event(Event("device.offline", "ahu-1", Priority.EVENT, {"error": "timeout"}, now - 3600))
    hist = now - 3600
    out = encoder.encode([StoredFact(1, hist, alarm), StoredFact(2, now, mine), StoredFact(3, hist, plain)], now)
    assert out[0].message is not None and out[0].message.topic == "ha/alarm" and not out[0].message.retain
    fire = orjson.loads(out[0].message.payload)
    assert fire["event_type"] == "fire.alarm" and fire["hist"] is True and fire["data"] == {"zone": 3}
    assert out[1].message is not None and orjson.loads(out[1].message.payload)["event_type"] == "other"
    assert "fire.alarm" in ALARM_TYPES and out[2].message is None  # an old plain event: nothing to fire
    # results: HA's own on ha/result, a platform's not at all; readings of a device HA does not know: nothing
    ours = facts.Fact(Priority.EVENT, "result", "ha-1", "r", now, b'{"req":"ha-1","status":"ok"}')
    theirs = facts.Fact(Priority.EVENT, "result", "w-1", "r", now, b'{"req":"w-1","status":"ok"}')
    gone = facts.readings("meter-9", now, [Reading("meter-9", "v", 1.0, "V", Quality.GOOD, now)])
    out = encoder.encode([StoredFact(5, now, ours), StoredFact(6, now, theirs), StoredFact(7, now, gone)], now)
    assert out[0].message is not None and out[0].message.topic == "ha/result"
    assert out[1].message is None and out[2].message is None and out[2].seqs == (7,)


@functools.cache
def hostile_encoder() -> HomeAssistantEncoder:
    with tempfile.TemporaryDirectory() as tmp:
        return described(synthetic(Path(tmp)))[0]


@settings(max_examples=300, deadline=None)
@given(topic=st.one_of(st.text(max_size=80), st.sampled_from([f"{ROOT}/ha/ahu-1/{p}/set" for p in
                                                             ("pump_on", "mode", "setpoint", "door_open", "nope")])),
       payload=st.one_of(st.binary(max_size=300), st.sampled_from([b"ON", b"OFF", b"auto", b"21.5", b"nan", b"1e400",
                                                                   b"\xff\xfe", b"", b" ON "])))
def test_hostile_command_input_never_raises_and_what_passes_is_a_valid_request(topic: str, payload: bytes) -> None:
    inbound = hostile_encoder().inbound(topic, payload, ROOT)
    if inbound is None or inbound.request is None:
        return
    request = decode(inbound.request, SITE, {})
    fields = request.envelope.command()
    assert request.envelope.actor == "homeassistant" and fields["cmd"] == "write"
    assert 0 < request.envelope.expires_at - time.time() <= 30
    assert topic == f"{ROOT}/ha/{fields['device']}/{fields['point']}/set"
    value, point = fields["value"], (fields["device"], fields["point"])
    if point == ("ahu-1", "pump_on"):
        assert value is (payload.strip() == b"ON")
    elif point == ("ahu-1", "mode"):
        assert value in ("off", "auto", "manual")
    elif point == ("ahu-1", "setpoint"):
        assert isinstance(value, float) and math.isfinite(value)
    else:  # offered no command topic: passed on as text, for the gateway to refuse and audit
        assert isinstance(value, str) and value.isprintable()



# -- end to end: a daemon, a Modbus meter, Mosquitto ------------------------------------------------------------------

class Seen:
    """Everything the broker delivers under the given filters, raw, with its retain flag, in order."""

    def __init__(self, port: int, *filters: str) -> None:
        self.port, self.filters = port, filters or ("#",)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        ready = asyncio.Event()

        async def run() -> None:
            async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"seen-{id(self)}") as client:
                for f in self.filters:
                    await client.subscribe(f, qos=1)
                ready.set()
                async for m in client.messages:
                    self.messages.append((str(m.topic), bytes(m.payload), bool(m.retain)))

        self._task = asyncio.create_task(run())
        async with asyncio.timeout(10):
            await ready.wait()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def last(self, topic: str) -> bytes | None:
        return next((p for t, p, _ in reversed(self.messages) if t == topic), None)

    def configs(self) -> dict[str, dict[str, Any]]:
        """The latest config per discovery topic; a cleared one (empty payload) left out."""
        latest = {t: p for t, p, _ in self.messages if t.startswith("homeassistant/") and t.endswith("/config")}
        return {t: orjson.loads(p) for t, p in latest.items() if p}


@contextlib.asynccontextmanager
async def meters(count: int = 1) -> AsyncIterator[MeterServer]:
    server = await serve_meters("127.0.0.1", free_ports(count), count=count, tick_interval=3600)
    try:
        yield server
    finally:
        await server.close()


async def publish(port: int, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="home-assistant") as client:
        await client.publish(topic, payload, qos=1)


def entity(configs: dict[str, dict[str, Any]], device: str, point: str) -> tuple[str, Any]:
    for topic, entity in validated(configs).items():
        if entity.unique_id == f"{SITE}.{device}.{point}":
            return topic.split("/")[1], entity
    raise AssertionError(f"no entity for {device}.{point}")


async def test_a_meter_in_home_assistant_end_to_end(tmp_path: Path, broker: Broker) -> None:
    """Discovery validated, values read by the templates, a switch command through the authorisation to the coil,
    a command to a point without a command topic refused, all audited; an alarm as an HA event; availability
    flips when the device stops answering and when the gateway stops."""
    async with meters() as server, Seen(broker.port, "homeassistant/#", f"{ROOT}/ha/#") as seen:
        server.meters[0].context.setValues(1, 0, [False])  # the relay open, for HA to close
        wire = WireWrites(server.meters[0].context)
        daemon = Daemon(load_config(ha_config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await until(lambda: len(seen.configs()) == len(METER_POINTS) + 3)
            configs = seen.configs()
            validated(configs)
            await until(lambda: (s := seen.last(f"{ROOT}/ha/meter-0/state")) and orjson.loads(s)["voltage_a"])
            state = seen.last(f"{ROOT}/ha/meter-0/state")
            assert state is not None
            values = orjson.loads(state)
            component, voltage = entity(configs, "meter-0", "voltage_a")
            assert component == "sensor" and not hasattr(voltage, "command_topic")
            assert float(render(voltage.value_template, state)) == pytest.approx(values["voltage_a"])
            energy = entity(configs, "meter-0", "energy_import")[1]
            assert (energy.device_class, energy.state_class) == ("energy", "total_increasing")
            component, relay = entity(configs, "meter-0", "relay_closed")
            assert component == "switch" and render(relay.value_template, state) == "OFF"
            assert entity(configs, "meter-0", "status")[0] == "number"
            assert entity(configs, "meter-0", "tamper")[0] == "binary_sensor"
            await until(lambda: (a := seen.last(f"{ROOT}/ha/meter-0/availability")) and orjson.loads(a)["state"]
                        == "online")
            status = seen.last(f"{ROOT}/ha/status")
            assert status is not None and orjson.loads(status)["state"] == "online"
            for check in relay.availability or []:
                assert render(check.value_template, seen.last(check.topic) or b"") == "online"

            # HA turns the relay on: a native write, authorised, executed, read back, answered, audited
            await publish(broker.port, relay.command_topic, b"ON")
            await until(lambda: server.meters[0].context.getValues(1, 0, 1) == [True])
            await until(lambda: (s := seen.last(f"{ROOT}/ha/meter-0/state")) and orjson.loads(s)["relay_closed"])
            state = seen.last(f"{ROOT}/ha/meter-0/state")
            assert state is not None and render(relay.value_template, state) == "ON"
            # a point offered no command topic, and garbage: refused or dropped, nothing on the wire
            await publish(broker.port, f"{ROOT}/ha/meter-0/voltage_a/set", b"231")
            await publish(broker.port, relay.command_topic, b"maybe")
            await publish(broker.port, f"{ROOT}/ha/meter-0/status/set", b"\xff")
            results = lambda: [orjson.loads(p) for t, p, _ in seen.messages if t == f"{ROOT}/ha/result"]  # noqa: E731
            await until(lambda: len(results()) == 2)
            ok, refused = results()
            assert ok["status"] == "ok" and ok["result"]["result"] == "verified"
            assert refused["status"] == "rejected" and "not open to remote writes" in refused["error"]
            assert daemon.uplink is not None and isinstance(daemon.uplink.encoder, HomeAssistantEncoder)
            dropped = daemon.uplink.encoder.dropped
            await until(lambda: dict(dropped) == {"bad switch payload": 1, "bad payload": 1})
            assert wire.seen == [(5, 0, [True])]

            # an alarm on the meter: the tamper contact, watched, fires the gateway's alarm event
            server.meters[0].context.setValues(2, 0, [True])
            await until(lambda: seen.last(f"{ROOT}/ha/alarm") is not None)
            alarm = orjson.loads(seen.last(f"{ROOT}/ha/alarm") or b"{}")
            assert alarm["event_type"] == "point.changed" and alarm["source"] == "meter-0"
            assert alarm["event_type"] in next(c for t, c in configs.items() if "_alarm" in t)["event_types"]

            # HA restarts and says so: every config again (once, however often it says it)
            before = sum(1 for t, _, _ in seen.messages if t.endswith("/config"))
            for _ in range(3):
                await publish(broker.port, "homeassistant/status", b"online")
            await until(lambda: sum(1 for t, _, _ in seen.messages if t.endswith("/config")) >= 2 * before)
            await asyncio.sleep(0.5)
            assert sum(1 for t, _, _ in seen.messages if t.endswith("/config")) == 2 * before

            # the meter stops answering: its entities become unavailable, the gateway's stay
            await server.close()
            await until(lambda: orjson.loads(seen.last(f"{ROOT}/ha/meter-0/availability") or b"{}")["state"]
                        == "offline")
            device_check = (relay.availability or [])[1]
            assert render(device_check.value_template, seen.last(device_check.topic) or b"") == "offline"
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
        # the gateway stops: its goodbye makes every entity unavailable and the connectivity sensor off
        await until(lambda: orjson.loads(seen.last(f"{ROOT}/ha/status") or b"{}").get("state") == "offline")
        gateway_check = (relay.availability or [])[0]
        assert render(gateway_check.value_template, seen.last(gateway_check.topic) or b"") == "offline"
    commands = [e for e in audit if e["action"] == "command"]
    assert [(e["actor"], e["target"], e["result"]) for e in commands] == [
        ("mqtt:unsigned/homeassistant", "meter-0.relay_closed", "ok"),
        ("mqtt:unsigned/homeassistant", "meter-0.voltage_a", "rejected")]


async def test_removed_devices_and_points_are_cleared_and_commands_off_takes_the_command_topics(
        tmp_path: Path, broker: Broker) -> None:
    async with meters(2) as server:
        async with Seen(broker.port, "homeassistant/#", f"{ROOT}/ha/#") as seen:
            async with running(Daemon(load_config(ha_config(tmp_path, server.ports, broker.port)))):
                await until(lambda: len(seen.configs()) == 2 * len(METER_POINTS) + 3)
                await until(lambda: all(seen.last(f"{ROOT}/ha/meter-{i}/state") for i in (0, 1)))
            first = seen.configs()
            # meter-1 removed, tamper gone from meter-0, HA commands turned off
            path = ha_config(tmp_path, server.ports, broker.port, commands=False, drop=("tamper",), meters=1)
            async with running(Daemon(load_config(path))):
                gone = [t for t in first if "meter-1_" in t or "meter-0_tamper" in t]
                await until(lambda: all(seen.last(t) == b"" for t in gone))
                await until(lambda: seen.last(f"{ROOT}/ha/meter-1/state") == b"")
                await until(lambda: seen.last(f"{ROOT}/ha/meter-1/availability") == b"")
                await until(lambda: "homeassistant/binary_sensor/test-site/meter-0_relay_closed/config"
                            in seen.configs())
                assert seen.last("homeassistant/switch/test-site/meter-0_relay_closed/config") == b""
                assert seen.last("homeassistant/number/test-site/meter-0_status/config") == b""
        # what the broker keeps now is what HA will find: meter-0 without commands, nothing of meter-1
        async with Seen(broker.port, "homeassistant/#", f"{ROOT}/ha/+/state") as fresh:
            # the retained messages come in one burst after the subscription: wait for all it should hold
            await until(lambda: len(fresh.configs()) >= len(METER_POINTS) - 1 + 3
                        and any(t.endswith("/state") for t, _, _ in fresh.messages))
        kept = fresh.configs()
        validated(kept)
        assert len(kept) == len(METER_POINTS) - 1 + 3
        assert not any("meter-1" in t or "command_topic" in c for t, c in kept.items())
        assert {t for t, _, _ in fresh.messages if t.endswith("/state")} == {f"{ROOT}/ha/meter-0/state"}


# -- the guide ------------------------------------------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "homeassistant.md"


def test_the_guide_config_loads_and_its_example_is_what_the_gateway_publishes(tmp_path: Path) -> None:
    """docs/homeassistant.md: its TOML is a valid uplink that offers the remote relay as a switch, and its example
    config has exactly the keys the gateway publishes for a voltage sensor."""
    guide = GUIDE.read_text("utf-8")
    toml = re.findall(r"```toml\n(.*?)```", guide, re.S)[0]
    secret = tmp_path / "ha-mqtt.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    path = tmp_path / "gateway.toml"
    path.write_text(f'[site]\nid = "sunshine-b3"\n[store]\ndata_dir = "{tmp_path / "data"}"\n'
                    '[[buses]]\nid = "plant"\ndriver = "modbus_tcp"\nhost = "127.0.0.1"\n'
                    + toml.replace("/etc/gateway/ha-mqtt.pass", str(secret)), encoding="utf-8")
    cfg = load_config(path)
    [uplink] = cfg.uplinks
    encoder = make_encoder(uplink, cfg.site.id)
    assert isinstance(encoder, HomeAssistantEncoder)
    assert encoder.listens("community/sunshine-b3", cfg.commands.enabled)[1] == "community/sunshine-b3/ha/+/+/set"
    configs = {m.topic: orjson.loads(m.payload) for m in encoder.describe(Session(1, 0.0, ""), device_meta(cfg), 0.0)}
    validated(configs)
    relay = configs["homeassistant/switch/sunshine-b3/meter-1_relay_closed/config"]
    assert relay["command_topic"] == "community/sunshine-b3/ha/meter-1/relay_closed/set"
    assert relay["device"]["name"] == "Tower A main meter"
    example = orjson.loads(re.findall(r"```json\n(\{\"name\": \"voltage_a\".*?)```", guide, re.S)[0])
    _, published = described({"meter-1": {"driver": "modbus_tcp", "name": "Tower A main meter", "points": {
        "voltage_a": {"type": "float", "unit": "V", "writable": False}}}})
    mine = next(c for t, c in published.items() if t.endswith("/meter-1_voltage_a/config"))
    mine = orjson.loads(orjson.dumps(mine).decode().replace(SITE, "sunshine-b3").replace("test_site", "sunshine_b3"))
    mine["origin"]["sw_version"] = example["origin"]["sw_version"]
    assert example == mine
    MODELS["sensor"].model_validate(example)
