"""The benches' MQTT subscriber: a child process noting when each message arrives, and what arrived.

It runs in its own process so that its work does not slow the event loop being measured. A plain
``python -c`` child talking lines over its stdin and stdout: unlike multiprocessing's spawn it does
not re-import the parent's main module, which fails when that is a script read from stdin.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

CHILD = "from gateway.bench.mqtt import subscriber_main; subscriber_main()"


class Subscriber:
    """The parent's handle on the subscriber process: ready, done (all telemetry seen), result.

    ``result()`` is a dict: ``telemetry`` (distinct telemetry messages), ``duplicates``,
    ``order_breaks`` (a device's telemetry older than one before it), ``last`` (arrival time of the
    last telemetry message, epoch seconds), ``devices`` and ``alarms`` (alarm id -> first arrival).
    """

    def __init__(self, port: int, topic: str, expected: int = 0) -> None:
        self.args = [str(port), topic, str(expected)]
        self.proc: asyncio.subprocess.Process | None = None
        self._done = asyncio.Event()
        self._result: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, within: float = 30.0) -> None:
        """Start it and return once its subscription is acknowledged by the broker."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, *self.args,
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
        """True once every expected telemetry message has arrived."""
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
        if self._result is not None and self._result.done() and not self._result.cancelled():
            self._result.exception()  # retrieved: no "exception was never retrieved" noise


def subscriber_main() -> None:
    """Child process: take everything under the topic (QoS 1), say when all telemetry is in, report.

    argv: port topic expected. Writes "ready", "done", then on "stop" from stdin "result <json>".
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

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
        elif "/batch/telemetry" in message.topic:  # a replay batch: one item per telemetry message
            state["telemetry"] += message.payload.count(b'"type":"telemetry"')

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
            if not done and expected and state["telemetry"] >= expected:
                say("done")
                done = True
        sys.stdin.readline()  # "stop" (or the parent's end of file)
    except Exception as exc:  # the parent must hear about it, not wait for a timeout
        say(f"error {exc!r}")
        return
    finally:
        client.loop_stop()
        client.disconnect()
    say("result " + json.dumps(summarise(arrivals)))


def summarise(arrivals: list[tuple[float, str, bytes]]) -> dict[str, Any]:
    seen: set[str] = set()
    last_ts: dict[str, float] = {}
    alarms: dict[str, float] = {}
    telemetry = duplicates = order_breaks = 0
    last = None
    for at, msg in _messages(arrivals):
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


def _messages(arrivals: list[tuple[float, str, bytes]]) -> Iterator[tuple[float, dict[str, Any]]]:
    """Every message as the platform reads it: a replay batch's items one by one, retained clears skipped."""
    for at, _topic, payload in arrivals:
        if not payload:
            continue
        msg = json.loads(payload)
        if msg.get("type") == "batch":
            for item in msg["items"]:
                yield at, item
        else:
            yield at, msg
