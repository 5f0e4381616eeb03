"""`gateway bacnet discover | objects`: the technician's BACnet tools (this plugin's CLI hook).

The tools bind the config's BACnet bus address (so broadcast I-Ams reach them). While the daemon
holds that port they cannot: stop it, or bind a spare port with `--bind IP:0`, which still hears
devices that answer by unicast and can read any device.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.core.text import fmt, print_json, table


def add_commands(subparsers: Any) -> None:
    """Register `gateway bacnet discover` and `gateway bacnet objects`."""
    bacnet = subparsers.add_parser("bacnet", help="BACnet/IP technician tools").add_subparsers(
        dest="sub", required=True)
    p = bacnet.add_parser("discover", help="Who-Is on the bus's interface; list the devices that answer")
    _local(p)
    p.add_argument("--to", metavar="ADDRESS", help="send the Who-Is to this IP[:port] only (devices on other "
                                                   "subnets, a simulator on loopback)")
    p.add_argument("--low", type=int, help="lowest device instance to ask for (with --high)")
    p.add_argument("--high", type=int, help="highest device instance to ask for (with --low)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen for I-Am (default 3)")
    p.set_defaults(fn=cmd_discover)
    p = bacnet.add_parser("objects", help="a device's objects with names, types, units and present values")
    p.add_argument("address", help="the device's IP[:port], or NET:MAC behind a router")
    p.add_argument("--instance", type=int, help="its device instance (default: ask it)")
    p.add_argument("--toml", action="store_true", help="print a ready-to-paste [[devices]] block instead")
    p.add_argument("--id", help="device id in the --toml block (default: from the device's name)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for its I-Am (default 3)")
    _local(p)
    p.set_defaults(fn=cmd_objects)


def _local(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="config file with a bacnet_ip bus (default: the gateway's)")
    p.add_argument("--bus", help="which bacnet_ip bus (when the config has several)")
    p.add_argument("--bind", metavar="IP[/PREFIX][:PORT]", help="bind this instead of a configured bus")
    p.add_argument("--device-instance", dest="local_instance", type=int,
                   help="the tool's own device instance (default: the bus's, or 4194302)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _bus(args: argparse.Namespace) -> Any:
    """The local BACnet side: --bind, or the config's bacnet_ip bus. Exits 2 when there is none."""
    from pydantic import ValidationError

    from drivers.bacnet.config import BacnetBus
    from drivers.bacnet.tools import TOOL_INSTANCE

    if args.bind:
        try:
            return BacnetBus(id=args.bus or "bacnet", driver="bacnet_ip", bind=args.bind,
                             instance=TOOL_INSTANCE if args.local_instance is None else args.local_instance)
        except ValidationError as exc:
            print(f"--bind {args.bind}: {exc.errors(include_url=False)[0]['msg']}", file=sys.stderr)
            raise SystemExit(2) from None
    cfg = args.load_config(args)  # the CLI passes its loader: exits 2 with FILE:LINE problems
    buses = [b for b in cfg.buses if isinstance(b, BacnetBus) and args.bus in (None, b.id)]
    if len(buses) != 1:
        problem = "no bacnet_ip bus" if not buses else "several bacnet_ip buses: pick one with --bus"
        print(f"{args.config}: {problem} (or give --bind IP[:PORT])", file=sys.stderr)
        raise SystemExit(2)
    if args.local_instance is not None:
        return buses[0].model_copy(update={"instance": args.local_instance})
    return buses[0]


def _run(args: argparse.Namespace, job: Any) -> Any:
    """Run a tool; a field failure is one line on stderr and exit code 1, never a traceback."""
    from drivers.bacnet.stack import Nack
    from gateway.core import logs
    from gateway.core.errors import DriverError

    logs.configure("warning", "console", stream=sys.stderr)  # keep stdout for the answer (--json)
    try:
        return asyncio.run(job)
    except (DriverError, Nack, ValueError) as exc:
        hint = " (is the gateway daemon using it? stop it, or --bind IP:0)" if "in use" in str(exc) else ""
        print(f"bacnet: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_discover(args: argparse.Namespace) -> int:
    from drivers.bacnet.tools import discover

    if (args.low is None) != (args.high is None):
        print("--low and --high go together", file=sys.stderr)
        return 2
    bus = _bus(args)
    found = _run(args, discover(bus, args.to, args.timeout, args.low, args.high))
    if args.json:
        print_json([asdict(f) for f in found])
        return 0
    if not found:
        print(f"no device answered within {args.timeout:g}s", file=sys.stderr)
        return 1
    print(table([(f.instance, f.address, f"{f.vendor or '-'} ({f.vendor_id})", f.name or "-", f.model or "")
                 for f in found], ["instance", "address", "vendor", "name", "model"]))
    return 0


def cmd_objects(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from drivers.bacnet.config import BacnetDevice
    from drivers.bacnet.tools import config_block, device_objects

    try:
        address = BacnetDevice.model_validate(
            {"id": "x", "bus": "x", "address": args.address, "device_instance": 0}).address
    except ValidationError as exc:
        print(f"{args.address}: {exc.errors(include_url=False)[0]['msg']}", file=sys.stderr)
        return 2
    bus = _bus(args)
    found = _run(args, device_objects(bus, address, args.instance, args.timeout))
    if args.toml:
        print(config_block(bus, found, device_id=args.id, with_bus=bool(args.bind)), end="")
        return 0
    if args.json:
        print_json(asdict(found))
        return 0
    print(f"device {found.instance} at {found.address}: {found.name or '-'}"
          f" (change-of-value {'offered' if found.cov else 'not offered'})")
    rows = [(o.object, o.name or "-", _shown(o.value, o.states), o.units or "", o.flags or "",
             "/".join(o.states) if o.states else "") for o in found.objects]
    print(table(rows, ["object", "name", "present value", "units", "flags", "states"]))
    return 0


def _shown(value: Any, states: list[str] | None) -> str:
    if value is None:
        return ""
    if states and isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= len(states):
        return f"{value} ({states[value - 1]})"
    return fmt(value)
