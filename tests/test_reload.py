"""Reloading the config: what a change restarts (the diff), the rule set swapped with its alarms, a bad file refused.

The diff is pure and checked change by change. The rule swap runs on the runtime alone, on times we choose. The
daemon tests reload a running daemon from its file: a file with problems changes nothing and says where they are.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, free_ports, running, until

from gateway.config import load_config
from gateway.config.schema import GatewayConfig
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.daemon import Daemon
from gateway.reload import ConfigChange, diff, mqtt_files
from rules.alarm_state import AlarmState
from rules.reconfigure import reconfigured
from rules.runtime import RulesRuntime
from simulators.meter import METER_POINTS, serve_meters

pytestmark = pytest.mark.timeout(60)
POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]
T0 = 1_767_225_600.0

FIRE = """
[[rules]]
id = "fire"
when = { event = "fire.alarm" }
clear_when = { event = "fire.reset" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }
"""
DOOR = """
[[rules]]
id = "door"
when = { event = "door.forced" }
alarm = { class = "doors", message = "door forced" }

[[alarm_classes]]
name = "doors"
escalate_after = ["30s"]
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, int | float) else f'"{value}"'


def config_text(data_dir: Path, *, ports: list[int], mqtt: str = "enabled = false", extra: str = "",
                devices: dict[str, dict[str, Any]] | None = None, store: str = "") -> str:
    """One bus per port, ``meter-i`` on ``bus-i``, every meter point; ``devices`` overrides keys per device."""
    out = [f'[site]\nid = "reload-site"\n\n[store]\ndata_dir = "{data_dir}"\n{store}\n[mqtt]\n{mqtt}\n']
    for i, port in enumerate(ports):
        out.append(f'[[buses]]\nid = "bus-{i}"\ndriver = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\n'
                   'timeout = "3s"\n')
    for i in range(len(ports)):
        device: dict[str, Any] = {"id": f"meter-{i}", "bus": f"bus-{i}", "interval": 1.0, "points": POINTS}
        device.update((devices or {}).get(device["id"], {}))
        points = device.pop("points")
        out.append("[[devices]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in device.items()))
        out += ["[[devices.points]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in p.items()) for p in points]
    return "\n".join(out) + extra


def load(tmp: Path, text: str, name: str = "gateway.toml") -> GatewayConfig:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return load_config(path)


# -- the diff -------------------------------------------------------------------------------------------------


def test_the_same_config_changes_nothing(tmp_path: Path) -> None:
    text = config_text(tmp_path / "data", ports=[1502, 1503], extra=FIRE)
    change = diff(load(tmp_path, text), load(tmp_path, text))
    assert change.empty and change.summary() == {} and change == ConfigChange()


def test_an_interval_restarts_the_poller_and_a_point_rebuilds_the_bus(tmp_path: Path) -> None:
    base = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1503]))
    slower = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1503], devices={"meter-1": {"interval": 5.0}}))
    assert diff(base, slower).summary() == {"devices_changed": ["meter-1"], "restart": ["meter-1"]}
    fewer = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1503], devices={"meter-1": {"points": POINTS[:3]}}))
    assert diff(base, fewer).summary() == {"devices_changed": ["meter-1"], "rebuild": ["bus-1"]}
    moved = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1504]))
    assert diff(base, moved).summary() == {"buses_changed": ["bus-1"], "rebuild": ["bus-1"]}
    off = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1503], devices={"meter-0": {"enabled": False}}))
    change = diff(base, off)  # no enabled device left on bus-0: its driver goes, and the rules' bus map changes
    assert change.rebuild == ("bus-0",) and change.restart == () and change.rules == ("devices",)


def test_adding_and_removing_devices_rebuilds_only_their_buses(tmp_path: Path) -> None:
    two = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1503]))
    three = load(tmp_path, config_text(tmp_path / "d", ports=[1502, 1503, 1504]))
    grown = diff(two, three)
    assert grown.devices_added == ("meter-2",) and grown.buses_added == ("bus-2",) and grown.rebuild == ("bus-2",)
    assert grown.rules == ("devices",) and not grown.restart
    shrunk = diff(three, two)
    assert shrunk.devices_removed == ("meter-2",) and shrunk.rebuild == ("bus-2",)


def test_reporting_and_privacy_restart_nothing(tmp_path: Path) -> None:
    base = load(tmp_path, config_text(tmp_path / "d", ports=[1502]))
    reported = load(tmp_path, config_text(tmp_path / "d", ports=[1502], devices={"meter-0": {"history": False}}))
    assert diff(base, reported).summary() == {"devices_changed": ["meter-0"], "reporting": ["meter-0"]}
    private = load(tmp_path, config_text(tmp_path / "d", ports=[1502], mqtt='enabled = false\nkeep_local = ["face.*"]'))
    assert diff(base, private).summary() == {"privacy": ["mqtt.keep_local"]}


def test_rules_classes_and_timezone_swap_the_rule_set(tmp_path: Path) -> None:
    base = load(tmp_path, config_text(tmp_path / "d", ports=[1502], extra=FIRE))
    more = load(tmp_path, config_text(tmp_path / "d", ports=[1502], extra=FIRE + DOOR))
    assert diff(base, more).summary() == {"rules": ["rules", "alarm_classes"]}
    zoned = load(tmp_path, config_text(tmp_path / "d", ports=[1502], extra=FIRE).replace(
        'id = "reload-site"', 'id = "reload-site"\ntimezone = "Asia/Shanghai"'))
    assert diff(base, zoned).summary() == {"rules": ["site.timezone"]}


def test_mqtt_reconnects_for_its_keys_and_for_rotated_certificates(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("one")
    tls = f'host = "broker.example"\n[mqtt.tls]\nca_file = "{ca}"'
    base = load(tmp_path, config_text(tmp_path / "d", ports=[1502], mqtt=tls))
    other = load(tmp_path, config_text(tmp_path / "d", ports=[1502], mqtt=tls.replace("broker.", "other.")))
    assert diff(base, other).summary() == {"mqtt": ["host"]}
    before = mqtt_files(base.mqtt)
    ca.write_text("two")  # rotated in place: the same config, another certificate
    after = mqtt_files(base.mqtt)
    assert before != after
    assert diff(base, base, old_files=before, new_files=after).summary() == {"mqtt": ["files"]}


def test_site_id_and_store_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    base = load(tmp_path, config_text(tmp_path / "d", ports=[1502]))
    bigger = load(tmp_path, config_text(tmp_path / "d", ports=[1502], store="max_mb = 100"))
    change = diff(base, bigger)
    assert change.refused == ("store.max_mb",)
    assert change.reason() == "restart the service to apply store.max_mb (a running daemon cannot change them)"
    renamed = load(tmp_path, config_text(tmp_path / "d", ports=[1502]).replace("reload-site", "elsewhere"))
    assert diff(base, renamed).refused == ("site.id",)
    moved = load(tmp_path, config_text(tmp_path / "elsewhere", ports=[1502], devices={"meter-0": {"interval": 2.0}}))
    assert diff(base, moved).refused == ("store.data_dir",) and diff(base, moved).restart == ("meter-0",)


def test_a_camera_restarts_when_it_or_vision_changes_and_upstream_is_privacy_too(tmp_path: Path) -> None:
    def cameras(fps: float = 5.0, upstream: str = "", vision: str = "") -> GatewayConfig:
        lobby = f'\n[[cameras]]\nid = "lobby"\nurl = "usb:0"\ndetect = ["falls"]\nfps = {fps}\n{upstream}'
        gate = '\n[[cameras]]\nid = "gate"\nurl = "usb:1"\ndetect = ["plates"]\n'
        return load(tmp_path, config_text(tmp_path / "d", ports=[], extra=lobby + gate + vision))

    base = cameras()
    assert diff(base, cameras(fps=2.0)).summary() == {"cameras_changed": ["lobby"]}
    assert diff(base, cameras(upstream="upstream = true\n")).summary() == {
        "privacy": ["cameras.upstream"], "cameras_changed": ["lobby"]}
    assert diff(base, cameras(vision='\n[vision.falls]\nhold = "8s"\n')).summary() == {
        "cameras_changed": ["gate", "lobby"]}


# -- the rule set swapped ------------------------------------------------------------------------------------


def runtime(tmp_path: Path, extra: str) -> tuple[RulesRuntime, GatewayConfig]:
    cfg = load(tmp_path, config_text(tmp_path / "d", ports=[1502], extra=extra))
    return RulesRuntime.from_config(cfg, started=T0), cfg


def test_a_swap_keeps_an_acknowledged_alarm_and_the_rule_that_owns_it(tmp_path: Path) -> None:
    old, _ = runtime(tmp_path, FIRE)
    old.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "2F"}, ts=T0), T0)
    old.command("acknowledge", "fire/2F", "guard", T0 + 5, note="on my way")
    record = old.book.export_one("fire/2F")
    _, cfg = runtime(tmp_path, FIRE + DOOR)
    new = reconfigured(old, cfg, now=T0 + 10)
    assert new.book.export_one("fire/2F") == record  # every field: state, who, when, the escalation clock
    assert new.book.get("fire/2F").state is AlarmState.ACTIVE_ACK  # type: ignore[union-attr]
    assert not [a for a in new.tick(T0 + 400) if getattr(a, "transition", None)]  # acknowledged: no escalation
    cleared = [a.transition for a in new.event(Event("fire.reset", "panel", Priority.ALARM, {}, ts=T0 + 500),
                                                T0 + 500) if getattr(a, "transition", None)]
    assert [(t.action, t.after) for t in cleared] == [("clear", AlarmState.LATCHED)]  # fire latches
    assert cleared[0].seq == record["last_seq"] + 1  # the trail's sequence goes on: no id is reused
    new.event(Event("door.forced", "door-1", Priority.EVENT, {}, ts=T0 + 600), T0 + 600)
    assert new.book.get("door").cls.name == "doors"  # type: ignore[union-attr]


def test_a_changed_rule_still_clears_its_alarm_and_a_class_gone_is_kept(tmp_path: Path) -> None:
    classes = '\n[[alarm_classes]]\nname = "blaze"\nlatching = false\n'
    old, _ = runtime(tmp_path, FIRE.replace('class = "fire"', 'class = "blaze"') + classes)
    old.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": "3F"}, ts=T0), T0)
    changed = FIRE.replace("Fire in zone", "FIRE in zone")  # another message, another class: a changed rule
    _, cfg = runtime(tmp_path, changed)
    new = reconfigured(old, cfg, now=T0 + 1)
    alarm = new.book.get("fire/3F")
    assert alarm is not None and alarm.state is AlarmState.ACTIVE_UNACK and alarm.cls.name == "blaze"
    out = new.event(Event("fire.reset", "panel", Priority.ALARM, {}, ts=T0 + 2), T0 + 2)
    assert [(a.transition.action, a.transition.after) for a in out if getattr(a, "transition", None)] == [
        ("clear", AlarmState.CLEARED_UNACK)]  # the rule that changed owns it still; "blaze" did not latch


def test_an_unchanged_rule_keeps_its_pending_for(tmp_path: Path) -> None:
    slow = '\n[[rules]]\nid = "hot"\nwhen = { point = "meter-0.frequency", above = 50.5 }\nfor = "10s"\n' \
           'alarm = { class = "equipment", message = "too fast" }\n'
    old, _ = runtime(tmp_path, slow)
    old.readings("meter-0", [Reading("meter-0", "frequency", 51.0, "Hz", Quality.GOOD, T0)], T0)
    _, cfg = runtime(tmp_path, slow + DOOR)
    new = reconfigured(old, cfg, now=T0 + 5)
    assert new.next_wakeup() == T0 + 10  # the for began before the swap and ends when it would have
    raised = [a.transition.action for a in new.tick(T0 + 10) if getattr(a, "transition", None)]
    assert raised == ["raise"]


# -- the daemon, reloading its file ---------------------------------------------------------------------------


def stored(db: Path, query: str) -> list[Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(query).fetchall()


async def test_a_bad_file_changes_nothing_and_says_where(tmp_path: Path) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    path = tmp_path / "gateway.toml"
    good = config_text(tmp_path / "data", ports=server.ports, devices={"meter-0": {"interval": 0.2},
                                                                         "meter-1": {"interval": 0.2}})
    path.write_text(good)
    try:
        daemon = Daemon(load_config(path), config_hash="first", config_path=path)
        async with running(daemon):
            await until(lambda: all(p.state.polls >= 2 for p in daemon.pollers.values()))
            cfg, pollers, drivers = daemon.cfg, dict(daemon.pollers), dict(daemon.drivers)
            bad = good.replace("interval = 0.2", "intervall = 0.2", 1).replace("port = ", "port = 9", 1)
            path.write_text(bad)
            answer = await daemon.reload("test")
            assert answer["applied"] is False and answer["config"] == "first"
            problems = answer["problems"]
            assert len(problems) == 2, problems
            assert any(re.fullmatch(rf"{re.escape(str(path))}:\d+: buses\.0\.port: .*65535.*", p) for p in problems)
            assert any(re.fullmatch(rf'{re.escape(str(path))}:\d+: devices\.0\.intervall: unknown key "intervall";'
                                    r' did you mean "interval"\?', p) for p in problems), problems
            path.write_text(good.replace('data_dir = "', 'max_mb = 99\ndata_dir = "'))
            refused = await daemon.reload("test")
            assert refused["applied"] is False and "restart the service to apply store.max_mb" in refused["reason"]
            assert daemon.cfg is cfg and daemon.config_hash == "first"
            assert daemon.pollers == pollers and daemon.drivers == drivers  # the very same objects
            assert all(daemon.pollers[i] is p for i, p in pollers.items())
            before = {i: p.state.polls for i, p in pollers.items()}
            await until(lambda: all(p.state.polls > before[i] for i, p in pollers.items()))  # still polling
            path.write_text(good)
            same = await daemon.reload("test")  # the file as it was: nothing to do, but a different hash
            assert same["applied"] is True and same["changed"] == {} and daemon.config_hash == same["config"]
            again = await daemon.reload("test")
            assert again["changed"] == {} and again["config"] == same["config"]
        db = tmp_path / "data" / "gateway.db"
        kinds = [(k, json_data) for k, json_data in stored(db, "SELECT kind, payload FROM events ORDER BY rowid")
                 if k.startswith("config.")]
        assert [k for k, _ in kinds] == ["config.rejected", "config.rejected", "config.applied"]
        results = [r for (r,) in stored(db, "SELECT data FROM audit WHERE action = 'reload' ORDER BY rowid")]
        assert ['"refused"' in r for r in results] == [True, True, False, False]
        assert all('"actor": "test"' in r or '"actor":"test"' in r for r in results)
    finally:
        await server.close()


async def gateway(*args: str | Path) -> tuple[int, str, str]:
    """`gateway ARGS` in a child process, while the daemon runs in this loop."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *map(str, args),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_gateway_reload_and_sighup_apply_the_changed_file(tmp_path: Path) -> None:
    server = await serve_meters("127.0.0.1", free_ports(2), count=2)
    path = tmp_path / "gateway.toml"
    fast = {"meter-0": {"interval": 0.2}, "meter-1": {"interval": 0.2}}
    path.write_text(config_text(tmp_path / "data", ports=server.ports, devices=fast))
    try:
        daemon = Daemon(load_config(path), config_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
                        config_path=path)
        async with running(daemon):
            await until(lambda: (tmp_path / "data" / "control.sock").exists())
            steady = daemon.pollers["meter-0"]
            path.write_text(config_text(tmp_path / "data", ports=server.ports,
                                        devices={**fast, "meter-1": {"interval": 0.3}}))
            code, out, err = await gateway("reload", "-c", path)
            assert code == 0, err
            assert "config applied" in out and "pollers restarted: meter-1" in out, out
            assert daemon.pollers["meter-1"].device.interval == 0.3 and daemon.pollers["meter-0"] is steady

            path.write_text(path.read_text().replace("interval = 0.3", "interval = 0.3\nxyzzy = 1"))
            code, out, err = await gateway("reload", "-c", path, "--json")
            assert code == 1
            answer = json.loads(out)
            assert answer["applied"] is False and len(answer["problems"]) == 1
            assert re.fullmatch(rf'{re.escape(str(path))}:\d+: devices\.1\.xyzzy: unknown key "xyzzy"',
                                answer["problems"][0]), answer
            code, _, err = await gateway("reload", "-c", path)
            assert code == 1 and "config refused, nothing changed" in err and "devices.1.xyzzy" in err, err

            path.write_text(config_text(tmp_path / "data", ports=server.ports, devices={
                "meter-0": {"interval": 0.25}, "meter-1": {"interval": 0.3}}))
            os.kill(os.getpid(), signal.SIGHUP)  # what `systemctl reload gateway` sends
            wanted = hashlib.sha256(path.read_bytes()).hexdigest()
            await until(lambda: daemon.config_hash == wanted)
            assert daemon.pollers["meter-0"].device.interval == 0.25 and daemon.pollers["meter-0"] is not steady
            code, out, _ = await gateway("audit", "-c", path, "--json")
            assert code == 0
            reloads = [(e["actor"], e["result"]) for e in json.loads(out) if e["action"] == "reload"]
            local = f"local:{getpass.getuser()} ({getpass.getuser()})"
            assert sorted(reloads) == sorted([(local, "applied"), (local, "refused"), (local, "refused"),
                                              ("signal:SIGHUP", "applied")]), reloads
        code, _, err = await gateway("reload", "-c", path)
        assert code == 1 and "not running" in err
    finally:
        await server.close()


async def test_mqtt_and_commands_changes_rebuild_the_uplink_and_keep_or_drop_the_platform(
        tmp_path: Path, broker: Broker) -> None:
    path = tmp_path / "gateway.toml"
    mqtt = f'host = "127.0.0.1"\nport = {broker.port}\nreconnect_min = "200ms"\nkeepalive = {{}}\n'

    def write(keepalive: int, commands: str) -> None:
        path.write_text(config_text(tmp_path / "data", ports=[], mqtt=mqtt.format(keepalive), extra=commands))

    write(30, '\n[commands]\nenabled = true\nallow = ["status"]\n')
    daemon = Daemon(load_config(path), config_path=path)
    async with running(daemon):
        await until(lambda: daemon.uplink is not None and daemon.uplink.status.state == "connected")
        platform, uplink = daemon.platform, daemon.uplink
        assert platform is not None
        write(30, '\n[commands]\nenabled = true\nallow = ["status", "values"]\n')
        answer = await daemon.reload("test")
        assert answer["changed"] == {"commands": ["allow"]}
        assert daemon.platform is platform and daemon.uplink is uplink and platform.rules.allow == ["status", "values"]
        write(45, '\n[commands]\nenabled = true\nallow = ["status", "values"]\n')
        assert (await daemon.reload("test"))["changed"] == {"mqtt": ["keepalive"]}
        assert daemon.platform is platform and daemon.uplink is not uplink  # commands under way go on
        assert daemon.uplink is not None and daemon.uplink.config.keepalive == 45
        await until(lambda: daemon.uplink is not None and daemon.uplink.status.state == "connected")
        write(45, "")
        assert (await daemon.reload("test"))["changed"] == {"commands": ["allow", "enabled"]}
        assert daemon.platform is None and "commands" not in daemon.supervisor.tasks
        path.write_text(path.read_text().replace("[mqtt]\n", "[mqtt]\nenabled = false\n"))
        assert (await daemon.reload("test"))["changed"] == {"mqtt": ["enabled"]}
        assert daemon.uplink is None and "uplink" not in daemon.supervisor.tasks


async def test_two_reloads_at_once_never_interleave(tmp_path: Path) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(tmp_path / "data", ports=server.ports))
    try:
        daemon = Daemon(load_config(path), config_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
                        config_path=path)
        async with running(daemon):
            first = daemon.pollers["meter-0"]
            path.write_text(config_text(tmp_path / "data", ports=server.ports, devices={"meter-0": {"interval": 2.0}}))
            answers = await asyncio.gather(*(daemon.reload(f"asker-{n}") for n in range(3)))
            assert [a["changed"] for a in answers] == [{"devices_changed": ["meter-0"], "restart": ["meter-0"]}, {},
                                                       {}]  # the later ones found the change already applied
            assert daemon.pollers["meter-0"] is not first and daemon.pollers["meter-0"].device.interval == 2.0
            assert list(daemon.supervisor.tasks).count("device:meter-0") == 1
            stopping = asyncio.ensure_future(daemon.reload("late"))
            daemon.stop()
        late = await stopping  # asked just as the daemon stops: refused, never half-applied behind the shutdown
        assert late["applied"] is False and late["reason"] == "the daemon is stopping"
    finally:
        await server.close()
