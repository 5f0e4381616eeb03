"""`gateway device probe|relearn`: commissioning a Modbus device against what it really accepts.

``probe`` opens the device's bus itself (the daemon must not be running: it owns the bus, and a
serial port cannot be opened twice), polls the configured map with a fresh read plan so the
driver learns as it does in service (splits at gaps on exception 2, a smaller read limit on
exception 3, points unreadable on their own left out), and prints what the device accepted, the
limits it taught, every unreadable point with its address and the device's answer, and the config
lines that make the configured map clean: with them the next start has nothing to learn.

``relearn`` asks the running daemon to forget what it learnt of a device (after a firmware
update, or once the map is fixed); its next poll learns again.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from gateway.cli.common import load, print_json, table
from gateway.cli.devices import _via_daemon

MAX_POLLS = 5
"""Polls a probe makes at most while the plan keeps changing (one poll learns up to 64 splits)."""


def add_commands(sub: Any, config_default: str) -> None:
    device = sub.add_parser("device", help="commissioning: probe a Modbus device's map; make the daemon relearn it")
    verbs = device.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("probe", help="read a Modbus device's configured map directly and learn what it accepts",
                         description="Poll one Modbus device with a fresh read plan (the daemon must be stopped: "
                                     "it owns the bus) and print what the device accepted, the read limits it "
                                     "taught, its unreadable points and a config override that makes the map clean.")
    p.add_argument("device", help="device id")
    p.add_argument("--polls", type=int, default=MAX_POLLS, help=f"most polls while learning (default {MAX_POLLS})")
    p.set_defaults(fn=cmd_probe)
    p = verbs.add_parser("relearn", help="make the running daemon forget what it learnt of a device",
                         description="Send `relearn` to the running daemon: the device's learnt read limits and "
                                     "unreadable points are forgotten and its next poll learns again.")
    p.add_argument("device", help="device id")
    p.set_defaults(fn=cmd_relearn)
    for q in verbs.choices.values():
        q.add_argument("-c", "--config", default=config_default, help="config file (TOML)")
        q.add_argument("--json", action="store_true", help="machine-readable output")


def _device(cfg: Any, args: argparse.Namespace) -> Any:
    try:
        return cfg.device(args.device)
    except KeyError:
        print(f"no device {args.device!r} in {args.config}", file=sys.stderr)
        raise SystemExit(2) from None


# -- relearn --------------------------------------------------------------------------------------


def cmd_relearn(args: argparse.Namespace) -> int:
    cfg = load(args)
    device = _device(cfg, args)
    answer = _via_daemon(cfg, {"cmd": "relearn", "device": device.id, "actor": getpass.getuser()})
    if answer is None:
        print("the gateway daemon is not running: there is nothing learnt to forget (a fresh start learns "
              "afresh only if the device's config changed; `gateway device probe` learns without the daemon)",
              file=sys.stderr)
        return 1
    if args.json:
        print_json(answer)
    if not answer["ok"]:
        print(f"{device.id}: refused: {answer['error']}", file=sys.stderr)
        return 2
    if not args.json:
        print(f"{device.id}: learnt read limits and unreadable points forgotten; the next poll learns again")
    return 0


# -- probe ----------------------------------------------------------------------------------------


def _daemon_listening(cfg: Any) -> bool:
    """Whether a daemon answers on the control socket (a socket file alone may be left by a killed run)."""
    from gateway.daemon import control_path

    path = control_path(cfg)
    if not path.exists():
        return False

    async def knock() -> bool:
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            return False
        writer.close()
        return True

    return asyncio.run(knock())


def cmd_probe(args: argparse.Namespace) -> int:
    from drivers.modbus.config import ModbusDevice
    from gateway.core.errors import DriverError
    from gateway.core.progress import Progress

    cfg = load(args)
    device = _device(cfg, args)
    if not isinstance(device, ModbusDevice):
        print(f"{device.id} is a {device.driver} device: probe reads Modbus register maps only", file=sys.stderr)
        return 2
    if args.polls < 1:
        print("--polls must be at least 1", file=sys.stderr)
        return 2
    if _daemon_listening(cfg):
        print(f"the gateway daemon is running and owns bus {device.bus!r}: stop it to probe "
              "(systemctl stop gateway), or use `gateway device relearn` and `gateway status` while it runs",
              file=sys.stderr)
        return 1
    try:
        with Progress(f"probing {device.id}:", unit="reads", quiet=args.json) as bar:
            result = asyncio.run(probe(cfg.bus(device.bus), device, args.polls, bar))
    except DriverError as exc:
        print(f"{device.id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return 0


async def probe(bus: Any, device: Any, polls: int = MAX_POLLS, progress: Any = None) -> dict[str, Any]:
    """Poll ``device`` with a fresh plan until a poll learns nothing (at most ``polls``); what it found.

    ``progress`` (a ``gateway.core.progress.Progress``) counts the reads: a device that times out on
    every read of a long map takes minutes, and the technician should see it is still asking.
    """
    from drivers.modbus.codec import Block
    from drivers.modbus.driver import ModbusDriver
    from drivers.scheduler import Urgency
    from gateway.core.data import Quality
    from gateway.core.errors import DriverError, ExceptionResponse

    asked: list[tuple[Block, str]] = []
    """Every read on the wire and the device's answer: "ok", "exception N" or the error's kind."""

    class Recording(ModbusDriver):
        async def read_block(self, device: Any, block: Block, urgency: Urgency) -> list[Any]:
            try:
                data = await super().read_block(device, block, urgency)
            except ExceptionResponse as exc:
                note(block, f"exception {exc.code}")
                raise
            except DriverError as exc:
                note(block, type(exc).__name__)
                raise
            note(block, "ok")
            return data

    def note(block: Block, answer: str) -> None:
        asked.append((block, answer))
        if progress is not None:
            progress.update(len(asked))

    driver = Recording(bus, [device])
    plan = driver.plans[device.id]
    made = 0
    try:
        while True:
            version = plan.version
            if progress is not None:
                progress.update(len(asked), label=f"probing {device.id}: poll {made + 1}/{polls},")
            readings = await driver.read(device.id)
            made += 1
            if plan.version == version or made >= polls:
                break
        if progress is not None:
            progress.update(len(asked), label=f"probing {device.id}: widening reads,")
        for bits in (False, True):
            await _widen(driver, device, plan, asked, bits)
    finally:
        await driver.close()
    quality = {r.point: r.quality for r in readings}
    limits = {"max_registers": _limit(device.max_registers, plan.max_registers, asked, False),
              "max_bits": _limit(device.max_bits, plan.max_bits, asked, True)}
    result: dict[str, Any] = {
        "device": device.id, "bus": bus.id, "unit": device.unit, "endpoint": driver.endpoint,
        "polls": made, "learnt": plan.version > 0, "learnt_in_polls": made - 1 if plan.version == version else None,
        "blocks": [{"table": b.table.value, "start": b.start, "count": b.count,
                    "points": [plan.points[s.key].id for s in b.spans],
                    "good": sum(quality.get(plan.points[s.key].id) is Quality.GOOD for s in b.spans)}
                   for b in plan.blocks],
        "limits": limits,
        "unreadable": [{"point": point, "table": plan.by_id[point].table.value,
                        "address": plan.by_id[point].address, "answer": why.partition(": ")[2]}
                       for point, why in plan.unreadable.items()],
        "good": sum(q is Quality.GOOD for q in quality.values()), "readable": len(device.points) - len(plan.unreadable),
        "points": len(device.points), "requests": len(asked), "counters": driver.counters(device.id),
    }
    result.update(override(device, plan, asked, {k: v["use"] for k, v in limits.items()}))
    return result


def _sizes(asked: list[tuple[Any, str]], bits: bool) -> tuple[list[int], list[int]]:
    """Sizes of the reads the device took and of those it refused as too long (exception 3 on several
    registers or bits: on a single point it says the point is unreadable, not that the read was long)."""
    from drivers.modbus.codec import BIT_TABLES

    mine = [(b, answer) for b, answer in asked if (b.table in BIT_TABLES) == bits]
    return ([b.count for b, answer in mine if answer == "ok"],
            [b.count for b, answer in mine if answer == "exception 3" and len(b.spans) != 1])


async def _widen(driver: Any, device: Any, plan: Any, asked: list[tuple[Any, str]], bits: bool) -> None:
    """The largest read the device takes, up to the longest run of addresses it answered, by bisection.

    The driver halves its limit on exception 3 and never raises it again, so it may settle well
    below what the device takes (17 for a device that takes 32). A few reads here find the size
    worth configuring; they are in ``asked`` like every other read.
    """
    from drivers.modbus.codec import BIT_TABLES, Block
    from drivers.scheduler import Urgency
    from gateway.core.errors import DriverError, ExceptionResponse

    learnt, configured = (plan.max_bits, device.max_bits) if bits else (plan.max_registers, device.max_registers)
    if learnt >= configured:
        return
    took, refused = _sizes(asked, bits)
    known: dict[Any, set[int]] = {}
    for block, answer in asked:
        if answer == "ok" and (block.table in BIT_TABLES) == bits:
            known.setdefault(block.table, set()).update(range(block.start, block.start + block.count))
    runs = [(table, a, next(n for n in range(a, a + 70000) if n not in addresses) - a)
            for table, addresses in known.items() for a in addresses if a - 1 not in addresses]
    if not runs:
        return
    table, start, length = max(runs, key=lambda r: r[2])
    low = max([learnt, *took])
    high = min([configured, length, *(n - 1 for n in refused)])
    while low < high:
        size = (low + high + 1) // 2
        try:
            await driver.read_block(device, Block(table, start, size, ()), Urgency.POLL)
        except ExceptionResponse as exc:
            if exc.code != 3:
                return
            high = size - 1
        except DriverError:
            return
        else:
            low = size


def _limit(configured: int, learnt: int, asked: list[tuple[Any, str]], bits: bool) -> dict[str, Any]:
    took, refused = _sizes(asked, bits)
    largest = max(took, default=None)
    use = configured if learnt >= configured else min([configured, max([learnt, *took]), *(n - 1 for n in refused)])
    return {"configured": configured, "learnt": learnt, "largest_accepted": largest,
            "refused": sorted(set(refused), reverse=True), "use": use}


def override(device: Any, plan: Any, asked: list[tuple[Any, str]], limits: dict[str, int]) -> dict[str, Any]:
    """The config keys that make the configured map clean, and the points to take out of it.

    ``max_registers`` / ``max_bits``: the largest read the device took below the smallest it
    refused. ``max_gap``: the largest that, with those limits and without the unreadable points,
    bridges no address the device has not answered (a point's own registers count as answered).
    Unreadable profile points go to ``exclude``; the device's own points are to be deleted from
    its ``[[devices.points]]``.
    """
    from drivers.modbus import profiles
    from drivers.modbus.codec import plan_reads
    from drivers.modbus.plan import point_span

    keys: dict[str, Any] = {}
    if limits["max_registers"] < device.max_registers:
        keys["max_registers"] = limits["max_registers"]
    if limits["max_bits"] < device.max_bits:
        keys["max_bits"] = limits["max_bits"]
    spans = [point_span(i, p) for i, p in enumerate(device.points) if p.id not in plan.unreadable]
    known: dict[Any, set[int]] = {}
    for block, answer in asked:
        if answer == "ok":
            known.setdefault(block.table, set()).update(range(block.start, block.start + block.count))
    for span in spans:
        known.setdefault(span.table, set()).update(range(span.address, span.address + span.count))
    clean = next((gap for gap in range(device.max_gap, -1, -1) if all(
        set(range(b.start, b.start + b.count)) <= known.get(b.table, set())
        for b in plan_reads(spans, max_registers=limits["max_registers"], max_bits=limits["max_bits"],
                            max_gap=gap))), None)
    if clean is not None and clean < device.max_gap:
        keys["max_gap"] = clean
    shipped = {p["id"] for p in profiles.load(device.profile).get("points", [])} if device.profile else set()
    exclude = [p for p in plan.unreadable if p in shipped]
    if exclude:
        keys["exclude"] = sorted({*device.exclude, *exclude})
    remove = [{"point": p, "table": plan.by_id[p].table.value, "address": plan.by_id[p].address}
              for p in plan.unreadable if p not in shipped]
    lines = [f"{key} = {_toml(value)}" for key, value in keys.items()]
    return {"override": keys, "remove_points": remove, "toml": "\n".join(lines), "clean": clean is not None}


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


# -- text -----------------------------------------------------------------------------------------


def _names(points: list[str]) -> str:
    if len(points) <= 4:
        return ", ".join(points)
    return f"{points[0]}, {points[1]} .. {points[-1]} ({len(points)} points)"


def render(r: dict[str, Any]) -> str:
    learnt = ("nothing to learn: every read was accepted as planned" if not r["learnt"]
              else f"learnt in {r['learnt_in_polls']} poll(s)" if r["learnt_in_polls"] is not None
              else f"STILL LEARNING after {r['polls']} polls (try --polls)")
    out = [f"probe of {r['device']} (bus {r['bus']}, unit {r['unit']}, {r['endpoint']}): {learnt};"
           f" {r['polls']} poll(s), {r['requests']} read(s) on the wire, {r['good']} of {r['readable']} readable points"
           " good in the last poll", "",
           "reads the device accepted (the last poll's plan):",
           table([(b["table"], b["start"], b["count"], f"{b['good']}/{len(b['points'])}", _names(b["points"]))
                  for b in r["blocks"]], ["table", "start", "count", "good", "points"]), ""]
    rows = []
    for name, limit in r["limits"].items():
        refused = ", ".join(map(str, limit["refused"])) + " (exception 3)" if limit["refused"] else "-"
        rows.append((name, limit["configured"], limit["learnt"], limit["largest_accepted"] or "-", refused,
                     limit["use"]))
    out += [table(rows, ["limit", "configured", "learnt by the driver", "largest read accepted", "refused sizes",
                         "to configure"]), ""]
    if r["unreadable"]:
        out += ["unreadable points (left out of every read):",
                table([(u["point"], f"{u['table']} {u['address']}", u["answer"]) for u in r["unreadable"]],
                      ["point", "address", "device's answer"]), ""]
    if not r["clean"]:
        out += ["no max_gap keeps every read on addresses the device accepted (some reads never succeeded:"
                " see the counters below); probe again when it answers", f"counters: {r['counters']}", ""]
    if not r["toml"] and not r["remove_points"]:
        out.append("the configured map is clean: no override needed")
        return "\n".join(out)
    out.append(f'to make the configured map clean, in the [[devices]] table with id = "{r["device"]}":')
    if r["toml"]:
        out += ["", *("    " + line for line in r["toml"].splitlines())]
    if r["remove_points"]:
        out += ["", "and delete its [[devices.points]] entries:",
                *(f'    id = "{p["point"]}"  ({p["table"]} {p["address"]})' for p in r["remove_points"])]
    return "\n".join(out)

