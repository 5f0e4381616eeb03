"""`gateway points`: what each device's points are, from the config alone (no daemon, no bus needed).

The same catalog upstream metadata is built from: the type a point's values have once decoded, its
unit, whether and within what it may be written, its state names, and where it lives on the wire.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import fmt, load, print_json, table
from gateway.core.points import PointInfo

HEADERS = ["device", "point", "type", "unit", "rw", "limits / states", "address", "about"]


def add_command(sub: Any, config_default: str) -> None:
    p = sub.add_parser("points", help="the point catalog: types, units, write limits, states, addresses",
                       description="The point catalog of every device (or one), read from the config file.")
    p.add_argument("device", nargs="?", help="one device id (default: every device)")
    p.add_argument("-c", "--config", default=config_default, help="config file (TOML)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_points)


def as_json(device: str, info: PointInfo) -> dict[str, Any]:
    """One catalog entry with every key always present (null when it does not apply)."""
    return {
        "device": device, "point": info.id, "datatype": info.datatype, "unit": info.unit,
        "writable": info.writable, "min": info.min, "max": info.max,
        "allowed": list(info.allowed) if info.allowed is not None else None,
        "states": {str(code): name for code, name in info.states.items()} if info.states is not None else None,
        "description": info.description, "address": info.address,
    }


def limits(info: PointInfo) -> str:
    """"10..30", "one of 0, 50", "1=off 2=auto": what a value may be, as short as it can be said."""
    parts = []
    if info.min is not None or info.max is not None:
        parts.append(f"{'' if info.min is None else fmt(info.min)}..{'' if info.max is None else fmt(info.max)}")
    if info.allowed is not None:
        parts.append("one of " + ", ".join(fmt(v) for v in info.allowed))
    if info.states:
        parts.append(" ".join(f"{code}={name}" for code, name in sorted(info.states.items())))
    return "; ".join(parts)


def cmd_points(args: argparse.Namespace) -> int:
    cfg = load(args)
    devices = [d for d in cfg.devices if args.device in (None, d.id)]
    if args.device is not None and not devices:
        print(f"no device {args.device!r} in {args.config}", file=sys.stderr)
        return 2
    catalog = [(device.id, info) for device in devices for info in device.describe()]
    if args.json:
        print_json([as_json(device, info) for device, info in catalog])
        return 0
    rows = [(device, info.id, info.datatype, info.unit or "", "rw" if info.writable else "r", limits(info),
             info.address, info.description) for device, info in catalog]
    print(table(rows, HEADERS))
    return 0
