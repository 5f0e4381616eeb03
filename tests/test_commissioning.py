"""`gateway device probe|relearn`, run as a technician runs them, against an awkward device (gaps + a read limit).

The device maps holding 0-19, 24-43 and 48-67 and takes at most 32 registers per read; the config
also lists a point at holding 21, which the device does not have. The CLI runs as a subprocess;
the simulator (and, for relearn, the daemon) run in the test's own loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port, running, until, write_config

from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.awkward import AwkwardServer, parse_behaviour, serve_awkward

BEHAVIOUR = "holding=0-19/24-43/48-67,limit=32"
READABLE = [*range(0, 20), *range(24, 44), *range(48, 68)]
GHOST = 21


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def gateway(*args: str | Path, within: float = 30.0) -> Run:
    """`gateway ARGS` in a child process, without blocking the loop the simulator and daemon run in."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *map(str, args),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@asynccontextmanager
async def awkward() -> AsyncIterator[AwkwardServer]:
    server = await serve_awkward("127.0.0.1", 0, parse_behaviour(BEHAVIOUR))
    try:
        yield server
    finally:
        await server.close()


def config(tmp: Path, port: int, *, override: str = "", ghost: bool = True, interval: str = "10s") -> Path:
    """One device on the awkward simulator; ``override`` is pasted into its [[devices]] table as printed."""
    points = [{"id": f"r{a}", "address": a} for a in READABLE]
    if ghost:
        points.insert(20, {"id": "ghost", "address": GHOST, "unit": "V"})
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None,
                        buses=[{"id": "b1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": port,
                                "timeout": "500ms"}],
                        devices=[{"id": "awk", "bus": "b1", "interval": interval, "points": points}])
    if override:
        text = path.read_text()
        path.write_text(text.replace('bus = "b1"\n', f'bus = "b1"\n{override}\n', 1))
    return path


async def test_probe_names_the_unreadable_point_and_prints_an_override_that_makes_the_map_clean(
        tmp_path: Path) -> None:
    async with awkward() as server:
        path = config(tmp_path, server.ports[0])
        text = await gateway("device", "probe", "awk", "-c", path)
        assert text.code == 0, text.err
        assert "ghost" in text.out and "holding 21" in text.out and "exception 2 (illegal data address)" in text.out
        assert "max_registers = " in text.out and 'id = "ghost"  (holding 21)' in text.out

        probed = await gateway("device", "probe", "awk", "--json", "-c", path)
        assert probed.code == 0, probed.err
        doc = probed.json()
        assert doc["learnt"] is True and doc["learnt_in_polls"] == 1 and doc["clean"] is True
        assert doc["unreadable"] == [{"point": "ghost", "table": "holding", "address": GHOST,
                                      "answer": "exception 2 (illegal data address)"}]
        assert doc["remove_points"] == [{"point": "ghost", "table": "holding", "address": GHOST}]
        limit = doc["limits"]["max_registers"]
        assert limit["configured"] == 125 and limit["learnt"] < 32 <= max(limit["refused"])
        # any limit between the largest read taken (20, the longest mapped run) and the device's own (32) is
        # clean; a limit above 20 also needs max_gap kept below the 4-register holes
        use = doc["override"]["max_registers"]
        assert 20 <= use < 32 and (use == 20 or doc["override"].get("max_gap", 16) < 4), doc["override"]
        assert doc["toml"].startswith(f"max_registers = {use}")
        assert doc["good"] == doc["readable"] == len(READABLE) and doc["points"] == len(READABLE) + 1
        for block in doc["blocks"]:  # every read of the learnt plan stays on mapped addresses, within the limit
            assert block["table"] == "holding" and block["count"] <= 32 and block["good"] == len(block["points"])
            assert set(range(block["start"], block["start"] + block["count"])) <= set(READABLE)
        assert sorted(p for b in doc["blocks"] for p in b["points"]) == sorted(f"r{a}" for a in READABLE)

        # The override pasted as printed, the unreadable point deleted: the config checks, nothing is left to learn.
        fixed = config(tmp_path, server.ports[0], override=doc["toml"], ghost=False)
        checked = await gateway("check", "-c", fixed)
        assert checked.code == 0, checked.err + checked.out
        requests = server.devices[0].stats.requests
        again = await gateway("device", "probe", "awk", "--json", "-c", fixed)
        assert again.code == 0, again.err
        clean = again.json()
        assert clean["learnt"] is False and clean["unreadable"] == [] and clean["override"] == {}
        assert clean["remove_points"] == [] and clean["toml"] == "" and clean["good"] == len(READABLE)
        assert [(b["start"], b["count"]) for b in clean["blocks"]] == [(0, 20), (24, 20), (48, 20)]
        assert server.devices[0].stats.requests - requests == 3  # one poll, three reads, none refused
        plain = await gateway("device", "probe", "awk", "-c", fixed)
        assert "nothing to learn" in plain.out and "no override needed" in plain.out

    port = free_port()  # nobody listens: the probe says why it cannot read
    gone = await gateway("device", "probe", "awk", "-c", config(tmp_path, port))
    assert gone.code == 1 and gone.out == "" and gone.err.startswith("awk: DeviceUnreachable:"), gone.err
    unknown = await gateway("device", "probe", "nope", "-c", path)
    assert unknown.code == 2 and "no device 'nope'" in unknown.err


async def test_relearn_goes_to_the_running_daemon_and_probe_leaves_its_bus_alone(tmp_path: Path) -> None:
    async with awkward() as server:
        path = config(tmp_path, server.ports[0], interval="200ms")
        alone = await gateway("device", "relearn", "awk", "-c", path)
        assert alone.code == 1 and alone.out == "" and "daemon is not running" in alone.err

        daemon = Daemon(load_config(path))
        driver: Any = daemon.drivers["awk"]
        async with running(daemon):
            await until(lambda: "ghost" in driver.plans["awk"].unreadable)
            busy = await gateway("device", "probe", "awk", "-c", path)
            assert busy.code == 1 and busy.out == "" and "daemon is running" in busy.err, busy.err

            learnt = driver.counters("awk")["learnt"]
            answer = await gateway("device", "relearn", "awk", "--json", "-c", path)
            assert answer.code == 0, answer.err
            assert answer.json() == {"ok": True, "relearned": "awk"}
            # Forgotten, then learnt again by the next poll: the same splits cost the same requests again.
            await until(lambda: driver.counters("awk")["learnt"] >= 2 * learnt)
            await until(lambda: "ghost" in driver.plans["awk"].unreadable)
            text = await gateway("device", "relearn", "awk", "-c", path)
            assert text.code == 0 and "the next poll learns again" in text.out
            unknown = await gateway("device", "relearn", "nope", "-c", path)
            assert unknown.code == 2 and "no device 'nope'" in unknown.err
