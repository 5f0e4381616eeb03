"""A generic Modbus TCP register bank: raw words and bits, set by a test or counting on their own.

The meter simulator plays one kind of device faithfully; this one is a blank device of any size.
A test writes the exact words a layout needs (so a decoding bug cannot hide behind a simulator
that shares the gateway's codec), and a benchmark gets as many endpoints as it asks for, with data
that keeps changing so nothing constant flatters the figures.

``python -m simulators.registers`` serves banks from their own process, so a benchmark measures
the gateway's CPU alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext

from drivers.modbus.codec import BIT_TABLES, Table
from simulators.endpoints import ModbusEndpoints, port_range, quiet_pymodbus, sequential_block, serve_until_done

UNIT_ID = 1


class RegisterBank:
    """One device: holding and input registers, coils and discretes, ``size`` of each, at address 0.."""

    def __init__(self, size: int = 1000) -> None:
        if not 1 <= size <= 65536:
            raise ValueError(f"size {size} is outside 1..65536")
        self.size = size
        self._blocks: dict[Table, ModbusSequentialDataBlock] = {
            table: sequential_block([False] * size if table in BIT_TABLES else [0] * size) for table in Table
        }
        self.context = ModbusDeviceContext(
            hr=self._blocks[Table.HOLDING],
            ir=self._blocks[Table.INPUT],
            co=self._blocks[Table.COIL],
            di=self._blocks[Table.DISCRETE],
        )

    def set(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Store raw words (0..65535) or bits from zero-based wire ``address`` on, exactly as given."""
        table = Table(table)
        self._check_range(table, address, len(values))
        if table in BIT_TABLES:
            if any(v not in (0, 1) for v in values):
                raise ValueError(f"{table.value} values must be bools, got {list(values)!r}")
            stored: list[int] | list[bool] = [bool(v) for v in values]
        else:
            if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF for v in values):
                raise ValueError(f"{table.value} values must be 16-bit words, got {list(values)!r}")
            stored = [int(v) for v in values]
        self._blocks[table].values[address : address + len(stored)] = stored

    def get(self, table: Table, address: int, count: int = 1) -> list[int] | list[bool]:
        table = Table(table)
        self._check_range(table, address, count)
        return list(self._blocks[table].values[address : address + count])

    def fill_counters(self) -> None:
        """Every register starts at its own address and every bit at its address's parity."""
        for table, block in self._blocks.items():
            if table in BIT_TABLES:
                block.values[:] = [bool(a & 1) for a in range(self.size)]
            else:
                block.values[:] = [a & 0xFFFF for a in range(self.size)]

    def step(self) -> None:
        """Advance every counter: registers count up (wrapping at 65535), bits flip."""
        for table, block in self._blocks.items():
            if table in BIT_TABLES:
                block.values[:] = [not v for v in block.values]
            else:
                block.values[:] = [(v + 1) & 0xFFFF for v in block.values]

    def _check_range(self, table: Table, address: int, count: int) -> None:
        if count < 1 or address < 0 or address + count > self.size:
            raise ValueError(f"{table.value} {address}+{count} is outside this bank's 0..{self.size - 1}")


class RegisterServer(ModbusEndpoints):
    """One bank per endpoint, each on its own port (unit id 1), optionally counting once a tick."""

    def __init__(self, host: str, ports: list[int], banks: list[RegisterBank], *, fill: bool,
                 tick_interval: float) -> None:
        contexts = [
            ModbusServerContext(devices={UNIT_ID: b.context}, single=False)  # type: ignore[no-untyped-call]
            for b in banks
        ]
        super().__init__(host, ports, contexts)
        self.banks = banks
        self.fill = fill
        self.tick_interval = tick_interval

    def step_all(self) -> None:
        for bank in self.banks:
            bank.step()


async def serve_registers(
    host: str,
    port: int,
    count: int = 1,
    *,
    size: int = 1000,
    fill: bool = False,
    tick_interval: float = 1.0,
) -> RegisterServer:
    """Start ``count`` banks on ``port``, ``port + 1``, ...; port 0 picks free ports (see ``.ports``).

    Banks start zeroed and stay as set. ``fill=True`` starts the counters of ``fill_counters`` and
    steps them every ``tick_interval`` seconds, for benchmarks that must not read constant data.
    """
    if tick_interval <= 0:
        raise ValueError("tick_interval must be > 0")
    ports = port_range(port, count)
    quiet_pymodbus()
    banks = [RegisterBank(size) for _ in range(count)]
    if fill:
        for bank in banks:
            bank.fill_counters()
    server = RegisterServer(host, ports, banks, fill=fill, tick_interval=tick_interval)
    await server.start_all()
    if fill:
        server.tick_every(tick_interval, server.step_all, "register-simulator-tick")
    return server


async def serve_consecutive(host: str, count: int, *, attempts: int = 50, size: int = 1000, fill: bool = False,
                            tick_interval: float = 1.0) -> RegisterServer:
    """Like ``serve_registers`` on a run of free consecutive ports, found by binding rather than guessing.

    Probing for free ports and binding later races with anything else starting up on the machine
    (parallel test runs); here the bind is the probe, and a taken port just moves the run along.
    """
    last: OSError | None = None
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        if base + count > 65536:
            continue
        try:
            return await serve_registers(host, base, count, size=size, fill=fill, tick_interval=tick_interval)
        except OSError as exc:
            last = exc
    raise OSError(f"no run of {count} free ports on {host} after {attempts} attempts") from last


async def _serve(args: argparse.Namespace) -> None:
    if args.port:
        server = await serve_registers(args.host, args.port, args.count, size=args.size, fill=args.fill,
                                       tick_interval=args.tick)
    else:
        server = await serve_consecutive(args.host, args.count, size=args.size, fill=args.fill,
                                         tick_interval=args.tick)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    try:
        print(f"ready {server.ports[0]} {args.count}", flush=True)
        # A parent killed with SIGKILL cannot stop us: leave when we are orphaned instead.
        while os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
            if stop.is_set():
                break
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.registers",
        description="Serve Modbus TCP register banks (unit id 1) on consecutive ports until SIGTERM; "
                    "prints 'ready <first_port> <count>' once listening.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="first port (0: find a free run)")
    parser.add_argument("--count", type=int, default=1, help="devices, one port each")
    parser.add_argument("--size", type=int, default=1000, help="entries in each of the four tables")
    parser.add_argument("--fill", action="store_true", help="registers count up, bits flip, every tick")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between counter steps")
    args = parser.parse_args(argv)
    return serve_until_done("simulators.registers", _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
