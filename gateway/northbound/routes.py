"""Which outbox rows an uplink carries, and the names an uplink goes by (several uplinks, ``[[uplinks]]``).

Every uplink drains the one outbox with its own cursor; a row it does not carry (a class or an event kind its
config leaves out, another uplink's command result) is passed over: acknowledged for it in the same round as
what it sends, never encoded. A command's result goes back on the uplink its request came in on: the result
fact names that uplink under a private key of its body (``_via``), which is taken out before any encoder sees
the body; a result without one answers a request that came in on ``[mqtt]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import orjson

from gateway.config.uplink import MqttConfig
from gateway.core.data import Priority
from gateway.facts import Fact, StoredFact
from gateway.northbound.encoder import Encoded
from gateway.store import MAIN_UPLINK

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig

VIA = "_via"
"""Key of a result fact's body naming the uplink to answer on (absent: ``[mqtt]``)."""
_VIA = f'"{VIA}"'.encode()


def status_key(name: str) -> str:
    """The uplink's status row in the store's meta (``gateway status``) and its supervised task's name."""
    return "uplink" if name == MAIN_UPLINK else f"uplink:{name}"


class Route:
    """What one uplink carries of the outbox: its classes, its event kinds (globs), minus the event kinds it keeps
    local; and the command results answering requests that came in on it."""

    def __init__(self, config: MqttConfig, name: str = MAIN_UPLINK) -> None:
        self.name = name
        self.classes = frozenset(Priority.from_label(c) for c in config.carries)
        self.kinds = tuple(config.kinds)
        # [mqtt]'s keep_local is applied before the outbox (with each camera's say): what it keeps never enters
        self.private = () if name == MAIN_UPLINK else tuple(config.keep_local)
        self.everything = self.classes == frozenset(Priority) and "*" in self.kinds and not self.private

    def carries(self, fact: Fact) -> bool:
        if fact.kind == "result":
            return via(fact) == self.name
        if fact.priority not in self.classes:
            return False
        if fact.kind == "event" and not self.everything:
            kind = fact.subject
            return any(fnmatchcase(kind, p) for p in self.kinds) and not any(fnmatchcase(kind, p) for p in self.private)
        return True

    def split(self, rows: Sequence[StoredFact]) -> tuple[list[StoredFact], list[Encoded]]:
        """The rows to send (a result's ``_via`` taken out of its body), and the rows passed over as encoded
        messages without a message (acknowledged as they are)."""
        carried: list[StoredFact] = []
        passed: list[int] = []
        for row in rows:
            fact = row.fact
            if fact.kind != "result" and self.everything:
                carried.append(row)
            elif not self.carries(fact):
                passed.append(row.seq)
            elif fact.kind == "result" and _VIA in fact.body:
                carried.append(replace(row, fact=replace(fact, body=_without_via(fact.body))))
            else:
                carried.append(row)
        return carried, [Encoded(None, tuple(passed))] if passed else []


def via(fact: Fact) -> str:
    """The uplink a result fact answers on."""
    if _VIA not in fact.body:
        return MAIN_UPLINK
    try:
        data = orjson.loads(fact.body)
    except orjson.JSONDecodeError:
        return MAIN_UPLINK
    name = data.get(VIA) if isinstance(data, dict) else None
    return name if isinstance(name, str) else MAIN_UPLINK


def _without_via(body: bytes) -> bytes:
    data = orjson.loads(body)
    data.pop(VIA, None)
    return orjson.dumps(data)


def uplink_configs(cfg: GatewayConfig) -> dict[str, MqttConfig]:
    """Every configured uplink by name, enabled or not: ``[mqtt]`` ("mqtt") first, then each ``[[uplinks]]``."""
    return {MAIN_UPLINK: cfg.mqtt, **{u.name: u for u in cfg.uplinks}}


def store_uplinks(cfg: GatewayConfig) -> tuple[str, ...]:
    """The uplinks an outbox row waits for: every enabled one; with none enabled, ``[mqtt]`` (everything is kept
    for when it is). A disabled ``[[uplinks]]`` entry beside enabled ones holds nothing back."""
    return tuple(name for name, c in uplink_configs(cfg).items() if c.enabled) or (MAIN_UPLINK,)
