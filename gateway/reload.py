"""What a reload would change: the running config compared with a newly loaded one, section by section.

Pure: two ``GatewayConfig`` trees in, one ``ConfigChange`` out, saying what must be restarted and what must not.
Entries are compared by ``model_dump()``. The daemon (``gateway.reloader``) applies it.

- A bus is rebuilt (its driver closed and made again, every poller on it and its stream restarted) when its own
  config changed or what its driver is built from changed: the set of its enabled devices and their configs. A
  driver plans its reads from its devices' configs (points, unit, retries, life safety ...), so most device
  changes rebuild the device's bus; on a TCP endpoint that carries one device that is the device alone.
- A device whose change only its poller reads (``POLLER_FIELDS``: interval, probe_max, stale_after, name) has its
  poller restarted on the same driver; the other devices on its bus are not touched.
- Reporting (``report``, ``report_points``, ``history``) and privacy (``mqtt.keep_local``, camera ``upstream``)
  are swapped in place: no poller restarts for them.
- Rules, alarm classes, notifiers, the site's time zone and which device is on which bus swap the rule set; the
  alarm book is carried over whole.
- ``[mqtt]`` (but ``keep_local``), or the contents of the files it names (CA, client certificate and key,
  password file), reconnect the uplink. An ``[[uplinks]]`` entry added, removed or changed (or its files) starts,
  stops or reconnects that uplink alone. ``vision`` restarts every camera; a camera's own change restarts it.
- ``[health]`` and ``[metrics]`` apply in place (their loops read the config at every turn; the textfile's writer
  is restarted, or stopped when the textfile is turned off). ``[web]`` needs a restart (its socket is bound).
- ``site.id`` and every ``[store]`` key cannot change while the daemon runs (the store is open, topics are named
  after the site): a reload that changes one is refused as a whole and says which to restart for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel

from gateway.config.schema import GatewayConfig, MqttConfig

POLLER_FIELDS = frozenset({"interval", "probe_max", "stale_after", "name"})
"""Device keys only the core's poller reads (no driver does): a change restarts the poller, not the bus."""
REPORTING_FIELDS = frozenset({"report", "report_points", "history"})
"""Device keys the uplink feed reads: applied in place."""
RULE_SECTIONS = ("rules", "alarm_classes", "notifiers")
HANDLED = frozenset({"site", "mqtt", "uplinks", "commands", "store", "log", "buses", "devices", "include",
                     "alarm_classes", "rules", "notifiers", "vision", "cameras", "health", "metrics"})
"""Top-level sections this module knows how to apply; a section added later and not listed here refuses the
reload until it is (a restart applies it), never silently ignored."""


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What differs between the running config and the new one, and so what a reload restarts."""

    devices_added: tuple[str, ...] = ()
    devices_removed: tuple[str, ...] = ()
    devices_changed: tuple[str, ...] = ()
    buses_added: tuple[str, ...] = ()
    buses_removed: tuple[str, ...] = ()
    buses_changed: tuple[str, ...] = ()
    rebuild: tuple[str, ...] = ()
    """Buses whose driver is closed and built again, with every poller on it (old buses and new)."""
    restart: tuple[str, ...] = ()
    """Devices whose poller restarts on an unchanged driver (a change of POLLER_FIELDS only)."""
    reporting: tuple[str, ...] = ()
    """Devices whose report policy or history changed."""
    rules: tuple[str, ...] = ()
    """Why the rule set is swapped: rules, alarm_classes, notifiers, site.timezone, devices (which bus)."""
    mqtt: tuple[str, ...] = ()
    """[mqtt] keys (and "files": the TLS or password files' contents) that make the uplink reconnect."""
    privacy: tuple[str, ...] = ()
    uplinks_added: tuple[str, ...] = ()
    uplinks_removed: tuple[str, ...] = ()
    uplinks_changed: tuple[str, ...] = ()
    """``[[uplinks]]`` entries (by name) whose keys or files changed: each reconnects, the others go on."""
    cameras_added: tuple[str, ...] = ()
    cameras_removed: tuple[str, ...] = ()
    cameras_changed: tuple[str, ...] = ()
    """Cameras restarted (every enabled one when ``vision`` changed)."""
    commands: tuple[str, ...] = ()
    log: tuple[str, ...] = ()
    observe: tuple[str, ...] = ()
    """``[health]`` and ``[metrics]`` keys: read at every turn of their loops; the textfile's writer is restarted."""
    other: tuple[str, ...] = ()
    """Changed keys that need nothing restarted (site.name, include)."""
    refused: tuple[str, ...] = ()
    """Keys a running daemon cannot take: the reload is refused while any is set."""

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def summary(self) -> dict[str, list[str]]:
        """The non-empty entries, for the config.applied event, the audit log and `gateway reload`."""
        return {f.name: list(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)}

    def reason(self) -> str:
        """Why the reload is refused, for a person ("" when it is not)."""
        if not self.refused:
            return ""
        return f"restart the service to apply {', '.join(self.refused)} (a running daemon cannot change them)"


def diff(old: GatewayConfig, new: GatewayConfig, *, old_files: str | Mapping[str, str] = "",
         new_files: str | Mapping[str, str] = "") -> ConfigChange:
    """What changes from ``old`` to ``new``; ``*_files`` are ``mqtt_files()`` digests, of ``[mqtt]`` or by uplink
    name (``uplink_files()``): certificates rotated in place change no key but must reconnect the uplink."""
    old_files = {"mqtt": old_files} if isinstance(old_files, str) else old_files
    new_files = {"mqtt": new_files} if isinstance(new_files, str) else new_files
    out: dict[str, Any] = {}
    out["refused"] = _refused(old, new)
    d_added, d_removed, d_changed = _entries(old.devices, new.devices)
    b_added, b_removed, b_changed = _entries(old.buses, new.buses)
    out.update(devices_added=d_added, devices_removed=d_removed, devices_changed=d_changed,
               buses_added=b_added, buses_removed=b_removed, buses_changed=b_changed)
    rebuild = _rebuild(old, new)
    out["rebuild"] = rebuild
    out["restart"] = _restart(old, new, rebuild)
    out["reporting"] = tuple(sorted(
        d.id for d in new.devices
        if (o := _find(old.devices, d.id)) is not None and _part(o, REPORTING_FIELDS) != _part(d, REPORTING_FIELDS)))
    rules = [s for s in RULE_SECTIONS if _dump(getattr(old, s)) != _dump(getattr(new, s))]
    if old.site.timezone != new.site.timezone:
        rules.append("site.timezone")
    if _buses_of(old) != _buses_of(new):
        rules.append("devices")
    out["rules"] = tuple(rules)
    mqtt = _keys(old.mqtt, new.mqtt, skip={"keep_local"})
    if old_files.get("mqtt", "") != new_files.get("mqtt", ""):
        mqtt.append("files")
    out["mqtt"] = tuple(mqtt)
    privacy = ["mqtt.keep_local"] if old.mqtt.keep_local != new.mqtt.keep_local else []
    if _upstream(old) != _upstream(new):
        privacy.append("cameras.upstream")
    out["privacy"] = tuple(privacy)
    before = {u.name: _dump(u) for u in old.uplinks}
    after = {u.name: _dump(u) for u in new.uplinks}
    out["uplinks_added"] = tuple(sorted(set(after) - set(before)))
    out["uplinks_removed"] = tuple(sorted(set(before) - set(after)))
    out["uplinks_changed"] = tuple(sorted(n for n in set(before) & set(after)
                                          if before[n] != after[n] or old_files.get(n, "") != new_files.get(n, "")))
    c_added, c_removed, c_changed = _entries(old.cameras, new.cameras)
    if _dump(old.vision) != _dump(new.vision):
        c_changed = tuple(sorted({*c_changed, *(c.id for c in new.cameras if _find(old.cameras, c.id))}))
    out.update(cameras_added=c_added, cameras_removed=c_removed, cameras_changed=c_changed)
    out["commands"] = tuple(_keys(getattr(old, "commands", None), getattr(new, "commands", None)))
    out["log"] = tuple(f"log.{k}" for k in _keys(old.log, new.log))
    out["observe"] = tuple([*(f"health.{k}" for k in _keys(old.health, new.health)),
                            *(f"metrics.{k}" for k in _keys(old.metrics, new.metrics))])
    other = [f"site.{k}" for k in _keys(old.site, new.site, skip={"id", "timezone"})]
    if old.include != new.include:
        other.append("include")
    out["other"] = tuple(other)
    return ConfigChange(**out)


def uplink_files(cfg: GatewayConfig) -> dict[str, str]:
    """``mqtt_files`` of every uplink, by name ("mqtt" for ``[mqtt]``)."""
    return {"mqtt": mqtt_files(cfg.mqtt), **{u.name: mqtt_files(u) for u in cfg.uplinks}}


def mqtt_files(mqtt: MqttConfig) -> str:
    """A digest of the files the uplink reads at each connect (TLS CA, certificate and key, password file)."""
    digest = hashlib.sha256()
    tls = mqtt.tls
    paths = [mqtt.password_file, *((tls.ca_file, tls.cert_file, tls.key_file) if tls else ())]
    for path in paths:
        if path is None:
            continue
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except (OSError, ValueError) as exc:  # the connect will say so; a change of it is still a change
            digest.update(type(exc).__name__.encode())
    return digest.hexdigest()


# -- the parts ------------------------------------------------------------------------------------------------


def _refused(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    refused = ["site.id"] if old.site.id != new.site.id else []
    refused += [f"store.{k}" for k in _keys(old.store, new.store)]
    known = set(type(new).model_fields) | set(type(old).model_fields)
    refused += sorted(s for s in known - HANDLED if _dump(getattr(old, s, None)) != _dump(getattr(new, s, None)))
    return tuple(refused)


def _rebuild(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    """Buses whose driver must be made again: added, removed, changed, or what their driver is built from."""
    ids = {b.id for b in old.buses} | {b.id for b in new.buses}
    return tuple(sorted(b for b in ids if _bus_inputs(old, b) != _bus_inputs(new, b)))


def _bus_inputs(cfg: GatewayConfig, bus_id: str) -> Any:
    bus = _find(cfg.buses, bus_id)
    devices = [d for d in cfg.devices if d.bus == bus_id and d.enabled]
    if bus is None or not devices:  # no driver is built for a bus without enabled devices
        return None
    return _dump(bus), {d.id: _part(d, POLLER_FIELDS | REPORTING_FIELDS, exclude=True) for d in devices}


def _restart(old: GatewayConfig, new: GatewayConfig, rebuild: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for device in new.devices:
        before = _find(old.devices, device.id)
        if before is None or not device.enabled or device.bus in rebuild:
            continue  # a new device comes with its bus's rebuild; a disabled one has no poller
        if _part(before, POLLER_FIELDS) != _part(device, POLLER_FIELDS):
            out.append(device.id)
    return tuple(sorted(out))


def _entries(old: Iterable[BaseModel], new: Iterable[BaseModel]) -> tuple[tuple[str, ...], ...]:
    before = {getattr(e, "id"): _dump(e) for e in old}  # noqa: B009 (every entry has an id; the type does not say)
    after = {getattr(e, "id"): _dump(e) for e in new}  # noqa: B009
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return tuple(added), tuple(removed), tuple(changed)


def _keys(old: BaseModel | None, new: BaseModel | None, *, skip: Iterable[str] = ()) -> list[str]:
    """The top-level keys of one section that differ."""
    if old is None or new is None:
        return [] if old is None and new is None else ["*"]
    a, b = _dump(old), _dump(new)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def _find(entries: Iterable[Any], ident: str) -> Any:
    return next((e for e in entries if e.id == ident), None)


def _part(model: BaseModel, keys: Iterable[str], *, exclude: bool = False) -> dict[str, Any]:
    dump = _dump(model)
    wanted = set(keys)
    return {k: v for k, v in dump.items() if (k in wanted) != exclude}


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _buses_of(cfg: GatewayConfig) -> Mapping[str, str]:
    return {d.id: d.bus for d in cfg.devices if d.enabled}


def _upstream(cfg: GatewayConfig) -> dict[str, Any]:
    return {c.id: c.upstream for c in cfg.cameras}
