"""`gateway bench firepanel`: how long a fire panel's line takes to reach the platform, under load.

The real daemon runs in-process with the panel on a ``socat`` pty pair and a fleet of simulated
Modbus TCP devices (in their own process) polling through it, uplinked to a real Mosquitto. The
simulated panel prints fire alarm lines; a subscriber in its own process (so its work does not
slow the gateway's event loop) notes when each one arrives. Latency is measured from the moment
the whole line has been written to the serial port to its arrival at the subscriber: it covers
the driver, the store's commit (synchronous=full, so an fsync), the uplink and the broker. Time on
the serial wire is not in it.

Light at import (the CLI registers it): the daemon is imported when the bench runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, latency_ms, num, options, run, workdir

TARGET_P99_MS = 50.0
PANEL = "fire-panel"


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    devices: int = 100
    points: int = 20
    interval: float = 1.0
    lines: int = 200
    rate: float = 10.0
    warmup: float = 3.0
    format: str = "gst_cn"


def add_command(bench: Any) -> None:
    """`gateway bench firepanel` on the bench subparsers."""
    p = bench.add_parser("firepanel", help="fire panel line -> MQTT latency while Modbus devices poll")
    p.add_argument("--devices", type=int, default=Options.devices)
    p.add_argument("--points", type=int, default=Options.points)
    p.add_argument("--interval", type=float, default=Options.interval)
    p.add_argument("--lines", type=int, default=Options.lines)
    p.add_argument("--rate", type=float, default=Options.rate)
    p.add_argument("--warmup", type=float, default=Options.warmup)
    p.add_argument("--format", default=Options.format)
    add_json(p)
    p.set_defaults(fn=bench_firepanel)


@dataclass(slots=True)
class Result:
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    polls: int = 0
    poll_failures: int = 0
    telemetry_delivered: int = 0
    seconds: float = 0.0


def bench_firepanel(args: argparse.Namespace) -> int:
    """The latency table; exit 1 if a fire line was lost or the p99 target missed."""
    opts = options(Options, args)
    if opts.devices < 0 or opts.points < 1 or opts.lines < 1 or opts.rate <= 0 or opts.interval <= 0:
        return bad_args("--lines, --rate, --points and --interval must be positive")
    report = Report.of("firepanel", opts, args)
    return run(report, lambda report: _bench(opts, report))


def _bench(opts: Options, report: Report) -> None:
    from gateway.bench.modbus import bank_size, point_map, simulator
    from simulators.broker import Mosquitto

    if shutil.which("socat") is None:
        raise RuntimeError("socat is not installed (apt-get install socat)")
    report.say(f"gateway bench firepanel: {opts.lines} fire alarm lines ({opts.format}) at {opts.rate:g}/s on a pty"
               f" pair, while {opts.devices} Modbus TCP devices x {opts.points} points poll every {opts.interval:g} s;"
               " in-process daemon (store synchronous=full), real Mosquitto, subscriber in its own process")
    with workdir("gateway-bench-firepanel-") as work, Mosquitto(work) as broker:
        points = point_map(opts.points)
        with simulator(max(opts.devices, 1), bank_size(points), work) as sim:
            result = asyncio.run(_run(opts, work, broker.port, sim.port))
    lost = result.sent - len(result.latencies)
    latency = latency_ms(result.latencies)
    report.figure(
        latency=latency, lines_sent=result.sent, alarms_received=len(result.latencies), seconds=result.seconds,
        modbus_polls=result.polls, modbus_failed_polls=result.poll_failures,
        modbus_polls_per_s=result.polls / result.seconds if result.seconds else None,
        messages_delivered_upstream=result.telemetry_delivered,
    )
    report.target("latency.p99_ms", "serial line written -> MQTT message received, p99", "<", TARGET_P99_MS,
                  latency["p99_ms"], " ms")
    if lost:
        report.problem(f"{lost} of {result.sent} fire lines never arrived at the subscriber")
    from gateway.core.text import table

    rows = [("serial line written -> MQTT message received", num(latency["p50_ms"]), num(latency["p99_ms"]),
             num(latency["max_ms"]))]
    polls_per_s = report.figures["modbus_polls_per_s"]
    report.say("", table(rows, ["", "p50 ms", "p99 ms", "max ms"]), "",
               f"fire lines sent {result.sent}, alarms received {len(result.latencies)}",
               f"Modbus polls during the run {result.polls} ({num(polls_per_s, 0)}/s), failed {result.poll_failures};"
               f" messages delivered upstream {result.telemetry_delivered}",
               "(time on the serial wire is not included: the clock starts once the whole line is written)")


def _config(opts: Options, work: Path, mqtt_port: int, first_port: int, panel_port: str) -> Path:
    from gateway.bench.modbus import config_text, point_map

    text = config_text(work / "data", first_port, opts.devices, point_map(opts.points), interval=f"{opts.interval}s")
    text = text.replace("[mqtt]\nenabled = false\n", f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
                                                     'reconnect_min = "100ms"\n')
    text += (f'\n[[buses]]\nid = "fire-port"\ndriver = "serial_lines"\nport = {json.dumps(panel_port)}\n\n'
             f'[[devices]]\nid = "{PANEL}"\nbus = "fire-port"\nformat = "{opts.format}"\nheartbeat = "30s"\n')
    path = work / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def _run(opts: Options, work: Path, mqtt_port: int, first_port: int) -> Result:
    from drivers.firepanel.driver import FirePanelDriver
    from gateway.bench.mqtt import Subscriber
    from gateway.config import load_config
    from gateway.daemon import Daemon
    from simulators.firepanel import FirePanelSimulator

    result = Result()
    async with FirePanelSimulator(opts.format, heartbeat=5.0, seed=1) as panel:
        cfg = load_config(_config(opts, work, mqtt_port, first_port, panel.port))
        daemon = Daemon(cfg)
        subscriber = Subscriber(mqtt_port, f"{cfg.mqtt.topic_prefix}/{cfg.site.id}/alarm/#")
        await subscriber.start()
        task = asyncio.create_task(daemon.run(), name="bench-daemon")
        try:
            driver = daemon.drivers[PANEL]
            assert isinstance(driver, FirePanelDriver)
            async with asyncio.timeout(30):
                while not (driver.listening and daemon.uplink and daemon.uplink.status.state == "connected"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await asyncio.sleep(opts.warmup)  # every device polled at least once, connections made
            polls0 = sum(p.state.polls for p in daemon.pollers.values())
            failures0 = sum(p.state.failures for p in daemon.pollers.values())
            delivered0 = daemon.uplink.status.delivered
            started = time.monotonic()
            sent: dict[str, float] = {}
            for i in range(opts.lines):
                mark = f"BENCH-{i:05d}"
                sent[mark] = await panel.send("fire", zone=i % 99 + 1, loop=i // 199 % 9 + 1, address=i % 199 + 1,
                                              description=mark)
                await asyncio.sleep(1 / opts.rate)
            async with asyncio.timeout(30):  # every alarm acknowledged by the broker
                while (await daemon.store.run(daemon.store.store.outbox_depth))["alarm"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            result.seconds = time.monotonic() - started
            result.polls = sum(p.state.polls for p in daemon.pollers.values()) - polls0
            result.poll_failures = sum(p.state.failures for p in daemon.pollers.values()) - failures0
            result.telemetry_delivered = daemon.uplink.status.delivered - delivered0
            await asyncio.sleep(0.3)  # acknowledged by the broker; a moment to reach the subscriber
            arrived: dict[str, float] = (await subscriber.result())["alarms"]
            events = await daemon.store.run(daemon.store.store.events_after, 0, 1_000_000)
        finally:
            daemon.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(20):
                    await task
            await subscriber.close()
    marks = {e["id"]: e["data"].get("description") for _, e in events if e["kind"] == "fire.alarm"}
    result.sent = len(sent)
    result.latencies = sorted(arrived[i] - sent[mark] for i, mark in marks.items() if i in arrived and mark in sent)
    return result
