"""The fleet bench's platform: one persistent-session subscriber noting when each message arrives.

It plays the platform behind the broker: a fixed client id, clean session off and a QoS 1
subscription to ``community/#``, so a broker restarted with persistence keeps the subscription and
queues what the gateways publish before this client is back. It also takes the broker's own count
of PUBLISH packets received (``$SYS/broker/publish/messages/received``, once a second with
``sys_interval 1``): the broker's side of the same rate, which a slow subscriber cannot flatten.

The child (``python -c``, like ``gateway.bench.mqtt``) does as little per message as it can: one
line ``<arrival epoch s> TAB <topic> TAB <payload>`` appended to a file, flushed every 50 ms. The
bench reads the file whenever it likes (``Seen.update``) and does the decoding there.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from gateway.bench.child_subscriber import SubscriberProcess

CHILD = "from gateway.bench.fleet_platform import platform_main; platform_main()"
CLIENT_ID = "fleet-platform"
SYS_RECEIVED = "$SYS/broker/publish/messages/received"
CONNECTED = "@connected"
"""The topic of the line the child writes each time it (re)connects: when the platform was back."""


class Platform(SubscriberProcess):
    """The parent's handle on the subscriber process."""

    def __init__(self, port: int, topic: str, path: Path, log: Path) -> None:
        super().__init__(CHILD, "fleet platform", port, topic, path, log)
        self.seen = Seen(path)


@dataclass(slots=True)
class Seen:
    """What reached the platform, read back from the child's file (``update`` reads what is new)."""

    path: Path
    messages: list[float] = field(default_factory=list)
    """Arrival time of every MQTT message under the topic (a batch is one), in arrival order."""
    readings: list[float] = field(default_factory=list)
    """Arrival time of every telemetry reading's first copy (a batch counts its items)."""
    births: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Site -> arrival times of its "online" status messages."""
    first_hist: dict[str, float] = field(default_factory=dict)
    """Site -> first arrival of a replayed (``hist``) reading."""
    copies: Counter[str] = field(default_factory=Counter)
    telemetry: set[tuple[str, float]] = field(default_factory=set)
    """(device, ts) of every telemetry reading, to match the gateways' readings history."""
    hist: int = 0
    batches: int = 0
    broker: list[tuple[float, int]] = field(default_factory=list)
    """(arrival, the broker's count of PUBLISH packets received since it started), each $SYS interval."""
    connects: list[float] = field(default_factory=list)
    """When the platform connected (the first time, and after each broker restart)."""
    _offset: int = 0

    def update(self) -> Seen:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self._offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written right now: read next time
                self._offset += len(line)
                at, topic, payload = line[:-1].split(b"\t", 2)
                self._take(float(at), topic.decode(), payload)
        return self

    def _take(self, at: float, topic: str, payload: bytes) -> None:
        if topic == CONNECTED:
            self.connects.append(at)
            return
        if topic == SYS_RECEIVED:
            with contextlib.suppress(ValueError):
                self.broker.append((at, int(payload)))
            return
        if not payload:
            return  # a retained topic cleared
        self.messages.append(at)
        msg: Any = json.loads(payload)
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "status" and msg.get("state") == "online":
            self.births[str(msg.get("site"))].append(at)
        elif msg.get("type") == "batch":
            self.batches += 1
            for item in msg.get("items", []):
                self._reading(at, item)
        else:
            self._reading(at, msg)

    def _reading(self, at: float, msg: dict[str, Any]) -> None:
        if msg.get("type") != "telemetry":
            return
        self.copies[msg["id"]] += 1
        if self.copies[msg["id"]] > 1:
            return
        self.readings.append(at)
        self.telemetry.add((str(msg["device"]), float(msg["ts"])))
        if msg.get("hist"):
            self.hist += 1
            self.first_hist.setdefault(str(msg["site"]), at)

    @property
    def duplicates(self) -> int:
        return sum(self.copies.values()) - len(self.copies)

    @property
    def max_copies(self) -> int:
        return max(self.copies.values(), default=0)

    def devices(self) -> set[str]:
        return {device for device, _ in self.telemetry}

    def broker_peak(self, started: float, end: float) -> float | None:
        """The broker's highest PUBLISH-received rate between two of its $SYS counts, from the broker ``started``
        (its count then 0) to ``end``."""
        samples = [(started, 0), *((at, n) for at, n in self.broker if started < at <= end)]
        rates = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in pairwise(samples)
                 if t1 - t0 > 0.2 and n1 >= n0]  # a count that fell is a restarted broker
        return max(rates, default=None)


def peak(times: Sequence[float], window: float, start: float, end: float) -> float:
    """The most arrivals in any ``window`` s within [start, end), per second (a sliding window, not buckets)."""
    lo, hi = bisect_left(times, start), bisect_left(times, end)
    best = 0
    first = lo
    for last in range(lo, hi):
        while times[last] - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best / window


def per_second(times: Sequence[float], start: float, end: float) -> list[int]:
    """Arrivals in each whole second from ``start`` (the last second may be partial)."""
    counts = [0] * max(1, int(end - start + 0.999))
    for at in times[bisect_left(times, start):bisect_left(times, end)]:
        counts[min(len(counts) - 1, int(at - start))] += 1
    return counts


def count(times: Sequence[float], start: float, end: float) -> int:
    return bisect_left(times, end) - bisect_left(times, start)


def platform_main() -> None:
    """Child process: argv port topic path. Says "ready" once subscribed, then records until stdin closes."""
    import threading

    import paho.mqtt.client as paho

    from gateway.bench.child_subscriber import run_subscriber

    port, topic, path = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    out = path.open("ab")
    lock = threading.Lock()

    def on_connect(client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            with lock:
                out.write(b"%.6f\t%s\t\n" % (time.time(), CONNECTED.encode()))
        # Only when the broker has no session of ours: subscribing again would have it send every retained
        # message (births, metadata, device states) once more, counted as traffic that no gateway sent.
        if not rc.is_failure and not flags.session_present:
            client.subscribe([(topic, 1), (SYS_RECEIVED, 0)])

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        at = time.time()
        payload = bytes(message.payload).replace(b"\n", b" ").replace(b"\t", b" ")  # JSON: whitespace is whitespace
        with lock:
            out.write(b"%.6f\t%s\t%s\n" % (at, message.topic.encode(), payload))

    def flush() -> None:
        with lock:
            out.flush()

    try:
        run_subscriber(port, CLIENT_ID, on_connect, on_message, reconnect=(0.02, 0.2), tick=flush)
    finally:
        with lock:
            out.close()
