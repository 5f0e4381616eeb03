"""`gateway bench bacnet`: points/s over BACnet/IP with ReadPropertyMultiple, and without it.

Simulated controllers run in their own process (``gateway.bench.wire``: ``simulators.bacnet``
devices, bacpypes3's server side, counting the requests they serve), so the CPU figures split
between the gateway and the devices, and "requests per poll" is what the devices were asked. The
gateway side is the production path: config from TOML text, the driver registry and the daemon's
own wiring (``gateway.bench.polling``), uplink off. Each poll reads every point's present value and
status flags; polling is back to back per device, so the figures are capacity, not a poll rate.

Registered by the BACnet driver plugin's ``bench`` hook; light at import, like every bench module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.harness import (
    HOST,
    READY_TIMEOUT,
    Child,
    Report,
    add_json,
    bad_args,
    gain,
    options,
    ratio,
    ready_process,
    run,
    workdir,
)

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig

INSTANCE = 2001
READ_MULTIPLE_OBJECTS = 25


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    devices: int = 10
    points: int = 50
    seconds: float = 10.0


def add_command(bench: Any) -> None:
    """`gateway bench bacnet` on the bench subparsers (called by the BACnet driver plugin's hook)."""
    p = bench.add_parser("bacnet", help="BACnet/IP points/s with ReadPropertyMultiple and without, simulated devices")
    p.add_argument("--devices", type=int, default=Options.devices)
    p.add_argument("--points", type=int, default=Options.points, help="analog inputs per device")
    p.add_argument("--seconds", type=float, default=Options.seconds, help="measurement window per run")
    add_json(p)
    p.set_defaults(fn=bench_bacnet)


@contextlib.contextmanager
def simulator(opts: Options, work: Path) -> Iterator[Child]:
    from simulators.broker import free_ports

    port = free_ports(opts.devices, udp=True)
    args = ["bacnet", "--host", HOST, "--port", str(port), "--count", str(opts.devices), "--instance",
            str(INSTANCE), "--analog-inputs", str(opts.points)]
    with ready_process("gateway.bench.wire", args, work / "simulator.log") as child:
        yield child


def config_text(data_dir: Path, first_port: int, opts: Options, *, read_multiple: bool) -> str:
    from simulators.broker import free_ports

    bind = free_ports(1, udp=True)
    text = ['[site]\nid = "bench"\n', "[mqtt]\nenabled = false\n", f'[store]\ndata_dir = "{data_dir}"\n',
            '[log]\nlevel = "warning"\n',
            f'[[buses]]\nid = "bacnet"\ndriver = "bacnet_ip"\nbind = "{HOST}:{bind}"\ninstance = 999\n'
            'timeout = "2s"\nretries = 0\n']
    points = "".join(f'[[devices.points]]\nid = "s{i}"\nobject = "analog-input:{100 + i}"\n'
                     for i in range(opts.points))
    for d in range(opts.devices):
        text.append(f'[[devices]]\nid = "dev-{d}"\nbus = "bacnet"\naddress = "{HOST}:{first_port + d}"\n'
                    f'device_instance = {INSTANCE + d}\ninterval = "1s"\n'
                    f'read_multiple = {"true" if read_multiple else "false"}\n'
                    f"read_multiple_objects = {READ_MULTIPLE_OBJECTS}\n{points}")
    return "\n".join(text)


def bench_bacnet(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if opts.devices < 1 or opts.points < 1 or opts.seconds <= 0:
        return bad_args("--devices, --points and --seconds must be positive")
    report = Report.of("bacnet", opts, args)
    report.params["read_multiple_objects"] = READ_MULTIPLE_OBJECTS

    def body(report: Report) -> None:
        with workdir("gateway-bench-bacnet-") as work:
            _bench(opts, work, report)

    return run(report, body)


def _bench(opts: Options, work: Path, report: Report) -> None:
    from gateway.bench.polling import poll_run, rows
    from gateway.config import load_config
    from gateway.core.text import table

    report.say(f"gateway bench bacnet: {opts.devices} device(s) x {opts.points} analog inputs, {opts.seconds:g} s"
               " per run, every device polled back to back (present value + status flags of every point), uplink"
               " off, store synchronous=full",
               f"simulated BACnet/IP devices in a separate process, one UDP port each on {HOST}, values changing"
               f" once a second, counting the requests they serve; ReadPropertyMultiple asks up to"
               f" {READ_MULTIPLE_OBJECTS} objects at a time, the baseline (read_multiple = false) reads each"
               " property alone")
    with simulator(opts, work) as sim:
        def cfg(name: str, read_multiple: bool) -> GatewayConfig:
            path = work / f"{name}.toml"
            path.write_text(config_text(work / name, sim.port, opts, read_multiple=read_multiple))
            return load_config(path)

        limit = opts.seconds + READY_TIMEOUT
        multiple = asyncio.run(asyncio.wait_for(poll_run(cfg("rpm", True), opts.seconds, sim), limit)).figures()
        report.figure(**multiple)
        single = asyncio.run(asyncio.wait_for(poll_run(cfg("rp", False), opts.seconds, sim), limit)).figures()
        report.figure(read_property=single)
    gains = {
        "points_per_s": report.derive("gain_points_per_s", ratio(multiple["points_per_s"], single["points_per_s"]),
                                      "points_per_s / read_property.points_per_s"),
        "requests_per_poll": report.derive("requests_per_poll_saved",
                                           ratio(single["requests_per_poll"], multiple["requests_per_poll"]),
                                           "read_property.requests_per_poll / requests_per_poll"),
        "cpu_s_per_1k_points": report.derive("gain_cpu_s_per_1k_points",
                                             ratio(single["cpu_s_per_1k_points"], multiple["cpu_s_per_1k_points"]),
                                             "read_property.cpu_s_per_1k_points / cpu_s_per_1k_points"),
    }
    report.say("", table(rows(multiple, single, gains={k: gain(v) for k, v in gains.items()}),
                         ["", "ReadPropertyMultiple", "ReadProperty", "gain (derived)"]),
               "(gain = how many times better ReadPropertyMultiple is, computed from the two measured columns; the"
               " gateway and the simulated devices share the machine's cores, and the devices' bacpypes3 server is"
               " usually the bottleneck)")
