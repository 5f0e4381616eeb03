"""The chaos bench's platform: a persistent-session MQTT subscriber that keeps every message it gets.

It plays the platform's side of at-least-once delivery: one MQTT session (clean_session=False, a
fixed client id, QoS 1) that reconnects on its own whenever the broker goes away and comes back, so
what the broker queued for it while it was away is delivered when it returns. It runs in its own
process (``python -c``, as ``gateway.bench.mqtt``'s subscriber) and appends every message, as it
arrives, to a JSON-lines file, acknowledging it only after the line is written. The bench reads the
file whenever it likes: nothing is kept in the child's memory, nothing is lost if the bench is slow.

``Arrivals`` reads the file back and works out what the platform saw: distinct ids, duplicates,
fire-alarm markers, and each device's telemetry order.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.child_subscriber import SubscriberProcess

CHILD = "from gateway.bench.chaos_recorder import recorder_main; recorder_main()"
CLIENT_ID = "chaos-platform"


class Recorder(SubscriberProcess):
    """The parent's handle on the recorder process."""

    def __init__(self, port: int, topic: str, path: Path, log: Path) -> None:
        super().__init__(CHILD, "chaos recorder", port, topic, path, log)

    def arrivals(self) -> Arrivals:
        return Arrivals(self.path)


@dataclass(slots=True)
class Arrivals:
    """What reached the platform, read from the recorder's file (``update`` reads what is new)."""

    path: Path
    count: int = 0
    copies: Counter[str] = field(default_factory=Counter)
    fire_markers: set[str] = field(default_factory=set)
    telemetry: set[tuple[str, float]] = field(default_factory=set)
    """(device, ts) of every telemetry message, to match the store's readings history."""
    inversions: int = 0
    """Telemetry delivered (first copy) with a ts older than one of the same device delivered before it."""
    kinds: Counter[str] = field(default_factory=Counter)
    _newest: dict[str, float] = field(default_factory=dict)
    _offset: int = 0

    def update(self) -> Arrivals:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self._offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written right now: read next time
                self._offset += len(line)
                self._take(json.loads(line)["m"])
        return self

    def _take(self, msg: Any) -> None:
        if isinstance(msg, dict) and msg.get("type") == "batch":  # a replay batch: its items, one by one
            for item in msg.get("items", []):
                self._take(item)
            return
        if not isinstance(msg, dict) or "id" not in msg:
            return  # retained status, state and meta messages have no id
        self.count += 1
        self.copies[msg["id"]] += 1
        if self.copies[msg["id"]] > 1:
            return
        self.kinds[str(msg.get("kind") or msg.get("type"))] += 1
        if msg.get("kind") == "fire.alarm":
            self.fire_markers.add(str(msg.get("data", {}).get("description")))
        elif msg.get("type") == "telemetry":
            device, ts = str(msg["device"]), float(msg["ts"])
            self.telemetry.add((device, ts))
            if ts < self._newest.get(device, ts):
                self.inversions += 1
            self._newest[device] = max(ts, self._newest.get(device, ts))

    @property
    def ids(self) -> set[str]:
        return set(self.copies)

    @property
    def duplicates(self) -> int:
        return self.count - len(self.copies)

    @property
    def max_copies(self) -> int:
        return max(self.copies.values(), default=0)


def recorder_main() -> None:
    """Child process: argv port topic path. Says "ready" once subscribed, then records until stdin closes."""
    import paho.mqtt.client as paho

    from gateway.bench.child_subscriber import run_subscriber

    port, topic, path = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    out = path.open("a", encoding="utf-8")

    def on_connect(client: paho.Client, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(topic, qos=1)  # again after a broker that lost our session; harmless otherwise

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            decoded: Any = json.loads(message.payload)
        except ValueError:
            decoded = message.payload.decode(errors="replace")
        out.write(json.dumps({"at": time.time(), "t": message.topic, "m": decoded}, ensure_ascii=False) + "\n")
        out.flush()  # on disk (the page cache) before paho acknowledges it, when this returns

    try:
        run_subscriber(port, CLIENT_ID, on_connect, on_message, reconnect=(0.05, 0.5))
    finally:
        out.close()
