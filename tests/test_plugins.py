"""Adding a protocol is one new package: a toy driver installed beside the gateway (not in drivers/) is
discovered through its entry point, and `gateway check`, `gateway config schema` and `gateway run` all
pick it up, with no edit to the gateway or to drivers/registry.py."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TOY = '''
"""A tank-level sensor that answers over nothing: enough of a protocol to plug in."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.base import BusConfig, DeviceConfig, Driver
from drivers.plugin import DriverPlugin
from gateway.core.config import Problem
from gateway.core.data import Quality, Reading, Value
from gateway.core.points import PointInfo


class ToyBus(BusConfig):
    driver: Literal["toy_wire"]
    channel: int = Field(default=1, ge=1, le=8)


class ToyDevice(DeviceConfig):
    driver: Literal["toy"] = "toy"
    level: float = Field(default=42.5, description="What the sensor reads.")

    def describe(self) -> list[PointInfo]:
        return [PointInfo("level", "float", unit="%")]


class ToyDriver(Driver):
    async def close(self) -> None:
        pass

    async def read(self, device: str) -> list[Reading]:
        return [Reading(device, "level", self.devices[device].level, "%", Quality.GOOD, 0.0)]

    async def write(self, device: str, point: str, value: Value) -> None:
        raise NotImplementedError


def validate(buses, devices):
    return [Problem(("devices", i, "level"), "a toy tank cannot be over 100 %", d.level)
            for i, d in devices if d.level > 100]


PLUGIN = DriverPlugin(name="toy", buses=(ToyBus,), device=ToyDevice, driver="toy_gateway_driver:ToyDriver",
                      validate=validate)
'''


def install_toy(where: Path) -> dict[str, str]:
    """A package and its dist-info on a path of its own: what `pip install toy-gateway-driver` would leave."""
    (where / "toy_gateway_driver.py").write_text(TOY)
    info = where / "toy_gateway_driver-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-gateway-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[community_gateway.drivers]\ntoy = toy_gateway_driver\n")
    return {**os.environ, "PYTHONPATH": f"{where}{os.pathsep}{ROOT}"}


def config(tmp: Path, level: float) -> Path:
    path = tmp / f"site-{level:g}.toml"
    path.write_text("\n".join([
        '[site]', 'id = "toy-site"', '', '[store]', f'data_dir = "{tmp / "data"}"', '', '[mqtt]', 'enabled = false', '',
        '[[buses]]', 'id = "tank-wire"', 'driver = "toy_wire"', 'channel = 2', '',
        '[[devices]]', 'id = "tank"', 'bus = "tank-wire"', 'interval = "100ms"', f'level = {level}', '',
    ]))
    return path


def gateway(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd="/")


def test_a_driver_package_outside_the_tree_plugs_in(tmp_path: Path) -> None:
    (tmp_path / "site-packages").mkdir()
    env = install_toy(tmp_path / "site-packages")
    good = config(tmp_path, 57.0)
    done = gateway(env, "check", "-c", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 bus, 1 device, 1 point" in done.stdout

    bad = config(tmp_path, 140.0)  # the plugin's own validate hook speaks, with the line
    done = gateway(env, "check", "-c", str(bad))
    assert done.returncode == 2
    line = bad.read_text().splitlines().index("level = 140.0") + 1
    assert f"{bad}:{line}: devices.0.level: a toy tank cannot be over 100 %" in done.stdout

    schema = json.loads(gateway(env, "config", "schema").stdout)
    assert "ToyBus" in schema["$defs"] and "ToyDevice" in schema["$defs"]

    run = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(good)], env=env, cwd="/",
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        tank: dict[str, object] = {}
        while time.monotonic() < deadline and not (tank.get("state") == "online" and int(str(tank["polls"])) >= 3):
            time.sleep(0.3)  # a bound on a daemon starting up, not a rate: the condition decides
            done = gateway(env, "status", "-c", str(good), "--json")
            if done.returncode == 0:
                tank = next((d for d in json.loads(done.stdout)["devices"] if d["id"] == "tank"), {})
        assert tank.get("state") == "online", f"the daemon never polled the toy device: {tank}"
        done = gateway(env, "read", "tank", "level", "-c", str(good), "--json")  # through the daemon's socket
        assert done.returncode == 0, done.stderr
        assert [(r["point"], r["value"], r["quality"]) for r in json.loads(done.stdout)] == [("level", 57.0, "good")]
    finally:
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=20)
    assert run.returncode == 0, out


def test_the_registry_names_no_protocol() -> None:
    source = (ROOT / "drivers" / "registry.py").read_text()
    words = {node.value.lower() for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
             and isinstance(node.value, str)}
    names = {node.id.lower() for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
    for protocol in ("modbus", "bacnet", "firepanel", "serial_lines"):
        assert not any(protocol in w for w in words | names), protocol


def test_a_plugin_that_fails_to_import_fails_loudly(tmp_path: Path) -> None:
    broken = tmp_path / "broken_driver.py"
    broken.write_text("import nothing_here_at_all\n")
    info = tmp_path / "broken_driver-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[community_gateway.drivers]\nbroken = broken_driver\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = gateway(env, "config", "schema")
    assert done.returncode != 0
    assert "driver plugin broken_driver failed to import" in done.stderr


@pytest.mark.parametrize("family", ["modbus", "bacnet", "firepanel"])
def test_every_in_tree_driver_is_a_plugin(family: str) -> None:
    from drivers.registry import plugins

    plugin = plugins()[family]
    assert plugin.validate is not None and plugin.bus_kinds
