"""`gateway status`: a fire panel and a camera are device rows like every device; active alarms are counted.

A real daemon with a simulated fire panel on a pty pair, a Modbus TCP meter, a simulated MJPEG camera and a
rule that raises an alarm on the panel's fire line; the CLI runs in a child process, as a technician runs it,
while the daemon runs and after it has stopped (the counts come from the stored alarm book).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from conftest import free_ports, running, until, write_config

from gateway.cli.site import alarm_counts
from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.camera import MjpegCamera
from simulators.firepanel import FirePanelSimulator
from simulators.meter import METER_POINTS, serve_meters

ROW_KEYS = {"id", "kind", "state", "since", "last_poll", "last_ok", "error", "polls", "failures", "errors", "wire",
            "unreadable"}
RULES = """
[[rules]]
id = "fire"
when = { event = "fire.alarm", source = "panel" }
clear_when = { event = "fire.reset", source = "panel" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }

[[cameras]]
id = "lobby"
url = "URL"
fps = 5
detect = []
stall_timeout = "2s"
"""


def site_config(tmp: Path, panel: str, meter_port: int, camera_url: str) -> Path:
    points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:3]]
    path = write_config(
        tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None,
        buses=[{"id": "fire-port", "driver": "serial_lines", "port": panel},
               {"id": "meters", "driver": "modbus_tcp", "host": "127.0.0.1", "port": meter_port, "timeout": "300ms"}],
        devices=[{"id": "panel", "bus": "fire-port", "format": "gst_cn", "heartbeat": "0s"},
                 {"id": "meter-1", "bus": "meters", "interval": "200ms", "points": points},
                 {"id": "meter-spare", "bus": "meters", "unit": 2, "enabled": False, "points": points}],
    )
    path.write_text(path.read_text(encoding="utf-8") + RULES.replace("URL", camera_url), encoding="utf-8")
    return path


async def gateway(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *map(str, args),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None and "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def row(text: str, first: str) -> list[str]:
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


async def test_fire_panel_and_camera_are_rows_and_the_rules_alarm_is_counted(tmp_path: Path) -> None:
    meters = await serve_meters("127.0.0.1", free_ports(1), count=1)
    frame = np.full((240, 320, 3), 128, dtype=np.uint8)
    try:
        async with FirePanelSimulator("gst_cn", heartbeat=0) as panel, MjpegCamera([frame], fps=5) as camera:
            config = site_config(tmp_path, panel.port, meters.ports[0], camera.url)
            daemon = Daemon(load_config(config))
            async with running(daemon):
                await until(lambda: daemon.pollers["meter-1"].state.state == "online", within=30)
                await until(lambda: daemon.cameras["lobby"].status.get("state") == "streaming", within=60)
                await until(lambda: daemon.sink.states.get("panel") is not None, within=30)
                await panel.send("fire", loop=1, address=23, zone=4)
                assert daemon.automation is not None
                automation = daemon.automation
                await until(lambda: len(automation.listing()) == 1, within=30)
                await daemon.recorder.flush()
                code, out, err = await gateway("status", "--json", "-c", config)
                assert code == 0, err
                running_report = json.loads(out)
                code, text, _ = await gateway("status", "-c", config)
                assert code == 0
                code, out, err = await gateway("alarms", "ack", "fire/04", "-c", config)
                assert code == 0, (out, err)
                await until(lambda: automation.listing()[0]["state"] == "active_ack")
                await daemon.recorder.flush()
        code, out, _ = await gateway("status", "--json", "-c", config)
        assert code == 1  # the daemon is not running: still every row, and the alarm book as stored
        stopped = json.loads(out)
    finally:
        await meters.close()

    rows = {r["id"]: r for r in running_report["devices"]}
    assert set(rows) == {"panel", "meter-1", "meter-spare", "lobby"}
    assert all(set(r) - {"overrun"} == ROW_KEYS for r in rows.values()), rows
    assert rows["panel"]["kind"] == "firepanel" and rows["panel"]["state"] == "online"
    assert rows["meter-1"]["kind"] == "modbus" and rows["meter-1"]["state"] == "online"
    assert rows["meter-1"]["polls"] > 0
    assert rows["meter-spare"]["state"] == "disabled" and rows["meter-spare"]["last_poll"] is None
    lobby = rows["lobby"]
    assert lobby["kind"] == "camera" and lobby["state"] == "streaming" and lobby["last_poll"] > 0
    assert lobby["polls"] is None and lobby["error"] is None
    assert running_report["cameras"][0]["id"] == "lobby"  # the camera's own list is kept as it was

    alarms = running_report["alarms"]
    assert set(alarms) == {"active", "by_state", "unacknowledged", "list"}
    assert alarms["active"] == 1 and alarms["unacknowledged"] == 1 and alarms["by_state"] == {"active_unack": 1}
    assert alarms["list"][0]["key"] == "fire/04" and alarms["list"][0]["source"] == "panel"
    assert alarms["list"][0]["severity"] == "critical" and alarms["list"][0]["message"] == "Fire in zone 04"

    assert row(text, "panel")[1] == "online" and "firepanel" in row(text, "panel")
    assert row(text, "lobby")[1] == "streaming" and "camera" in row(text, "lobby")
    assert re.search(r"^alarms 1 active, 1 unacknowledged \(active_unack 1\)", text, re.M), text

    assert stopped["daemon"]["running"] is False
    assert stopped["alarms"]["active"] == 1 and stopped["alarms"]["unacknowledged"] == 0
    assert stopped["alarms"]["by_state"] == {"active_ack": 1}
    assert {r["id"] for r in stopped["devices"]} == set(rows)


def test_alarm_counts_order_the_unacknowledged_first_and_skip_normal() -> None:
    records: dict[str, dict[str, Any]] = {
        "a": {"key": "a", "state": "normal"},
        "b": {"key": "b", "state": "active_ack", "activated_at": 10.0},
        "c": {"key": "c", "state": "cleared_unack", "activated_at": 20.0},
        "d": {"key": "d", "state": "shelved", "activated_at": 5.0},
        "e": {"key": "e", "state": "active_unack", "activated_at": 30.0},
        "f": {"key": "f"},  # a record without a state is no active alarm
    }
    counts = alarm_counts(records)
    assert counts["active"] == 4 and counts["unacknowledged"] == 2
    assert counts["by_state"] == {"active_ack": 1, "cleared_unack": 1, "shelved": 1, "active_unack": 1}
    assert [a["key"] for a in counts["list"]] == ["c", "e", "d", "b"]
