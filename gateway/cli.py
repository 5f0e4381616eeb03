"""`gateway`: the technician's command line. Every command has --json with a stable shape."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__

DEFAULT_CONFIG = "/etc/gateway/config.toml"


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.1f}s ago"


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _load(args: argparse.Namespace) -> Any:
    from gateway.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


# -- commands ------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import check_file

    return check_file(args.config, sys.stdout)


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.schema import json_schema

    print(json_schema())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.config.loader import config_hash
    from gateway.daemon import Daemon

    cfg = _load(args)
    logs.configure(cfg.log.level, cfg.log.format)

    async def main() -> None:  # the daemon installs its own SIGTERM handling once the loop runs
        await Daemon(cfg, config_hash=config_hash(args.config)).run()

    asyncio.run(main())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.daemon import data_path, open_store, pid_alive

    cfg = _load(args)
    if not data_path(cfg).exists():
        print(f"no store at {data_path(cfg)}: the gateway has not run yet", file=sys.stderr)
        return 1
    store = open_store(cfg, read_only=True)
    now = time.time()
    meta = store.meta()
    daemon = meta.get("daemon", {})
    running = daemon.get("state") == "running" and pid_alive(int(daemon.get("pid", 0))) \
        and now - float(daemon.get("heartbeat", 0)) < 30
    report = {
        "site": cfg.site.id,
        "daemon": {**daemon, "running": running},
        "uplink": meta.get("uplink", {"state": "unknown"}),
        "outbox": store.outbox_depth(),
        "counters": store.counters(),
        "devices": [
            {"id": d.id, "state": d.state, "since": d.since, "last_poll": d.last_poll, "last_ok": d.last_ok,
             "error": d.error, "polls": d.polls, "failures": d.failures}
            for d in store.devices()
        ],
    }
    if args.json:
        _print_json(report)
        return 0
    state = "running" if running else "NOT RUNNING"
    print(f"site {cfg.site.id}: daemon {state} (pid {daemon.get('pid', '-')}, version {daemon.get('version', '-')},"
          f" up since {_ago(daemon.get('started'), now)})")
    up = report["uplink"]
    print(f"uplink {up.get('state')} since {_ago(up.get('since'), now)}"
          + (f" - {up['error']}" if up.get("error") else ""))
    depth = report["outbox"]
    print("outbox " + ", ".join(f"{k} {v}" for k, v in depth.items()))
    dropped = report["counters"].get("store.telemetry_dropped", 0)
    if dropped:
        print(f"telemetry dropped for disk cap: {dropped}")
    print()
    rows = [
        (d["id"], d["state"], _ago(d["since"], now), _ago(d["last_poll"], now), d["polls"], d["failures"],
         (d["error"] or "")[:60])
        for d in report["devices"]
    ]
    print(_table(rows, ["device", "state", "since", "last poll", "polls", "failures", "last error"]))
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    from drivers.base import DriverError
    from drivers.registry import DRIVERS

    cfg = _load(args)
    try:
        device = cfg.device(args.device)
    except KeyError:
        print(f"no device {args.device!r} in {args.config}", file=sys.stderr)
        return 2
    if args.point and args.point not in device.point_ids():
        print(f"device {args.device!r} has no point {args.point!r}", file=sys.stderr)
        return 2

    async def read() -> list[Any]:
        driver = DRIVERS[cfg.bus(device.bus).driver](cfg.bus(device.bus), [device])
        try:
            return await driver.read(device.id)
        finally:
            await driver.close()

    try:
        readings = asyncio.run(read())
    except DriverError as exc:
        print(f"{device.id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.point:
        readings = [r for r in readings if r.point == args.point]
    if args.json:
        _print_json([{"device": r.device, "point": r.point, "value": r.value, "unit": r.unit,
                      "quality": r.quality.value, "ts": r.ts} for r in readings])
        return 0
    print(_table([(r.point, _fmt(r.value), r.unit or "", r.quality.value) for r in readings],
                 ["point", "value", "unit", "quality"]))
    return 0


def _fmt(value: Any) -> str:
    """Six significant digits hide float32 noise, but never the integer digits of a counter.

    Plain ``.6g`` shows an energy register of 1234567.8 kWh as ``1.23457e+06``: the technician
    comparing it with the meter's display sees neither the same number nor the same notation.
    """
    if value is None:
        return "-"
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        whole = len(str(int(abs(value))))
        return f"{value:.{max(6, whole + 3)}g}"
    return str(value)


def cmd_events(args: argparse.Namespace) -> int:
    from gateway.daemon import data_path, open_store

    cfg = _load(args)
    if not data_path(cfg).exists():
        print(f"no store at {data_path(cfg)}", file=sys.stderr)
        return 1
    store = open_store(cfg, read_only=True)
    last = max(0, store.last_event_seq() - args.last) if args.last else 0

    def show(batch: list[tuple[int, dict[str, Any]]]) -> None:
        for _, ev in batch:
            if args.json:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["ts"]))
                data = " ".join(f"{k}={v}" for k, v in ev["data"].items() if k != "trace")
                print(f"{stamp}  {ev['priority']:<9} {ev['kind']:<24} {ev['source']:<16} {data}", flush=True)

    try:
        while True:
            batch = store.events_after(last)
            show(batch)
            if batch:
                last = batch[-1][0]
            if not args.follow:
                return 0
            if not batch:
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.meter import run_meters

    print(f"serving {args.count} simulated meter(s) on {args.host}:{args.port}..{args.port + args.count - 1}",
          file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_meters(args.host, args.port, args.count))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(duration=args.duration, meters=args.meters)


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway import bench

    runner: Callable[[argparse.Namespace], int] = getattr(bench, f"bench_{args.what}")
    return runner(args)


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Community edge gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help_: str, *, config: bool = True,
                json_: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if config:
            p.add_argument("-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="config file (TOML)")
        if json_:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(fn=fn)
        return p

    command("run", cmd_run, "run the gateway daemon", json_=False)
    command("check", cmd_check, "validate a config file; exit 2 on problems", json_=False)
    cfg = sub.add_parser("config", help="config helpers").add_subparsers(dest="sub", required=True)
    schema = cfg.add_parser("schema", help="print the config JSON Schema (for editors)")
    schema.set_defaults(fn=cmd_schema)
    command("status", cmd_status, "devices, uplink and outbox at a glance")
    p = command("read", cmd_read, "read a device live, bypassing the store")
    p.add_argument("device")
    p.add_argument("point", nargs="?")
    p = command("events", cmd_events, "show the event log")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("-n", "--last", type=int, default=50, help="start with the last N events (0 = all)")
    p = command("demo", cmd_demo, "simulated meters -> daemon -> local broker, live on screen",
                config=False, json_=False)
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)")
    p.add_argument("--meters", type=int, default=3)
    sim = sub.add_parser("simulate", help="run simulated field devices").add_subparsers(dest="sub", required=True)
    p = sim.add_parser("meter", help="3-phase power meters on Modbus TCP, one port each")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(fn=cmd_simulate)
    bench = sub.add_parser("bench", help="print performance figures").add_subparsers(dest="what", required=True)
    p = bench.add_parser("modbus", help="poll throughput against simulated register banks")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--no-cold-start", dest="cold_start", action="store_false", help="skip the cold-start figure")
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the daemon memory figure")
    p.add_argument("--rss-devices", type=int, default=100)
    p.add_argument("--rss-points", type=int, default=20)
    p.add_argument("--rss-seconds", type=float, default=10)
    p.set_defaults(fn=cmd_bench)
    p = bench.add_parser("uplink", help="outbox replay rate and live-alarm latency to a local broker")
    p.add_argument("--events", type=int, default=50000)
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.fn(args)
    return result
