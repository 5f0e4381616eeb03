"""The native JSON contract, version 2: every message the gateway publishes, as pydantic models.

The models are the contract; the JSON Schema is generated from them (`upstream_schema()`, printed by
`gateway schema upstream`, shipped as `gateway/northbound/upstream-v2.json`) and the integrator's guide is
`docs/upstream.md`. Topics are relative to `<topic_prefix>/<site id>/` (`topic_of`). Every model allows
unknown fields, as platforms must: fields are only ever added within a major version `V`; a breaking change
bumps `V` and keeps the topic layout. The encoder may build plain dicts on its hot path; the tests hold them
to these models and this schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.json_schema import models_json_schema

from gateway.core.config import IDENTIFIER_PATTERN
from gateway.core.points import Datatype
from gateway.northbound.catalogue import KINDS, Absent, Data, Label, data_model

V: Final = 2
"""Major version of the contract: every message's `v`."""
SCHEMA_ID: Final = "https://community-gateway.org/schemas/upstream-v2.json"
UUID7_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

SiteId = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, description="The site id: the topic segment after the "
                                                                       "prefix (site.id in the gateway's config).")]
DeviceId = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, description="Device id, as in the topic.")]
MessageId = Annotated[str, Field(pattern=UUID7_PATTERN, description="UUIDv7, the same on every redelivery: "
                                                                    "de-duplicate on it.")]
Timestamp = Annotated[float, Field(ge=0, description="Unix seconds (UTC), millisecond precision, gateway clock.")]
Quality = Literal["good", "bad", "stale"]
Value = int | float | bool | str | None
Kind = Annotated[str, Field(min_length=1, pattern=r"^[^/#+\s]+$", description="Dotted kind, e.g. device.offline; "
                            "the catalogue (docs/upstream.md) lists every kind the gateway emits.")]
_QUALITY = "good; bad: the device did not answer or answered nonsense (v is null); stale: not refreshed in time."
_ALARM_RULE: dict[str, Any] = {"anyOf": [{"properties": {"priority": {"const": "alarm"}}, "required": ["priority"]},
                         {"properties": {"kind": {"pattern": r"^alarm\."}}, "required": ["kind"]}]}
"""Alarm topic, type "alarm": priority alarm, or an alarm-lifecycle transition (alarm.*)."""


class Open(BaseModel):
    """Unknown fields are accepted and kept: consumers ignore what they do not know."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)


class Message(Open):
    v: Literal[2] = Field(description="Major version of the contract.")
    site: SiteId


class Delivered(Message):
    """A message that is not retained: it has an id, and a hist flag when it comes late."""

    id: MessageId
    hist: Literal[True] | Absent = Field(None, description="Present (true) when delivered later than its live "
                                                           "window (mqtt.live_window, default 60 s): replay.")


# -- telemetry and summaries --------------------------------------------------------------------------------------
class PointReading(Open):
    v: Value = Field(description="Value in engineering units; null when q is bad.")
    q: Quality = Field(description=_QUALITY)
    u: str | Absent = Field(None, description="Engineering unit, when the point has one.")
    ts: Timestamp | Absent = Field(None, description="When this point was read, present only when that differs "
                                                     "from the message's ts (a stale value, a slow line, a push).")


class TelemetryMessage(Delivered):
    """`telemetry/<device>`: one poll. With report mode change (or periodic per point) only some points come:
    merge into what you hold; a point missing from a message is not gone."""

    type: Literal["telemetry"]
    device: DeviceId
    ts: Timestamp = Field(description="When the poll started (Unix seconds, gateway clock).")
    points: dict[str, PointReading] = Field(description="Point id -> reading; only the reported points.")


class PointSummary(Open):
    min: float | Absent = Field(None, description="Smallest numeric value in the window.")
    max: float | Absent = Field(None, description="Largest numeric value in the window.")
    mean: float | Absent = Field(None, description="Mean of the numeric values.")
    last: Value | Absent = Field(None, description="The last value (null if it was bad).")
    count: int | Absent = Field(None, ge=0, description="Numeric values aggregated.")
    q: Quality = Field(description="Quality of the last reading.")
    u: str | Absent = Field(None, description="Engineering unit.")


class SummaryMessage(Delivered):
    """`summary/<device>`: windowed aggregates (report mode aggregate); the functions are the configured ones."""

    type: Literal["summary"]
    device: DeviceId
    start: Timestamp = Field(description="Window start.")
    end: Timestamp = Field(description="Window end.")
    points: dict[str, PointSummary]


# -- events and alarms ---------------------------------------------------------------------------------------------
class _Happened(Delivered):
    kind: Kind
    priority: Label = Field(description="Delivery class it was queued in: alarm goes first and is never dropped.")
    source: str = Field(min_length=1, description="What it is about: a device, camera, bus, rule, task, store.")
    ts: Timestamp = Field(description="When it happened (gateway clock).")
    data: dict[str, Any] = Field(description="Typed per kind in the catalogue; an open object for other kinds.")

    @model_validator(mode="after")
    def _data_by_kind(self) -> _Happened:
        model = data_model(self.kind)
        if model is not None:
            model.model_validate(self.data)
        return self


class EventMessage(_Happened):
    """`event/<kind>`: everything that is neither alarm priority nor an alarm transition."""

    model_config = ConfigDict(json_schema_extra={"not": _ALARM_RULE})
    type: Literal["event"]

    @model_validator(mode="after")
    def _not_alarm(self) -> EventMessage:
        if event_type(self.kind, self.priority) != "event":
            raise ValueError(f"{self.kind} at priority {self.priority} is an alarm (type alarm, topic alarm/...)")
        return self


class AlarmMessage(_Happened):
    """`alarm/<kind>`: priority alarm, or any alarm-lifecycle transition (`alarm.*`) whatever its class."""

    model_config = ConfigDict(json_schema_extra=_ALARM_RULE)
    type: Literal["alarm"]

    @model_validator(mode="after")
    def _alarm(self) -> AlarmMessage:
        if event_type(self.kind, self.priority) != "alarm":
            raise ValueError(f"{self.kind} at priority {self.priority} is an event (type event, topic event/...)")
        return self


# -- retained: device state and metadata, the gateway's status -----------------------------------------------------
class StateMessage(Message):
    """`state/<device>`, retained: the device's availability. An empty payload clears a removed device."""

    type: Literal["state"]
    device: DeviceId
    state: Literal["unknown", "online", "offline"] = Field(description="unknown until the first poll answers.")
    since: Timestamp = Field(description="Since when it is in this state.")
    error: str | Absent = Field(None, description="The last failure, while offline.")
    ts: Timestamp = Field(description="When this was published.")


class PointMeta(Open):
    type: Datatype = Field(description="What its values are once decoded.")
    unit: str | Absent = Field(None, description="Engineering unit.")
    writable: bool = Field(description="Whether it can be written.")
    min: float | Absent = Field(None, description="Lowest value a write may carry.")
    max: float | Absent = Field(None, description="Highest value a write may carry.")
    allowed: list[float] | Absent = Field(None, description="The only values a write may carry.")
    states: dict[str, str] | Absent = Field(None, description="Value -> state name, e.g. {\"0\": \"idle\"}.")
    description: str | Absent = Field(None, description="What it is, for people.")
    remote: bool | Absent = Field(
        None, description="true: the platform may write it (a remote command); absent: it may not.",
    )


class MetaMessage(Message):
    """`meta/<device>`, retained: the device's point catalog, at birth and when the config changes. An empty
    payload clears a removed device."""

    type: Literal["meta"]
    device: DeviceId
    driver: str = Field(description="Device family: modbus, bacnet, firepanel, ...")
    name: str | Absent = Field(None, description="The device's name for people, when configured.")
    config: str = Field(description="Hash of the configuration this catalog comes from.")
    ts: Timestamp = Field(description="When this was published.")
    points: dict[str, PointMeta]


class BirthMessage(Message):
    """`status`, retained, at every connect. `bdseq` orders it against last wills."""

    type: Literal["status"]
    state: Literal["online"]
    bdseq: int = Field(ge=0, description="Session counter: one more at every connect, kept across restarts.")
    ts: Timestamp
    version: str = Field(description="Gateway software version.")
    config: str = Field(description="sha256 of the config file it runs.")
    started: Timestamp = Field(description="When the daemon started.")
    clock_synced: bool | None = Field(
        None, description="true: the wall clock is synchronised (NTP); false: it is not, timestamps may be far off "
                          "(a Pi has no RTC); null: the gateway cannot tell. Absent from older gateways.")


class OfflineMessage(Message):
    """`status`, retained: the last will (no ts: it is composed at connect) or a clean shutdown (with ts). An
    offline whose bdseq is lower than the last birth's is stale: ignore it."""

    type: Literal["status"]
    state: Literal["offline"]
    bdseq: int = Field(ge=0, description="The session it ends.")
    ts: Timestamp | Absent = Field(None, description="Clean shutdown only: when it stopped.")


StatusMessage = Annotated[Union[BirthMessage, OfflineMessage], Field(discriminator="state")]  # noqa: UP007


# -- health: the present, every [health] interval ------------------------------------------------------------------
class HealthDevices(Open):
    total: int = Field(ge=0, description="Devices polled or listened to.")
    online: int = Field(ge=0, description="Answering.")
    offline: int = Field(ge=0, description="Not answering (device.offline was sent).")
    unknown: int = Field(ge=0, description="Not yet heard from since the start.")
    offline_ids: list[str] = Field(description="The offline devices' ids, sorted (at most 100).")


class HealthOutbox(Open):
    depth: int = Field(ge=0, description="Messages stored, not yet delivered by every uplink.")
    oldest_age_s: float | None = Field(ge=0, description="Age of the oldest of them, seconds; null when empty.")


class HealthUplink(Open):
    state: str = Field(description="connected, disconnected, starting.")
    backlog: int = Field(ge=0, description="Outbox messages this uplink has yet to deliver: alert when it grows.")
    connects: int = Field(ge=0, description="Connections since the start (reconnects + 1).")
    delivered: int = Field(ge=0, description="Messages delivered since the start.")


class HealthAlarms(Open):
    active: int = Field(ge=0, description="Alarms not back to normal.")
    unacknowledged: int = Field(ge=0, description="Alarms waiting for a person.")


class HealthProcess(Open):
    rss_bytes: int = Field(ge=0, description="Resident memory of the daemon.")
    cpu_seconds: float = Field(ge=0, description="CPU time used since the start (user + system).")
    cpu_percent: float | Absent = Field(None, ge=0, description="Share of one core since the previous health "
                                                                "message; absent in the first.")
    open_fds: int = Field(description="Open file descriptors (-1: unknown).")
    disk_free_bytes: int = Field(description="Free space on the store's file system (-1: unknown).")
    store_bytes: int = Field(ge=0, description="Bytes the store uses.")


class HealthMessage(Message):
    """`health`, retained, QoS 1: the gateway's vital signs, every [health] interval and at every connect, on
    the live connection only (never stored, never replayed: a missed one is replaced by the next). A platform
    alerts on a growing backlog, an old outbox, offline devices, an unsynchronised clock, a full disk, or on no
    health for a few intervals while the status is online."""

    type: Literal["health"]
    ts: Timestamp = Field(description="When it was measured.")
    bdseq: int = Field(ge=0, description="The session it belongs to (the birth's bdseq).")
    version: str = Field(description="Gateway software version.")
    config: str = Field(description="sha256 of the config file it runs.")
    started: Timestamp = Field(description="When the daemon started.")
    uptime_s: float = Field(ge=0, description="Seconds since the start.")
    interval_s: float = Field(gt=0, description="The next one is due this many seconds later.")
    clock_synced: bool | None = Field(description="As in the birth: false means timestamps may be far off.")
    devices: HealthDevices
    outbox: dict[Label, HealthOutbox] = Field(description="By delivery class.")
    uplinks: dict[str, HealthUplink] = Field(description="Every uplink of the gateway, by name (mqtt is [mqtt]).")
    alarms: HealthAlarms
    process: HealthProcess


# -- replay batches --------------------------------------------------------------------------------------------------
_TOPIC = "The item's own relative topic, as if it were sent alone."
_HIST = "Always true: batches carry replay only."


class TelemetryItem(TelemetryMessage):
    topic: str = Field(description=_TOPIC)
    hist: Literal[True] = Field(description=_HIST)


class SummaryItem(SummaryMessage):
    topic: str = Field(description=_TOPIC)
    hist: Literal[True] = Field(description=_HIST)


class EventItem(EventMessage):
    topic: str = Field(description=_TOPIC)
    hist: Literal[True] = Field(description=_HIST)


BatchItem = Annotated[Union[TelemetryItem, SummaryItem, EventItem], Field(discriminator="type")]  # noqa: UP007
_ITEM_TYPES = {"telemetry": ("telemetry", "summary"), "event": ("event",)}


def _items_by_class() -> dict[str, Any]:
    """Schema side of `BatchMessage._consistent`: a batch's class says which items it may carry."""
    return {"allOf": [{"if": {"properties": {"class": {"const": batch_class}}},
                       "then": {"properties": {"items": {"items": {"properties": {"type": {"enum": list(types)}}}}}}}
                      for batch_class, types in _ITEM_TYPES.items()]}


class BatchMessage(Delivered):
    """`batch/<class>`: replayed messages, in delivery order; de-duplicate per item id. Alarms never come here."""

    model_config = ConfigDict(json_schema_extra=_items_by_class())
    type: Literal["batch"]
    class_: Literal["telemetry", "event"] = Field(alias="class", description="telemetry (telemetry and summary "
                                                                             "items) or event.")
    items: list[BatchItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> BatchMessage:
        for item in self.items:
            if item.type not in _ITEM_TYPES[self.class_]:
                raise ValueError(f"a {item.type} item in a batch of class {self.class_}")
            if item.topic != topic_of(item.model_dump(by_alias=True)):
                raise ValueError(f"item {item.id}: topic {item.topic!r} is not its own")
        return self


UpstreamMessage = Annotated[
    Union[TelemetryMessage, SummaryMessage, EventMessage, AlarmMessage, StateMessage,  # noqa: UP007
          MetaMessage, StatusMessage, HealthMessage, BatchMessage],
    Field(discriminator="type"),
]
ADAPTER: TypeAdapter[Any] = TypeAdapter(UpstreamMessage)


def parse(data: Any) -> Any:
    """Validate one decoded message; raises `pydantic.ValidationError`. Returns the model of its type."""
    return ADAPTER.validate_python(data)


def event_type(kind: str, priority: str) -> Literal["alarm", "event"]:
    """THE rule: alarm (type and topic) for priority alarm or any alarm transition; event otherwise."""
    return "alarm" if priority == "alarm" or kind.startswith("alarm.") else "event"


def topic_of(message: Mapping[str, Any]) -> str:
    """A message's topic relative to `<topic_prefix>/<site id>/`."""
    kind = message["type"]
    if kind in ("telemetry", "summary", "state", "meta"):
        return f"{kind}/{message['device']}"
    if kind in ("event", "alarm"):
        return f"{kind}/{message['kind']}"
    if kind == "batch":
        return f"batch/{message['class']}"
    if kind == "health":
        return "health"
    return "status"


def historical(stored: float, now: float, live_window: float = 60.0) -> bool:
    """Delivered later than its live window after the gateway recorded it: `hist: true`."""
    return now - stored > live_window


# -- the schema --------------------------------------------------------------------------------------------------
def upstream_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of every message, from the models and the event catalogue."""
    schema = ADAPTER.json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    models = list({info.data: None for info in KINDS})
    _, data_defs = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    for name, definition in data_defs.get("$defs", {}).items():
        if name in defs and defs[name] != definition:
            raise RuntimeError(f"two models named {name} in the upstream schema")
        defs[name] = definition
    defs["DataByKind"] = {
        "description": "An event's or alarm's data, typed by its kind where the catalogue knows the kind.",
        "allOf": [{"if": {"properties": {"kind": {"const": info.kind}}, "required": ["kind"]},
                   "then": {"properties": {"data": {"$ref": f"#/$defs/{info.data.__name__}"}}}} for info in KINDS],
    }
    for name in ("EventMessage", "AlarmMessage", "EventItem"):
        defs[name].setdefault("allOf", []).append({"$ref": "#/$defs/DataByKind"})
    _plain(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"Community gateway upstream messages, version {V}",
        "description": "Every MQTT message the gateway publishes under <topic_prefix>/<site id>/ in the native "
                       "JSON contract (docs/upstream.md). Consumers ignore unknown fields; fields are only added "
                       "within a major version (v). Delivery is at least once: de-duplicate on id.",
        **schema,
    }


def render_schema() -> str:
    """The schema as shipped in `upstream-v2.json` and printed by `gateway schema upstream`."""
    return json.dumps(upstream_schema(), indent=2, ensure_ascii=False) + "\n"


def _plain(node: Any) -> None:
    """Plain JSON Schema: an optional field is absent, not null, so its "default": null says nothing; and
    pydantic's OpenAPI "discriminator" is no 2020-12 keyword (the type consts already tell the variants apart)."""
    if isinstance(node, dict):
        if "default" in node and node["default"] is None:
            del node["default"]
        if isinstance(node.get("discriminator"), dict) and "propertyName" in node["discriminator"]:
            del node["discriminator"]
        for value in node.values():
            _plain(value)
    elif isinstance(node, list):
        for value in node:
            _plain(value)


__all__ = ["AlarmMessage", "BatchMessage", "BirthMessage", "Data", "EventMessage", "HealthMessage", "MetaMessage",
           "OfflineMessage", "PointMeta", "PointReading", "PointSummary", "StateMessage", "SummaryMessage",
           "TelemetryMessage", "UpstreamMessage", "V", "event_type", "historical", "parse", "render_schema", "topic_of",
           "upstream_schema"]
