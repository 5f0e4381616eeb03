"""The platform side of `gateway bench commands`: requests out on cmd/req, results and telemetry in, timed.

One MQTT client stands for the community platform, as a platform would be: it publishes write
requests (QoS 1) on the site's ``cmd/req`` and notes when each result reaches it on ``cmd/res``, so
a round trip is what the platform sees (broker, gateway, Modbus write and read-back, store, outbox,
broker again). The same client counts every device's telemetry by its poll time, to show whether
polling kept its rhythm while commands poured in. It runs in the bench's process; the gateway and the
meters run in processes of their own, so neither shares this event loop.

Light at import only through ``gateway.bench.commands``, which imports this when the bench runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt
import orjson

ACTORS = 16
"""Platform actors the requests are spread over (each has its own rate limit at the gateway)."""
TTL = 60.0
"""Seconds each request may live."""


@dataclass(slots=True)
class Phase:
    """One run of requests: when each was published and when (and how) each was answered."""

    name: str
    sent: dict[str, float] = field(default_factory=dict)
    """Request id -> monotonic time its publish began."""
    answered: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Request id -> (monotonic arrival of its first result, status)."""
    started: float = 0.0
    ended: float = 0.0
    """Wall-clock span of the sending (telemetry is counted by its wall-clock poll time)."""
    slots: asyncio.Semaphore | None = None

    def latencies(self) -> list[float]:
        return sorted(at - self.sent[rid] for rid, (at, _) in self.answered.items())

    def statuses(self) -> dict[str, int]:
        return dict(Counter(status for _, status in self.answered.values()))

    @property
    def done(self) -> bool:
        return len(self.answered) == len(self.sent)

    def answer_span(self) -> float | None:
        """Seconds from the first publish to the last result."""
        if not self.answered:
            return None
        return max(at for at, _ in self.answered.values()) - min(self.sent.values())


class Platform:
    """A connected platform client for one site with ``devices`` meters called ``meter-<i>``."""

    def __init__(self, client: aiomqtt.Client, root: str, devices: int) -> None:
        self.client = client
        self.root = root
        self.devices = devices
        self.polls: dict[str, list[float]] = {f"meter-{i}": [] for i in range(devices)}
        """Device -> poll times (the telemetry's ``ts``) as they reached the platform."""
        self.duplicate_results = 0
        self.online = asyncio.Event()
        self._phases: dict[str, Phase] = {}
        self._n = 0
        self._publishing: set[asyncio.Task[None]] = set()
        self.publish_errors = 0

    async def _read(self) -> None:
        results, telemetry, status = f"{self.root}/cmd/res", f"{self.root}/telemetry/", f"{self.root}/status"
        async for message in self.client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == results:
                self._result(orjson.loads(payload), time.monotonic())
            elif topic.startswith(telemetry):
                self.polls.setdefault(topic[len(telemetry):], []).append(float(orjson.loads(payload)["ts"]))
            elif topic == status and payload and orjson.loads(payload).get("state") == "online":
                self.online.set()

    def _result(self, body: dict[str, object], now: float) -> None:
        rid = str(body.get("req"))
        phase = self._phases.get(rid)
        if phase is None:
            return
        if rid in phase.answered:
            self.duplicate_results += 1  # at least once: a redelivered result is not a second answer
            return
        phase.answered[rid] = (now, str(body.get("status")))
        if phase.slots is not None:
            phase.slots.release()

    def _send(self, phase: Phase) -> None:
        """Publish the next write: round robin over the meters, each one's relay opened, closed, opened ..."""
        n, self._n = self._n, self._n + 1
        device = n % self.devices
        rid = f"{phase.name}-{n}"
        payload = orjson.dumps({"v": 1, "id": rid, "expires_at": time.time() + TTL, "actor": f"bench-{n % ACTORS}",
                                "cmd": "write", "device": f"meter-{device}", "point": "relay_closed",
                                "value": (n // self.devices) % 2 == 1})
        self._phases[rid] = phase
        phase.sent[rid] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._publish(payload))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, payload: bytes) -> None:
        try:
            await self.client.publish(f"{self.root}/cmd/req", payload, qos=1)
        except aiomqtt.MqttError:
            self.publish_errors += 1  # unanswered, so reported as lost

    async def paced(self, name: str, count: int, rate: float, settle: float) -> Phase:
        """``count`` writes at ``rate`` a second, whatever comes back; then up to ``settle`` s for the results."""
        phase = Phase(name, started=time.time())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            self._send(phase)
        phase.ended = time.time()
        await self._settle(phase, settle)
        return phase

    async def closed_loop(self, name: str, seconds: float, window: int, settle: float) -> Phase:
        """As fast as the gateway answers: ``window`` requests outstanding, a new one for each result, for
        ``seconds``; then up to ``settle`` s for the last results."""
        phase = Phase(name, started=time.time(), slots=asyncio.Semaphore(window))
        assert phase.slots is not None
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    await phase.slots.acquire()
            except TimeoutError:
                break
            self._send(phase)
        phase.ended = time.time()
        await self._settle(phase, settle)
        return phase

    async def _settle(self, phase: Phase, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not phase.done:  # noqa: ASYNC110 (the reader task fills it)
                    await asyncio.sleep(0.01)

    async def ready(self, within: float) -> None:
        """Until the gateway's birth and a poll of every meter have arrived."""
        async with asyncio.timeout(within):
            await self.online.wait()
            while not all(self.polls.values()):  # noqa: ASYNC110 (the reader task fills it)
                await asyncio.sleep(0.05)

    async def polled_after(self, when: float, within: float) -> bool:
        """Until every meter's telemetry polled at or after ``when`` has arrived (so counts up to it are final)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not all(ts and ts[-1] >= when for ts in self.polls.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                return True
        return False

    def poll_rates(self, start: float, end: float) -> tuple[float, float]:
        """(mean, lowest) polls per device per second with a poll time in [start, end)."""
        span = end - start
        counts = [sum(1 for ts in self.polls[f"meter-{i}"] if start <= ts < end) for i in range(self.devices)]
        return sum(counts) / len(counts) / span, min(counts) / span


@contextlib.asynccontextmanager
async def platform(port: int, root: str, devices: int) -> AsyncIterator[Platform]:
    """The platform connected and subscribed (results, telemetry, status) before the gateway starts."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-platform") as client:
        # a platform's small requests must not wait out Nagle's algorithm against the broker's delayed ACK
        # (40 ms a request here): that would be this client's latency, not the gateway's
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for topic in (f"{root}/cmd/res", f"{root}/telemetry/#", f"{root}/status"):
            await client.subscribe(topic, qos=1)
        client.pending_calls_threshold = 1 << 30  # a window of requests in flight is the point: no warning
        side = Platform(client, root, devices)
        reader = asyncio.create_task(side._read(), name="bench-platform")
        try:
            yield side
        finally:
            reader.cancel()
            for task in list(side._publishing):
                task.cancel()
            await asyncio.gather(reader, *side._publishing, return_exceptions=True)
