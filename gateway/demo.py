"""`gateway demo`: simulated meters -> the real daemon -> a local Mosquitto, live on screen.

The daemon, store, uplink and driver are the production ones; only the field devices are
simulated. Halfway through a cycle one meter is switched off and back on, so the offline/online
events show too. Without Mosquitto the demo still runs and shows the outbox filling instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import load_config
from gateway.core import logs
from gateway.daemon import Daemon
from simulators.broker import Mosquitto, free_port, free_ports

CYCLE = 40.0  # seconds: meter 2 goes dark at 15 s into each cycle and returns at 30 s


def _demo_config(workdir: Path, meter_port: int, meters: int, mqtt_port: int, extra: str = "") -> Path:
    from simulators.meter import METER_POINTS

    text = [
        '[site]\nid = "demo-community"\nname = "Demo community"\n',
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nreconnect_min = "500ms"\nreconnect_max = "5s"\n',
        f'[store]\ndata_dir = "{workdir}"\nmax_mb = 64\n',
        '[log]\nlevel = "info"\nformat = "json"\n',
    ]
    for i in range(meters):
        text.append(f'[[buses]]\nid = "meter-bus-{i + 1}"\ndriver = "modbus_tcp"\nhost = "127.0.0.1"\n'
                    f'port = {meter_port + i}\ntimeout = "500ms"\n')
        text.append(f'[[devices]]\nid = "meter-{i + 1}"\nbus = "meter-bus-{i + 1}"\nunit = 1\ninterval = "2s"\n')
        for point in METER_POINTS:
            text.append("[[devices.points]]\n"
                        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in point.items() if v is not None))
    path = workdir / "demo.toml"
    path.write_text("\n".join(text) + extra)
    return path


def _start_mosquitto(workdir: Path) -> Mosquitto | None:
    """A local broker to show what the platform would receive; None without Mosquitto (the demo runs anyway)."""
    broker = Mosquitto(workdir)
    try:
        broker.start()
    except RuntimeError:
        return None
    return broker


def _line(topic: str, msg: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(msg.get("ts", time.time())))
    if msg.get("type") == "telemetry":
        p = msg["points"]

        def v(name: str, fmt: str = "{:.1f}") -> str:
            value = p.get(name, {}).get("v")
            return "--" if value is None else fmt.format(value)

        return (f"{stamp}  {msg['device']:<8} V {v('voltage_a')}/{v('voltage_b')}/{v('voltage_c')}"
                f"  A {v('current_a')}/{v('current_b')}/{v('current_c')}  P {v('power_total', '{:.2f}')} kW"
                f"  pf {v('power_factor', '{:.2f}')}  {v('frequency', '{:.2f}')} Hz"
                f"  E {v('energy_import', '{:.3f}')} kWh")
    if msg.get("type") in ("event", "alarm"):
        marker = "!!" if msg["type"] == "alarm" else "**"
        data = " ".join(f"{k}={val}" for k, val in msg.get("data", {}).items() if k != "trace")
        return f"{stamp}  {marker} {msg['priority'].upper()} {msg['kind']} from {msg['source']} {data}"
    if msg.get("type") == "status":
        return f"{stamp}  -- gateway {msg['state']} (retained status on {topic})"
    if msg.get("type") == "meta":
        return f"{stamp}  -- {msg['device']}: {len(msg.get('points', {}))} points described (retained on {topic})"
    if msg.get("type") == "state":
        return f"{stamp}  -- {msg['device']} is {msg['state']} (retained on {topic})"
    return f"{stamp}  {topic} {msg}"


async def _watch(port: int) -> None:
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="demo-viewer") as client:
                await client.subscribe("community/#", qos=1)
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes | bytearray):
                        with contextlib.suppress(ValueError):
                            print(_line(str(message.topic), json.loads(payload)), flush=True)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _flap(server: Any) -> None:
    """Switch meter 2 off and on again every cycle so offline/online events appear."""
    while True:
        await asyncio.sleep(CYCLE * 0.375)
        print("\n>>> demo: switching meter-2 off (watch for device.offline)\n", flush=True)
        await server.stop_one(1)
        await asyncio.sleep(CYCLE * 0.375)
        print("\n>>> demo: switching meter-2 back on (watch for device.online)\n", flush=True)
        await server.start_one(1)
        await asyncio.sleep(CYCLE * 0.25)


async def _outbox_report(daemon: Daemon) -> None:
    while True:
        await asyncio.sleep(3)
        depth = await daemon.store.run(daemon.store.store.outbox_depth)
        print(f"{time.strftime('%H:%M:%S')}  no broker: outbox holds {depth} (delivered once a broker appears)",
              flush=True)


async def _run(duration: float, meters: int, workdir: Path, camera: bool) -> None:
    from simulators.meter import serve_meters

    extra, cam = "", None
    if camera:
        from gateway.demo_camera import FPS, prepare
        from simulators.camera import MjpegCamera

        frames, extra = prepare(workdir)
        cam = await MjpegCamera(frames, fps=FPS).__aenter__()
        extra = extra.replace("{url}", cam.url)
        print(f"demo: lobby camera on {cam.url}: empty, a resident, a stranger, then the resident falls", flush=True)
    server = await serve_meters("127.0.0.1", free_ports(meters), count=meters)
    # Checked before anything else starts (the broker's port is not known yet: any valid one will do).
    config_path = _demo_config(workdir, server.ports[0], meters, 1883, extra)
    load_config(config_path)
    broker = _start_mosquitto(workdir)
    mqtt_port = broker.port if broker else free_port()  # nobody listens: the outbox fills, as it would
    log_file = (workdir / "gateway.log").open("a", encoding="utf-8", buffering=1)
    logs.configure("info", "json", stream=log_file)
    config_path = _demo_config(workdir, server.ports[0], meters, mqtt_port, extra)
    try:
        daemon = Daemon(load_config(config_path))
    except BaseException:
        if broker:
            broker.stop(kill=True)
        await server.close()
        if cam:
            await cam.__aexit__(None, None, None)
        raise
    print(f"demo: {meters} simulated meters on 127.0.0.1:{server.ports[0]}..{server.ports[-1]}, "
          f"store and logs in {workdir}")
    if broker:
        print(f"demo: Mosquitto on 127.0.0.1:{mqtt_port}; showing what the platform would receive\n")
    else:
        print("demo: Mosquitto is not installed (apt-get install mosquitto): the gateway runs anyway and keeps"
              " everything in its outbox\n")
    tasks = [asyncio.create_task(daemon.run()), asyncio.create_task(_flap(server))]
    tasks.append(asyncio.create_task(_watch(mqtt_port) if broker else _outbox_report(daemon)))
    try:
        if duration:
            await asyncio.sleep(duration)
        else:
            await asyncio.Event().wait()
    finally:
        daemon.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(8):
                await tasks[0]
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.close()
        if cam:
            await cam.__aexit__(None, None, None)
        if broker:
            broker.stop()


def run_demo(duration: float = 0, meters: int = 3, camera: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        asyncio.run(_run(duration, max(2, meters), workdir, camera))
    except KeyboardInterrupt:
        print("\ndemo stopped", file=sys.stderr)
    return 0
