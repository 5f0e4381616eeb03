"""`gateway simulate ...` hooks that driver plugins name: light to import, the simulator loads on use."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

# -- `gateway simulate bacnet` (the bacnet plugin's simulate hook) --------------------------------


def add_bacnet(sim: Any) -> None:
    """Register `gateway simulate bacnet` under the simulate subcommands."""
    p = sim.add_parser("bacnet", help="a BACnet/IP plant-room controller (COV, RPM, a commandable output)")
    p.add_argument("--host", default="127.0.0.1", help="IP to bind, optionally with /prefix for broadcasts")
    p.add_argument("--port", type=int, default=47808)
    p.add_argument("--instance", type=int, default=1001, help="device instance of the first device")
    p.add_argument("--count", type=int, default=1, help="devices on consecutive ports")
    p.add_argument("--analog-inputs", type=int, default=0, help="extra analog inputs per device")
    p.set_defaults(fn=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.bacnet import run_bacnet

    host, _, prefix = args.host.partition("/")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_bacnet(host, args.port, args.instance, args.count, prefix=int(prefix or 32),
                               analog_inputs=args.analog_inputs))
    return 0
