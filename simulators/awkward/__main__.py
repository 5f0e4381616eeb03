"""``python -m simulators.awkward``: awkward devices in their own process, until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Sequence

from simulators.awkward.config import AwkwardConfig, parse_behaviour
from simulators.awkward.device import AwkwardServer, serve_awkward
from simulators.endpoints import serve_until_done


async def _serve_consecutive(host: str, configs: list[AwkwardConfig], tick: float | None,
                             attempts: int = 50) -> AwkwardServer:
    """Serve on a run of free consecutive ports, found by binding (as ``registers.serve_consecutive``)."""
    last: OSError | None = None
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        if base + len(configs) <= 65536:
            try:
                return await serve_awkward(host, base, *configs, tick_interval=tick)
            except OSError as exc:
                last = exc
    raise OSError(f"no run of {len(configs)} free ports on {host} after {attempts} attempts") from last


async def _serve(args: argparse.Namespace) -> None:
    configs = [parse_behaviour(spec, seed=args.seed + i, unit_id=args.unit)
               for i, spec in enumerate(args.behaviour * args.count)] or [AwkwardConfig(unit_id=args.unit)]
    tick = args.tick or None
    if args.port:
        server = await serve_awkward(args.host, args.port, *configs, tick_interval=tick)
    else:
        server = await _serve_consecutive(args.host, configs, tick)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending = bytearray()

    def answer(question: str) -> str:
        if question == "stats":
            return "stats " + json.dumps([d.stats.as_dict() for d in server.devices])
        if question == "drop":
            return f"dropped {sum(d.drop_connections() for d in server.devices)}"
        return f"error unknown question {question!r}"

    def readable() -> None:  # one line in, one line out; end of input just stops the questions
        chunk = os.read(0, 4096)
        if not chunk:
            loop.remove_reader(0)
        pending.extend(chunk)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            if line.strip():
                print(answer(line.decode(errors="replace").strip()), flush=True)

    with contextlib.suppress(OSError, ValueError):  # stdin may be a regular file or closed
        loop.add_reader(0, readable)
    parent = os.getppid()
    try:
        print(f"ready {server.ports[0]} {len(server.devices)}", flush=True)
        while os.getppid() == parent and not stop.is_set():  # orphaned (parent SIGKILLed): leave
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.awkward",
        description="Serve awkward Modbus TCP devices on consecutive ports until SIGTERM; prints "
                    "'ready <first_port> <count>', then answers 'stats' (JSON per device) and 'drop' (close "
                    "every client connection) lines on stdin.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="first port (0: a free port each)")
    parser.add_argument("--behaviour", action="append", default=[], metavar="SPEC",
                        help="one device, e.g. 'gaps,limit=32,busy=0.1,slow=1.5' (repeat for more devices)")
    parser.add_argument("--count", type=int, default=1, help="serve the list of --behaviour devices this many times")
    parser.add_argument("--unit", type=int, default=1, help="unit id of every device")
    parser.add_argument("--seed", type=int, default=0, help="device i gets seed + i (unless its spec sets one)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between counter steps (0: never)")
    args = parser.parse_args(argv)
    return serve_until_done("simulators.awkward", _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
