"""`gateway bench bacnet`: points/s over BACnet/IP with ReadPropertyMultiple, and without it.

Simulated controllers run in their own process (``python -m simulators.bacnet``, bacpypes3's
server side), so the CPU figures split between the gateway and the devices. The gateway side is
the production path: config from TOML text, the driver registry, ``DevicePoller``, ``Recorder``
and the SQLite store, uplink off. Each poll reads every point's present value and status flags;
polling is back to back per device, so the figures are capacity, not a configured poll rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from drivers.bacnet.driver import BacnetDriver
from drivers.base import Driver
from gateway.bench import READY_TIMEOUT, _CountingRecorder, _num, _table, cpu_seconds, simulator_process, workdir
from gateway.config import load_config
from gateway.config.schema import GatewayConfig
from gateway.daemon import build_drivers, open_store
from gateway.recorder import AsyncStore
from gateway.supervisor import DevicePoller

HOST = "127.0.0.1"
INSTANCE = 2001
RPM_OBJECTS = 25


@dataclass(frozen=True, slots=True)
class Options:
    devices: int = 10
    points: int = 50
    seconds: float = 10.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        """Attributes the CLI does not define take their defaults, so any Namespace works."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def free_udp_ports(count: int) -> int:
    """First of ``count`` consecutive free UDP ports on 127.0.0.1 (one per simulated device)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((HOST, 0))
            base = int(first.getsockname()[1])
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind((HOST, base + i))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free UDP ports")


@contextlib.contextmanager
def simulator(opts: Options, work: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_udp_ports(opts.devices)
    args = ["--host", HOST, "--port", str(port), "--count", str(opts.devices), "--instance", str(INSTANCE),
            "--analog-inputs", str(opts.points)]
    with simulator_process("simulators.bacnet", args, work / "simulator.log") as (proc, _):
        yield proc, port


def config_text(data_dir: Path, first_port: int, opts: Options, *, rpm: bool) -> str:
    bind = free_udp_ports(1)
    text = ['[site]\nid = "bench"\n', "[mqtt]\nenabled = false\n", f'[store]\ndata_dir = "{data_dir}"\n',
            '[log]\nlevel = "warning"\n',
            f'[[buses]]\nid = "bacnet"\ndriver = "bacnet_ip"\nbind = "{HOST}:{bind}"\ninstance = 999\n'
            'timeout = "2s"\nretries = 0\n']
    points = "".join(f'[[devices.points]]\nid = "s{i}"\nobject = "analog-input:{100 + i}"\n'
                     for i in range(opts.points))
    for d in range(opts.devices):
        text.append(f'[[devices]]\nid = "dev-{d}"\nbus = "bacnet"\naddress = "{HOST}:{first_port + d}"\n'
                    f'device_instance = {INSTANCE + d}\ninterval = "1s"\nread_multiple = {"true" if rpm else "false"}\n'
                    f"read_multiple_objects = {RPM_OBJECTS}\n{points}")
    return "\n".join(text)


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    polls: int
    failed: int
    points: int
    good: int
    requests: int
    cpu: float
    sim_cpu: float


async def poll_run(cfg: GatewayConfig, seconds: float, sim_pid: int) -> Run:
    """Poll every device back to back for ``seconds``, all at once, through the real stack."""
    store = AsyncStore(open_store(cfg))
    recorder = _CountingRecorder(store)
    drivers: dict[str, Driver] = build_drivers(cfg)
    pollers = [DevicePoller(drivers[d.id], d, recorder) for d in cfg.devices]
    writer = asyncio.create_task(recorder.run(), name="bench-recorder")
    loop = asyncio.get_running_loop()

    def requests() -> int:
        return sum(q.stats.transactions for drv in set(drivers.values()) if isinstance(drv, BacnetDriver)
                   for q in drv.queues.values())

    try:
        await asyncio.gather(*(p.poll_once() for p in pollers))  # bind, identify, units: outside the clock
        await recorder.flush()
        recorder.points = recorder.good = 0
        polls0, failed0, requests0 = (sum(p.state.polls for p in pollers), sum(p.state.failures for p in pollers),
                                      requests())
        stop_at = loop.time() + seconds

        async def hammer(poller: DevicePoller) -> None:
            while loop.time() < stop_at:
                await poller.poll_once()

        cpu0, sim0, t0 = time.process_time(), cpu_seconds(sim_pid), time.perf_counter()
        await asyncio.gather(*(hammer(p) for p in pollers))
        await recorder.flush()
        elapsed = time.perf_counter() - t0
        return Run(elapsed, sum(p.state.polls for p in pollers) - polls0,
                   sum(p.state.failures for p in pollers) - failed0, recorder.points, recorder.good,
                   requests() - requests0, time.process_time() - cpu0, cpu_seconds(sim_pid) - sim0)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        for driver in set(drivers.values()):
            with contextlib.suppress(Exception):
                await driver.close()
        store.close()


def figures(rpm: Run, single: Run) -> str:
    def per_s(n: int, run: Run) -> float:
        return n / run.seconds

    def per_poll(run: Run) -> float:
        return run.requests / max(1, run.polls - run.failed)

    def gain(better: float, worse: float) -> str:
        return f"{better / worse:.1f}x" if worse > 0 and math.isfinite(better / worse) else "-"

    rows = [
        ("points/s", _num(per_s(rpm.points, rpm), 0), _num(per_s(single.points, single), 0),
         gain(per_s(rpm.points, rpm), per_s(single.points, single))),
        ("polls/s (all devices)", _num(per_s(rpm.polls, rpm)), _num(per_s(single.polls, single)), "-"),
        ("BACnet requests/s", _num(per_s(rpm.requests, rpm), 0), _num(per_s(single.requests, single), 0), "-"),
        ("BACnet requests per poll", _num(per_poll(rpm)), _num(per_poll(single)),
         gain(per_poll(single), per_poll(rpm))),
        ("gateway CPU s per 1k points", _num(1000 * rpm.cpu / max(1, rpm.points), 4),
         _num(1000 * single.cpu / max(1, single.points), 4),
         gain(single.cpu / max(1, single.points), rpm.cpu / max(1, rpm.points))),
        ("gateway CPU, % of one core", _num(100 * rpm.cpu / rpm.seconds, 0),
         _num(100 * single.cpu / single.seconds, 0), "-"),
        ("simulator CPU, % of one core", _num(100 * rpm.sim_cpu / rpm.seconds, 0),
         _num(100 * single.sim_cpu / single.seconds, 0), "-"),
        ("good points", f"{100 * rpm.good / max(1, rpm.points):.1f}%",
         f"{100 * single.good / max(1, single.points):.1f}%", "-"),
        ("failed polls", str(rpm.failed), str(single.failed), "-"),
    ]
    return _table(rows, ["", "ReadPropertyMultiple", "ReadProperty", "gain"])


def bench_bacnet(args: argparse.Namespace) -> int:
    opts = Options.from_args(args)
    if opts.devices < 1 or opts.points < 1 or opts.seconds <= 0:
        print("bench: --devices, --points and --seconds must be positive", file=sys.stderr)
        return 2
    try:
        with workdir("gateway-bench-bacnet-") as work:
            return _bench(opts, work)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


def _bench(opts: Options, work: Path) -> int:
    requests = math.ceil(opts.points / RPM_OBJECTS)
    print(f"gateway bench bacnet: {opts.devices} device(s) x {opts.points} analog inputs, {opts.seconds:g} s per "
          "run, every device polled back to back (present value + status flags of every point), uplink off, "
          "store synchronous=full")
    print(f"simulated BACnet/IP devices in a separate process, one UDP port each on {HOST}, values changing once a "
          f"second; ReadPropertyMultiple asks {RPM_OBJECTS} objects at a time ({requests} request(s) per poll), "
          f"the baseline (read_multiple = false) reads each property alone ({2 * opts.points} requests per poll)")
    _flush()
    with simulator(opts, work) as (sim, port):
        def cfg(name: str, rpm: bool) -> GatewayConfig:
            path = work / f"{name}.toml"
            path.write_text(config_text(work / name, port, opts, rpm=rpm))
            return load_config(path)

        limit = opts.seconds + READY_TIMEOUT
        rpm = asyncio.run(asyncio.wait_for(poll_run(cfg("rpm", True), opts.seconds, sim.pid), limit))
        single = asyncio.run(asyncio.wait_for(poll_run(cfg("rp", False), opts.seconds, sim.pid), limit))
    print()
    print(figures(rpm, single))
    print("(gain = how many times better ReadPropertyMultiple is; both the gateway and the simulated devices share "
          "the machine's 2 cores, and the devices' bacpypes3 server is usually the bottleneck)")
    return 0


def _flush() -> None:
    with contextlib.suppress(OSError):
        sys.stdout.flush()
