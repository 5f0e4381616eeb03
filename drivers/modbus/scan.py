"""`gateway modbus scan`: which unit ids answer on a line (see drivers.modbus.cli for the why of both tools)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from drivers.modbus.cli import Wire, _bus, _field_noise, _quietly, _usage, endpoint, failure
from gateway.core.text import print_json, table


async def scan(wire: Wire, units: list[int], table_: str, address: int,
               found: Callable[[int, int, dict[str, Any] | None], None] | None = None) -> dict[str, Any]:
    """Ask each unit one read: who answered (data or an exception), who garbled, how many were silent.

    A unit the device hangs up on is asked once more on a fresh connection, then counted as garbled; an
    endpoint that cannot be opened at all ends the scan (``DeviceUnreachable``).
    """
    from gateway.core.errors import BadResponse, DeviceTimeout, DeviceUnreachable, ExceptionResponse

    present: list[dict[str, Any]] = []
    garbled: list[dict[str, Any]] = []
    silent = 0
    for done, unit in enumerate(units, 1):
        entry: dict[str, Any] | None = None
        for attempt in (1, 2):
            try:
                data = await wire.read(unit, table_, address, 1)
            except DeviceUnreachable as exc:
                if not str(exc).startswith(f"unit {unit}: "):
                    raise  # the port or host cannot be opened: no unit on it can answer
                if attempt == 1:
                    continue
                garbled.append({"unit": unit, "error": "the device hung up on the request, twice: "
                                + failure(exc, unit)["message"]})
            except ExceptionResponse as exc:
                entry = {"unit": unit, "answer": failure(exc)["message"], "exception": exc.code, "value": None}
            except DeviceTimeout:
                silent += 1
            except BadResponse as exc:
                garbled.append({"unit": unit, "error": failure(exc, unit)["message"]})
            else:
                value = data[0]
                entry = {"unit": unit, "answer": "ok", "exception": None,
                         "value": bool(value) if isinstance(value, bool) else int(value)}
            break
        if entry is not None:
            present.append(entry)
        if found is not None:
            found(done, len(present), entry)
    return {"endpoint": endpoint(wire.driver.bus), "table": table_, "address": address, "units_asked": len(units),
            "present": present, "garbled": garbled, "silent": silent}


def cmd_scan(args: argparse.Namespace) -> int:
    from gateway.core.errors import DriverError
    from gateway.core.progress import Progress

    bus = _bus(args)
    if not 0 <= args.address <= 65535:
        raise _usage(f"--address {args.address} is outside 0..65535")
    _quietly()
    where = endpoint(bus)
    units: list[int] = args.units

    async def run(bar: Progress) -> dict[str, Any]:
        def found(done: int, present: int, entry: dict[str, Any] | None) -> None:
            bar.update(done, label=f"scanning {where} ({present} found)")

        asyncio.get_running_loop().set_exception_handler(_field_noise)
        wire = Wire(bus)  # pymodbus's clients belong to the loop they are made in
        try:
            return await scan(wire, units, args.table, args.address, found)
        finally:
            await wire.close()

    with Progress(f"scanning {where}", total=len(units), unit="units", quiet=args.json) as bar:
        try:
            result = asyncio.run(run(bar))
        except DriverError as exc:
            bar.clear()
            print(f"{where}: {failure(exc, where=where)['message']}", file=sys.stderr)
            return 1
    result["timeout_s"] = bus.timeout
    if args.json:
        print_json(result)
    else:
        print(render_scan(result))
    return 0 if result["present"] else 1


def render_scan(r: dict[str, Any]) -> str:
    out = [f"{r['endpoint']}: {len(r['present'])} of {r['units_asked']} unit id(s) answered a read of "
           f"{r['table']} {r['address']} ({r['silent']} silent within {r['timeout_s']:g} s"
           + (f", {len(r['garbled'])} garbled" if r["garbled"] else "") + ")"]
    if r["present"]:
        out.append(table([(p["unit"], p["answer"], "" if p["value"] is None else p["value"]) for p in r["present"]],
                         ["unit", "answer", "value"]))
    if r["garbled"]:
        out += ["", "answers that were no valid reply (another baud rate or parity? two units on one id?):",
                table([(g["unit"], g["error"]) for g in r["garbled"]], ["unit", "what came back"])]
    return "\n".join(out)
