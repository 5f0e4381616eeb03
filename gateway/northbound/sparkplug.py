"""Sparkplug B 3.0 (``encoding = "sparkplug_b"``; docs/sparkplug.md): the outbox's facts as an edge node says them.

Topics are ``spBv1.0/<group>/<type>/<edge node>[/<device>]``; payloads are the Eclipse Tahu protobuf. The node
is born (NBIRTH, ``seq`` 0, ``bdSeq`` of this connection, ``Node Control/Rebirth``) and every device after it
(DBIRTH: every point as a metric with its name, alias and datatype from the catalog) before any data; data then
travels by alias (DDATA). Every message but the NDEATH carries ``seq`` 0-255, in publishing order. A device going
offline is a DDEATH, coming back a DBIRTH. Alarms and events have no Sparkplug shape: they are the node's
``Alarm`` and ``Event`` String metrics (NDATA, the event as JSON). Replay is ``is_historical`` (never an alarm:
it must still reach the host's real-time tag). Command results are not this dialect's (the native uplink's).
Commands come in as NCMD/DCMD (``sparkplug_inbound``); with a primary host, the outbox waits for its STATE.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from gateway import __version__
from gateway.config.uplink import MqttConfig
from gateway.facts import Fact, StoredFact
from gateway.northbound import sparkplug_inbound as inbound_
from gateway.northbound.encoder import Encoded, Inbound, Message, Session
from gateway.northbound.json_v2 import is_alarm
from gateway.northbound.sparkplug_metrics import (
    BOOLEAN,
    DATATYPES,
    DATETIME,
    DOUBLE,
    INT64,
    STRING,
    add_property,
    ms,
    set_quality,
    set_value,
)
from gateway.northbound.sparkplug_proto import payload_class

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
NODE_ALIASES = {REBIRTH: 1, "Properties/Version": 2, "Properties/Config": 3, "Properties/Started": 4,
                "Alarm": 5, "Event": 6}
"""The node's metrics (``bdSeq`` has no alias); device metrics are numbered from ``FIRST_DEVICE_ALIAS`` on."""
FIRST_DEVICE_ALIAS = 16
Devices = Mapping[str, Mapping[str, Any]]


class SparkplugEncoder:
    def __init__(self, site: str, config: MqttConfig, devices: Callable[[], Devices] | None = None, *,
                 command_ttl: float = inbound_.COMMAND_TTL) -> None:
        spb = config.sparkplug
        self.group, self.edge = spb.group_id, spb.edge_node_id or site
        self.qos = spb.qos
        self.live_window, self.replay_batch = config.live_window, config.replay_batch
        self.inbound_ = inbound_.Commands(self.group, self.edge, spb.primary_host, spb.commands,
                                          lambda device: self._born.get(device, {}), command_ttl)
        self._catalog = devices
        self._meta: dict[str, Mapping[str, Any]] = {}
        """What each device offers (``meta/<device>`` of the native contract): the birth certificates' source."""
        self._aliases: dict[tuple[str, str], int] = {}
        """(device, metric) -> alias, for the process's life: unique across the node, stable across sessions."""
        self._born: dict[str, dict[str, tuple[int, int]]] = {}
        """Devices born in this session: metric -> (alias, datatype)."""
        self._births_due = False
        self._unknown: set[str] = set()
        self._offline: set[str] = set()
        self._last: dict[str, dict[str, tuple[Any, str | None, float]]] = {}
        """Each point's last live value, quality and time: what a DBIRTH says a metric's current value is."""
        self._seq = 0
        self.unsent: Counter[str] = Counter()
        """Rows acknowledged with no message, and points left out of one, by reason."""

    @property
    def dropped(self) -> Counter[str]:
        """Messages from the broker not understood (bad protobuf, unknown metric...), by reason."""
        return self.inbound_.dropped

    # -- topics, payloads ----------------------------------------------------------------------

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.edge}"
        return f"{base}/{device}" if device else base

    def _payload(self, now: float | None, seq: bool = True) -> Any:
        payload = payload_class()()
        if now is not None:
            payload.timestamp = ms(now)
        if seq:
            payload.seq = self._seq
            self._seq = (self._seq + 1) % 256
        return payload

    def _message(self, kind: str, payload: Any, device: str | None = None, qos: int | None = None) -> Message:
        return Message(self.topic(kind, device), payload.SerializeToString(), absolute=True,
                       qos=self.qos if qos is None else qos)

    # -- the session ---------------------------------------------------------------------------

    def birth(self, session: Session, now: float) -> Message:
        self._seq = 0
        self._born.clear()
        self._unknown.clear()
        self._births_due = True
        payload = self._payload(now)
        self._bdseq(payload, session)
        values: list[tuple[str, int, Any]] = [
            (REBIRTH, BOOLEAN, False), ("Properties/Version", STRING, __version__),
            ("Properties/Config", STRING, session.config), ("Properties/Started", DATETIME, session.started),
            ("Alarm", STRING, None), ("Event", STRING, None)]
        for name, kind, value in values:
            metric = payload.metrics.add(name=name, alias=NODE_ALIASES[name], datatype=kind, timestamp=ms(now))
            set_value(metric, kind, value)
        return self._message("NBIRTH", payload)

    def _bdseq(self, payload: Any, session: Session) -> None:
        payload.metrics.add(name="bdSeq", datatype=INT64, long_value=session.bdseq % 256)

    def will(self, session: Session) -> Message:
        payload = self._payload(None, seq=False)
        self._bdseq(payload, session)
        return self._message("NDEATH", payload, qos=1)

    def goodbye(self, session: Session, now: float) -> Message:
        """An NDEATH said on a clean disconnect (the broker sends the will only when the link is lost)."""
        payload = self._payload(now, seq=False)
        self._bdseq(payload, session)
        return self._message("NDEATH", payload, qos=1)

    def superseded(self, status: bytes, session: Session) -> bool:
        return False  # NBIRTH and NDEATH are never retained: nothing of an older session lingers

    def describe(self, session: Session, devices: Mapping[str, Mapping[str, Any]], now: float) -> list[Message]:
        """The DBIRTHs due after the NBIRTH (or of devices new since); a removed device simply is not born."""
        self._meta = dict(devices)
        session.announced = set(devices)
        return self._births(now)

    def _births(self, now: float) -> list[Message]:
        self._births_due = False
        return [self._dbirth(device, meta, now) for device, meta in self._meta.items()
                if device not in self._born and device not in self._offline]

    def _device(self, device: str) -> Mapping[str, Any] | None:
        """What the device offers, from the running config's catalog (asked again for a device not known yet, once
        per session: the rows of a device removed from the config must not each rebuild every catalog)."""
        meta = self._meta.get(device)
        if meta is None and self._catalog is not None and device not in self._unknown:
            self._meta = dict(self._catalog())
            meta = self._meta.get(device)
            if meta is None:
                self._unknown.add(device)
        return meta

    def _alias(self, device: str, name: str) -> int:
        alias = self._aliases.get((device, name))
        if alias is None:
            alias = self._aliases[device, name] = FIRST_DEVICE_ALIAS + len(self._aliases)
        return alias

    def _dbirth(self, device: str, meta: Mapping[str, Any], now: float) -> Message:
        payload = self._payload(now)
        born: dict[str, tuple[int, int]] = {}
        last = self._last.get(device, {})
        for name, value in (("Properties/Driver", meta.get("driver")), ("Properties/Name", meta.get("name"))):
            if value:
                born[name] = (self._alias(device, name), STRING)
                payload.metrics.add(name=name, alias=born[name][0], datatype=STRING, string_value=str(value),
                                    timestamp=ms(now))
        for point, info in (meta.get("points") or {}).items():
            kind = DATATYPES.get(info.get("type"), STRING)
            born[point] = (self._alias(device, point), kind)
            metric = payload.metrics.add(name=point, alias=born[point][0], datatype=kind)
            value, quality, ts = last.get(point, (None, "bad", now))
            metric.timestamp = ms(ts)
            set_quality(metric, quality, set_value(metric, kind, value))
            _describe(metric.properties, info)
        self._born[device] = born
        return self._message("DBIRTH", payload, device)

    def _ddeath(self, device: str, now: float) -> Message:
        self._born.pop(device, None)
        return self._message("DDEATH", self._payload(now), device)

    # -- facts ---------------------------------------------------------------------------------

    def historical(self, row: StoredFact, now: float) -> bool:
        return now - row.created > self.live_window

    def encode(self, rows: Sequence[StoredFact], now: float) -> list[Encoded]:
        out: list[Encoded] = []
        if self._births_due:  # the DBIRTHs go right after the NBIRTH, before any data (an alarm first at connect)
            if self._catalog is not None:
                self._meta = dict(self._catalog())
            out += [Encoded(m, ()) for m in self._births(now)]
        replay: dict[str, list[StoredFact]] = {}
        """Replayed rows waiting to travel several to a message: per device, and the node's events ("")."""

        def flush(key: str) -> None:
            rows_ = replay.pop(key, [])
            if rows_:
                out.extend(self._event_data(rows_, True, now) if key == "" else
                           self._device_data(key, rows_, True, now))

        for row in rows:
            fact = row.fact
            hist = self.historical(row, now)
            if fact.kind in ("wire", "result"):  # a stored native message, a JSON command's answer
                self.unsent[fact.kind] += 1
                out.append(Encoded(None, (row.seq,)))
            elif fact.kind == "state":
                flush(fact.subject)
                out.append(self._state(row, now))
            else:
                alarm = fact.kind == "event" and is_alarm(fact)
                key = "" if fact.kind == "event" else fact.subject
                if hist and not alarm and self.replay_batch > 1:
                    replay.setdefault(key, []).append(row)
                    if len(replay[key]) >= self.replay_batch:
                        flush(key)
                elif fact.kind == "event":
                    out += self._event_data([row], hist and not alarm, now)
                else:
                    out += self._device_data(fact.subject, [row], hist, now)
        for key in list(replay):
            flush(key)
        return out

    def _state(self, row: StoredFact, now: float) -> Encoded:
        device, state = row.fact.subject, _data(row.fact).get("state")
        if state == "offline":
            self._offline.add(device)
            if device in self._born:
                return Encoded(self._ddeath(device, now), (row.seq,))
        elif state == "online":
            self._offline.discard(device)
            meta = self._device(device)
            if device not in self._born and meta is not None:
                return Encoded(self._dbirth(device, meta, now), (row.seq,))
        return Encoded(None, (row.seq,))

    def _event_data(self, rows: list[StoredFact], hist: bool, now: float) -> list[Encoded]:
        payload = self._payload(now)
        for row in rows:
            name = "Alarm" if is_alarm(row.fact) else "Event"
            text = orjson.dumps({"id": row.fact.id, **_data(row.fact)}).decode()
            metric = payload.metrics.add(alias=NODE_ALIASES[name], timestamp=ms(row.fact.ts), string_value=text)
            if hist:
                metric.is_historical = True
        return [Encoded(self._message("NDATA", payload), tuple(r.seq for r in rows))]

    def _device_data(self, device: str, rows: list[StoredFact], hist: bool, now: float) -> list[Encoded]:
        seqs = tuple(r.seq for r in rows)
        if device in self._born:
            return self._ddata(device, rows, hist, now, seqs)
        meta = self._device(device)
        if meta is None:  # no catalog says what the device offers: no birth certificate can be written
            self.unsent["unknown device"] += len(rows)
            return [Encoded(None, seqs)]
        if device not in self._offline:
            return [Encoded(self._dbirth(device, meta, now), ()), *self._ddata(device, rows, hist, now, seqs)]
        if not any(_has_value(r.fact) for r in rows):  # what its DDEATH already said (no value, bad)
            self.unsent["dead device"] += len(rows)
            return [Encoded(None, seqs)]
        # values it had before it went offline, reaching us after its DDEATH (a backlog sends states first):
        # born again for them, and dead again after
        return [Encoded(self._dbirth(device, meta, now), ()), *self._ddata(device, rows, hist, now, seqs),
                Encoded(self._ddeath(device, now), ())]

    def _ddata(self, device: str, rows: list[StoredFact], hist: bool, now: float,
               seqs: tuple[int, ...]) -> list[Encoded]:
        born = self._born[device]
        last = self._last.setdefault(device, {})
        payload = self._payload(now)
        for row in rows:
            fact = row.fact
            data = _data(fact)
            summary = fact.kind == "summary"
            points = data.get("points", {}) if summary else data
            when = data.get("end", fact.ts) if summary else fact.ts
            when_ms = ms(when) if isinstance(when, int | float) else ms(fact.ts)
            for point, item in points.items() if isinstance(points, dict) else ():
                if point not in born or not isinstance(item, dict):
                    self.unsent["unknown point"] += 1
                    continue
                alias, kind = born[point]
                value, quality = item.get("last" if summary else "v"), item.get("q")
                own = None if summary else item.get("ts")  # a point read at its own time (the hot path: none)
                ts = when if own is None else own
                metric = payload.metrics.add()
                metric.alias = alias
                metric.timestamp = when_ms if own is None else ms(own)
                if hist:
                    metric.is_historical = True
                if not set_value(metric, kind, value) or quality != "good":
                    set_quality(metric, quality, not metric.is_null)
                if summary:
                    for stat in ("min", "max", "mean"):
                        if isinstance(item.get(stat), int | float):
                            add_property(metric.properties, stat, DOUBLE, item[stat])
                    if isinstance(item.get("count"), int):
                        add_property(metric.properties, "count", INT64, item["count"])
                if not hist:
                    last[point] = (value, quality, ts)
        if not payload.metrics:
            self._seq = (self._seq - 1) % 256  # not sent: its seq goes to the next message
            return [Encoded(None, seqs)]
        return [Encoded(self._message("DDATA", payload, device), seqs)]

    # -- what comes down -----------------------------------------------------------------------

    def listens(self, root: str, commands: bool) -> list[str]:
        return self.inbound_.listens(commands)

    def inbound(self, topic: str, payload: bytes, root: str) -> Inbound | None:
        return self.inbound_.received(topic, payload)

    def ready(self) -> bool:
        return self.inbound_.host_ready()


def _data(fact: Fact) -> dict[str, Any]:
    try:
        data = fact.data()
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _has_value(fact: Fact) -> bool:
    data = _data(fact)
    points = data.get("points", {}) if fact.kind == "summary" else data
    return any(isinstance(p, dict) and p.get("q") != "bad" and p.get("v", p.get("last")) is not None
               for p in (points.values() if isinstance(points, dict) else ()))


def _describe(props: Any, info: Mapping[str, Any]) -> None:
    """A point's catalog entry as metric properties: its unit (``engUnit``, as Ignition names it), whether the
    platform may write it, within what, and its state names."""
    if info.get("unit"):
        add_property(props, "engUnit", STRING, info["unit"])
    if info.get("writable"):
        add_property(props, "writable", BOOLEAN, bool(info.get("remote")))
        for key in ("min", "max"):
            if isinstance(info.get(key), int | float):
                add_property(props, key, DOUBLE, info[key])
    if info.get("states"):
        add_property(props, "states", STRING, orjson.dumps(info["states"]).decode())
    if info.get("description"):
        add_property(props, "description", STRING, info["description"])
