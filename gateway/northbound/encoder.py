"""What every uplink dialect gives the uplink: facts in, MQTT messages out.

An encoder is chosen per uplink in the config. It sees the facts the outbox hands its uplink, in
outbox order, and the session's own state (the birth sequence number, what was announced), and
returns messages, each naming the outbox rows it carries: the uplink deletes a row (for this
uplink) only when every message carrying it has its PUBACK. One message may carry many rows (a
replay batch) and a row may need no message at all (a dialect with nothing to say about it): it is
then acknowledged at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.facts import StoredFact


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    """Relative to the uplink's root (``<topic_prefix>/<site id>``)."""
    payload: bytes
    retain: bool = False
    correlation: bytes | None = None
    """MQTT 5 correlation data echoed to a request that carried it."""
    absolute: bool = False
    """The topic is whole, not under the uplink's root (Sparkplug's ``spBv1.0/...``, a discovery prefix)."""
    qos: int = 1


@dataclass(frozen=True, slots=True)
class Encoded:
    message: Message | None
    """None: the dialect has nothing to send for these rows (they are acknowledged as they are)."""
    seqs: tuple[int, ...]


@dataclass(slots=True)
class Session:
    """One connection's state, as the encoder and the platform see it."""

    bdseq: int
    """Birth/death sequence: one more at every connect, kept in the store, so a platform orders births and
    last wills even when the will (composed at connect) arrives after a newer birth."""
    started: float
    """When the daemon started."""
    config: str
    """The running config's hash."""
    announced: set[str] = field(default_factory=set)
    """Devices whose metadata this uplink has published (retained), to clear the ones removed since."""
    clock_synced: bool | None = None
    """Whether the wall clock is synchronised, as last probed (``gateway.health`` keeps it); None: unknown."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """What a dialect made of a message the broker sent to one of the topics it ``listens`` on."""

    request: bytes | None = None
    """A platform command as the native envelope (JSON bytes): it goes through ``PlatformCommands`` whatever
    dialect it came in, so authorisation, limits, idempotency and audit are the same for all."""
    requests: tuple[bytes, ...] = ()
    """More commands from the same message (a Sparkplug DCMD writing several metrics), in order after ``request``."""
    rebirth: bool = False
    """Say the birth and the devices' metadata again (Sparkplug's Node Control/Rebirth, a host coming online)."""
    wake: bool = False
    """The dialect's readiness may have changed (``ready``): look at the outbox again."""


class Encoder(Protocol):
    def birth(self, session: Session, now: float) -> Message: ...

    def will(self, session: Session) -> Message: ...

    def goodbye(self, session: Session, now: float) -> Message: ...

    def describe(self, session: Session, devices: Mapping[str, Mapping[str, Any]], now: float) -> list[Message]:
        """Device metadata at birth (and after a config change), and clearing messages for removed devices."""
        ...

    def encode(self, rows: Sequence[StoredFact], now: float) -> list[Encoded]: ...

    def superseded(self, status: bytes, session: Session) -> bool:
        """A retained status message an older session left behind (its will arriving late)."""
        ...

    def historical(self, row: StoredFact, now: float) -> bool:
        """Delivered later than its live window: replay (rate-capped, batched, flagged)."""
        ...

    def listens(self, root: str, commands: bool) -> list[str]:
        """Topic filters to subscribe to after every connect, before the birth (commands, a host's state)."""
        ...

    def inbound(self, topic: str, payload: bytes, root: str) -> Inbound | None:
        """A message on one of those topics; None: not for this dialect (counted by nobody, ignored)."""
        ...

    def ready(self) -> bool:
        """False holds the outbox back (Sparkplug: the primary host application is offline); alarms wait too,
        stored, as they do while the broker is away."""
        ...
