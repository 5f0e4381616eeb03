"""`gateway doctor` run by a technician, not by root: what they may not read is said, never a crashed check.

The service and the technician are users of their own, by number (nothing is added to this machine's
/etc/passwd): the service owns the data directory (0750) and its secrets (0600); a technician in the service's
group may enter the one and not read the other; one outside it may enter neither. Doctor runs in a child
process as the technician, with Debian's python3 and this venv's packages (the venv's interpreter lives under
/root, which only root may enter), and judges the service's rights for the service user it is handed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, write_config

from gateway.config import ConfigError, load_config
from gateway.doctor import Host, ServiceUser, diagnose
from simulators.meter import METER_POINTS, serve_meters

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"  # Debian's, as on a Pi: every user may run it
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
SERVICE = (61001, 61003)
"""The service user and its group."""
MEMBER = 61002
"""A technician in the service's group."""
STRANGER = 61004
"""A technician in no group of the gateway's."""
POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
NO_WEB = "\n[web]\nenabled = false\n"
FLAG = "/nonexistent/synchronized"
"""timesyncd's flag, elsewhere: the clock check is not what these tests are about."""

DOCTOR = """
import asyncio, json, site, sys
site.addsitedir(sys.argv[1])
from pathlib import Path
from gateway.core import logs
from gateway.doctor import Host, ServiceUser, diagnose
logs.configure("error", "console", stream=sys.stderr)
uid, gid, *groups = map(int, sys.argv[4:])
host = Host(service_user=ServiceUser("gateway", uid, gid, frozenset(groups)), systemd=False,
            timesync_flag=Path(sys.argv[3]))
print(json.dumps(asyncio.run(diagnose(Path(sys.argv[2]), host=host)).as_dict()))
"""


@pytest.fixture
def site() -> Iterator[Path]:
    """A directory the service and the technicians may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="gateway-site-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def service_user(*more_groups: int) -> ServiceUser:
    return ServiceUser("gateway", SERVICE[0], SERVICE[1], frozenset({SERVICE[1], *more_groups}))


async def doctor_as(uid: int, groups: list[int], config: Path, service: ServiceUser) -> dict[str, Any]:
    """The checks, by name, as ``uid`` (in ``groups``) finds them; the test's simulators answer meanwhile."""
    ids = [service.uid, service.gid, *sorted(service.groups)]
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", DOCTOR, SITE_PACKAGES, config, FLAG, *map(str, ids), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, user=uid, group=uid, extra_groups=groups,
        env={**os.environ, "HOME": "/tmp"})
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    broken = [c for c in checks.values() if "the check itself failed" in c["summary"]]
    assert not broken, broken
    return checks


def data_dir(site: Path) -> Path:
    """The service's data directory, as scripts/install.sh leaves it."""
    data = site / "data"
    data.mkdir()
    os.chown(data, *SERVICE)
    data.chmod(0o750)
    return data


async def test_a_technician_outside_the_group_is_told_to_join_it_or_use_sudo(site: Path) -> None:
    meters = await serve_meters("127.0.0.1", 0, count=1)
    try:
        buses = [dict(id="live", driver="modbus_tcp", host="127.0.0.1", port=meters.ports[0], timeout="300ms")]
        config = write_config(site / "gateway.toml", data_dir=data_dir(site), mqtt_port=None, buses=buses,
                              devices=[dict(id="meter", bus="live", points=POINTS)], extra=NO_WEB)
        config.chmod(0o644)
        checks = await doctor_as(STRANGER, [], config, service_user())
    finally:
        await meters.close()
    assert checks["config"]["status"] == "ok"
    for name in ("service", "store", "outbox", "bus:live"):
        assert checks[name]["status"] == "warn", checks[name]
        assert "run doctor as a member of group" in checks[name]["advice"] + checks[name]["summary"], checks[name]
    # whether the daemon runs (and so owns the bus) cannot be told: the bus is not probed behind its back
    assert "not probed" in checks["bus:live"]["summary"], checks["bus:live"]

    etc = site / "etc"  # as scripts/install.sh makes /etc/gateway: root's, the service's group may read
    etc.mkdir(mode=0o750)
    os.chown(etc, 0, SERVICE[1])
    hidden = Path(shutil.copy(config, etc / "gateway.toml"))
    checks = await doctor_as(STRANGER, [], hidden, service_user())
    assert checks["config"]["status"] == "warn", checks["config"]
    # the group is named as the system names it (this one has a number only)
    assert checks["config"]["advice"].endswith(f"run doctor as a member of group '{SERVICE[1]}', or with sudo")


async def test_a_password_only_the_service_reads_is_fine_and_the_broker_line_says_use_sudo(site: Path) -> None:
    secret = site / "mqtt.password"
    secret.write_text("s3cret\n")
    os.chown(secret, SERVICE[0], SERVICE[1])
    secret.chmod(0o600)
    meters = await serve_meters("127.0.0.1", 0, count=1)
    try:
        buses = [dict(id="live", driver="modbus_tcp", host="127.0.0.1", port=meters.ports[0], timeout="300ms")]
        config = write_config(site / "gateway.toml", data_dir=data_dir(site), mqtt_port=free_port(), buses=buses,
                              devices=[dict(id="meter", bus="live", points=POINTS)], extra=NO_WEB)
        config.write_text(config.read_text().replace(
            "[mqtt]\n", f'[mqtt]\nusername = "gw"\npassword_file = "{secret}"\n'))
        config.chmod(0o644)
        checks = await doctor_as(MEMBER, [SERVICE[1]], config, service_user())
    finally:
        await meters.close()
    assert checks["config"]["status"] == "ok", checks["config"]
    broker = checks["broker:mqtt"]
    assert broker["status"] == "warn" and "run doctor with sudo to test the credentials" in broker["advice"], broker
    assert checks["bus:live"]["status"] == "ok", checks["bus:live"]  # every other check still ran

    # a password the service itself cannot read is the config's failure, whoever runs doctor
    os.chown(secret, 0, 0)
    with pytest.raises(ConfigError, match="the service user 'gateway' cannot read"):
        load_config(config, reader=service_user())
    found = {r.name: r for r in (await diagnose(config, host=Host(service_user(), False, Path(FLAG)))).results}
    assert found["config"].status == "fail" and "mqtt.password_file" in " ".join(found["config"].details["problems"])


async def test_a_port_the_technician_cannot_open_is_not_probed_but_the_service_may(site: Path) -> None:
    leader, follower = os.openpty()
    try:
        port = os.ttyname(follower)
        os.chmod(port, 0o660)
        buses = [dict(id="rs485", driver="modbus_rtu", port=port, timeout="200ms")]
        config = write_config(site / "gateway.toml", data_dir=data_dir(site), mqtt_port=None, buses=buses,
                              devices=[dict(id="lift", bus="rs485", points=POINTS)], extra=NO_WEB)
        config.chmod(0o644)
        checks = await doctor_as(MEMBER, [SERVICE[1]], config, service_user(os.stat(port).st_gid))
    finally:
        os.close(leader)
        os.close(follower)
    assert checks["serial:rs485"]["status"] == "ok", checks["serial:rs485"]
    bus = checks["bus:rs485"]
    assert bus["status"] == "warn" and "run doctor with sudo to probe" in bus["advice"], bus
