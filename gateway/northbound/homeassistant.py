"""Home Assistant MQTT discovery (``encoding = "homeassistant"``; docs/homeassistant.md).

Every point of every device becomes one HA entity, announced by a retained config message at
``<discovery_prefix>/<component>/<site>/<device>_<point>/config`` (full keys, no abbreviations). A
device's values travel as one retained flat JSON object per poll on ``<root>/ha/<device>/state``,
which every entity of the device reads with its ``value_template``; its availability is the
device's state (``<root>/ha/<device>/availability``) AND the gateway's own status
(``<root>/ha/status``, the native birth and will). Alarms and events go to two HA ``event``
entities of the gateway. A command to an entity becomes a native write request, so it passes the
same allow-list, ``remote`` flag, limits and audit as a platform's own. Removed devices and points
have their configs cleared by empty retained messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

from gateway import __version__
from gateway.core.config import IDENTIFIER_PATTERN
from gateway.core.ids import new_id
from gateway.facts import Fact, StoredFact, dumps
from gateway.northbound.catalogue import KINDS
from gateway.northbound.encoder import Encoded, Inbound, Message, Session
from gateway.northbound.json_v2 import JsonEncoder, is_alarm

ACTOR = "homeassistant"
COMMAND_TTL = 30.0
"""Seconds an HA command may wait for its device before it is not executed at all (never more than max_ttl)."""
REBIRTH_GAP = 10.0
"""Seconds: HA saying ``online`` again within this is not answered with every config once more."""
MAX_COMMAND = 256
_ID = re.compile(IDENTIFIER_PATTERN)
ORIGIN = {"name": "community-gateway", "sw_version": __version__}

# unit as configured -> (the unit HA knows, device_class, state_class); a unit not listed keeps its spelling and
# gets state_class measurement only: a wrong device_class breaks HA's statistics, a missing one costs an icon.
_UNITS: dict[str, tuple[str, str | None, str]] = {
    **{u: (u, "voltage", "measurement") for u in ("V", "mV", "kV")},
    **{u: (u, "current", "measurement") for u in ("A", "mA")},
    **{u: (u, "power", "measurement") for u in ("W", "kW", "MW")},
    "VA": ("VA", "apparent_power", "measurement"), "var": ("var", "reactive_power", "measurement"),
    **{u: (u, "energy", "total_increasing") for u in ("Wh", "kWh", "MWh")},
    "°C": ("°C", "temperature", "measurement"), "degC": ("°C", "temperature", "measurement"),
    "°F": ("°F", "temperature", "measurement"), "degF": ("°F", "temperature", "measurement"),
    **{u: (u, "frequency", "measurement") for u in ("Hz", "kHz")},
    **{u: (u, "pressure", "measurement") for u in ("Pa", "hPa", "kPa", "bar", "mbar", "psi")},
    "m³": ("m³", "volume", "total_increasing"), "m3": ("m³", "volume", "total_increasing"),
    "m³/h": ("m³/h", "volume_flow_rate", "measurement"), "m3/h": ("m³/h", "volume_flow_rate", "measurement"),
    "lx": ("lx", "illuminance", "measurement"),
}
_BY_WORD = {  # device classes only an id can tell: (unit, word in the id) -> device_class
    ("%", "humidity"): "humidity", ("%", "battery"): "battery", ("ppm", "co2"): "carbon_dioxide",
    ("m³", "water"): "water", ("m³", "gas"): "gas",
}
_BINARY_WORDS = {"tamper": "tamper", "door": "door", "window": "window", "smoke": "smoke", "leak": "moisture",
                 "flood": "moisture", "motion": "motion"}
_WORDS = re.compile(r"[_\-]+")


def sensor_shape(point: str, unit: str | None) -> dict[str, Any]:
    """``unit_of_measurement``, ``device_class`` and ``state_class`` of a numeric sensor, as far as the unit (and
    for a few classes the id) tells them."""
    if not unit:
        return {"device_class": "power_factor"} if "power_factor" in point.lower() else {}
    ha_unit, device_class, state_class = _UNITS.get(unit, (unit, None, "measurement"))
    words = set(_WORDS.split(point.lower()))
    for (u, word), by_word in _BY_WORD.items():
        if ha_unit == u and word in words:
            device_class = by_word
    shape: dict[str, Any] = {"unit_of_measurement": ha_unit, "state_class": state_class}
    if device_class:
        shape["device_class"] = device_class
    return shape


ALARM_TYPES = [*sorted(k.kind for k in KINDS if "alarm" in k.priority or k.kind.startswith("alarm.")), "other"]
"""The alarm entity's ``event_types``: every catalogued kind that may travel as an alarm; a kind nobody catalogued
(a rule's own) arrives as ``other``, its real kind in the ``kind`` attribute."""
EVENT_TYPES = [*sorted(k.kind for k in KINDS if "event" in k.priority and not k.kind.startswith("alarm.")), "other"]


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """What a command topic takes: the component that publishes to it and what it may say."""

    component: str
    integer: bool = False
    options: tuple[str, ...] = ()


class HomeAssistantEncoder:
    def __init__(self, site: str, *, topic_prefix: str = "community", discovery_prefix: str = "homeassistant",
                 commands: bool = False, carries: Collection[str] = ("alarm", "event", "telemetry"),
                 live_window: float = 60.0, command_ttl: float = COMMAND_TTL) -> None:
        self.site = site
        self.root = f"{topic_prefix}/{site}"
        self.prefix = discovery_prefix
        self.commands = commands
        self.carries = set(carries)
        self.live_window = live_window
        self.command_ttl = min(COMMAND_TTL, command_ttl)
        self.native = JsonEncoder(site, live_window=live_window)
        self.dropped: Counter[str] = Counter()
        """Command-topic messages not turned into a request, by reason (hostile or malformed input)."""
        self.gateway = {"identifiers": [f"gateway:{site}"], "name": f"Gateway {site}", "model": "community-gateway",
                        "sw_version": __version__}
        self._status = {"topic": f"{self.root}/ha/status", "value_template": "{{ value_json.state }}",
                        "payload_available": "online", "payload_not_available": "offline"}
        self._catalog: dict[str, dict[str, dict[str, Any]]] | None = None
        """device -> point -> its metadata, as last described; None: not described yet (everything passes)."""
        self._values: dict[str, dict[str, tuple[float, Any]]] = {}
        """device -> point -> (when read, latest value): what the next state message says."""
        self._offered: dict[tuple[str, str], Command] = {}
        self._obeyed = True
        """Whether the uplink takes commands at all ([commands] enabled): said by ``listens``, before ``describe``."""
        self._rebirth_at = -math.inf

    # -- the session: the native status, on the HA root ----------------------------------------------------------

    def birth(self, session: Session, now: float) -> Message:
        return dataclasses.replace(self.native.birth(session, now), topic="ha/status")

    def will(self, session: Session) -> Message:
        return dataclasses.replace(self.native.will(session), topic="ha/status")

    def goodbye(self, session: Session, now: float) -> Message:
        return dataclasses.replace(self.native.goodbye(session, now), topic="ha/status")

    def superseded(self, status: bytes, session: Session) -> bool:
        return self.native.superseded(status, session)

    def historical(self, row: StoredFact, now: float) -> bool:
        return now - row.created > self.live_window

    def ready(self) -> bool:
        return True

    # -- discovery ------------------------------------------------------------------------------------------------

    def describe(self, session: Session, devices: Mapping[str, Mapping[str, Any]], now: float) -> list[Message]:
        """Every entity's config (retained); configs, states and availabilities of what is gone, cleared."""
        configs = self.configs(devices)
        wanted = {f"config:{topic}" for topic in configs} | {f"device:{device}" for device in devices}
        messages = []
        for entry in sorted(session.announced - wanted):  # an empty retained message deletes the retained one
            kind, _, name = entry.partition(":")
            if kind == "config":
                messages.append(Message(name, b"", retain=True, absolute=True))
            elif kind == "device":
                messages += [Message(f"ha/{name}/state", b"", retain=True),
                             Message(f"ha/{name}/availability", b"", retain=True)]
        messages += [Message(topic, dumps(config), retain=True, absolute=True) for topic, config in configs.items()]
        session.announced = wanted
        self._catalog = {device: dict(meta.get("points") or {}) for device, meta in devices.items()}
        self._values = {device: {p: v for p, v in self._values.get(device, {}).items() if p in points}
                        for device, points in self._catalog.items()}
        return messages

    def configs(self, devices: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Discovery topic -> config, for the gateway's own entities and every point of every device."""
        gateway = {"device": self.gateway, "origin": ORIGIN}
        out = {self._topic("binary_sensor", "_gateway"): {
            **gateway, "name": "connectivity", "unique_id": f"{self.site}/connectivity",
            "default_entity_id": f"binary_sensor.{_slug(self.site)}_connectivity", "device_class": "connectivity",
            "entity_category": "diagnostic", "state_topic": self._status["topic"],
            "value_template": self._status["value_template"], "payload_on": "online", "payload_off": "offline"}}
        for name, kinds in (("alarm", ALARM_TYPES), ("event", EVENT_TYPES)):
            if name in self.carries:
                out[self._topic("event", f"_{name}")] = {
                    **gateway, "name": name, "unique_id": f"{self.site}/{name}",
                    "default_entity_id": f"event.{_slug(self.site)}_{name}", "state_topic": f"{self.root}/ha/{name}",
                    "event_types": kinds, "availability": [self._status]}
        self._offered = {}
        objects = Counter(f"{d}_{p}" for d, meta in devices.items() for p in meta.get("points") or {})
        for device, meta in devices.items():
            block = {"identifiers": [f"gateway:{self.site}:{device}"], "name": meta.get("name") or device,
                     "model": str(meta.get("driver", "")), "via_device": self.gateway["identifiers"][0]}
            for point, info in (meta.get("points") or {}).items():
                object_id = f"{device}_{point}"
                if objects[object_id] > 1:  # "a_b"."c" and "a"."b_c": told apart by a hash of the pair
                    object_id += "_" + hashlib.sha256(f"{device}/{point}".encode()).hexdigest()[:8]
                component, shape = self._entity(device, point, info)
                out[self._topic(component, object_id)] = {
                    "name": point, "unique_id": f"{self.site}.{device}.{point}",
                    "default_entity_id": f"{component}.{_slug(self.site)}_{_slug(device)}_{_slug(point)}",
                    "state_topic": f"{self.root}/ha/{device}/state", **shape,
                    "availability": [self._status, *self._device_state(device)],
                    "availability_mode": "all", "device": block, "origin": ORIGIN}
        return out

    def _device_state(self, device: str) -> list[dict[str, str]]:
        """The device's own availability, when this uplink carries it (a device's state is an event-class fact)."""
        if "event" not in self.carries:
            return []
        return [{"topic": f"{self.root}/ha/{device}/availability",
                 "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
                 "payload_available": "online", "payload_not_available": "offline"}]

    def _topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.site}/{object_id}/config"

    def _entity(self, device: str, point: str, info: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The component a point becomes and its own keys: writable remote points with commands on take commands,
        the others only show."""
        key = f"value_json['{point}']"
        value = {"value_template": f"{{{{ {key} }}}}"}
        datatype, states = info.get("type"), info.get("states")
        command = f"{self.root}/ha/{device}/{point}/set"
        commanded = self.commands and self._obeyed and bool(info.get("writable")) and info.get("remote") is True
        if datatype == "bool":
            onoff = {"value_template": f"{{{{ 'None' if {key} is none else ('ON' if {key} else 'OFF') }}}}",
                     "payload_on": "ON", "payload_off": "OFF"}
            if commanded:
                self._offered[device, point] = Command("switch")
                return "switch", {**onoff, "command_topic": command}
            words = set(_WORDS.split(point.lower()))
            device_class = next((c for w, c in _BINARY_WORDS.items() if w in words), None)
            return "binary_sensor", {**onoff, **({"device_class": device_class} if device_class else {})}
        if isinstance(states, Mapping) and states:
            options = list(dict.fromkeys(str(name) for name in states.values()))
            if commanded:
                self._offered[device, point] = Command("select", options=tuple(options))
                return "select", {**value, "command_topic": command, "options": options}
            return "sensor", {**value, "device_class": "enum", "options": options}
        if datatype in ("int", "float"):
            shape = sensor_shape(point, info.get("unit"))
            if not commanded:
                return "sensor", {**value, **shape}
            self._offered[device, point] = Command("number", integer=datatype == "int")
            allowed = info.get("allowed") or []
            low = info.get("min", min(allowed, default=None))
            high = info.get("max", max(allowed, default=None))
            bounded = low is not None and high is not None
            number = {"min": low if low is not None else -2_147_483_648, "max": high if high is not None
                      else 2_147_483_647, "step": 1 if datatype == "int" else 0.001, "mode": "auto" if bounded
                      else "box"}
            shape.pop("state_class", None)  # a number has none
            return "number", {**value, **shape, **number, "command_topic": command}
        return "sensor", value  # text

    # -- facts out ------------------------------------------------------------------------------------------------

    def encode(self, rows: Sequence[StoredFact], now: float) -> list[Encoded]:
        """Readings (live or replayed) and summaries update the device's latest values; one state message per
        device per round carries them all. Availability, alarms and events go as they come."""
        out: list[Encoded] = []
        slots: dict[str, tuple[int, list[int]]] = {}
        for row in rows:
            fact = row.fact
            if fact.kind in ("readings", "summary") and self._merge(fact):
                slot = slots.get(fact.subject)
                if slot is None:
                    slots[fact.subject] = (len(out), [row.seq])
                    out.append(Encoded(None, ()))  # a place for the state message, filled below
                else:
                    slot[1].append(row.seq)
                continue
            out.append(Encoded(self.message(fact, self.historical(row, now)), (row.seq,)))
        for device, (index, seqs) in slots.items():
            out[index] = Encoded(self.state(device), tuple(seqs))
        return out

    def message(self, fact: Fact, hist: bool) -> Message | None:
        if fact.kind == "state":
            known = self._catalog is None or fact.subject in self._catalog
            return Message(f"ha/{fact.subject}/availability", fact.body, retain=True) if known else None
        if fact.kind == "event":
            alarm = is_alarm(fact)
            name = "alarm" if alarm else "event"
            if hist and not alarm:  # an HA event fires on arrival: an old event is noise, an old alarm is news
                return None
            data = fact.data()
            kind = str(data.get("kind", fact.subject))
            types = ALARM_TYPES if alarm else EVENT_TYPES
            payload = {"event_type": kind if kind in types else "other", "kind": kind, "id": fact.id,
                       "priority": data.get("priority"), "source": data.get("source"), "ts": data.get("ts"),
                       "data": data.get("data")}
            if hist:
                payload["hist"] = True
            return Message(f"ha/{name}", dumps(payload))
        if fact.kind == "result" and fact.subject.startswith("ha-"):  # the answer to a command from HA
            data = fact.data()
            if isinstance(data, dict):
                data.pop("_mqtt5", None)
            return Message("ha/result", dumps(data))
        return None  # other results, wire rows, readings of a removed device: nothing HA reads

    def state(self, device: str) -> Message:
        values = self._values.get(device, {})
        points = self._catalog[device] if self._catalog is not None else values
        return Message(f"ha/{device}/state", dumps({p: values.get(p, (0.0, None))[1] for p in points}), retain=True)

    def _merge(self, fact: Fact) -> bool:
        """Take a poll's (or a summary window's last) values into the device's latest; False: a device HA does
        not know (removed since it was stored). A point keeps the newer of two readings."""
        device = fact.subject
        catalog = None if self._catalog is None else self._catalog.get(device)
        if self._catalog is not None and catalog is None:
            return False
        data = fact.data()
        points = data.get("points") if fact.kind == "summary" else data
        values = self._values.setdefault(device, {})
        for point, item in (points or {}).items():
            if not isinstance(item, dict) or (catalog is not None and point not in catalog):
                continue
            if fact.kind == "summary":
                if "last" not in item:
                    continue
                value, ts = item["last"], fact.ts
            else:
                value, ts = item.get("v"), float(item.get("ts", fact.ts))
            value = None if item.get("q") == "bad" else value
            info = catalog.get(point, {}) if catalog is not None else {}
            if info.get("type") == "string" and (value is None or (info.get("states") and value not in {
                    str(n) for n in info["states"].values()})):
                continue  # a text or a state name keeps its last value: an enum cannot say "unknown"
            if ts >= values.get(point, (-math.inf, None))[0]:
                values[point] = (ts, value)
        return True

    # -- what comes down ----------------------------------------------------------------------------------------

    def listens(self, root: str, commands: bool) -> list[str]:
        """HA's own status (its restart asks for every config again) and, with commands on, the command topics."""
        self._obeyed = commands
        return [f"{self.prefix}/status"] + ([f"{root}/ha/+/+/set"] if commands and self.commands else [])

    def inbound(self, topic: str, payload: bytes, root: str) -> Inbound | None:
        if topic == f"{self.prefix}/status":
            if payload.strip().lower() != b"online" or time.monotonic() - self._rebirth_at < REBIRTH_GAP:
                return Inbound()
            self._rebirth_at = time.monotonic()
            return Inbound(rebirth=True)
        head = f"{root}/ha/"
        if not (self.commands and topic.startswith(head) and topic.endswith("/set")):
            return None
        parts = topic[len(head):-len("/set")].split("/")
        if len(parts) != 2 or not all(_ID.fullmatch(part) for part in parts):
            self.dropped["bad topic"] += 1
            return None
        device, point = parts
        value = self._value(device, point, payload)
        if value is None:
            return None
        expires = math.floor((time.time() + self.command_ttl) * 1000) / 1000  # never past max_ttl by rounding
        request = {"v": 1, "id": f"ha-{new_id()}", "expires_at": expires, "actor": ACTOR, "cmd": "write",
                   "device": device, "point": point, "value": value}
        return Inbound(request=orjson.dumps(request))

    def _value(self, device: str, point: str, payload: bytes) -> bool | int | float | str | None:
        """What an HA command payload means for its entity; None (counted): nothing the entity could have sent.
        A point HA was offered no command topic for is passed on as text, to be refused and audited."""
        try:
            text = payload.decode("utf-8").strip() if len(payload) <= MAX_COMMAND else ""
        except UnicodeDecodeError:
            text = ""
        if not text or not text.isprintable():
            self.dropped["bad payload"] += 1
            return None
        offered = self._offered.get((device, point))
        if offered is None:
            return text
        if offered.component == "switch" and text in ("ON", "OFF"):
            return text == "ON"
        if offered.component == "select" and text in offered.options:
            return text
        if offered.component == "number":
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return int(number) if offered.integer and number.is_integer() else number
        self.dropped[f"bad {offered.component} payload"] += 1
        return None


def _slug(name: str) -> str:
    """An entity id's object part: lower case, digits and underscores."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower())
