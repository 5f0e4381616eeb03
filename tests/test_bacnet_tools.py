"""BACnet technician tools and config: discovery, the object list, a config block, `gateway check` lines.

Discovery by broadcast runs between two network namespaces joined by a veth pair (root only):
on loopback, broadcasts do not cross UDP ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from test_bacnet import plant, udp_port

from drivers.bacnet.config import BacnetBus
from drivers.bacnet.tools import config_block, device_objects, discover
from gateway.config import ConfigError, load_config
from gateway.config.schema import json_schema


def test_config_mistakes_point_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[site]\nid = "s"\n[mqtt]\nenabled = false\n'
        '[[buses]]\nid = "bacnet"\ndriver = "bacnet_ip"\nbind = "0.0.0.0:47808"\ninstance = 9\n'
        '[[devices]]\nid = "plant"\nbus = "bacnet"\naddress = "10.1.2.3"\ndevice_instance = 7\n'
        '[[devices.points]]\nid = "t"\nobject = "analog-inptu:1"\n'  # line 17
        '[[devices.points]]\nid = "p"\nobject = "bi:1"\nwritable = true\n'  # lines 18..21
        '[[devices]]\nid = "twin"\nbus = "bacnet"\naddress = "10.1.2.4"\ndevice_instance = 7\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:17: devices.0.points.0.object: ") and "analog-inptu" in lines[0]
    assert lines[1].startswith(f"{path}:21: devices.0.points.1.writable: binary-input objects are read-only")
    text = path.read_text(encoding="utf-8").replace("analog-inptu", "analog-input").replace("writable = true\n", "")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r":25: devices\.1\.device_instance: device 7 on bus 'bacnet' is already"):
        load_config(path)
    schema = json.loads(json_schema())
    assert "bacnet_ip" in json.dumps(schema) and "device_instance" in json.dumps(schema)


async def test_discovery_by_unicast_and_a_config_block_that_loads(tmp_path: Path) -> None:
    async with plant() as sim:
        bus = BacnetBus(id="bacnet", driver="bacnet_ip", bind=f"127.0.0.1:{udp_port()}", instance=999, timeout=0.5)
        found = await discover(bus, f"127.0.0.1:{sim.port}", 0.5)
        assert [(f.instance, f.address, f.name, f.vendor) for f in found] == [
            (1001, f"127.0.0.1:{sim.port}", "Plant Room 1001", "community-gateway simulator")]
        objects = await device_objects(bus, f"127.0.0.1:{sim.port}", None, 0.5)
        rows = {o.object: (o.name, o.value, o.units, o.states) for o in objects.objects}
        assert rows["analog-input:1"] == ("Room Temperature", 21.5, "°C", None)
        assert rows["multi-state-value:1"] == ("AHU Mode", 2, None, ["off", "auto", "manual"])
        block = config_block(bus, objects, with_bus=True)
    assert 'id = "ahu_mode"' in block and 'states = { 1 = "off", 2 = "auto", 3 = "manual" }' in block
    path = tmp_path / "gateway.toml"
    path.write_text(f'[site]\nid = "s"\n[mqtt]\nenabled = false\n\n{block}', encoding="utf-8")
    cfg = load_config(path)
    assert cfg.devices[0].point_ids() == [
        "room_temperature", "room_co2", "water_pressure", "pump_running", "fire_damper_closed", "ahu_mode",
        "valve_position"]
    assert tomllib.loads(block)["devices"][0]["cov"] is True


NS_CODE = "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"  # the plugin's CLI hook


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for netns")
def test_broadcast_discovery_between_network_namespaces() -> None:
    """Who-Is broadcast on a real subnet: two namespaces joined by a veth pair, the simulator in one."""
    tag = f"gwbn{os.getpid() % 100000}"
    gateway_ns, device_ns = f"{tag}a", f"{tag}b"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    sim: subprocess.Popen[bytes] | None = None
    try:
        ip("netns", "add", gateway_ns)
        ip("netns", "add", device_ns)
        ip("link", "add", f"{tag}x", "type", "veth", "peer", "name", f"{tag}y")
        ip("link", "set", f"{tag}x", "netns", gateway_ns)
        ip("link", "set", f"{tag}y", "netns", device_ns)
        for ns, dev, addr in ((gateway_ns, f"{tag}x", "10.201.7.1/24"), (device_ns, f"{tag}y", "10.201.7.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        sim = subprocess.Popen(["ip", "netns", "exec", device_ns, sys.executable, "-m", "simulators.bacnet",
                                "--host", "10.201.7.2/24", "--port", "47808", "--instance", "3003", "--tick", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert sim.stdout is not None and sim.stdout.readline().startswith(b"ready")
        done = subprocess.run(["ip", "netns", "exec", gateway_ns, sys.executable, "-c", NS_CODE, "bacnet",
                               "discover", "--bind", "10.201.7.1/24:47808", "--timeout", "1.5", "--json"],
                              capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr.decode()
        assert [(d["instance"], d["address"]) for d in json.loads(done.stdout)] == [(3003, "10.201.7.2")]
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        for ns in (gateway_ns, device_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
