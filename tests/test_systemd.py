"""`gateway run` speaks sd_notify: READY once polling starts, watchdog pings, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_config


def test_ready_watchdog_and_stopping_over_notify_socket(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(15)
    config = write_config(tmp_path / "g.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=[], devices=[])
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and received.count("WATCHDOG=1") < 2:
            received.append(sock.recv(256).decode())
        assert received[0] == "READY=1"
        assert received.count("WATCHDOG=1") >= 2  # pings at half of WatchdogSec
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in received:
            received.append(sock.recv(256).decode())
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
