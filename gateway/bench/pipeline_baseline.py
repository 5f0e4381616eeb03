"""What `gateway bench pipeline` runs beside the daemon, each in its own process: the subscriber, the baseline.

The subscriber counts every telemetry point that reaches the broker: a telemetry message's points,
or those of each telemetry item of a v2 batch envelope (``{"type": "batch", "class": "telemetry",
"items": [...]}``); other types are counted apart and otherwise ignored.

The baseline is the minimal path the bench measures for scale: poll, JSON, publish, nothing else.
Per device, a pymodbus client reads the float32 registers every interval (deadline-scheduled, as
the daemon's poller is), ``json.dumps`` turns them into a telemetry message shaped like the
daemon's, and aiomqtt publishes it at QoS 1, awaiting the PUBACK. No store, no outbox, no rules,
no quality or staleness bookkeeping: what a platform would get from the simplest possible gateway.

``python -m gateway.bench.pipeline_baseline subscribe PORT TOPIC`` is the subscriber (it says
``ready``, answers ``count``, and ``stop T0 T1`` with ``result <json>``); ``... publish --broker PORT
--root TOPIC --points N --interval S --ports P1,P2,...`` publishes until SIGTERM, and the bench
measures its CPU like the daemon's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gateway.bench.harness import HOST, latency_ms

MAX_REGISTERS = 124
"""Registers per read: Modbus allows 125; an even count never splits a float32 between two reads."""


async def _device(mqtt: Any, port: int, device: str, points: int, interval: float, root: str) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    names = [f"p{i:04d}" for i in range(points)]
    unpack = struct.Struct(f">{points}f").unpack
    pack = struct.Struct(f">{2 * points}H").pack
    modbus = AsyncModbusTcpClient(HOST, port=port, timeout=2)
    await modbus.connect()
    loop = asyncio.get_running_loop()
    due = loop.time() + random.uniform(0, min(interval, 2.0))
    try:
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            ts = time.time()
            registers: list[int] = []
            for start in range(0, 2 * points, MAX_REGISTERS):
                answer = await modbus.read_holding_registers(start, count=min(MAX_REGISTERS, 2 * points - start))
                if answer.isError():
                    raise RuntimeError(f"{device}: {answer}")
                registers += answer.registers
            values = unpack(pack(*registers))
            payload = {"type": "telemetry", "device": device, "ts": round(ts, 3),
                       "points": {name: {"v": value} for name, value in zip(names, values, strict=True)}}
            await mqtt.publish(f"{root}/telemetry/{device}", json.dumps(payload, separators=(",", ":")), qos=1)
            due += interval
            if due < loop.time():  # overran: skip the missed slots, as the daemon does
                due = loop.time() + interval
    finally:
        modbus.close()


async def _main(args: argparse.Namespace) -> None:
    import aiomqtt

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    ports = [int(p) for p in args.ports.split(",")]
    async with aiomqtt.Client(HOST, args.broker, identifier="bench-pipeline-baseline") as mqtt, \
            asyncio.TaskGroup() as group:
        for i, port in enumerate(ports):
            group.create_task(_device(mqtt, port, f"dev-{i}", args.points, args.interval, args.root))


def publish_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.pipeline_baseline publish",
                                     description="the minimal path: pymodbus + json + aiomqtt QoS 1, no store")
    parser.add_argument("--broker", type=int, required=True, help="Mosquitto's port on 127.0.0.1")
    parser.add_argument("--root", required=True, help="topic root: <root>/telemetry/<device>")
    parser.add_argument("--points", type=int, required=True, help="float32 points per device")
    parser.add_argument("--interval", type=float, required=True, help="poll interval, seconds")
    parser.add_argument("--ports", required=True, help="the simulated devices' ports, comma separated")
    args = parser.parse_args(argv)
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


# -- the subscriber --------------------------------------------------------------------------------


def telemetry_items(msg: Any) -> list[tuple[str | None, float | None, int, str]]:
    """(id, poll ts in s, points, device) per poll a message carries: a telemetry message, or each telemetry item
    of a v2 batch envelope; nothing for other types. ts is None where it is missing (a malformed item)."""
    if not isinstance(msg, dict):
        return []
    if msg.get("type") == "telemetry":
        items = [msg]
    elif msg.get("type") == "batch" and msg.get("class") == "telemetry":
        items = [i for i in msg.get("items") or () if isinstance(i, dict) and i.get("type", "telemetry") == "telemetry"]
    else:
        return []
    found: list[tuple[str | None, float | None, int, str]] = []
    for item in items:
        ts, points = item.get("ts", msg.get("ts")), item.get("points")
        if not isinstance(ts, int | float) or isinstance(ts, bool) or not isinstance(points, dict):
            found.append((None, None, 0, ""))
            continue
        key = item.get("id")
        found.append((str(key) if key is not None else None, ts / 1000 if ts > 1e11 else float(ts), len(points),
                      str(item.get("device", msg.get("device", "")))))  # ts in ms (> year 5138 in s) becomes s
    return found


def summarise(records: Sequence[tuple[float, float, int, str]], t0: float, t1: float) -> dict[str, Any]:
    """Points by poll ts (before, in, after [t0, t1)) and by arrival in it; latency of the polls in it."""
    polled = Counter[str]()
    arrived = 0
    latencies: list[float] = []
    devices: set[str] = set()
    for at, ts, n, device in records:
        where = "before" if ts < t0 else "in_window" if ts < t1 else "after"
        polled[where] += n
        if where == "in_window":
            latencies.append(at - ts)
            devices.add(device)
        if t0 <= at < t1:
            arrived += n
    return {"points_polled_before": polled["before"], "points_polled_in_window": polled["in_window"],
            "points_polled_after": polled["after"], "points_arrived_in_window": arrived,
            "devices_in_window": len(devices), "latency": latency_ms(latencies)}


def subscriber_main(argv: Sequence[str]) -> int:
    """``subscribe PORT TOPIC``: ready once subscribed (QoS 1); answers ``count``; ``stop T0 T1`` -> result."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    port, topic = int(argv[0]), argv[1]
    records: list[tuple[float, float, int, str]] = []
    tally = Counter({"telemetry_messages": 0, "telemetry_batches": 0, "other_messages": 0, "duplicates": 0,
                     "malformed": 0, "points": 0})
    seen: set[str] = set()
    subscribed: list[bool] = []

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        at = time.time()
        try:
            msg = json.loads(message.payload)
        except ValueError:
            tally["malformed"] += 1
            return
        items = telemetry_items(msg)
        if not items:
            tally["other_messages"] += 1  # status, meta, state, event, alarm, summary, ...
        else:
            tally["telemetry_batches" if msg.get("type") == "batch" else "telemetry_messages"] += 1
        for key, ts, n, device in items:
            if ts is None:
                tally["malformed"] += 1
            elif key is not None and key in seen:
                tally["duplicates"] += 1  # a redelivery, as at-least-once allows: a platform drops it
            else:
                if key is not None:
                    seen.add(key)
                records.append((at, ts, n, device))
                tally["points"] += n

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pipeline-{os.getpid()}")
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: subscribed.append(True)
    client.on_message = on_message
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not subscribed:
        if time.monotonic() > deadline:
            print("error no SUBACK within 10 s", flush=True)
            return 1
        time.sleep(0.01)
    print(f"ready {port} 0", flush=True)
    for line in sys.stdin:
        word, *rest = line.split()
        if word == "count":
            print(f"count {len(records)}", flush=True)
        elif word == "stop":
            client.loop_stop()
            client.disconnect()
            result = {**tally, "polls": len(records), **summarise(records, float(rest[0]), float(rest[1]))}
            print("result " + json.dumps(result), flush=True)
            return 0
    return 0


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["subscribe"]:
        return subscriber_main(argv[1:])
    if argv[:1] == ["publish"]:
        return publish_main(argv[1:])
    print("usage: python -m gateway.bench.pipeline_baseline subscribe|publish ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
