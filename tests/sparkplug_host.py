"""A Sparkplug host as the tests play it: every message under ``spBv1.0/#`` decoded with the Eclipse Tahu proto
(the generated module pysparkplug ships, through the protobuf runtime: nothing of ours reads the bytes) and
checked against the Sparkplug B 3.0 rules as it arrives. A broken rule is kept in ``violations``, never raised
in the subscriber, so a test says all of them at the end.

Rules checked: NBIRTH has ``seq`` 0, a ``bdSeq`` 0-255 and ``Node Control/Rebirth`` false; every later message
but the NDEATH has the next ``seq`` (255 wraps to 0); an NDEATH has no ``seq`` and the ``bdSeq`` of the session's
NBIRTH; birth metrics have a name, an alias unique across the node, and a datatype; DATA messages name metrics by
an alias born before them in this session (NDATA: the NBIRTH's; DDATA: the device's DBIRTH, and the device not
dead since); a DDEATH is for a device born; nothing is retained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from google.protobuf.json_format import MessageToDict

from gateway.northbound.sparkplug_proto import payload_class

NAMESPACE = "spBv1.0"
SEQUENCED = {"NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH"}


@dataclass
class Seen:
    kind: str
    device: str | None
    payload: Any
    retain: bool

    def metrics(self) -> list[dict[str, Any]]:
        return [MessageToDict(m, preserving_proto_field_name=True) for m in self.payload.metrics]


@dataclass
class Host:
    port: int
    group: str = "community"
    edge: str = "test-site"
    seen: list[Seen] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)
    wraps: int = 0
    bdseq: int | None = None
    _next: int | None = None
    _node: dict[int, str] = field(default_factory=dict)
    _born: dict[str, dict[int, str]] = field(default_factory=dict)
    _owner: dict[int, str | None] = field(default_factory=dict)

    # -- what arrived ----------------------------------------------------------------------------------------

    def of(self, kind: str, device: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.kind == kind and (device is None or s.device == device)]

    def count(self, kind: str, device: str | None = None) -> int:
        return len(self.of(kind, device))

    def born_aliases(self, device: str) -> dict[str, int]:
        """The device's metric name -> alias, from its last DBIRTH."""
        return {m["name"]: int(m["alias"]) for m in self.of("DBIRTH", device)[-1].metrics()}

    # -- the rules -------------------------------------------------------------------------------------------

    def _fail(self, index: int, kind: str, device: str | None, what: str) -> None:
        self.violations.append(f"#{index} {kind}{'/' + device if device else ''}: {what}")

    def keep(self, topic: str, data: bytes, retain: bool) -> None:
        parts = topic.split("/")
        if parts[1] == "STATE":
            self.states.append(data)
            return
        if parts[1] != self.group or len(parts) < 4 or parts[3] != self.edge:
            return
        kind, device = parts[2], (parts[4] if len(parts) > 4 else None)
        if kind in ("NCMD", "DCMD"):
            return  # what the test itself sent as the host
        index = len(self.seen)
        try:
            payload = payload_class().FromString(data)
        except Exception as exc:
            self._fail(index, kind, device, f"not a Sparkplug B payload ({exc})")
            return
        self.seen.append(Seen(kind, device, payload, retain))
        if retain:
            self._fail(index, kind, device, "retained")
        self._check(index, kind, device, payload)

    def _check(self, i: int, kind: str, device: str | None, p: Any) -> None:
        if kind == "NDEATH":
            if p.HasField("seq"):
                self._fail(i, kind, device, "an NDEATH carries a seq")
            bdseq = [m.long_value for m in p.metrics if m.name == "bdSeq"]
            if bdseq != [self.bdseq]:
                self._fail(i, kind, device, f"bdSeq {bdseq} is not the NBIRTH's {self.bdseq}")
            self._next = None
            return
        if kind not in SEQUENCED:
            self._fail(i, kind, device, "unknown message type")
            return
        if not p.HasField("seq") or not p.HasField("timestamp"):
            self._fail(i, kind, device, "no seq or no timestamp")
            return
        if kind == "NBIRTH":
            self._nbirth(i, p)
            return
        if self._next is None:
            self._fail(i, kind, device, "before any NBIRTH of this session")
        elif p.seq != self._next:
            self._fail(i, kind, device, f"seq {p.seq}, expected {self._next}")
        if p.seq == 0 and self._next == 0:
            self.wraps += 1
        self._next = (p.seq + 1) % 256
        if kind == "DBIRTH":
            assert device is not None
            self._born[device] = self._birth_metrics(i, kind, device, p)
        elif kind == "DDEATH":
            if self._born.pop(device or "", None) is None:
                self._fail(i, kind, device, "DDEATH of a device not born")
        else:
            born = self._node if kind == "NDATA" else self._born.get(device or "")
            if born is None:
                self._fail(i, kind, device, "DDATA of a device not born (or dead since)")
                return
            for m in p.metrics:
                if m.HasField("name") or not m.HasField("alias") or m.alias not in born:
                    self._fail(i, kind, device, f"metric {m.name or m.alias} not by a born alias")

    def _nbirth(self, i: int, p: Any) -> None:
        if p.seq != 0:
            self._fail(i, "NBIRTH", None, f"seq {p.seq}")
        bdseq = [m.long_value for m in p.metrics if m.name == "bdSeq"]
        if len(bdseq) != 1 or not 0 <= bdseq[0] <= 255:
            self._fail(i, "NBIRTH", None, f"bdSeq {bdseq}")
        rebirth = [m for m in p.metrics if m.name == "Node Control/Rebirth"]
        if len(rebirth) != 1 or rebirth[0].WhichOneof("value") != "boolean_value" or rebirth[0].boolean_value:
            self._fail(i, "NBIRTH", None, "no Node Control/Rebirth = false")
        self.bdseq = bdseq[0] if bdseq else None
        self._next = 1
        self._born.clear()
        self._owner.clear()
        self._node = self._birth_metrics(i, "NBIRTH", None, p, aliased_only=True)

    def _birth_metrics(self, i: int, kind: str, device: str | None, p: Any,
                       aliased_only: bool = False) -> dict[int, str]:
        born: dict[int, str] = {}
        for m in p.metrics:
            if not m.HasField("name") or not m.HasField("datatype"):
                self._fail(i, kind, device, f"metric without name or datatype: {m}")
                continue
            if not m.HasField("alias"):
                if not aliased_only:
                    self._fail(i, kind, device, f"{m.name} has no alias")
                continue
            if m.alias in self._owner and self._owner[m.alias] != device:
                self._fail(i, kind, device, f"alias {m.alias} already belongs to {self._owner[m.alias]}")
            self._owner[m.alias] = device
            born[m.alias] = m.name
        return born


@contextlib.asynccontextmanager
async def host(port: int, **kwargs: Any) -> AsyncIterator[Host]:
    """Subscribed to ``spBv1.0/#`` before the gateway speaks; a persistent session, so what is published while
    the broker restarts is kept for it."""
    h = Host(port, **kwargs)
    ready = asyncio.Event()

    async def listen() -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier=f"spb-host-{id(h)}",
                                          clean_session=False) as client:
                    await client.subscribe(f"{NAMESPACE}/#", qos=1)
                    ready.set()
                    async for message in client.messages:
                        h.keep(str(message.topic), bytes(message.payload), bool(message.retain))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield h
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
