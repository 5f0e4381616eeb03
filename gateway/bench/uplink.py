"""`gateway bench uplink`: how fast a backlog drains after an outage, and what that costs a live alarm.

After an outage the outbox holds hours of telemetry. The uplink must drain it quickly and still
deliver an alarm raised during the replay at once: each batch is chosen again by priority, so an
alarm waits for at most the batch in flight. This bench measures both against a real Mosquitto.
Arrivals are counted by a subscriber in its own process, so the subscriber's work does not slow
the uplink's event loop. The replay is compared with the naive publisher that a simple gateway
uses: one publish at a time, each waiting for its PUBACK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway import payloads
from gateway.bench import workdir
from gateway.config.schema import MqttConfig
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.recorder import AsyncStore, Recorder
from gateway.store import Batch, Outgoing, Store
from gateway.uplink import Uplink

DEVICES = 20
POLL_INTERVAL = 10.0
"""Seconds between one meter's snapshots in the simulated outage."""
FILL_CHUNK = 500
"""Outbox rows per transaction while filling, roughly what the recorder commits in a busy second."""
ALARM_PERIOD = 0.05
PREFIX = "bench"

# A 3-phase meter as the gateway polls it: point, unit, typical value, spread (None: fixed value).
_METER: list[tuple[str, str | None, float | int | bool, float | None]] = [
    ("voltage_a", "V", 230.0, 3.0), ("voltage_b", "V", 229.0, 3.0), ("voltage_c", "V", 231.0, 3.0),
    ("current_a", "A", 18.0, 6.0), ("current_b", "A", 16.0, 6.0), ("current_c", "A", 17.0, 6.0),
    ("power_total", "kW", 11.5, 4.0), ("power_factor", None, 0.94, 0.02), ("frequency", "Hz", 50.0, 0.02),
    ("energy_import", "kWh", 0.0, None), ("status", None, 1, None), ("serial_number", None, 24_000_001, None),
    ("firmware", None, 0x0103, None), ("relay_closed", None, True, None), ("tamper", None, False, None),
]


@dataclass
class RunResult:
    label: str
    expected: int
    arrived: int = 0
    duplicates: int = 0
    order_breaks: int = 0
    seconds: float | None = None
    timed_out: bool = False
    alarms_sent: int = 0
    latencies: list[float] = field(default_factory=list)
    timer_lag: list[float] = field(default_factory=list)
    """How late each 50 ms sleep of the alarm task woke: what a poll loop on the same event loop suffers."""

    @property
    def rate(self) -> float | None:
        return self.arrived / self.seconds if self.seconds else None

    @property
    def ok(self) -> bool:
        return (not self.timed_out and self.arrived == self.expected and self.order_breaks == 0
                and len(self.latencies) == self.alarms_sent)


def bench_uplink(args: argparse.Namespace) -> int:
    """Print replay rate and alarm latency per batch size, and the naive baseline; 1 if anything was lost."""
    # Optional attributes may be absent or None (an argparse option left unset): both mean the default.
    events = int(getattr(args, "events", None) or 50_000)
    batches = [int(b) for b in getattr(args, "batches", None) or (100, 500, 2000)]
    synchronous = str(getattr(args, "synchronous", None) or "full")
    limit = float(getattr(args, "limit", None) or max(60.0, events / 500))
    naive = getattr(args, "naive", None) is not False
    base_dir = getattr(args, "dir", None)
    if events < DEVICES:
        print(f"--events must be at least {DEVICES}", file=sys.stderr)
        return 2
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    # The uplink's info lines would break up the table; warnings (a lost broker) still show, on stderr.
    with workdir("gateway-bench-uplink-", base=base_dir) as work:
        broker = _Mosquitto(work, binary)
        try:
            broker.start()
            return asyncio.run(_bench(broker.port, work, events, batches, synchronous, limit, naive))
        finally:
            broker.stop()


async def _bench(port: int, workdir: Path, events: int, batches: Sequence[int], synchronous: str, limit: float,
                 naive: bool) -> int:
    backlog = telemetry_backlog(events)
    size = sum(len(m.payload) for m in backlog) / len(backlog)
    hours = events / DEVICES * POLL_INTERVAL / 3600
    print(f"uplink replay: {events} telemetry messages ({len(_METER)} points, ~{size:.0f} B each) from {DEVICES}"
          f" meters polled every {POLL_INTERVAL:g}s, i.e. a {hours:.1f} h outage")
    print(f"store in {workdir} (synchronous={synchronous}); mosquitto on 127.0.0.1:{port}; subscriber in its own"
          " process, QoS 1")
    print(f"alarm raised every {ALARM_PERIOD * 1000:.0f} ms during the replay; latency = Recorder.event() call"
          " -> arrival at the subscriber\n", flush=True)
    header = (f"{'batch':>6}  {'fill s':>6}  {'replay s':>8}  {'msg/s':>7}  {'arrived':>8}  {'dup':>4}  "
              f"{'order':>5}  {'alarms':>6}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}  {'p50 ms':>7}  "
              f"{'max ms':>7}")
    print(f"{'':66}{' alarm latency ':-^25}  {' loop lag ':-^16}")
    print(header)
    print("-" * len(header), flush=True)
    results: list[RunResult] = []
    for batch in batches:
        fill_started = time.monotonic()
        store = Store(workdir / f"replay-{batch}.db", synchronous=synchronous)
        for chunk in _chunks(backlog, FILL_CHUNK):
            store.commit(Batch(outgoing=list(chunk)))
        fill = time.monotonic() - fill_started
        result = await _replay(port, store, len(backlog), batch, limit)
        results.append(result)
        print(_row(str(batch), result, fill), flush=True)
    baseline: RunResult | None = None
    if naive:
        baseline = await _naive(port, backlog, limit)
        print(_row("naive", baseline, None), flush=True)
    print("\nreplay s = uplink connected -> last telemetry message at the subscriber; msg/s counts distinct arrivals")
    print(f"loop lag = how late a {ALARM_PERIOD * 1000:.0f} ms asyncio.sleep wakes during the replay: what a poll"
          " loop sharing the event loop would suffer")
    if baseline is not None and baseline.rate and baseline.seconds:
        print("naive = aiomqtt, one publish at a time, awaiting each PUBACK (messages from memory, no store)")
        ratios = ", ".join(f"batch {r.label} {r.rate / baseline.rate:.1f}x" for r in results if r.rate)
        print(f"uplink replay vs naive: {ratios}")
        # Loopback answers in microseconds, which flatters the naive publisher; say what a real link does.
        rtt = 0.05
        naive_s = baseline.seconds + baseline.expected * rtt
        estimates = ", ".join(f"batch {r.label} {r.seconds + r.expected / int(r.label) * rtt:.1f} s"
                              for r in results if r.seconds)
        print(f"estimate at {rtt * 1000:.0f} ms RTT (arithmetic, not measured): naive {naive_s / 60:.1f} min;"
              f" uplink {estimates}")
    failed = [r for r in [*results, *([baseline] if baseline else [])] if not r.ok]
    for r in failed:
        print(f"PROBLEM in run {r.label}: {r.arrived}/{r.expected} arrived, {r.order_breaks} out of order,"
              f" {r.alarms_sent - len(r.latencies)} alarms missing{', timed out' if r.timed_out else ''}")
    return 1 if failed else 0


async def _replay(port: int, store: Store, expected: int, batch: int, limit: float) -> RunResult:
    """Drain a full outbox through the real Uplink while the real Recorder raises alarms."""
    result = RunResult(str(batch), expected)
    site = f"batch-{batch}"
    astore = AsyncStore(store)
    recorder = Recorder(astore)
    connected_at: list[float] = []

    def on_state(_: str, info: dict[str, object]) -> None:
        if info.get("state") == "connected" and not connected_at:
            connected_at.append(time.time())

    uplink = Uplink(
        MqttConfig(host="127.0.0.1", port=port, batch=batch, topic_prefix=PREFIX, reconnect_min=0.1,
                   reconnect_max=1.0),
        site, astore, recorder.committed, on_state=on_state,
    )
    subscriber = _Subscriber(port, f"{PREFIX}/{site}/#", expected)
    tasks: list[asyncio.Task[None]] = []
    sent: dict[str, float] = {}
    try:
        await subscriber.start()
        tasks += [asyncio.create_task(recorder.run()), asyncio.create_task(uplink.run())]
        async with asyncio.timeout(20):
            while not connected_at:  # noqa: ASYNC110 (the uplink task fills it)
                await asyncio.sleep(0.005)
        tasks.append(asyncio.create_task(_raise_alarms(recorder, sent, result.timer_lag)))
        result.timed_out = not await _wait_done(subscriber, lambda: uplink.status.delivered >= expected + len(sent),
                                                limit)
        tasks.pop().cancel()
        with contextlib.suppress(TimeoutError):  # the last alarms: acknowledged, then a moment to arrive
            async with asyncio.timeout(10):
                while uplink.status.delivered < expected + len(sent):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        summary = await subscriber.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await subscriber.close()
        astore.close()
    _fill(result, summary, connected_at[0])
    result.alarms_sent = len(sent)
    arrivals: dict[str, float] = summary["alarms"]
    result.latencies = sorted(arrivals[i] - t for i, t in sent.items() if i in arrivals)
    result.timer_lag.sort()
    return result


async def _raise_alarms(recorder: Recorder, sent: dict[str, float], lag: list[float]) -> None:
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        ev = Event("bench.alarm", "bench", Priority.ALARM, {"n": n})
        sent[ev.id] = time.time()
        recorder.event(ev)
        n += 1
        slept = loop.time()
        await asyncio.sleep(ALARM_PERIOD)
        lag.append(loop.time() - slept - ALARM_PERIOD)


async def _naive(port: int, backlog: list[Outgoing], limit: float) -> RunResult:
    result = RunResult("naive", len(backlog))
    subscriber = _Subscriber(port, f"{PREFIX}/naive/#", len(backlog))
    try:
        await subscriber.start()
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-naive") as client:
            started = time.time()
            try:
                async with asyncio.timeout(limit):
                    for m in backlog:
                        await client.publish(f"{PREFIX}/naive/{m.topic}", m.payload, qos=1)
            except TimeoutError:
                result.timed_out = True
        if not result.timed_out:
            result.timed_out = not await _wait_done(subscriber, lambda: True, 10.0)
        summary = await subscriber.result()
    finally:
        await subscriber.close()
    _fill(result, summary, started)
    return result


async def _wait_done(subscriber: _Subscriber, all_acked: Any, limit: float) -> bool:
    """Until the subscriber has every message; False on the time limit or 3 s after all were acked."""
    loop = asyncio.get_running_loop()
    deadline, grace = loop.time() + limit, math.inf
    while not subscriber.poll_done():
        now = loop.time()
        if now > deadline:
            return False
        if all_acked():
            grace = min(grace, now + 3.0)
            if now > grace:
                return True  # acknowledged but never arrived: counted as missing, not as a timeout
        await asyncio.sleep(0.01)
    return True


def _fill(result: RunResult, summary: dict[str, Any], started: float) -> None:
    result.arrived = summary["telemetry"]
    result.duplicates = summary["duplicates"]
    result.order_breaks = summary["order_breaks"]
    if summary["last"] is not None:
        result.seconds = summary["last"] - started


def _row(label: str, r: RunResult, fill: float | None) -> str:
    def ms(q: float, values: list[float] | None = None) -> str:
        values = r.latencies if values is None else values
        return f"{_percentile(values, q) * 1000:7.1f}" if values else f"{'-':>7}"

    rate = f"{r.rate:7.0f}" if r.rate else f"{'-':>7}"
    seconds = f"{r.seconds:8.2f}" if r.seconds else f"{'-':>8}"
    order = "kept" if r.order_breaks == 0 else str(r.order_breaks)
    alarms = str(r.alarms_sent) if r.alarms_sent else "-"
    fill_s = f"{fill:6.2f}" if fill is not None else f"{'-':>6}"
    line = (f"{label:>6}  {fill_s}  {seconds}  {rate}  {100 * r.arrived / r.expected:7.2f}%  {r.duplicates:>4}  "
            f"{order:>5}  {alarms:>6}  {ms(0.50)}  {ms(0.99)}  {ms(1.0)}  {ms(0.5, r.timer_lag)}  "
            f"{ms(1.0, r.timer_lag)}")
    return line + ("  TIMED OUT" if r.timed_out else "")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the samples at or below it."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _chunks(items: Sequence[Outgoing], size: int) -> Iterator[Sequence[Outgoing]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def telemetry_backlog(count: int, devices: int = DEVICES, seed: int = 1) -> list[Outgoing]:
    """``count`` snapshots, round-robin over the meters in time order, as an outage leaves them."""
    rng = random.Random(seed)
    start = time.time() - count / devices * POLL_INTERVAL
    energy = [rng.uniform(5_000.0, 80_000.0) for _ in range(devices)]
    backlog = []
    for n in range(count):
        k, d = divmod(n, devices)
        ts = start + k * POLL_INTERVAL + d * 0.013
        energy[d] += rng.uniform(0.0, 0.05)
        readings = []
        for point, unit, typical, spread in _METER:
            value: float | int | bool = typical
            if point == "energy_import":
                value = round(energy[d], 3)
            elif spread is not None:
                value = round(rng.gauss(float(typical), spread / 3), 4)
            readings.append(Reading(f"meter-{d + 1:03d}", point, value, unit, Quality.GOOD, ts))
        backlog.append(payloads.telemetry(f"meter-{d + 1:03d}", ts, readings))
    return backlog


# -- the broker ----------------------------------------------------------------------------------


class _Mosquitto:
    def __init__(self, workdir: Path, binary: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.binary = binary
        self.conf = workdir / "mosquitto.conf"
        # Unlimited in-flight and queued messages towards the subscriber: with the defaults (20 and
        # 1000) Mosquitto would drop what the subscriber has not yet taken, and that is not the uplink.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_inflight_messages 0\nmax_queued_messages 0\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- the subscriber (a child process) ------------------------------------------------------------


class _Subscriber:
    """Parent's handle on the subscriber process: ready, done (all telemetry seen), result.

    A plain ``python -c`` child talking JSON lines over its stdin and stdout: unlike
    multiprocessing's spawn it does not re-import the parent's main module, which fails when that
    is a script read from stdin.
    """

    def __init__(self, port: int, topic: str, expected: int) -> None:
        self.args = [str(port), topic, str(expected)]
        self.proc: asyncio.subprocess.Process | None = None
        self._done = asyncio.Event()
        self._result: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, within: float = 30.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from gateway.bench_uplink import subscriber_main; subscriber_main()", *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26,
        )
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._result = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        async with asyncio.timeout(within):
            await ready

    async def _read(self, ready: asyncio.Future[None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self._result is not None
        kind = data = ""
        while line := await self.proc.stdout.readline():
            kind, _, data = line.decode().rstrip("\n").partition(" ")
            if kind == "ready":
                ready.set_result(None)
            elif kind == "done":
                self._done.set()
            elif kind == "result":
                self._result.set_result(json.loads(data))
            elif kind == "error":
                break
        error = RuntimeError(f"subscriber failed: {data if kind == 'error' else 'it exited'}")
        for future in (ready, self._result):
            if not future.done():
                future.set_exception(error)

    def poll_done(self) -> bool:
        if self._result is not None and self._result.done() and self._result.exception():
            raise RuntimeError("subscriber failed") from self._result.exception()
        return self._done.is_set()

    async def result(self, within: float = 60.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self._result is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(within):
            return await self._result

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        if self.proc is not None:
            await self.proc.wait()
        if self._result is not None and self._result.done():
            self._result.exception()  # retrieved: no "exception was never retrieved" noise


def subscriber_main() -> None:
    """Child process: take everything under the topic (QoS 1), say when all telemetry is in, report.

    argv: port topic expected. Writes "ready", "done", then on "stop" from stdin "result <json>".
    """
    port, topic, expected = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    arrivals: list[tuple[float, str, bytes]] = []
    state = {"subscribed": False, "telemetry": 0}

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def on_connect(client: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(_c: paho.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        state["subscribed"] = True

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        arrivals.append((time.time(), message.topic, bytes(message.payload)))
        if "/telemetry/" in message.topic:
            state["telemetry"] += 1

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-subscriber-{os.getpid()}")
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        deadline = time.monotonic() + 10
        while not state["subscribed"]:
            if time.monotonic() > deadline:
                raise TimeoutError("no SUBACK within 10 s")
            time.sleep(0.005)
        say("ready")
        done = False
        while not select.select([sys.stdin], [], [], 0.005)[0]:
            if not done and state["telemetry"] >= expected:
                say("done")
                done = True
        sys.stdin.readline()  # "stop" (or the parent's end of file)
    except Exception as exc:  # the parent must hear about it, not wait for a timeout
        say(f"error {exc!r}")
        return
    finally:
        client.loop_stop()
        client.disconnect()
    say("result " + json.dumps(_summarise(arrivals)))


def _summarise(arrivals: list[tuple[float, str, bytes]]) -> dict[str, Any]:
    seen: set[str] = set()
    last_ts: dict[str, float] = {}
    alarms: dict[str, float] = {}
    telemetry = duplicates = order_breaks = 0
    last = None
    for at, _topic, payload in arrivals:
        msg = json.loads(payload)
        if msg.get("type") == "telemetry":
            if msg["id"] in seen:
                duplicates += 1  # a redelivery, as at-least-once allows
                continue
            seen.add(msg["id"])
            telemetry += 1
            last = at
            previous = last_ts.get(msg["device"])
            if previous is not None and msg["ts"] <= previous:
                order_breaks += 1
            last_ts[msg["device"]] = max(msg["ts"], previous or msg["ts"])
        elif msg.get("type") == "alarm":
            alarms.setdefault(msg["id"], at)
    return {"telemetry": telemetry, "duplicates": duplicates, "order_breaks": order_breaks, "last": last,
            "devices": len(last_ts), "alarms": alarms}
