"""The MQTT uplink: drains the outbox to the broker, at least once, in order, alarms first.

Durability lives in the outbox, not here (STYLE §1): a row leaves the outbox only after the
broker's PUBACK, and while the broker is away nothing is buffered in memory. Each round is chosen
afresh by priority, so an alarm raised during a long replay goes out in the next round. The
uplink's encoder turns facts into its dialect's messages; the uplink only paces and delivers.

Replay (rows older than the live window) is paced: it starts after a random delay and at most
``replay_rate`` messages a second, so a district's gateways coming back from one outage do not
flood the platform; while replay waits, alarms still go at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.schema import MqttConfig
from gateway.core.data import Priority
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.facts import Fact, StoredFact
from gateway.headroom import is_disk_full
from gateway.northbound.brokers import BrokerWalk, credentials, first_broker
from gateway.northbound.dialects import make_encoder
from gateway.northbound.encoder import Encoded, Encoder, Message, Session
from gateway.northbound.routes import Route, status_key
from gateway.recorder import AsyncStore
from gateway.remote.envelope import Delivery, delivery
from gateway.store import MAIN_UPLINK

log = structlog.get_logger("gateway.uplink")
IN_FLIGHT = 128
INCOMING = 1000
_MQTT_LOG = logging.getLogger("gateway.mqtt")
_MQTT_LOG.setLevel(logging.ERROR)  # paho's chatter; our own log says what matters, with context


@dataclass(slots=True)
class UplinkState:
    state: str = "starting"  # connected | disconnected | disabled
    since: float = 0.0
    last_error: str | None = None
    delivered: int = 0
    """Outbox rows delivered: carried by a message the broker acknowledged (rows this uplink passes over, or its
    dialect has nothing to send for, are not counted)."""
    messages: int = 0
    """Messages of outbox rows the broker acknowledged (a replay batch is one, however many rows it carries)."""
    replay_waits: int = 0
    """Rounds in which replay held back for its start delay or its rate cap."""
    broker: str = ""  # the one it is on, or trying ("host:port")
    connects: int = 0
    """Sessions opened since start: one more than the reconnects."""


class Uplink:
    def __init__(
        self,
        config: MqttConfig,
        site_id: str,
        store: AsyncStore,
        committed: asyncio.Event,
        *,
        config_hash: str = "",
        on_state: Callable[[str, dict[str, object]], None] | None = None,
        held: Callable[[], list[Fact]] | None = None,
        devices: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        name: str = MAIN_UPLINK,
        encoder: Encoder | None = None,
        clock: Clock = SYSTEM_CLOCK,
        commands: Callable[[bytes, Delivery], None] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.root = f"{config.topic_prefix}/{site_id}"
        self.client_id = config.client_id or site_id  # the topic's own segment: one ACL pattern (%c) fits all
        self.store = store
        self.committed = committed
        self.clock = clock
        self.encoder: Encoder = encoder or make_encoder(config, site_id, devices)
        self.started = time.time()
        self.session = Session(0, self.started, config_hash)
        self.route = Route(config, name)
        self.walk = BrokerWalk(config.brokers(), config.reconnect_min, config.reconnect_max,
                               first_broker(config, self.client_id))
        self.status = UplinkState(since=self.started, broker=self.walk.label)
        self.log = log if name == MAIN_UPLINK else log.bind(uplink=name)
        self._on_state = on_state
        self._commands = commands
        """Where ``cmd/req`` messages go (``PlatformCommands.received``); None: the uplink does not subscribe."""
        self._held = held
        self._devices = devices
        self._owed: set[int] = set()
        """Outbox rows the broker acknowledged whose deletion could not be written (a full disk): never sent
        again, deleted as soon as the store takes writes."""
        self._sent_held: set[str] = set()
        self._describe_due = False
        self._birth_due = False
        self._status = self._topic(self.encoder.birth(Session(0, self.started, config_hash), 0))
        """Where the birth goes, worked out once before any connection: a dialect's birth may start its session
        (Sparkplug's seq 0), so it is said only when it is sent."""
        self._replay_from = 0.0
        """Monotonic time before which replay waits (the random start delay, then the rate cap)."""
        self._live: aiomqtt.Client | None = None
        """The connection while it is up (``say``)."""
        self._said: set[str] = set()
        """Retained topics ``say`` published (health): cleared at a clean stop, so that what stays retained is not
        the picture of a gateway that is no longer running."""

    @property
    def config_hash(self) -> str:
        return self.session.config

    def rebirth(self, config_hash: str | None = None) -> None:
        """Say the birth (with this config hash) and every device's metadata again on the live connection: a
        platform's ``birth`` command, a reloaded config. Nothing happens while disconnected: the next connect
        says them anyway."""
        if config_hash is not None:
            self.session.config = config_hash
        self._birth_due = True
        self.committed.set()  # wake the pump

    async def say(self, message: Message) -> bool:
        """Publish a message about the present (health) on the live connection, past the outbox: False while
        disconnected, and nothing is kept for later (the next one is fresher). A broken connection raises."""
        client = self._live
        if client is None or not self.encoder.ready():
            return False
        await self._publish(client, message)
        if message.retain:
            self._said.add(self._topic(message))
        return True

    async def _settle(self, acked: list[int]) -> None:
        """Delete what the broker took; if the disk cannot take the deletion, remember it instead of resending."""
        owed = sorted(self._owed.union(acked))
        try:
            await self.store.run(self.store.store.acknowledge, owed, self.name)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self._owed.update(acked)
        else:
            self._owed.clear()

    async def _publish_held(self, client: aiomqtt.Client) -> None:
        """Alarms and events the recorder could not write (a full disk): published straight from memory, once.
        They reach the outbox later too, with the same ids, and the platform drops the second copy."""
        if self._held is None:
            return
        held = self._held()
        if not held:
            self._sent_held.clear()
            return
        now = self.clock.time()
        for fact in sorted(held, key=lambda f: f.priority):
            if fact.id not in self._sent_held and self.route.carries(fact):
                for encoded in self.encoder.encode([StoredFact(0, now, fact)], now):
                    if encoded.message is not None:
                        await self._publish(client, encoded.message)
                self._sent_held.add(fact.id)

    async def _publish(self, client: aiomqtt.Client, message: Message) -> None:
        properties = None
        if message.correlation is not None and self.config.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = message.correlation
        await client.publish(self._topic(message), message.payload, qos=message.qos, retain=message.retain,
                             properties=properties)

    def _topic(self, message: Message) -> str:
        return message.topic if message.absolute else f"{self.root}/{message.topic}"

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.status.state:
            self.status.state, self.status.since = state, time.time()
            self.status.connects += state == "connected"
        self.status.last_error = error
        if self._on_state:
            self._on_state(status_key(self.name), {"state": state, "since": self.status.since, "error": error,
                                                   "broker": self.status.broker})

    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        password, tls_context = credentials(cfg)
        will_message = self.encoder.will(self.session)
        will = aiomqtt.Will(self._topic(will_message), will_message.payload, qos=will_message.qos,
                            retain=will_message.retain)
        self.status.broker = self.walk.label
        client = aiomqtt.Client(
            *self.walk.current,
            identifier=self.client_id,
            username=cfg.username,
            password=password,
            will=will,
            keepalive=int(cfg.keepalive),
            tls_context=tls_context,
            timeout=10,
            # A bounded window of publishes in flight: aiomqtt and paho both scan their pending
            # lists per message, so thousands in flight cost quadratic time and stall the loop
            # (measured: 2,868 msg/s at 2000 in flight, 7,369 with this window).
            max_concurrent_outgoing_calls=IN_FLIGHT,
            max_inflight_messages=IN_FLIGHT,
            # Clean sessions, in both versions: a broker must never hand us a pile of stale actuations queued
            # during an outage (commands carry their own expiry besides; docs/commands.md).
            **({"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True} if cfg.protocol == "5"
               else {"clean_session": True}),
            # What the broker sends us is taken as it arrives (``_incoming``); only our status topic waits here.
            max_queued_incoming_messages=INCOMING,
            queue_type=self._incoming(),
            logger=_MQTT_LOG,
            # paho leaves Nagle on: a lone alarm or command result then waits for the broker's delayed ACK
            # (measured: result publish -> PUBACK 38-40 ms; 0.4 ms with TCP_NODELAY).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client.pending_calls_threshold = cfg.batch + 10  # a replay batch is pending by design: no warning
        return client

    async def run(self) -> None:
        """Connect, pump; on a failure go on to the next broker, backing off after each round (``BrokerWalk``)."""
        while True:
            try:
                self.session.bdseq = await self.store.run(self.store.store.next_session, self.name)
                async with self._client() as client:
                    # before the birth: a platform that waits for it may command at once
                    for topic in self.encoder.listens(self.root, self._commands is not None):
                        await self._subscribe(client, topic)
                    if self.encoder.ready():
                        await self._publish(client, self.encoder.birth(self.session, time.time()))
                        self._describe_due, self._birth_due = True, False
                    else:  # e.g. a Sparkplug node waits for its primary host to be online
                        self._birth_due = True
                    self._replay_from = self.clock.monotonic() + random.uniform(0, self.config.replay_delay)
                    self._set_state("connected")
                    self.log.info("uplink connected", broker=self.walk.label)
                    self.walk.connected()
                    watcher = asyncio.create_task(self._listen(client))
                    self._live = client
                    try:
                        await self._pump(client)
                    except asyncio.CancelledError:
                        # Shutting down: clear what ``say`` left retained, and say goodbye so the platform sees
                        # "offline" at once, not after the keepalive runs out. Unacked messages stay in the outbox.
                        with contextlib.suppress(Exception):
                            async with asyncio.timeout(1):
                                for topic in sorted(self._said):
                                    await client.publish(topic, b"", qos=1, retain=True)
                        with contextlib.suppress(Exception):
                            async with asyncio.timeout(2):
                                await self._publish(client, self.encoder.goodbye(self.session, time.time()))
                        self._set_state("disconnected", "shutdown")
                        raise
                    finally:
                        self._live = None
                        watcher.cancel()
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                first, broker, delay = self.status.state != "disconnected", self.walk.label, self.walk.failed()
                self._set_state("disconnected", str(exc) or type(exc).__name__)
                # The first failure is news; the hundredth retry of an outage is not.
                (self.log.warning if first else self.log.debug)("uplink down", broker=broker, error=str(exc),
                                                                next=self.walk.label, retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    def _status_topic(self) -> str:
        return self._status

    async def _subscribe(self, client: aiomqtt.Client, topic: str) -> None:
        """A broker ACL that forbids a subscription is lived with, and said."""
        try:
            granted = await client.subscribe(topic, qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("subscription refused", topic=topic, error=str(exc))
            return
        if any((g.value if isinstance(g, ReasonCode) else g) >= 0x80 for g in granted):
            (log.info if topic == self._status_topic() else log.error)("subscription refused by the broker",
                                                                       topic=topic)

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Route what the broker sends: what the dialect listens for (platform commands, a host's state), and a
        last will from an older session that arrives after our birth (a broker cluster, a session takeover) and
        would leave "offline" retained while we are online: the birth is said again."""
        status = self._status_topic()
        await self._subscribe(client, status)  # after the birth: what is retained there then is ours, or a late will
        with contextlib.suppress(aiomqtt.MqttError):  # the connection went: the pump notices and reconnects
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                topic = str(message.topic)
                if topic == status:
                    if self.encoder.superseded(payload, self.session):
                        log.warning("an older session's last will overwrote our birth: saying it again")
                        self.rebirth()
                    continue
                try:
                    self._inbound(topic, payload, message)
                except Exception:  # a bug in one message's handling must not deafen the gateway to the next
                    log.exception("message from the broker not handled", topic=topic[:200], size=len(payload))

    def _incoming(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's queue for what the broker sends, which hands what the dialect listens for (platform commands)
        to ``_inbound`` as it arrives, in order, instead of queueing it. Taking a command never awaits, and what
        it refuses it counts (``PlatformCommands.dropped``); queued, a flood of them overflowed the queue while
        the loop was busy and aiomqtt discarded the rest unseen and uncounted (a test lost 1,084 of 5,900)."""
        uplink = self

        class Incoming(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if not uplink._take(item):
                    super().put_nowait(item)

        return Incoming

    def _take(self, message: aiomqtt.Message) -> bool:
        """Route a message straight away (True), or leave it to ``_listen`` (False: our own status topic)."""
        topic = str(message.topic)
        if topic == self._status_topic():
            return False
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            self._inbound(topic, payload, message)
        except Exception:  # a bug in one message's handling must not deafen the gateway to the next
            log.exception("message from the broker not handled", topic=topic[:200], size=len(payload))
        return True

    def _inbound(self, topic: str, payload: bytes, message: aiomqtt.Message) -> None:
        inbound = self.encoder.inbound(topic, payload, self.root)
        if inbound is None:
            return
        if self._commands is not None:
            for request in (inbound.request, *inbound.requests):
                if request is not None:
                    self._commands(request, delivery(message.properties, self.root, self.name))
        if inbound.rebirth:
            self.rebirth()
        elif inbound.wake:
            self.committed.set()

    async def _describe(self, client: aiomqtt.Client) -> None:
        """Every device's metadata (retained), and clearing messages for the devices removed since last time."""
        if self._devices is None:
            return
        key = f"announced:{self.name}"
        meta = await self.store.run(self.store.store.meta)
        self.session.announced = set(meta.get(key, []))
        for message in self.encoder.describe(self.session, self._devices(), time.time()):
            await self._publish(client, message)
        await self.store.run(self.store.store.set_meta, key, sorted(self.session.announced))

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            self.committed.clear()
            if not self.encoder.ready():  # held: everything stays in the outbox until the dialect may speak
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.committed.wait()
                continue
            if self._birth_due:
                self._birth_due = False
                await self._publish(client, self.encoder.birth(self.session, time.time()))
                self._describe_due = True
            await self._publish_held(client)
            rows = await self.store.run(self.store.store.next_batch, self.config.batch, self.name, sorted(self._owed))
            rows, passed = self.route.split(rows)  # what this uplink does not carry is acknowledged unsent
            if self._describe_due and not (rows and rows[0].fact.priority is Priority.ALARM):
                await self._describe(client)  # after the waiting alarms, before everything else
                self._describe_due = False
            rows = self._paced(rows)
            if not rows and not passed:
                if self._owed:
                    await self._settle([])
                # while alarms wait in memory or replay waits for its turn, look again soon
                wait = 1.0 if self._held and self._held() else None
                if self.status.replay_waits and self._replay_from > self.clock.monotonic():
                    wait = min(wait or 1.0, max(0.01, self._replay_from - self.clock.monotonic()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.committed.wait()
                continue
            encoded = self.encoder.encode(rows, time.time()) if rows else []
            self._pace(encoded, rows)
            encoded += passed
            await self._deliver(client, encoded)

    def _paced(self, rows: list[StoredFact]) -> list[StoredFact]:
        """The rows this round may send: replay waits for its start delay and its rate, alarms never do.
        Rows are in outbox order, so holding back the first replayed row holds back all that follow it."""
        now = time.time()
        if self._replay_from <= self.clock.monotonic():
            return rows
        for i, row in enumerate(rows):
            if row.fact.priority is not Priority.ALARM and self.encoder.historical(row, now):
                self.status.replay_waits += 1
                return rows[:i]
        return rows

    def _pace(self, encoded: list[Encoded], rows: list[StoredFact]) -> None:
        """Charge the replay messages of this round to the rate cap."""
        if not self.config.replay_rate:
            return
        now = time.time()
        replayed = {r.seq for r in rows if r.fact.priority is not Priority.ALARM and self.encoder.historical(r, now)}
        count = sum(1 for e in encoded if e.message is not None and replayed.intersection(e.seqs))
        if count:
            start = max(self._replay_from, self.clock.monotonic())
            self._replay_from = start + count / self.config.replay_rate

    async def _deliver(self, client: aiomqtt.Client, encoded: list[Encoded]) -> None:
        sending = [e for e in encoded if e.message is not None]
        results = await asyncio.gather(*(self._publish(client, e.message) for e in sending if e.message),
                                       return_exceptions=True)
        sent = [e for e, result in zip(sending, results, strict=True) if result is None]
        acked = [seq for e in encoded if e.message is None for seq in e.seqs]
        acked += [seq for e in sent for seq in e.seqs]
        await self._settle(acked)
        self.status.messages += len(sent)
        self.status.delivered += sum(len(e.seqs) for e in sent)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure if isinstance(failure, aiomqtt.MqttError) else aiomqtt.MqttError(str(failure))
