"""Device commands for technicians: live reads, audited writes, the shipped profiles.

While the daemon runs, reads and writes go through its control socket: the daemon owns the buses
(a serial port cannot be opened twice), queues the request ahead of polls, and audits writes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from typing import Any

from gateway.cli.common import actor, ask_daemon, fmt, load, print_json, stored, table


def _via_daemon(cfg: Any, command: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's answer, or None when no daemon is listening."""
    from gateway.daemon import control_path

    return ask_daemon(control_path(cfg), command)


def _readings_direct(cfg: Any, device: Any) -> list[dict[str, Any]]:
    from drivers.registry import driver_class

    async def read() -> list[dict[str, Any]]:
        bus = cfg.bus(device.bus)
        driver = driver_class(bus.driver)(bus, [device])
        try:
            readings = await driver.read(device.id)
        finally:
            await driver.close()
        return [{"device": r.device, "point": r.point, "value": r.value, "unit": r.unit,
                 "quality": r.quality.value, "ts": r.ts} for r in readings]

    return asyncio.run(read())


def _device(cfg: Any, args: argparse.Namespace) -> Any:
    try:
        device = cfg.device(args.device)
    except KeyError:
        print(f"no device {args.device!r} in {args.config}", file=sys.stderr)
        raise SystemExit(2) from None
    if getattr(args, "point", None) and args.point not in device.point_ids():
        print(f"device {args.device!r} has no point {args.point!r}", file=sys.stderr)
        raise SystemExit(2)
    return device


def cmd_read(args: argparse.Namespace) -> int:
    from gateway.core.errors import DriverError

    cfg = load(args)
    device = _device(cfg, args)
    answer = _via_daemon(cfg, {"cmd": "read", "device": device.id, "point": args.point})
    if answer is not None and not answer["ok"]:
        print(f"{device.id}: {answer['error']}", file=sys.stderr)
        return 1
    if answer is not None:
        readings = answer["readings"]
    else:
        try:
            readings = _readings_direct(cfg, device)
        except DriverError as exc:
            print(f"{device.id}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        readings = [r for r in readings if args.point in (None, r["point"])]
    if args.json:
        print_json(readings)
        return 0
    print(table([(r["point"], fmt(r["value"]), r["unit"] or "", r["quality"]) for r in readings],
                ["point", "value", "unit", "quality"]))
    return 0


def cmd_values(args: argparse.Namespace) -> int:
    """The latest values the running daemon holds (no device is asked: `gateway read` asks)."""
    cfg = load(args)
    if args.device is not None:
        _device(cfg, args)
    answer = _via_daemon(cfg, {"cmd": "values", "device": args.device})
    if answer is None:
        print("the gateway daemon is not running: latest values live in its memory; "
              "`gateway read DEVICE` asks a device directly", file=sys.stderr)
        return 1
    if not answer["ok"]:
        print(answer["error"], file=sys.stderr)
        return 1
    values = answer["values"]
    if args.json:
        print_json(values)
        return 0
    print(table([(v["device"], v["point"], fmt(v["value"]), v["unit"] or "", v["quality"]) for v in values],
                ["device", "point", "value", "unit", "quality"]))
    return 0


def cmd_write(args: argparse.Namespace) -> int:

    cfg = load(args)
    device = _device(cfg, args)
    command = {"cmd": "write", "device": device.id, "point": args.point, "value": args.value,
               "actor": actor(), "verify": args.verify}
    answer = _via_daemon(cfg, command)
    if answer is None:
        print("the gateway daemon is not running: writes go through its bus scheduler and audit log, "
              "so start it first (systemctl start gateway)", file=sys.stderr)
        return 1
    if args.json:
        print_json(answer)
    elif answer["ok"]:
        detail = f", read back {fmt(answer['read_back'])}" if "read_back" in answer else ""
        print(f"{device.id}.{args.point} = {args.value}: {answer['result']}{detail}"
              f" ({answer.get('latency_ms', '-')} ms)")
    else:
        print(f"{device.id}.{args.point}: refused: {answer['error']}", file=sys.stderr)
    if not answer["ok"]:
        return 2
    return 0 if answer["result"] in ("verified", "written") else 1


def cmd_profiles(args: argparse.Namespace) -> int:
    from importlib import resources

    from drivers.modbus import profiles

    if args.name is None:
        rows = [(name, profiles.load(name).get("profile", {}).get("description", ""),
                 len(profiles.load(name).get("points", []))) for name in profiles.available()]
        if args.json:
            print_json([{"name": n, "description": d, "points": c} for n, d, c in rows])
        else:
            print(table(rows, ["profile", "description", "points"]))
        return 0
    if args.name not in profiles.available():
        print(f"no profile {args.name!r} (profiles: {', '.join(profiles.available())})", file=sys.stderr)
        return 2
    text = resources.files(profiles.__name__).joinpath(f"{args.name}.toml").read_text(encoding="utf-8")
    if args.json:
        print_json(tomllib.loads(text))
    else:
        print(text, end="")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    import time

    entries = stored(load(args)).audit_entries(args.last)
    if args.json:
        print_json(entries)
        return 0
    rows = [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])), e.get("actor", ""), e["action"],
             *_audited(e)) for e in entries]
    print(table(rows, ["time", "who", "action", "target", "value", "result", "detail"]))
    return 0


def _audited(entry: dict[str, Any]) -> tuple[str, Any, Any, str]:
    """An audit entry's target, value, result and detail: a platform command says its request and why it was
    refused; a write, what it read back."""
    if entry["action"] == "command":
        request = f"{entry.get('cmd', '?')} {entry.get('req', '?')}"
        detail = f"{request}: {entry['error']}" if entry.get("error") else request
        return entry.get("target") or "", entry.get("value", ""), entry.get("result"), detail
    target = ".".join(str(entry[k]) for k in ("device", "point") if entry.get(k) is not None)
    detail = entry.get("error") or (f"read back {entry['read_back']}" if "read_back" in entry else "")
    return target, entry.get("value"), entry.get("result"), detail
