"""The configuration tree. Every section forbids unknown keys; every field says what it is for."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from drivers import registry
from drivers.base import BusConfig, DeviceConfig
from drivers.registry import family_of
from gateway.config.files import MAX_SECRET_BYTES, Reader, file_problem
from gateway.config.observe import HealthConfig, MetricsConfig, WebConfig
from gateway.config.uplink import LIFE_SAFETY_KINDS, MqttConfig, TlsConfig, UplinkConfig
from gateway.core.config import Duration, Identifier, Problem, StrictModel
from gateway.remote.config import CommandsConfig
from models.config import CameraConfig, VisionConfig
from rules.config import AlarmClassConfig, NotifierConfig, Rule, alarm_classes, references
from rules.report import ReportPolicy

__all__ = ["LIFE_SAFETY_KINDS", "GatewayConfig", "MqttConfig", "TlsConfig", "UplinkConfig"]


class SiteConfig(StrictModel):
    id: Identifier = Field(description="This gateway's id; the MQTT topic root and the birth message carry it.")
    name: str = Field(default="", description="Community or building name, for people.")
    timezone: str | None = Field(
        default=None, description="IANA zone for rule schedules, e.g. \"Asia/Shanghai\"; default: the system's.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {name!r} (e.g. \"Asia/Shanghai\")") from None
        return name


class StoreConfig(StrictModel):
    data_dir: Path = Field(default=Path("/var/lib/gateway"), description="Where the SQLite store lives.")
    max_mb: float = Field(
        default=512, ge=1, le=1_000_000,
        description="Cap of the whole store (database, WAL, shm); telemetry is dropped oldest-first above it.",
    )
    min_free_mb: float = Field(
        default=64, ge=0, le=1_000_000,
        description="Free space the disk must keep; below it telemetry yields first, whatever else fills the disk.",
    )
    reserve_mb: float = Field(
        default=8, ge=0, le=1024,
        description="Space held back in the data directory and released only for alarms and events when the "
                    "disk is full (store.disk_full alarm); made again when space returns.",
    )
    events_keep: int = Field(default=1_000_000, ge=1000, description="Most local event-log rows kept.")
    raw_lines_keep: int = Field(
        default=200_000, ge=1000, description="Most raw panel lines kept (a noisy panel prints ~1,000 a second).",
    )
    readings_retention: Duration = Field(
        default=86400.0, ge=0, description="How long recent readings stay for the CLI."
    )
    synchronous: Literal["normal", "full"] = Field(
        default="full",
        description="full: every commit survives power loss (fsync); normal: survives a crash, not power loss.",
    )


class LogConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: key=value on a terminal, JSON lines otherwise (journald)."
    )


class Reporting(StrictModel):
    """What the core adds to every device, whatever its protocol: what of its telemetry goes upstream."""

    report: ReportPolicy = Field(
        default_factory=ReportPolicy, description="What goes upstream: every poll, on change, periodic, aggregate.",
    )
    report_points: dict[str, ReportPolicy] = Field(
        default_factory=dict, description="Per-point policies where they differ from `report`.",
    )
    history: bool = Field(
        default=True,
        description="Keep every poll in the local readings history (for store.readings_retention), whatever goes "
                    "upstream; false saves disk and CPU on a device nobody replays.",
    )


if TYPE_CHECKING:  # what every member of the runtime unions is, for the type checker
    AnyBus = BusConfig

    class AnyDevice(DeviceConfig, Reporting): ...
else:
    AnyBus = registry.bus_union()
    AnyDevice = registry.device_union(Reporting)


class GatewayConfig(StrictModel):
    """The whole file. Devices take their family (modbus, bacnet, ...) from the bus they name."""

    site: SiteConfig = Field(description="Who this gateway is.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The uplink to the community platform.")
    uplinks: list[UplinkConfig] = Field(
        default_factory=list,
        description="More uplinks beside [mqtt] (named \"mqtt\"), each with its broker(s), dialect and share of the "
                    "outbox: e.g. Sparkplug B to the property company's SCADA and Home Assistant in the building.",
    )
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig, description="Commands from the community platform over MQTT (off by default).",
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="The local SQLite store and outbox.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    web: WebConfig = Field(
        default_factory=WebConfig, description="The local status page and /metrics (loopback only by default).",
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="The Prometheus textfile collector.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Periodic health messages upstream.")
    buses: list[AnyBus] = Field(default_factory=list, description="Physical endpoints: TCP hosts, serial ports.")
    devices: list[AnyDevice] = Field(default_factory=list, description="Field devices, each on one bus.")
    include: list[str] = Field(
        default_factory=list,
        description="Rule files to merge (rules, alarm_classes, notifiers), e.g. [\"rules.d/*.toml\"].",
    )
    alarm_classes: list[AlarmClassConfig] = Field(
        default_factory=list,
        description="Escalation deadlines and who is told; overrides the built-in classes by name.",
    )
    rules: list[Rule] = Field(default_factory=list, description="Local rules: conditions in, alarms and actions out.")
    notifiers: list[NotifierConfig] = Field(default_factory=list, description="Webhooks on the LAN for rule actions.")
    vision: VisionConfig = Field(default_factory=VisionConfig, description="On-device recognition settings.")
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras watched by on-device vision.")

    @model_validator(mode="before")
    @classmethod
    def _device_families(cls, data: Any) -> Any:
        """Tag each device with its bus's family so the device union knows which schema applies.

        A device naming a missing bus gets the default family, so that its other keys are still
        checked and the missing bus is reported on its own line by cross_check.
        """
        if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
            return data
        buses = data.get("buses")
        drivers = {
            b["id"]: b.get("driver") for b in (buses if isinstance(buses, list) else [])
            if isinstance(b, dict) and isinstance(b.get("id"), str)
        }

        def family(device: dict[str, Any]) -> str:
            bus = device.get("bus")
            return family_of(drivers.get(bus) if isinstance(bus, str) else None)

        devices = [
            {**d, "driver": family(d)} if isinstance(d, dict) and "driver" not in d else d for d in data["devices"]
        ]
        return {**data, "devices": devices}

    def bus(self, bus_id: str) -> AnyBus:
        return next(b for b in self.buses if b.id == bus_id)

    def device(self, device_id: str) -> AnyDevice:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


def cross_check(cfg: GatewayConfig, *, reader: Reader | None = None) -> list[Problem]:
    """Facts that span sections, checked after every section is valid on its own (files as ``reader`` may read)."""
    problems: list[Problem] = []

    def duplicates(ids: list[str], loc: tuple[str | int, ...], what: str) -> None:
        seen = Counter(ids)
        for index, ident in enumerate(ids):
            if seen[ident] > 1 and ids.index(ident) != index:
                problems.append(Problem((*loc, index, "id"), f"duplicate {what} id {ident!r}", ident))

    duplicates([b.id for b in cfg.buses], ("buses",), "bus")
    duplicates([d.id for d in cfg.devices], ("devices",), "device")
    duplicates([c.id for c in cfg.cameras], ("cameras",), "camera")
    names = [u.name for u in cfg.uplinks]
    for index, name in enumerate(names):
        if name == "mqtt" or names.index(name) != index:
            problems.append(Problem(("uplinks", index, "name"), f"uplink name {name!r} is taken ([mqtt] is \"mqtt\")",
                                    name))
    device_ids = {d.id for d in cfg.devices}
    for index, camera in enumerate(cfg.cameras):
        if camera.id in device_ids:  # events carry the id as their source: it must name one thing
            problems.append(Problem(("cameras", index, "id"), f"{camera.id!r} is already a device id", camera.id))
    buses = {b.id: b for b in cfg.buses}
    families: dict[str, tuple[list[tuple[int, Any]], list[tuple[int, Any]]]] = {}
    for index, bus in enumerate(cfg.buses):
        families.setdefault(family_of(bus.driver), ([], []))[0].append((index, bus))
    for index, device in enumerate(cfg.devices):
        duplicates(device.point_ids(), ("devices", index, "points"), f"point (device {device.id!r})")
        carrier = buses.get(device.bus)
        if carrier is None:
            known = ", ".join(sorted(buses)) or "none defined"
            problems.append(Problem(("devices", index, "bus"), f"no bus {device.bus!r} (buses: {known})", device.bus))
            continue
        if family_of(carrier.driver) != device.driver:
            problems.append(Problem(("devices", index, "bus"), f"bus {carrier.id!r} is {carrier.driver}", device.bus))
            continue
        families.setdefault(device.driver, ([], []))[1].append((index, device))
    for family, (family_buses, family_devices) in families.items():
        plugin = registry.plugins().get(family)
        if plugin is not None and plugin.validate is not None:
            problems += plugin.validate(family_buses, family_devices)
    ports: dict[str, str] = {}
    for index, bus in enumerate(cfg.buses):
        port = getattr(bus, "port", None)
        if isinstance(port, str):  # a local serial device opens for one bus only, whatever it carries
            if port in ports:
                problems.append(Problem(("buses", index, "port"),
                                        f"serial port {port!r} is already bus {ports[port]!r}", port))
            ports.setdefault(port, bus.id)

    socket = cfg.store.data_dir / "control.sock"
    if len(os.fsencode(socket)) > 107:  # AF_UNIX paths are at most 107 bytes: the daemon could not start
        problems.append(Problem(("store", "data_dir"), f"the path is too long for the daemon's control socket "
                                f"({len(os.fsencode(socket))} bytes with /control.sock, at most 107): choose a "
                                "shorter data_dir", str(cfg.store.data_dir)))
    problems += _check_rules(cfg)
    # (where, the file, whether it is a secret only its owner may read)
    files: list[tuple[tuple[str | int, ...], Path | None, bool]] = []
    if any("faces" in c.detect for c in cfg.cameras if c.enabled):
        files.append((("vision", "faces", "key_file"), cfg.vision.faces.key_file, True))
    uplinks: list[tuple[tuple[str | int, ...], MqttConfig]] = [(("mqtt",), cfg.mqtt)]
    uplinks += [(("uplinks", i), u) for i, u in enumerate(cfg.uplinks)]
    sessions: dict[tuple[str, int, str], str] = {}
    for where, mqtt in uplinks:
        name = "mqtt" if where == ("mqtt",) else cfg.uplinks[int(where[1])].name
        for host, port in mqtt.brokers() if mqtt.enabled else []:  # one session per client id: a broker drops the other
            other = sessions.setdefault((host, port, mqtt.client_id or cfg.site.id), name)
            if other != name:
                problems.append(Problem((*where, "client_id"), f"uplink {other!r} connects to {host}:{port} as the "
                                        "same client id: the broker would drop one for the other; set client_id",
                                        mqtt.client_id))
                break
        if mqtt.password is not None and mqtt.password_file is not None:
            problems.append(Problem((*where, "password"), "set password or password_file, not both"))
        files.append(((*where, "password_file"), mqtt.password_file, True))
        if mqtt.tls:
            files += [((*where, "tls", key), getattr(mqtt.tls, key), key == "key_file")
                      for key in ("ca_file", "cert_file", "key_file")]
            if (mqtt.tls.cert_file is None) != (mqtt.tls.key_file is None):
                problems.append(Problem((*where, "tls"), "mutual TLS needs both cert_file and key_file"))
    if cfg.web.enabled:
        files += [(("web", "users_file"), cfg.web.users_file, True), (("web", "tls_cert"), cfg.web.tls_cert, False),
                  (("web", "tls_key"), cfg.web.tls_key, True)]
    for loc, path, secret in files:
        problem = None if path is None else file_problem(path, MAX_SECRET_BYTES, secret=secret, reader=reader)
        if problem is not None:  # the message names the file and its mode, never what is in it
            problems.append(Problem(loc, problem, str(path)))
    return problems


def _check_rules(cfg: GatewayConfig) -> list[Problem]:
    problems: list[Problem] = []
    points = {f"{d.id}.{p}": d for d in cfg.devices for p in d.point_ids()}
    devices = {d.id for d in cfg.devices}
    classes = alarm_classes(cfg.alarm_classes)
    notifiers = {n.id for n in cfg.notifiers}
    seen: set[str] = set()
    for index, rule in enumerate(cfg.rules):
        loc: tuple[str | int, ...] = ("rules", index)
        if rule.id in seen:
            problems.append(Problem((*loc, "id"), f"duplicate rule id {rule.id!r}", rule.id))
        seen.add(rule.id)
        if rule.alarm is not None and rule.alarm.class_ not in classes:
            problems.append(Problem((*loc, "alarm", "class"),
                                    f"no alarm class {rule.alarm.class_!r} (classes: {', '.join(sorted(classes))})",
                                    rule.alarm.class_))
        for where, kind, name in references(rule):
            if kind == "device" and name not in devices:
                problems.append(Problem((*loc, *where), f"no device {name!r}", name))
            elif kind in ("point", "writable") and name not in points:
                problems.append(Problem((*loc, *where), f"no point {name!r} (write it as \"device.point\")", name))
            elif kind == "writable" and points[name].write_spec(name.split(".", 1)[1]) is None:
                problems.append(Problem((*loc, *where), f"{name} is not writable (set writable = true)", name))
        listens = {k for _, k, _ in _event_kinds(rule.when)}
        for i, action in enumerate(rule.actions):
            published = getattr(action, "publish", None)
            if published is not None and any(published == k or (k.endswith("*") and published.startswith(k[:-1]))
                                             for k in listens):
                problems.append(Problem((*loc, "actions", i, "publish"),
                                        f"publishes {published!r}, which its own `when` listens for: a loop",
                                        published))
            target = getattr(action, "notify", None)
            if target is not None and target not in notifiers:
                problems.append(Problem((*loc, "actions", i, "notify"), f"no notifier {target!r}", target))
    return problems


def _event_kinds(cond: Any) -> list[tuple[None, str, None]]:
    kind = getattr(cond, "event", None)
    out = [(None, kind, None)] if isinstance(kind, str) else []
    for child in (getattr(cond, "all", None) or []) + (getattr(cond, "any", None) or []):
        out += _event_kinds(child)
    if getattr(cond, "not_", None) is not None:
        out += _event_kinds(cond.not_)
    return out


def json_schema() -> str:
    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Community gateway configuration"
    return json.dumps(schema, indent=2, ensure_ascii=False)


def resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make file paths in the raw document relative to the config file, not the working directory."""
    def fix(section: dict[str, Any] | None, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            path = Path(os.path.expanduser(section[key]))
            section[key] = str(path if path.is_absolute() else base / path)

    uplinks = data.get("uplinks")
    for mqtt in [data.get("mqtt"), *(uplinks if isinstance(uplinks, list) else [])]:
        fix(mqtt, "password_file")
        if isinstance(mqtt, dict):
            for key in ("ca_file", "cert_file", "key_file"):
                fix(mqtt.get("tls"), key)
    fix(data.get("store"), "data_dir")
