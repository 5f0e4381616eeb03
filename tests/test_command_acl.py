"""The broker ACL of docs/commands.md, proved on a real Mosquitto with passwords, a real daemon and real Modbus.

The ACL file is the guide's template as printed, so the guide cannot drift from what is tested. Nothing here waits
on the clock to prove an absence: a message that must not arrive is followed by one that must, on a path that
keeps order (one publisher's messages to one subscriber; one device's command queue; one outbox priority), and the
absence is checked once the later one is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import paho.mqtt.client as paho
import pytest
from conftest import MOSQUITTO, free_ports, running, until, write_config

from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.broker import Mosquitto
from simulators.meter import METER_POINTS, MeterServer, serve_meters

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
SITE, OTHER, PLATFORM, OBSERVER = "site-a", "site-b", "platform.ops", "observer"
USERS = {SITE: "pw-a", OTHER: "pw-b", PLATFORM: "pw-platform", OBSERVER: "pw-observer"}
ROOT = f"community/{SITE}"
NOT_AUTHORIZED = 0x87


def guide_acl() -> str:
    """The Mosquitto template as the guide prints it."""
    match = re.search(r"<!-- acl:mosquitto -->\n```\n(.*?)```", GUIDE.read_text("utf-8"), re.DOTALL)
    assert match, "docs/commands.md: no Mosquitto ACL template after <!-- acl:mosquitto -->"
    return match.group(1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run scripts/setup.sh (it installs it)")
    assert f"user {PLATFORM}\n" in guide_acl(), "the test names the platform account the guide names"
    # the guide's template, plus a test-only account that sees every message on the broker
    acl = guide_acl() + f"\nuser {OBSERVER}\ntopic read #\n"
    with Mosquitto(tmp_path, binary=MOSQUITTO, users=USERS, acl=acl) as b:
        yield b


@dataclass
class Listener:
    """One account's subscription, keeping every message as (topic, payload)."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic]

    def results(self) -> dict[str, dict[str, Any]]:
        return {m["req"]: m for m in map(orjson.loads, self.on(f"{ROOT}/cmd/res"))}


@contextlib.asynccontextmanager
async def listening(port: int, user: str, *topics: str) -> AsyncIterator[Listener]:
    listener = Listener()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"{user}-listener", username=user,
                              password=USERS[user]) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def keep() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                listener.messages.append((str(message.topic), payload))

        task = asyncio.create_task(keep())
        try:
            yield listener
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(port: int, user: str, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"{user}-{time.monotonic_ns()}", username=user,
                              password=USERS[user]) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def puback(port: int, user: str, topic: str, payload: bytes = b"{}") -> int:
    """The PUBACK reason code an MQTT 5 publish gets (aiomqtt does not surface it): 0x87 when the ACL refuses."""
    acked = threading.Event()
    codes: list[int] = []

    def on_publish(_client: paho.Client, _userdata: Any, _mid: int, reason: Any, _properties: Any) -> None:
        codes.append(int(reason.value))
        acked.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{user}-probe", protocol=paho.MQTTv5)
    client.username_pw_set(user, USERS[user])
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        assert acked.wait(10), f"no PUBACK for {user} on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def request(rid: str, cmd: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": 1, "id": rid, "expires_at": time.time() + 30, "actor": "guard.wang", "cmd": cmd,
                         **fields})


@contextlib.asynccontextmanager
async def gateway(tmp: Path, port: int) -> AsyncIterator[tuple[Daemon, MeterServer]]:
    """The daemon of site-a, logging in as site-a, commands on, one meter whose relay the platform may write."""
    server = await serve_meters("127.0.0.1", free_ports(1), count=1, tick_interval=3600)
    points = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]
    for p in points:
        if p["id"] in ("relay_closed", "status"):
            p.update(writable=True, remote=True)
    path = write_config(tmp / "gateway.toml", site=SITE, data_dir=tmp / "data", mqtt_port=port,
                        buses=[dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0])],
                        devices=[dict(id="meter-0", bus="bus-0", interval="200ms", points=points)])
    text = path.read_text("utf-8").replace("[mqtt]\n", f'[mqtt]\nusername = "{SITE}"\npassword = "{USERS[SITE]}"\n')
    path.write_text(text + '\n[commands]\nenabled = true\nallow = ["read", "write", "status"]\n', "utf-8")
    daemon = Daemon(load_config(path))
    try:
        async with running(daemon):
            yield daemon, server
    finally:
        await server.close()


async def test_the_gateway_publishes_only_under_its_own_site_and_reads_its_own_commands(
        tmp_path: Path, broker: Mosquitto) -> None:
    async with listening(broker.port, OBSERVER, "#") as everything, \
            listening(broker.port, PLATFORM, "community/#") as platform, gateway(tmp_path, broker.port) as (daemon, _):
        await until(lambda: platform.on(f"{ROOT}/telemetry/meter-0"))
        await publish(broker.port, PLATFORM, (f"{ROOT}/cmd/req", request("w-1", "write", device="meter-0",
                                                                         point="relay_closed", value=True)))
        await until(lambda: "w-1" in platform.results())
        assert platform.results()["w-1"]["status"] == "ok", platform.results()
        await until(lambda: platform.on(f"{ROOT}/event/device.write"))  # the write's event went through too
        # it reads its own status: an older session's will arriving late (here: sent with the site's credentials
        # from another connection) is answered with the birth again
        assert daemon.uplink is not None
        will = {"v": 2, "site": SITE, "type": "status", "state": "offline", "bdseq": daemon.uplink.session.bdseq - 1}
        await publish(broker.port, SITE, (f"{ROOT}/status", orjson.dumps(will)))
        await until(lambda: [orjson.loads(p)["state"] for p in platform.on(f"{ROOT}/status")][-2:]
                    == ["offline", "online"])
    topics = {t for t, _ in everything.messages}
    assert all(t.startswith(f"{ROOT}/") for t in topics), topics
    kinds = {t.removeprefix(f"{ROOT}/").split("/")[0] for t in topics}
    assert {"status", "meta", "state", "telemetry", "event", "cmd"} <= kinds, kinds
    # the gateway's credentials themselves: nothing outside its site, and never a command, not even its own
    for topic in (f"{ROOT}/cmd/req", f"community/{OTHER}/cmd/req", f"community/{OTHER}/telemetry/meter-0",
                  "elsewhere/x"):
        assert await asyncio.to_thread(puback, broker.port, SITE, topic) == NOT_AUTHORIZED, topic
    for topic in (f"{ROOT}/telemetry/meter-0", f"{ROOT}/cmd/res", f"{ROOT}/cmd/res/worker-3"):
        assert await asyncio.to_thread(puback, broker.port, SITE, topic) < 0x80, topic


async def test_another_site_cannot_command_it_nor_read_its_commands_and_the_platform_can(
        tmp_path: Path, broker: Mosquitto) -> None:
    intrusion = request("x-1", "write", device="meter-0", point="relay_closed", value=False)
    async with listening(broker.port, PLATFORM, f"{ROOT}/cmd/res") as platform, \
            listening(broker.port, OTHER, f"{ROOT}/cmd/req", f"community/{OTHER}/cmd/req") as other, \
            gateway(tmp_path, broker.port) as (daemon, server):
        await until(lambda: daemon.uplink.status.state == "connected")
        # site-b's credentials: the broker refuses the publish (MQTT 5 says so; 3.1.1 drops it silently)
        assert await asyncio.to_thread(puback, broker.port, OTHER, f"{ROOT}/cmd/req", intrusion) == NOT_AUTHORIZED
        await publish(broker.port, OTHER, (f"{ROOT}/cmd/req", intrusion))
        # then the platform writes the same device: one queue, one outbox priority, so x-1's answer (had the
        # gateway seen it) would come first; and site-b, reading site-a's cmd/req, would get the first message
        await publish(broker.port, PLATFORM,
                      (f"{ROOT}/cmd/req", request("p-1", "write", device="meter-0", point="status", value=3)),
                      (f"community/{OTHER}/cmd/req", b"marker"))
        await until(lambda: "p-1" in platform.results() and other.messages)
        assert platform.results()["p-1"]["status"] == "ok", platform.results()
        assert "x-1" not in platform.results()
        assert other.messages == [(f"community/{OTHER}/cmd/req", b"marker")]
        assert server.meters[0].context.getValues(1, 0, 1) == [True]  # the relay was never opened
        assert daemon.platform is not None
        assert sum(daemon.platform.answered.values()) == 1 and not daemon.platform.dropped
        await daemon.recorder.flush()
        audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
    assert [e["req"] for e in audit if e["action"] == "command"] == ["p-1"]
