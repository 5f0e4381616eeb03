"""Platform commands over a real Mosquitto: the round trip, the layers a remote write passes, idempotency, a live
fire alarm acknowledged from the platform, MQTT 5, a restart between execution and result, a flood, a broker restart.

Devices are simulators on real sockets (Modbus TCP meters, an awkward slow device, a fire panel on a pty pair), and
every write a simulated device takes on the wire is recorded (``WireWrites``), so "refused" is proved at the
register, not only by the answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from conftest import Broker, Collector, free_ports, running, until, write_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from wiring import WireWrites

from gateway.config import load_config
from gateway.core.timing import ManualClock
from gateway.daemon import Daemon, data_path
from gateway.remote.service import LANE_DEPTH
from gateway.store import Store
from simulators.awkward import AwkwardDevice, serve_awkward
from simulators.firepanel import FirePanelSimulator
from simulators.meter import METER_POINTS, MeterServer, serve_meters

SITE = "test-site"
ROOT = f"community/{SITE}"
pytestmark = pytest.mark.timeout(90)
"""Modbus function codes that write: single coil, single register, multiple coils, multiple registers."""


# -- helpers -------------------------------------------------------------------------------------------------------

def _points(life_safety: bool = False) -> list[dict[str, Any]]:
    points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]
    for p in points:
        if p["id"] == "relay_closed":
            p.update(writable=True, remote=True)  # refused anyway on a life-safety device
        if p["id"] == "status":
            p.update(writable=True, remote="life_safety" if life_safety else True, min=0, max=10)
        if p["id"] == "voltage_a":
            p.update(writable=True)  # writable locally, not remotely
    return points


def config(tmp: Path, ports: list[int], mqtt_port: int, commands: str = "", *, life_safety: Iterable[int] = (),
           interval: str = "200ms", protocol: str | None = None, more: str = "",
           buses: Iterable[dict[str, Any]] = (), devices: Iterable[dict[str, Any]] = ()) -> Path:
    """Meters ``meter-<i>`` on ``bus-<i>`` (those in ``life_safety`` are life-safety devices), any more buses and
    devices, the ``[commands]`` section and ``more`` (rules) after them."""
    safe = set(life_safety)
    all_buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
                 for i, p in enumerate(ports)] + list(buses)
    all_devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval=interval, life_safety=i in safe or None,
                        points=_points(i in safe)) for i in range(len(ports))] + list(devices)
    extra = commands or '[commands]\nenabled = true\nallow = ["read", "write", "alarm", "status", "birth"]\n'
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=all_buses,
                        devices=all_devices)
    text = path.read_text(encoding="utf-8")
    if protocol is not None:
        text = text.replace("[mqtt]\n", f'[mqtt]\nprotocol = "{protocol}"\n', 1)
    path.write_text(text + "\n" + extra + "\n" + more, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def meters(count: int = 1) -> AsyncIterator[MeterServer]:
    server = await serve_meters("127.0.0.1", free_ports(count), count=count, tick_interval=3600)
    try:
        yield server
    finally:
        await server.close()


def text(rid: str, cmd: str, *, ttl: float = 30.0, actor: str = "guard.wang", **fields: Any) -> str:
    """A request's JSON text (what a signer signs)."""
    return orjson.dumps({"v": 1, "id": rid, "expires_at": time.time() + ttl, "actor": actor, "cmd": cmd,
                         **fields}).decode()


def request(rid: str, cmd: str, *, ttl: float = 30.0, actor: str = "guard.wang", **fields: Any) -> bytes:
    return text(rid, cmd, ttl=ttl, actor=actor, **fields).encode()


class Signer:
    """An Ed25519 key pair made for the test; ``public`` goes into ``[commands] public_keys``."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.private = Ed25519PrivateKey.generate()

    @property
    def public(self) -> str:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, signed: str, *, key_id: str | None = None, over: str | None = None) -> bytes:
        """The signed form of ``signed``; ``over``: the text the signature was really made over (tampering)."""
        sig = self.private.sign((signed if over is None else over).encode())
        return orjson.dumps({"v": 1, "signed": signed, "key": key_id or self.key_id,
                             "sig": base64.b64encode(sig).decode()})


def answers(collector: Collector, rid: str, topic: str = f"{ROOT}/cmd/res") -> list[dict[str, Any]]:
    return [m for t, m in collector.messages if t == topic and m.get("req") == rid]


def results(collector: Collector) -> dict[str, dict[str, Any]]:
    """The latest result for each request id on cmd/res."""
    return {m["req"]: m for t, m in collector.messages if t == f"{ROOT}/cmd/res"}


def births(collector: Collector) -> int:
    """Sessions the gateway has announced (its highest bdseq online): a retained birth seen again is not new."""
    return max((m["bdseq"] for t, m in collector.messages if t == f"{ROOT}/status" and m.get("state") == "online"),
               default=0)


@contextlib.asynccontextmanager
async def subscribed(port: int, topic: str) -> AsyncIterator[Collector]:
    collector = Collector(port, topic)
    await collector.start()
    try:
        yield collector
    finally:
        await collector.stop()


async def send(port: int, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="platform") as client:
        for payload in payloads:
            await client.publish(f"{ROOT}/cmd/req", payload, qos=1)


async def cli(config_path: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, "-c", str(config_path),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


# -- the round trip ------------------------------------------------------------------------------------------------

async def test_a_remote_write_is_checked_executed_read_back_and_answered(tmp_path: Path, broker: Broker,
                                                                         collector: Collector) -> None:
    async with meters() as server:
        daemon = Daemon(load_config(config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            await collector.wait_for(lambda: any(t.endswith("/status") for t, _ in collector.messages))
            await send(broker.port, request("w-1", "write", device="meter-0", point="relay_closed", value=True),
                       request("r-1", "read", device="meter-0", point="relay_closed"),
                       request("s-1", "status"))
            await collector.wait_for(lambda: {"w-1", "r-1", "s-1"} <= set(results(collector)))
            got = results(collector)
            assert got["w-1"]["status"] == "ok" and got["w-1"]["result"]["result"] == "verified", got["w-1"]
            assert server.meters[0].context.getValues(1, 0, 1) == [True]
            assert got["r-1"]["result"]["readings"][0]["value"] is True
            assert got["s-1"]["status"] == "ok" and set(got["s-1"]["result"]) >= {"devices", "uplink", "outbox"}
            # the same request again (a QoS 1 redelivery): answered, not executed
            server.meters[0].context.setValues(1, 0, [False])
            await send(broker.port, request("w-1", "write", device="meter-0", point="relay_closed", value=True))
            await collector.wait_for(lambda: len(answers(collector, "w-1")) == 2)
            dup = answers(collector, "w-1")[-1]
            assert dup["status"] == "duplicate" and dup["original"] == "ok"  # answered from the ledger, in its lane:
            assert server.meters[0].context.getValues(1, 0, 1) == [False]  # nothing after it writes: never twice
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
    commands = [e for e in audit if e["action"] == "command"]
    assert {e["req"] for e in commands} == {"w-1", "r-1", "s-1"}
    assert all(e["actor"] == "mqtt:unsigned/guard.wang" for e in commands)


# -- a remote write refused for each reason --------------------------------------------------------------------

def _commands(allow: str, signer: Signer) -> str:
    return (f'[commands]\nenabled = true\nallow = {allow}\nmax_ttl = "5m"\n'
            f'public_keys = {{ {signer.key_id} = "{signer.public}" }}\n')


async def test_a_remote_write_is_refused_for_each_reason_audited_and_only_what_is_allowed_reaches_a_device(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    ops, stranger = Signer("ops"), Signer("ops")  # the stranger's key claims the site's key id
    status: dict[str, Any] = {"device": "meter-0", "point": "status"}
    signed_text = text("tampered-1", "write", **status, value=3)
    async with meters(2) as server:
        wires = [WireWrites(m.context) for m in server.meters]
        # writes not in the allow list: refused however well signed
        path = config(tmp_path, server.ports, broker.port, _commands('["read", "status"]', ops), life_safety={1})
        async with running(Daemon(load_config(path))):
            await collector.wait_for(lambda: births(collector) >= 1)
            await send(broker.port, ops.sign(text("deny-1", "write", **status, value=3)))
            await collector.wait_for(lambda: "deny-1" in results(collector))
        assert [w.seen for w in wires] == [[], []]

        path = config(tmp_path, server.ports, broker.port, _commands('["read", "write", "status"]', ops),
                      life_safety={1})
        cases: dict[str, tuple[bytes, str, str]] = {  # id -> (payload, status, reason)
            "ok-1": (ops.sign(text("ok-1", "write", **status, value=7)), "ok", ""),
            "ro-1": (ops.sign(text("ro-1", "write", device="meter-0", point="current_a", value=1)), "rejected",
                     "meter-0.current_a is not writable"),
            "local-1": (ops.sign(text("local-1", "write", device="meter-0", point="voltage_a", value=231)),
                        "rejected", "not open to remote writes"),
            "range-1": (ops.sign(text("range-1", "write", **status, value=11)), "rejected", "above its maximum 10"),
            "late-1": (ops.sign(text("late-1", "write", **status, value=3, ttl=-5)), "expired", "s ago"),
            "far-1": (ops.sign(text("far-1", "write", **status, value=3, ttl=360)), "expired", "max_ttl"),
            "plain-1": (request("plain-1", "write", **status, value=3), "rejected", "unsigned"),
            "forged-1": (stranger.sign(text("forged-1", "write", **status, value=3)), "rejected", "bad signature"),
            "tampered-1": (ops.sign(signed_text.replace('"value":3', '"value":4'), over=signed_text), "rejected",
                           "bad signature"),
            "nokey-1": (ops.sign(text("nokey-1", "write", **status, value=3), key_id="nobody"), "rejected",
                        "unknown key"),
            "safety-1": (ops.sign(text("safety-1", "write", device="meter-1", point="relay_closed", value=False)),
                         "rejected", "life-safety device"),
            "safety-ok": (ops.sign(text("safety-ok", "write", device="meter-1", point="status", value=5)), "ok", ""),
        }
        daemon = Daemon(load_config(path))
        async with running(daemon):
            await collector.wait_for(lambda: births(collector) >= 2)
            await send(broker.port, *(payload for payload, _, _ in cases.values()))
            await collector.wait_for(lambda: set(cases) <= set(results(collector)))
            first_ok = results(collector)["ok-1"]
            # a redelivery of the write that ran, after the device's value moved on
            server.meters[0].set_point("status", 1)
            await send(broker.port, cases["ok-1"][0])
            await collector.wait_for(lambda: len(answers(collector, "ok-1")) == 2)
            await daemon.recorder.flush()
        got = results(collector)

    assert first_ok["status"] == "ok" and first_ok["result"]["result"] == "verified"
    assert first_ok["result"]["read_back"] == 7
    assert got["safety-ok"]["status"] == "ok" and got["safety-ok"]["result"]["read_back"] == 5
    assert got["deny-1"]["status"] == "rejected" and "'write' is not allowed" in got["deny-1"]["error"]
    for rid, (_, expected, reason) in cases.items():
        if rid != "ok-1":
            assert got[rid]["status"] == expected and reason in got[rid].get("error", ""), (rid, got[rid])
    assert got["ok-1"]["status"] == "duplicate" and got["ok-1"]["original"] == "ok"
    # the registers: each allowed write once, nothing refused, no second write for the duplicate
    assert wires[0].seen == [(16, 22, [7])] and wires[1].seen == [(16, 22, [5])]
    assert server.meters[0].get_point("status") == 1 and server.meters[1].get_point("relay_closed") is True

    # all of it audited, and shown by `gateway audit`
    code, shown = await cli(path, "audit", "-n", "200", "--json")
    assert code == 0
    audited = [e for e in json.loads(shown) if e["action"] == "command"]
    assert sorted(e["req"] for e in audited) == sorted([*cases, "deny-1", "ok-1"])
    by_id = {e["req"]: e for e in audited}  # the last of each: ok-1's duplicate
    unverified = {"plain-1", "forged-1", "tampered-1", "nokey-1"}
    for rid, entry in by_id.items():
        assert entry["actor"] == ("mqtt:unverified/guard.wang" if rid in unverified else "mqtt:ops/guard.wang")
        assert entry["result"] == got[rid]["status"] and entry.get("error") == got[rid].get("error"), rid
        assert entry["target"].startswith(("meter-0.", "meter-1.")), entry
    assert by_id["range-1"]["target"] == "meter-0.status" and by_id["range-1"]["value"] == 11
    code, table = await cli(path, "audit", "-n", "200")
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == ["time", "who", "action", "target", "value", "result", "detail"]
    for rid in [*cases, "deny-1"]:
        (line,) = [x for x in lines if f"write {rid}" in x and "duplicate" not in x]
        entry = next(e for e in audited if e["req"] == rid)
        for part in ("command", entry["actor"], entry["target"], entry["result"], entry.get("error", "")[:40]):
            assert part in line, (part, line)
    assert any("write ok-1" in x and "duplicate" in x for x in lines)


# -- the platform acknowledges a live fire alarm ------------------------------------------------------------------

FIRE_RULES = """
[[alarm_classes]]
name = "fire"
latching = true
escalate_after = ["30s", "120s"]
tiers = ["property", "community", "fire_brigade"]

[[rules]]
id = "fire-alarm"
when = { event = "fire.alarm", source = "panel" }
clear_when = { event = "fire.reset", source = "panel" }
alarm = { class = "fire", severity = "critical", message = "Fire in zone {zone}", instance = "{zone}" }
"""


def _trail(collector: Collector, key: str) -> list[dict[str, Any]]:
    return [m for t, m in collector.messages
            if t.startswith(f"{ROOT}/alarm/") and m.get("kind", "").startswith("alarm.") and m["data"]["key"] == key]


async def test_the_platform_acknowledges_a_live_fire_alarm_and_its_escalation_stops(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    """Time is a ManualClock (wall clock = now at the start): escalation deadlines pass when the test says so."""
    acked, left = "fire-alarm/04", "fire-alarm/05"  # the second is not acknowledged: it shows what time does
    async with FirePanelSimulator("gst_cn", heartbeat=0) as panel:
        path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port,
                            buses=[{"id": "fire-port", "driver": "serial_lines", "port": panel.port}],
                            devices=[{"id": "panel", "bus": "fire-port", "format": "gst_cn", "heartbeat": "0s"}])
        path.write_text(path.read_text(encoding="utf-8") + "\n[commands]\nenabled = true\n" + FIRE_RULES,
                        encoding="utf-8")
        clock = ManualClock(epoch=time.time())
        daemon = Daemon(load_config(path), clock=clock)
        assert daemon.automation is not None
        automation = daemon.automation
        async with running(daemon):
            await collector.wait_for(lambda: births(collector) >= 1)
            driver = daemon.drivers["panel"]
            await until(lambda: getattr(driver, "listening", False))
            await panel.send("fire", loop=1, address=23, zone=4)
            await panel.send("fire", loop=1, address=24, zone=5)
            await collector.wait_for(lambda: all(_trail(collector, k) for k in (acked, left)))
            await clock.advance(31)  # the first deadline: both go to the community tier
            await collector.wait_for(lambda: all(any(m["data"]["action"] == "escalate" for m in _trail(collector, k))
                                                 for k in (acked, left)))

            await send(broker.port, request("ack-1", "alarm", actor="guard.li", ttl=200, action="acknowledge",
                                            key=acked, note="guard on the way"))
            await collector.wait_for(lambda: "ack-1" in results(collector))
            await collector.wait_for(lambda: any(m["data"]["action"] == "acknowledge"
                                                 for m in _trail(collector, acked)))
            await clock.advance(600)  # far past the second deadline (120 s)
            await until(lambda: any(m["data"]["action"] == "escalate" and m["data"]["level"] == 2
                                    for m in _trail(collector, left)))
            code, listed = await cli(path, "alarms", "list", "--json")
            code_text, table = await cli(path, "alarms", "list")
            await daemon.recorder.flush()
            stored = await daemon.store.run(lambda: list(daemon.store.store.events_since()))
            book = automation.book.get(acked)
            assert book is not None and book.next_deadline is None  # nothing left to escalate it

    result = results(collector)["ack-1"]
    assert result["status"] == "ok" and result["result"]["transitions"] == ["acknowledge"], result
    trail = _trail(collector, acked)
    assert [m["data"]["action"] for m in trail] == ["raise", "escalate", "acknowledge"]
    ack = trail[-1]
    assert ack["data"]["who"] == "mqtt:unsigned/guard.li" and ack["data"]["detail"]["note"] == "guard on the way"
    assert [(m["data"]["action"], m["data"]["level"]) for m in _trail(collector, left)] == [
        ("raise", 0), ("escalate", 1), ("escalate", 2)]
    # the store holds every transition there was: the acknowledged alarm never reached the fire brigade
    escalations = [(e["data"]["key"], e["data"]["level"], e["data"]["tier"]) for e in stored
                   if e["kind"] == "alarm.escalate"]
    assert sorted(escalations) == [(acked, 1, "community"), (left, 1, "community"), (left, 2, "fire_brigade")]
    assert code == 0 and code_text == 0
    by_key = {a["key"]: a for a in json.loads(listed)}
    assert by_key[acked]["acknowledged_by"] == "mqtt:unsigned/guard.li" and by_key[acked]["level"] == 1
    assert by_key[left]["acknowledged_by"] in (None, "") and by_key[left]["level"] == 2
    (row,) = [x for x in table.splitlines() if x.startswith(acked)]
    assert "mqtt:unsigned/guard.li" in row


# -- MQTT 5 --------------------------------------------------------------------------------------------------------

def _v5(reply_to: str | None = None, correlation: bytes | None = None, expiry: int | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if reply_to is not None:
        props.ResponseTopic = reply_to
    if correlation is not None:
        props.CorrelationData = correlation
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    return props


async def test_mqtt5_response_topic_correlation_and_message_expiry(tmp_path: Path, broker: Broker,
                                                                   collector: Collector) -> None:
    slow = AwkwardDevice()
    slow_wire = WireWrites(slow.context)
    got: list[tuple[str, dict[str, Any], bytes | None]] = []
    async with meters() as server, await serve_awkward("127.0.0.1", 0, slow) as awkward:
        path = config(tmp_path, server.ports, broker.port, protocol="5",
                      commands='[commands]\nenabled = true\nallow = ["read", "write", "status"]\n',
                      buses=[dict(id="bus-slow", driver="modbus_tcp", host="127.0.0.1", port=awkward.ports[0],
                                  timeout="5s")],
                      devices=[dict(id="slow-0", bus="bus-slow", interval="1h", points=[
                          dict(id="setpoint", table="holding", address=1, type="uint16", writable=True, remote=True,
                               min=0, max=100)])])
        daemon = Daemon(load_config(path))
        async with running(daemon), aiomqtt.Client("127.0.0.1", broker.port, identifier="platform5",
                                                   protocol=aiomqtt.ProtocolVersion.V5) as platform:
            await platform.subscribe(f"{ROOT}/cmd/res/#", qos=1)
            await platform.subscribe("elsewhere/#", qos=1)

            async def listen() -> None:
                async for message in platform.messages:
                    correlation = getattr(message.properties, "CorrelationData", None)
                    got.append((str(message.topic), json.loads(bytes(message.payload)),  # type: ignore[arg-type, unused-ignore]
                                bytes(correlation) if correlation is not None else None))

            listener = asyncio.create_task(listen())
            try:
                await collector.wait_for(lambda: births(collector) >= 1)
                req = f"{ROOT}/cmd/req"
                await platform.publish(req, request("m5-1", "status"), qos=1,
                                       properties=_v5(f"{ROOT}/cmd/res/guard-7", b"\x00corr-1\xff"))
                await platform.publish(req, request("m5-2", "status"), qos=1,
                                       properties=_v5("elsewhere/inbox", b"corr-2"))
                await platform.publish(req, request("m5-3", "status"), qos=1, properties=_v5(req, b"corr-3"))
                await platform.publish(req, request("m5-4", "status"), qos=1)
                await until(lambda: {"m5-1", "m5-2", "m5-3", "m5-4"} <= {m["req"] for _, m, _ in got})

                # expiry: a write waits in its device's lane behind a slow one; the broker said it has 1 s to live
                await until(lambda: daemon.pollers["slow-0"].state.polls >= 1)
                slow.configure(delay=1.0)  # each request answered after 1 s: a write and its read-back >= 2 s
                await platform.publish(req, request("m5-slow", "write", device="slow-0", point="setpoint", value=5),
                                       qos=1)
                await platform.publish(req, request("m5-gone", "write", device="slow-0", point="setpoint", value=9),
                                       qos=1, properties=_v5(expiry=1))
                await platform.publish(req, request("m5-kept", "write", device="slow-0", point="setpoint", value=7),
                                       qos=1, properties=_v5(expiry=120))
                await until(lambda: {"m5-slow", "m5-gone", "m5-kept"} <= {m["req"] for _, m, _ in got}, within=30)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    by_id = {m["req"]: (topic, m, corr) for topic, m, corr in got}
    assert by_id["m5-1"][0] == f"{ROOT}/cmd/res/guard-7" and by_id["m5-1"][2] == b"\x00corr-1\xff"
    assert by_id["m5-1"][1]["status"] == "ok" and "_mqtt5" not in by_id["m5-1"][1]
    assert by_id["m5-2"][0] == f"{ROOT}/cmd/res" and by_id["m5-2"][2] == b"corr-2"  # outside the root: cmd/res
    assert by_id["m5-3"][0] == f"{ROOT}/cmd/res" and by_id["m5-3"][2] == b"corr-3"  # never back onto cmd/req
    assert by_id["m5-4"][0] == f"{ROOT}/cmd/res" and by_id["m5-4"][2] is None
    assert not [t for t, _, _ in got if t.startswith("elsewhere/")]
    assert not [m for t, m in collector.messages if t == f"{ROOT}/cmd/req" and m.get("type") == "cmd_result"]
    assert by_id["m5-slow"][1]["status"] == "ok"
    gone = by_id["m5-gone"][1]
    assert gone["status"] == "expired" and "not executed" in gone["error"], gone
    assert by_id["m5-kept"][1]["status"] == "ok"
    assert [values for _, _, values in slow_wire.seen] == [[5], [7]]  # the expired write never reached the device


# -- a restart between execution and result ------------------------------------------------------------------------

async def test_a_command_cut_off_by_a_sigkill_mid_write_is_never_executed_again_and_a_done_one_is_a_duplicate(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    slow = AwkwardDevice()
    wire = WireWrites(slow.context)
    setpoint: dict[str, Any] = {"device": "slow-0", "point": "setpoint"}
    async with await serve_awkward("127.0.0.1", 0, slow) as awkward:
        path = config(tmp_path, [], broker.port,
                      commands='[commands]\nenabled = true\nallow = ["read", "write", "status"]\n',
                      buses=[dict(id="bus-slow", driver="modbus_tcp", host="127.0.0.1", port=awkward.ports[0],
                                  timeout="10s")],
                      devices=[dict(id="slow-0", bus="bus-slow", interval="1h", points=[
                          dict(id="setpoint", table="holding", address=1, type="uint16", writable=True, remote=True,
                               min=0, max=100)])])
        done = request("done-1", "write", **setpoint, value=11, ttl=120)
        cut = request("cut-1", "write", **setpoint, value=22, ttl=120)
        log = (tmp_path / "gateway.log").open("ab")
        child = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                     stdout=log, stderr=log)
        try:
            await collector.wait_for(lambda: births(collector) >= 1, within=30)
            await send(broker.port, done)
            await collector.wait_for(lambda: "done-1" in results(collector))
            slow.configure(delay=5)  # the next write lands in the register; its answer comes too late
            await send(broker.port, cut)
            await until(lambda: len(wire.seen) == 2)
            child.send_signal(signal.SIGKILL)  # claimed in the ledger, executed, no result stored
            await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            log.close()
        assert "cut-1" not in results(collector)
        slow.configure(delay=0)
        with contextlib.closing(Store(data_path(load_config(path)))) as store:  # the ledger as the daemon died
            assert store.command_outcome("cut-1") == (None, None)
            assert store.command_outcome("done-1")[0] == "ok"  # type: ignore[index]

        daemon = Daemon(load_config(path))
        async with running(daemon):
            await collector.wait_for(lambda: births(collector) >= 2)
            await send(broker.port, cut, done)  # the platform asks again, having heard nothing (and a redelivery)
            await collector.wait_for(lambda: answers(collector, "cut-1") and len(answers(collector, "done-1")) == 2)
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)

    (again,) = answers(collector, "cut-1")
    assert again["status"] == "duplicate" and again["original"] == "unknown"
    assert again["error"] == "it was being executed when the gateway stopped; not executed again"
    first, second = answers(collector, "done-1")
    assert first["status"] == "ok" and second["status"] == "duplicate" and second["original"] == "ok"
    assert second["result"] == first["result"]
    assert [values for _, _, values in wire.seen] == [[11], [22]]  # each written once, none after the restart
    assert sorted((e["req"], e["result"]) for e in audit if e["action"] == "command") == [
        ("cut-1", "duplicate"), ("done-1", "duplicate"), ("done-1", "ok")]


async def test_a_ledger_row_without_a_result_is_answered_duplicate_and_never_run(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    """The same, simulated: the store is given a claimed command with no outcome before the daemon starts."""
    async with meters() as server:
        wire = WireWrites(server.meters[0].context)
        path = config(tmp_path, server.ports, broker.port)
        with contextlib.closing(Store(data_path(load_config(path)))) as store:
            assert store.claim_command("claimed-1", time.time() - 5, "mqtt:unsigned/guard.wang", "write") is None
        daemon = Daemon(load_config(path))
        async with running(daemon):
            await collector.wait_for(lambda: births(collector) >= 1)
            await send(broker.port, request("claimed-1", "write", device="meter-0", point="status", value=3))
            await collector.wait_for(lambda: "claimed-1" in results(collector))
            await send(broker.port, request("claimed-1", "write", device="meter-0", point="status", value=3))
            await collector.wait_for(lambda: len(answers(collector, "claimed-1")) == 2)
    assert [(a["status"], a["original"]) for a in answers(collector, "claimed-1")] == [("duplicate", "unknown")] * 2
    assert wire.seen == []


# -- a flood -------------------------------------------------------------------------------------------------------

FLOOD_RULES = """
[[rules]]
id = "overvoltage"
when = { point = "meter-0.voltage_a", above = 240 }
alarm = { class = "equipment", message = "Voltage {value} V" }
"""


def _flood_payload(n: int) -> bytes:
    actor = f"actor-{n % 7}"
    kind = n % 10
    if kind == 0:
        return bytes((n * 37 + i) % 256 for i in range(40))  # noise
    if kind == 1:
        return b"[1, 2, 3]"
    if kind == 2:
        return orjson.dumps({"v": 1, "expires_at": time.time() + 30, "actor": actor, "cmd": "status"})  # no id
    if kind == 3:
        return orjson.dumps({"v": 1, "id": f"f-{n}", "site": "elsewhere", "expires_at": time.time() + 30,
                             "actor": actor, "cmd": "status"})
    if kind == 4:
        return b'{"v":1,"id":"f-' + str(n).encode() + b'","pad":"' + b"x" * 17000 + b'"}'  # too large
    if kind == 5:
        return request(f"f-{n}", "write", actor=actor, device="meter-0", point="voltage_a", value=1)  # not remote
    if kind == 6:
        return request(f"f-{n}", "write", actor=f"made-up-{n}", device="meter-0", point="status", value=99)
    if kind == 7:
        return request(f"f-{n}", "read", actor=actor, device="meter-1", point="status")
    if kind == 8:
        return request(f"f-{n}", "shell", actor=actor)
    return request(f"f-{n}", "status", actor=actor)


@pytest.mark.timeout(180)
async def test_a_flood_of_commands_never_starves_polling_or_the_alarm_and_every_request_is_accounted_for(
        tmp_path: Path, broker: Broker) -> None:
    # the platform's own subscriptions (the flood's JSON arrays on cmd/req are no messages for a Collector)
    async with meters(3) as server, subscribed(broker.port, f"{ROOT}/status") as status, \
            subscribed(broker.port, f"{ROOT}/alarm/#") as alarms:
        wires = [WireWrites(m.context) for m in server.meters]
        for meter in server.meters:
            meter.freeze()
        path = config(tmp_path, server.ports, broker.port, more=FLOOD_RULES,
                      commands='[commands]\nenabled = true\nallow = ["read", "write", "status"]\n')
        daemon = Daemon(load_config(path))
        async with running(daemon):
            platform = daemon.platform
            assert platform is not None
            await status.wait_for(lambda: births(status) >= 1)
            polls = {d: p.state.polls for d, p in daemon.pollers.items()}
            sent, began = 0, time.monotonic()

            def alarmed() -> bool:
                return any(m.get("kind") == "alarm.raise" for _, m in alarms.messages)

            def polled() -> bool:
                return all(p.state.polls >= polls[d] + 10 for d, p in daemon.pollers.items())

            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="flood") as client:
                while sent < 3000 or not (alarmed() and polled()):
                    assert sent < 50_000, ("polling or the alarm starved under the flood", alarmed(), polls,
                                           {d: p.state.polls for d, p in daemon.pollers.items()})
                    await asyncio.gather(*(client.publish(f"{ROOT}/cmd/req", _flood_payload(sent + i), qos=1)
                                           for i in range(100)))
                    sent += 100
                    if sent == 1000:
                        server.meters[0].set_point("voltage_a", 251.0)  # the alarm is raised mid-flood
                    assert daemon.supervisor.tasks["uplink"].done() is False
            # polling and the alarm kept going while the flood went on (the loop above ends only when they did)
            assert alarmed() and polled()
            with contextlib.suppress(TimeoutError):  # a request lost unseen is the failure said below, with counts
                await until(lambda: sum(platform.answered.values()) + sum(platform.dropped.values()) == sent, within=30)
            structure = (len(platform._actors), max((q.qsize() for q in platform._lanes.values()), default=0),
                         len(platform._spared), len(platform._lanes))
            await until(lambda: not platform._spared, within=30)  # every answer committed
            answered, dropped = dict(platform.answered), dict(platform.dropped)
            windows = 1 + int((time.monotonic() - began) // 60)  # the limits are per minute
            await daemon.recorder.flush()
            audited = await daemon.store.run(daemon.store.store.audit_entries, 100_000)

    # every request accounted for: answered, or dropped with a reason that is counted
    assert sum(answered.values()) + sum(dropped.values()) == sent, (sent, answered, dropped)
    assert set(dropped) <= {"not JSON", "not a JSON object", "no id", "other site", "too large", "flood"}, dropped
    assert dropped["flood"] > 0 and dropped["too large"] > 0 and dropped["other site"] > 0
    assert answered.get("rejected", 0) > 0 and answered.get("ok", 0) > 0
    assert sum(1 for e in audited if e["action"] == "command") == sum(answered.values())
    rate_limited = [e for e in audited if e["action"] == "command" and "rate limited" in e.get("error", "")]
    assert rate_limited, "the rate limits were never reached: not a flood"
    # the per-minute limits held: at most `rate` (120) commands executed and as many refusals answered
    assert answered.get("ok", 0) <= 120 * windows
    assert sum(answered.values()) <= 2 * 120 * windows
    # memory stays bounded: made-up actors capped, lanes few and short, answers in flight few
    actors, deepest, in_flight, lanes = structure
    assert actors <= 10_001 and deepest <= LANE_DEPTH and lanes <= 4 and in_flight <= 2 * 120 * windows
    assert [w.seen for w in wires] == [[], [], []]  # nothing in the flood was a write the site allows


# -- the subscription after a reconnect --------------------------------------------------------------------------

async def test_the_first_command_after_the_broker_restarts_is_answered(tmp_path: Path, broker: Broker,
                                                                       collector: Collector) -> None:
    async with meters() as server:
        daemon = Daemon(load_config(config(tmp_path, server.ports, broker.port)))
        async with running(daemon):
            assert daemon.uplink is not None
            uplink = daemon.uplink
            await collector.wait_for(lambda: births(collector) >= 1)
            await send(broker.port, request("before-1", "status"))
            await collector.wait_for(lambda: "before-1" in results(collector))
            for rid, crash in (("after-1", False), ("after-2", True)):
                session = births(collector)
                broker.stop(kill=crash)  # a clean stop, then a crash
                await until(lambda: uplink.status.state == "disconnected")
                broker.start()
                await collector.wait_for(lambda s=session: births(collector) > s, within=30)
                await send(broker.port, request(rid, "status"))  # the first command after this reconnect
                await collector.wait_for(lambda r=rid: r in results(collector), within=15)
                assert results(collector)[rid]["status"] == "ok"
