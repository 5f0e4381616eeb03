"""A bench's platform in a child process: a paho subscriber with a persistent session that records what it hears.

In its own process so that the bench's event loop (and its CPU) never delays an arrival's timestamp; the bench
talks to it through stdin/stdout: the child says "ready" once subscribed and records until stdin closes.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.bench.harness import read_line, stop_process


class SubscriberProcess:
    """The parent's handle on a child that runs ``run_subscriber``: ``code`` is its ``python -c`` line, which
    reads ``port topic path`` from argv."""

    def __init__(self, code: str, name: str, port: int, topic: str, path: Path, log: Path) -> None:
        self.code, self.name = code, name
        self.args = [str(port), topic, str(path)]
        self.path = path
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 20.0) -> None:
        """Start it; return once the broker has acknowledged its subscriptions."""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", self.code, *self.args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log)
        line = read_line(self.proc, within)
        if line != "ready":
            raise RuntimeError(f"the {self.name} said {line!r}, expected 'ready'")

    def stop(self) -> None:
        """Close its stdin (it flushes what it holds and leaves), then make sure it has gone."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        stop_process(self.proc, grace=5)


def run_subscriber(port: int, client_id: str, on_connect: Callable[..., None], on_message: Callable[..., None], *,
                   reconnect: tuple[float, float], tick: Callable[[], None] | None = None) -> None:
    """Connect, wait for the first SUBACK (``on_connect`` subscribes), say "ready", record until stdin closes.

    ``tick`` runs every 50 ms meanwhile (a flush); an error is said on stdout as "error ..." for the bench."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    subscribed: list[bool] = []

    def on_subscribe(_c: paho.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        subscribed.append(True)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.reconnect_delay_set(min_delay=reconnect[0], max_delay=reconnect[1])  # type: ignore[arg-type]
    try:
        client.connect("127.0.0.1", port, keepalive=5)
        client.loop_start()
        deadline = time.monotonic() + 10
        while not subscribed:
            if time.monotonic() > deadline:
                raise TimeoutError("no SUBACK within 10 s")
            time.sleep(0.01)
        os.write(1, b"ready\n")
        while not select.select([sys.stdin], [], [], 0.05)[0]:  # until the bench closes our stdin (or SIGTERM)
            if tick is not None:
                tick()
    except Exception as exc:
        os.write(1, f"error {exc!r}\n".encode())
    finally:
        client.loop_stop()
        client.disconnect()
