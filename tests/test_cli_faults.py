"""Small CLI faults a technician trips over: options before the verb, a closed pipe, who did it under sudo."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import free_ports, running, write_config

from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.meter import METER_POINTS, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_alarms_takes_its_config_before_or_after_the_verb(tmp_path: Path) -> None:
    path = write_config(tmp_path / "site.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=[], devices=[])
    for args in (("alarms", "-c", str(path), "list", "--json"), ("alarms", "list", "-c", str(path), "--json"),
                 ("alarms", "--json", "-c", str(path), "list")):
        done = gateway(*args)
        assert "/etc/gateway" not in done.stderr, args  # never the default config when one was given
        assert "has not run yet" in done.stderr or done.returncode == 0, (args, done.stderr)


async def test_a_closed_pipe_ends_quietly_and_sudo_names_the_person_behind_it(tmp_path: Path) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    points = [{**p, "writable": True} if p["id"] == "frequency" else p for p in POINTS]
    path = write_config(tmp_path / "site.toml", data_dir=tmp_path / "data", mqtt_port=None,
                        buses=[dict(id="b", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0])],
                        devices=[dict(id="meter", bus="b", interval="200ms", points=points)])
    try:
        daemon = Daemon(load_config(path))
        async with running(daemon):
            reader = await asyncio.create_subprocess_shell(
                f"{sys.executable} -m gateway read meter -c {path} --json | head -c 10",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(reader.communicate(), 30)
            assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()

            env = {**os.environ, "SUDO_USER": "li.wei"}
            wrote = await asyncio.to_thread(gateway, "write", "meter", "frequency", "50", "-c", str(path),
                                            "--no-verify", "--json", env=env)
            assert wrote.returncode in (0, 1), wrote.stderr  # the meter may refuse; the audit is what counts
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 10)
    finally:
        await server.close()
    (entry,) = [e for e in audit if e.get("point") == "frequency"]
    assert "sudo by li.wei" in entry["actor"], entry
    assert json.dumps(entry)  # stored as plain data
