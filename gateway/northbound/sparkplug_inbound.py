"""What a Sparkplug host sends an edge node: NCMD, DCMD, and its own STATE (the primary host's).

Everything here runs on hostile bytes and never raises: a payload the Tahu proto cannot read, a metric naming
nothing, a value no point can take is dropped and counted by reason (``dropped``). ``Node Control/Rebirth`` is
always obeyed. A DCMD write becomes the native command envelope (``cmd = "write"``, a fresh id, a short
expiry), so it passes the same allow-list, ``remote`` point flag, limits, idempotency and audit as a JSON
command; only with ``sparkplug.commands = true``. A STATE (3.0: retained JSON ``{"online", "timestamp"}`` on
``spBv1.0/STATE/<host id>``) newer than the last one says whether the edge node may speak; coming online asks
for a new birth, as the spec wants a host to see one.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.core.ids import new_id
from gateway.northbound.encoder import Inbound
from gateway.northbound.sparkplug_metrics import command_value
from gateway.northbound.sparkplug_proto import payload_class

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
REBIRTH_ALIAS = 1
COMMAND_TTL = 30.0
"""Seconds a DCMD write may wait for its device at most (Sparkplug commands carry no expiry of their own);
never more than ``[commands] max_ttl``, which the daemon passes down."""
MAX_PAYLOAD = 64 * 1024
MAX_WRITES = 64
"""Metrics one DCMD may write; beyond, the rest are dropped (counted)."""


class Commands:
    def __init__(self, group: str, edge: str, primary_host: str | None, writes: bool,
                 born: Callable[[str], Mapping[str, tuple[int, int]]], ttl: float = COMMAND_TTL) -> None:
        self.ttl = min(COMMAND_TTL, ttl)
        self.ncmd = f"{NAMESPACE}/{group}/NCMD/{edge}"
        self.dcmd = f"{NAMESPACE}/{group}/DCMD/{edge}/"
        self.state = f"{NAMESPACE}/STATE/{primary_host}" if primary_host else None
        self.writes = writes
        self.actor = f"sparkplug:{primary_host or edge}"[:64]
        self._born = born
        """A device's metrics born in this session: name -> (alias, datatype)."""
        self.host_online: bool | None = None
        """The primary host as its last STATE said: None until one arrives on this connection."""
        self.host_ts = -1
        self.dropped: Counter[str] = Counter()

    def listens(self, commands: bool) -> list[str]:
        """NCMD always (a rebirth is always answered), DCMD when writes are on, the primary host's STATE. Called
        at every connect: what the host is is asked afresh (the retained STATE answers at once)."""
        self.host_online = None
        topics = [self.ncmd]
        if self.writes and commands:
            topics.append(f"{self.dcmd}+")
        if self.state:
            topics.append(self.state)
        return topics

    def host_ready(self) -> bool:
        return self.state is None or self.host_online is True

    def received(self, topic: str, payload: bytes) -> Inbound | None:
        try:
            if topic == self.state:
                return self._state(payload)
            if topic == self.ncmd:
                return self._ncmd(payload)
            if topic.startswith(self.dcmd) and "/" not in topic[len(self.dcmd):]:
                return self._dcmd(topic[len(self.dcmd):], payload)
        except Exception as exc:  # a bug on one message must not cost the next: counted, as bad input is
            self.dropped[f"error: {type(exc).__name__}"] += 1
        return None

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def _decode(self, kind: str, payload: bytes) -> Any:
        if len(payload) > MAX_PAYLOAD:
            self._drop(f"{kind}: too large")
            return None
        try:
            return payload_class().FromString(payload)
        except Exception:  # DecodeError, and whatever else the parser makes of hostile bytes
            self._drop(f"{kind}: not a Sparkplug B payload")
            return None

    def _state(self, payload: bytes) -> Inbound | None:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data = None
        online = data.get("online") if isinstance(data, dict) else None
        ts = data.get("timestamp") if isinstance(data, dict) else None
        if not isinstance(online, bool) or not isinstance(ts, int) or isinstance(ts, bool):
            self._drop("STATE: not {online, timestamp}")
            return None
        if ts < self.host_ts:  # an older session's will arriving late: the newer state stands
            self._drop("STATE: older than the last")
            return None
        was = self.host_online
        self.host_online, self.host_ts = online, ts
        return Inbound(rebirth=online and was is not True, wake=True)

    def _ncmd(self, payload: bytes) -> Inbound | None:
        message = self._decode("NCMD", payload)
        if message is None:
            return None
        for metric in message.metrics:
            named = metric.name == REBIRTH if metric.HasField("name") else metric.alias == REBIRTH_ALIAS
            if named and metric.WhichOneof("value") == "boolean_value" and metric.boolean_value:
                return Inbound(rebirth=True)
        self._drop("NCMD: nothing this node does")
        return None

    def _dcmd(self, device: str, payload: bytes) -> Inbound | None:
        if not self.writes:
            self._drop("DCMD: commands off")
            return None
        message = self._decode("DCMD", payload)
        if message is None:
            return None
        requests: list[bytes] = []
        now = time.time()
        born = self._born(device)
        for metric in message.metrics:
            if len(requests) >= MAX_WRITES:
                self._drop("DCMD: too many metrics")
                break
            point = metric.name if metric.HasField("name") else next(
                (name for name, (alias, _kind) in born.items() if alias == metric.alias), None)
            if not point:
                self._drop("DCMD: unknown alias")
                continue
            ok, value = command_value(metric, born[point][1] if point in born else None)
            if not ok:
                self._drop(f"DCMD: {value}")
                continue
            envelope = {"v": 1, "id": f"spb-{new_id()}", "expires_at": math.floor((now + self.ttl) * 1000) / 1000,
                        "actor": self.actor, "cmd": "write", "device": device, "point": point[:128], "value": value}
            requests.append(orjson.dumps(envelope))
        if not requests:
            if not message.metrics:
                self._drop("DCMD: no metric")
            return None
        return Inbound(request=requests[0], requests=tuple(requests[1:]))
