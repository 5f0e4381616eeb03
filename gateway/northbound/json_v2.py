"""The native JSON contract, version 2 (``docs/upstream.md``; schema: ``gateway schema upstream``).

Built with orjson at send time from the stored facts. A readings fact's body already is the
``points`` object, so it is embedded as it is (``orjson.Fragment``): the hot path decodes nothing.
Replayed rows (older than the live window) carry ``hist: true`` and travel several to a message
in a ``batch/<class>`` envelope; alarms never do, and always go on ``alarm/...``: every alarm-priority
event and every alarm-lifecycle transition (``alarm.*``), so a platform subscribed to ``alarm/#``
misses none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway import __version__
from gateway.core.data import Priority
from gateway.core.ids import new_id
from gateway.facts import Fact, StoredFact
from gateway.northbound.encoder import Encoded, Inbound, Message, Session

V = 2
_BATCHED = {"readings": "telemetry", "summary": "telemetry", "event": "event"}
"""Fact kinds that may travel in a replay batch, and the batch class they go in."""


def topic(fact: Fact) -> str:
    if fact.kind == "readings":
        return f"telemetry/{fact.subject}"
    if fact.kind == "summary":
        return f"summary/{fact.subject}"
    if fact.kind == "state":
        return f"state/{fact.subject}"
    if fact.kind == "event":
        return f"{'alarm' if is_alarm(fact) else 'event'}/{fact.subject}"
    if fact.kind == "result":
        return "cmd/res"
    return fact.subject  # wire: stored with its topic


def is_alarm(fact: Fact) -> bool:
    return fact.kind != "result" and (fact.priority is Priority.ALARM or fact.subject.startswith("alarm."))


class JsonEncoder:
    def __init__(self, site: str, *, live_window: float = 60.0, replay_batch: int = 100) -> None:
        self.site = site
        self.live_window = live_window
        self.replay_batch = replay_batch

    # -- the session ---------------------------------------------------------------------------

    def birth(self, session: Session, now: float) -> Message:
        return self._status("online", session, ts=now, version=__version__, config=session.config,
                            started=round(session.started, 3), clock_synced=session.clock_synced)

    def will(self, session: Session) -> Message:
        return self._status("offline", session)  # no ts: a will is composed at connect time

    def goodbye(self, session: Session, now: float) -> Message:
        return self._status("offline", session, ts=now)

    def _status(self, state: str, session: Session, ts: float | None = None, **more: Any) -> Message:
        data: dict[str, Any] = {"v": V, "site": self.site, "type": "status", "state": state, "bdseq": session.bdseq}
        if ts is not None:
            data["ts"] = round(ts, 3)
        return Message("status", orjson.dumps({**data, **more}), retain=True)

    def superseded(self, status: bytes, session: Session) -> bool:
        try:
            data = orjson.loads(status)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(data, dict):
            return False
        bdseq = data.get("bdseq")
        return data.get("state") == "offline" and isinstance(bdseq, int) and bdseq < session.bdseq

    def describe(self, session: Session, devices: Mapping[str, Mapping[str, Any]], now: float) -> list[Message]:
        messages = [
            Message(f"meta/{device}", orjson.dumps({
                "v": V, "site": self.site, "type": "meta", "device": device, "config": session.config,
                "ts": round(now, 3), **meta}, default=str), retain=True)
            for device, meta in devices.items()
        ]
        for gone in sorted(session.announced - set(devices)):  # an empty retained message clears a topic
            messages += [Message(f"meta/{gone}", b"", retain=True), Message(f"state/{gone}", b"", retain=True)]
        session.announced = set(devices)
        return messages

    # -- facts -----------------------------------------------------------------------------------

    def historical(self, row: StoredFact, now: float) -> bool:
        return now - row.created > self.live_window

    # -- what comes down -----------------------------------------------------------------------

    def listens(self, root: str, commands: bool) -> list[str]:
        return [f"{root}/cmd/req"] if commands else []

    def inbound(self, topic: str, payload: bytes, root: str) -> Inbound | None:
        return Inbound(request=payload) if topic == f"{root}/cmd/req" else None

    def ready(self) -> bool:
        return True

    def encode(self, rows: Sequence[StoredFact], now: float) -> list[Encoded]:
        out: list[Encoded] = []
        pending: list[StoredFact] = []
        pending_class = ""
        for row in rows:
            fact = row.fact
            hist = self.historical(row, now)
            group = _BATCHED.get(fact.kind) if hist and not is_alarm(fact) and self.replay_batch > 1 else None
            if pending and (group != pending_class or len(pending) >= self.replay_batch):
                out.append(self._batch(pending_class, pending))
                pending = []
            if group is not None:
                pending.append(row)
                pending_class = group
                continue
            out.append(Encoded(self.message(fact, hist), (row.seq,)))
        if pending:
            out.append(self._batch(pending_class, pending))
        return out

    def message(self, fact: Fact, hist: bool = False) -> Message:
        if fact.kind == "wire":
            return Message(fact.subject, fact.body)
        if fact.kind == "result":
            return _result(fact)
        if fact.kind == "state":
            data = {"v": V, "site": self.site, "type": "state", "device": fact.subject, **fact.data(),
                    "ts": round(fact.ts, 3)}
            return Message(topic(fact), orjson.dumps(data), retain=True)
        return Message(topic(fact), orjson.dumps(self._item(fact, hist)))

    def _item(self, fact: Fact, hist: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"v": V, "id": fact.id, "site": self.site}
        if fact.kind == "readings":
            data.update(type="telemetry", device=fact.subject, ts=round(fact.ts, 3),
                        points=orjson.Fragment(fact.body))
        elif fact.kind == "summary":
            data.update(type="summary", device=fact.subject, **fact.data())
        else:
            data.update(type="alarm" if is_alarm(fact) else "event", **fact.data())
        if hist:
            data["hist"] = True
        return data

    def _batch(self, group: str, rows: list[StoredFact]) -> Encoded:
        if len(rows) == 1:
            return Encoded(self.message(rows[0].fact, True), (rows[0].seq,))
        items = [{**self._item(r.fact, True), "topic": topic(r.fact)} for r in rows]
        envelope = {"v": V, "id": new_id(), "site": self.site, "type": "batch", "class": group, "items": items}
        return Encoded(Message(f"batch/{group}", orjson.dumps(envelope)), tuple(r.seq for r in rows))


def _result(fact: Fact) -> Message:
    """A command result as stored, on ``cmd/res`` or the MQTT 5 response topic the request named."""
    data = fact.data()
    reply = data.pop("_mqtt5", None) if isinstance(data, dict) else None
    if not reply:
        return Message("cmd/res", fact.body)
    correlation = bytes.fromhex(reply["correlation"]) if reply.get("correlation") else None
    return Message(reply.get("reply_to") or "cmd/res", orjson.dumps(data), correlation=correlation)
