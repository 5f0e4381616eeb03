"""`gateway top` against a real daemon (a simulated meter and a silent one): the live screen in a pseudo-terminal
(device ids and states drawn, q and Ctrl-C leave with the terminal as it was, a small terminal and a resize are
survived, a daemon that is not running is said and waited for), and `--once` as text and as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import sys
import termios
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import Broker, free_ports, running, until, write_config
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.cli.top import clip, fit, frame
from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
RULES = """
[web]
enabled = false

[[alarm_classes]]
name = "equipment"

[[rules]]
id = "dead-offline"
when = { device = "dead-1", state = "offline" }
alarm = { class = "equipment", severity = "minor", message = "smoke extract fan controller not answering" }

[[rules]]
id = "meter-voltage"
when = { point = "meter-0.voltage_a", above = 0 }
alarm = { class = "equipment", severity = "critical", message = "电表有电压 (voltage present)" }
"""


class Terminal:
    """A pseudo-terminal of a fixed size with one `gateway` command in it, as its controlling terminal (so Ctrl-C
    and a resize reach it as they would from a technician's SSH session); every byte it drew is kept."""

    def __init__(self, rows: int = 40, cols: int = 160) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        os.set_blocking(self.master, False)
        self.before = termios.tcgetattr(self.slave)
        self.drawn = b""
        self.proc: asyncio.subprocess.Process | None = None

    def resize(self, rows: int, cols: int) -> None:
        """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group."""
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def start(self, *args: str) -> None:
        def own_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, stdin=self.slave, stdout=self.slave, stderr=self.slave,
            env={**{k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}, "TERM": "xterm",
                 "LANG": "C.UTF-8"},  # curses takes LINES/COLUMNS over the terminal's size (pytest-xdist sets them)
            start_new_session=True,
            preexec_fn=own_terminal)

    def read(self) -> bytes:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self.master, 65536):
                self.drawn += chunk
        return self.drawn

    def shows(self, *texts: str) -> bool:
        screen = self.read()
        return all(t.encode() in screen for t in texts)

    async def wait_for(self, *texts: str, within: float = 30) -> None:
        """Until the screen has shown every text; on a timeout, what it did show."""
        try:
            await until(lambda: self.shows(*texts), within=within)
        except TimeoutError:
            raise AssertionError(f"{texts} not drawn within {within} s; drawn: {self.drawn[-4000:]!r}") from None

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    async def exit_code(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 15)

    def restored(self) -> bool:
        """The terminal's modes are those it had before (echo, line editing), and the alternate screen was left."""
        self.read()
        return termios.tcgetattr(self.slave) == self.before and b"\x1b[?1049l" in self.drawn

    def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        os.close(self.master)
        os.close(self.slave)


@contextlib.asynccontextmanager
async def site(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[Path, Daemon]]:
    """A config with a live meter, a silent (life-safety) one and two alarm rules, and its daemon running."""
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms"),
             dict(id="bus-1", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[0], timeout="300ms")]
    devices: list[dict[str, Any]] = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS),
                                     dict(id="dead-1", bus="bus-1", interval="200ms", life_safety=True, points=POINTS)]
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra=RULES)
    try:
        async with running(Daemon(load_config(path))) as daemon:
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 2
                        and daemon.pollers["dead-1"].state.state == "offline", within=30)
            yield path, daemon
    finally:
        await server.close()
        await hole.close()


async def gateway(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_live_screen_shows_devices_and_quits_with_q(tmp_path: Path, broker: Broker) -> None:
    term = Terminal(rows=40, cols=160)
    try:
        async with site(tmp_path, broker) as (path, _):
            await term.start("top", "-c", str(path))
            await term.wait_for("meter-0", "dead-1", "online", "offline", "bus-0", "2 active")
            assert term.proc is not None and term.proc.returncode is None
            term.type(b"q")
            assert await term.exit_code() == 0
            assert term.restored()
    finally:
        term.close()


async def test_ctrl_c_a_small_terminal_and_a_resize(tmp_path: Path, broker: Broker) -> None:
    term = Terminal(rows=6, cols=60)
    try:
        async with site(tmp_path, broker) as (path, _):
            await term.start("top", "-c", str(path))
            await term.wait_for("more lines")  # 6 rows: the rest is counted, not drawn
            term.drawn = b""
            term.resize(2, 5)  # smaller than anything it draws: cleared and drawn again, clipped, not a crash
            await term.wait_for("\x1b[2J", "gate\r")
            assert b"gatew" not in term.drawn  # the title cut at four columns (the fifth stays empty)
            term.resize(40, 160)
            term.drawn = b""
            await term.wait_for("meter-0", "dead-1")
            assert term.proc is not None and term.proc.returncode is None
            term.type(b"\x03")  # Ctrl-C, through the terminal's line discipline as SIGINT
            assert await term.exit_code() == 0
            assert term.restored()
    finally:
        term.close()


async def test_a_daemon_not_running_is_said_and_waited_for(tmp_path: Path, broker: Broker) -> None:
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=[],
                          devices=[], extra=RULES.split("[[alarm_classes]]")[0])
    code, out, err = await gateway("top", "--once", "-c", str(config))
    assert code == 1 and out == "" and "not running" in err
    term = Terminal()
    try:
        await term.start("top", "-c", str(config))
        await term.wait_for("not running", "retrying")
        # now it comes up: the same screen shows it, without being restarted
        async with site(tmp_path, broker):
            await term.wait_for("meter-0", "dead-1")
        term.type(b"q")
        assert await term.exit_code() == 0
        assert term.restored()
    finally:
        term.close()


async def test_once_prints_one_frame_and_json_the_snapshot(tmp_path: Path, broker: Broker) -> None:
    async with site(tmp_path, broker) as (path, daemon):
        # the three at once: each --once waits a second between its two snapshots
        (code, out, err), (json_code, json_out, json_err), refused = await asyncio.gather(
            gateway("top", "--once", "-c", str(path)), gateway("top", "--once", "--json", "-c", str(path)),
            gateway("top", "--json", "-c", str(path)))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("gateway top  test-site")
        assert any(line.startswith("process  cpu ") and " %" in line for line in lines)  # two snapshots: CPU %
        meter = next(line for line in lines if line.startswith("meter-0 "))
        dead = next(line for line in lines if line.startswith("* dead-1 "))  # * : life-safety
        assert "online" in meter.split() and "0.20 s" in meter and "offline" in dead.split()
        assert lines.index(dead) < lines.index(meter)  # problems first
        alarm_rows = [line for line in lines if "active_unack" in line]
        assert len(alarm_rows) == 2 and alarm_rows[0].startswith("LIFE") and "dead-1" in alarm_rows[0]
        assert "电表有电压" in alarm_rows[1]  # the critical one, after the life-safety one
        assert any(line.startswith("uplink   mqtt: connected") for line in lines)
        assert any(line.startswith("outbox   alarm ") for line in lines)

        assert json_code == 0, json_err
        snap: dict[str, Any] = json.loads(json_out)
        assert {d["id"] for d in snap["devices"]} == {"meter-0", "dead-1"}
        assert snap["alarms"]["active"] == 2 and snap["site"] == "test-site"
        assert daemon.pollers["meter-0"].state.polls > 0

        code, out, err = refused
        assert code == 2 and "--once" in err and out == ""


def test_lines_fit_the_screen_in_columns_and_rows() -> None:
    assert clip("电表在线 meter", 5) == "电表"  # two columns each: a third would not fit
    assert clip("abc", 0) == ""
    lines = [(f"line {i}", "") for i in range(10)]
    assert fit(lines, 4) == [*lines[:3], ("... 7 more lines (a taller terminal shows them)", "dim")]
    assert fit(lines, 0) == [] and fit(lines, 10) == lines


def test_rates_are_over_the_refresh_between_two_snapshots_and_fall_back_to_the_daemons() -> None:
    base = {"started": 1.0, "uplinks": [{"name": "mqtt", "state": "connected", "delivered_per_s": 99.0}],
            "buses": [{"id": "riser-1", "driver": "modbus_rtu", "devices": ["m"], "concurrency": 1,
                       "utilisation": 0.9}]}
    prev = {**base, "ts": 100.0, "uplinks": [{**base["uplinks"][0], "delivered": 40}],
            "buses": [{**base["buses"][0], "busy_seconds": 0.5}]}
    snap = {**base, "ts": 102.0, "uplinks": [{**base["uplinks"][0], "delivered": 100}],
            "buses": [{**base["buses"][0], "busy_seconds": 1.0}]}
    text = "\n".join(line for line, _ in frame(snap, prev))
    assert "30.0/s delivered" in text and "25.0 %" in text  # (100 - 40) / 2 s; 0.5 s busy in 2 s
    alone = "\n".join(line for line, _ in frame(snap, None))  # the first frame: the daemon's 30 s averages
    assert "99.0/s delivered" in alone and "90.0 %" in alone
    restarted = "\n".join(line for line, _ in frame(snap, {**prev, "started": 50.0}))
    assert "99.0/s delivered" in restarted  # counters of another run are not compared


def test_control_characters_in_an_error_or_an_alarm_never_reach_the_terminal() -> None:
    """A device's error or an alarm's message with a newline or an escape sequence is one clean row."""
    nasty = "line one\nline two\x1b[2J\r\u202eevil\u2028end"
    snap = {"ts": 100.0, "devices": [{"id": "m\n1", "state": "offline", "error": nasty, "interval_s": 1.0}],
            "alarms": {"active": 1, "list": [{"key": "k\x07", "source": "m\n1", "state": "active_unack",
                                              "message": nasty, "activated_at": 90.0}]}}
    lines = frame(snap)
    assert all(not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text) for text, _ in lines)
    assert sum("line one line two" in text for text, _ in lines) == 2  # the device's row and the alarm's row
    assert clip("a\nb\x1b[1mc", 10) == "a b [1mc"


ODD = st.sampled_from([1e308, -1e308, float("nan"), float("inf"), 2**70, -1, "", "x", True])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | ODD,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)
KEYS = ["site", "version", "ts", "started", "uptime_s", "clock_synced", "devices", "buses", "outbox", "uplinks",
        "alarms", "process"]
ROWS = st.lists(st.dictionaries(st.sampled_from(["id", "state", "life_safety", "interval_s", "actual_interval_s",
                                                 "polls", "source", "severity", "activated_at", "utilisation",
                                                 "delivered_per_s", "depth", "oldest_age_s", "list"]), JSON),
                max_size=3)


@given(st.dictionaries(st.sampled_from(KEYS), JSON | ROWS), st.none() | st.dictionaries(st.sampled_from(KEYS), JSON))
@example({"ts": 1e308}, None)
@example({"alarms": {"list": [{"activated_at": "x"}, {"activated_at": 1}]}}, None)
def test_any_snapshot_gives_a_screen_never_a_crash(snap: dict[str, Any], prev: dict[str, Any] | None) -> None:
    """The snapshot comes over a socket from whatever daemon answers (another release, a bug): top shows what it
    can, or says it cannot, and keeps running."""
    lines = frame(snap, prev)
    assert lines and all(isinstance(text, str) and isinstance(style, str) for text, style in lines)
    assert lines[0][0].startswith("gateway top")


async def test_a_site_of_three_hundred_devices_is_shown(tmp_path: Path, broker: Broker) -> None:
    """The snapshot of a big site is one line of over 64 KiB (some 300 bytes a device): the CLI reads it whole."""
    hole = await serve_black_holes("127.0.0.1", free_ports(2), count=2)
    buses = [dict(id=f"riser-{r}", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[r], timeout="300ms")
             for r in range(2)]
    devices = [dict(id=f"flat-{n:03d}", bus=f"riser-{n % 2}", unit=1 + n // 2, interval="1h", points=POINTS[:1])
               for n in range(300)]
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra=RULES.split("[[alarm_classes]]")[0])
    try:
        async with running(Daemon(load_config(path))):
            code, out, err = await gateway("top", "--once", "--json", "-c", str(path))
            assert code == 0, err
            snap = json.loads(out)
            assert len(json.dumps(snap, separators=(",", ":")).encode()) > 64 * 1024  # as it came over the socket
            assert len(snap["devices"]) == 300
    finally:
        await hole.close()
