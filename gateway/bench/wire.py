"""Simulated devices that count what reaches them: request counts measured at the server side.

``python -m gateway.bench.wire modbus --count N --size S`` serves ``simulators.registers`` banks
(counting up once a second), ``python -m gateway.bench.wire meter --port P --count N`` serves
``simulators.meter`` meters (a relay that can be written) on ports P, P + 1, ..., and
``python -m gateway.bench.wire bacnet --port P --count N ...`` serves ``simulators.bacnet``
controllers. Each prints ``ready <first_port> <count>`` once listening, then answers every
``requests`` line on stdin with ``requests <json>``: the requests served so far over all devices, by
Modbus function code (reads for banks, writes for meters) or BACnet service. End of stdin or
SIGTERM stops them.

A bench asks before and after its window, so a figure such as "requests per poll" is what the
devices were asked, not what the gateway's read plan says it should ask.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from simulators.endpoints import serve_until_done

Served = tuple[Callable[[], Awaitable[None]], Callable[[], dict[str, int]]]
"""How to stop the devices, and their request counts so far."""


async def _modbus(args: argparse.Namespace) -> Served:
    from simulators.registers import serve_consecutive

    counts: Counter[str] = Counter()
    server = await serve_consecutive(args.host, args.count, size=args.size, fill=True)
    for bank in server.banks:
        context = bank.context
        read = context.async_getValues

        async def counted(func_code: int, address: int, count: int = 1, _read: Any = read) -> Any:
            counts[f"fc{func_code}"] += 1  # one call per read request: pymodbus's PDUs each ask once
            return await _read(func_code, address, count)

        context.async_getValues = counted  # type: ignore[method-assign]
    print(f"ready {server.ports[0]} {args.count}", flush=True)
    return server.close, lambda: dict(counts)


async def _meter(args: argparse.Namespace) -> Served:
    from simulators.meter import serve_meters

    counts: Counter[str] = Counter()
    server = await serve_meters(args.host, args.port, count=args.count)
    for meter in server.meters:
        context = meter.context
        write = context.async_setValues

        async def counted(func_code: int, address: int, values: Any, _write: Any = write) -> Any:
            counts[f"fc{func_code}"] += 1  # a client's write: the meters' own ticks set values directly
            return await _write(func_code, address, values)

        context.async_setValues = counted  # type: ignore[method-assign]
    print(f"ready {server.ports[0]} {args.count}", flush=True)
    return server.close, lambda: dict(counts)


async def _bacnet(args: argparse.Namespace) -> Served:
    from simulators.bacnet import serve_bacnet

    devices = [await serve_bacnet(f"{args.host}:{args.port + i}", args.instance + i,
                                  analog_inputs=args.analog_inputs) for i in range(args.count)]

    def totals() -> dict[str, int]:
        counts: Counter[str] = Counter()
        for device in devices:
            counts.update(device.app.requests)  # the simulator's own count, by service
        return dict(counts)

    async def close() -> None:
        for device in devices:
            await device.close()

    print(f"ready {args.port} {args.count}", flush=True)
    return close, totals


async def _serve(args: argparse.Namespace) -> None:
    close, totals = await {"modbus": _modbus, "meter": _meter, "bacnet": _bacnet}[args.kind](args)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:  # a daemon thread: a blocked read must not keep the process alive
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip() or "?")
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        while question := await lines.get():
            if question == "requests":
                print("requests " + json.dumps(totals()), flush=True)
            else:
                print(f"error unknown question {question!r}", flush=True)
    finally:
        await close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.wire", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["modbus", "meter", "bacnet"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--count", type=int, default=1, help="devices, one port each")
    parser.add_argument("--size", type=int, default=1000, help="Modbus: entries in each of the four tables")
    parser.add_argument("--port", type=int, default=47901, help="meter, BACnet: first TCP / UDP port")
    parser.add_argument("--instance", type=int, default=2001, help="BACnet: first device instance")
    parser.add_argument("--analog-inputs", type=int, default=0, help="BACnet: extra analog inputs per device")
    args = parser.parse_args(argv)
    return serve_until_done("gateway.bench.wire", _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
