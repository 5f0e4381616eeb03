"""Site-level commands: run the daemon, check the config, status, events, demo, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import ago, load, print_json, stored, table


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import check_file

    return check_file(args.config, sys.stdout)


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.schema import json_schema

    print(json_schema())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import structlog

    from gateway.config.loader import ConfigProblem, config_hash
    from gateway.core import logs
    from gateway.daemon import Daemon
    from gateway.lock import AlreadyRunning, DataDirLock

    warnings: list[ConfigProblem] = []
    cfg = load(args, warnings=warnings)
    logs.configure(cfg.log.level, cfg.log.format)
    for warning in warnings:
        structlog.get_logger("gateway.config").warning("config key deprecated", problem=warning.format())

    lock = DataDirLock(cfg.store.data_dir)
    try:  # before anything is opened: a second daemon on the same store touches nothing
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"gateway run: {exc}", file=sys.stderr)
        return 2
    os.umask(os.umask(0o027) | 0o027)  # the store holds residents' data: never world-readable, whoever starts us

    path = Path(os.path.abspath(args.config))  # not resolved: a reload follows a symlinked config anew

    async def main() -> None:  # the daemon installs its own SIGTERM handling once the loop runs
        await Daemon(cfg, config_hash=config_hash(path), lock=lock, config_path=path).run()

    asyncio.run(main())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.daemon import pid_alive
    from gateway.lock import is_locked

    cfg = load(args)
    store = stored(cfg)
    now = time.time()
    meta = store.meta()
    daemon = meta.get("daemon", {})
    locked = is_locked(cfg.store.data_dir)  # the kernel's word: a live daemon holds the store's lock
    running = locked and daemon.get("state") == "running" and pid_alive(int(daemon.get("pid", 0))) \
        and now - float(daemon.get("heartbeat", 0)) < 30
    uplink = meta.get("uplink", {"state": "unknown"})
    if not running:  # what the daemon last wrote is history, not the present
        uplink = {**uplink, "stale": True}
    uplinks = _uplinks(cfg, store, meta, running)
    report = {
        "site": cfg.site.id,
        "daemon": {**daemon, "running": running},
        "uplink": uplink,
        "uplinks": uplinks,
        "outbox": store.outbox_depth(),
        "counters": store.counters(),
        "devices": [
            {"id": d.id, "state": d.state, "since": d.since, "last_poll": d.last_poll, "last_ok": d.last_ok,
             "error": d.error, "polls": d.polls, "failures": d.failures, "errors": d.errors,
             "wire": meta.get(f"device:{d.id}", {}).get("counters", {}),
             "unreadable": meta.get(f"device:{d.id}", {}).get("unreadable", {}),
             **_overrun(meta.get(f"device:{d.id}", {}))}
            for d in store.devices()
        ],
        "cameras": [{"id": c.id, **meta.get(f"camera:{c.id}", {"state": "never started"})}
                    for c in cfg.cameras if c.enabled],
    }
    if args.json:
        print_json(report)
        return 0 if running else 1
    state = "running" if running else "NOT RUNNING"
    print(f"site {cfg.site.id}: daemon {state} (pid {daemon.get('pid', '-')}, version {daemon.get('version', '-')},"
          f" up since {ago(daemon.get('started'), now)})")
    last_seen = " (last seen by the daemon, which is not running)" if uplink.get("stale") else ""
    for up in uplinks if len(uplinks) > 1 else [{**uplink, "name": "mqtt"}]:
        name = "" if up["name"] == "mqtt" else f" {up['name']}"
        more = (f", broker {up['broker']}" if up.get("broker") else "") + (
            f", backlog {up['backlog']}" if len(uplinks) > 1 else "")
        print(f"uplink{name} {up.get('state')} since {ago(up.get('since'), now)}{last_seen}{more}"
              + (f" - {up['error']}" if up.get("error") else ""))
    depth = report["outbox"]
    print("outbox " + ", ".join(f"{k} {v}" for k, v in depth.items()))
    dropped = report["counters"].get("store.telemetry_dropped", 0)
    if dropped:
        print(f"telemetry dropped for disk cap: {dropped}")
    print()
    rows = [
        (d["id"], d["state"], ago(d["since"], now), ago(d["last_poll"], now), d["polls"], d["failures"],
         (d["error"] or "")[:60])
        for d in report["devices"]
    ]
    print(table(rows, ["device", "state", "since", "last poll", "polls", "failures", "last error"]))
    for d in report["devices"]:
        for point, found in sorted(d["unreadable"].items()):
            print(f"  {d['id']}.{point}: unreadable at {found.get('address')} ({found.get('answer')}); "
                  "check the register map")
    for d in report["devices"]:
        pace = d.get("overrun", {})
        if pace.get("overrunning"):
            print(f"overrun: {d['id']} polls every {pace['actual']:.2f} s (configured {pace['interval']:.2f} s), "
                  f"{pace['overruns']:,} slots missed")
    if report["cameras"]:
        print()
        rows = [(c["id"], c.get("state"), ago(c.get("ts"), now), c.get("frames", "-"), c.get("analysed", "-"),
                 c.get("gated", "-"), " ".join(f"{k} {v}ms" for k, v in (c.get("ms") or {}).items()))
                for c in report["cameras"]]
        print(table(rows, ["camera", "state", "updated", "frames", "analysed", "gated", "model time"]))
    return 0 if running else 1


def _uplinks(cfg: Any, store: Any, meta: dict[str, Any], running: bool) -> list[dict[str, Any]]:
    """Every configured uplink: its state as the daemon last wrote it, its broker, and what it has still to
    deliver (its backlog in the one outbox)."""
    from gateway.northbound.routes import status_key, uplink_configs

    out = []
    for name, config in uplink_configs(cfg).items():
        if not config.enabled:
            out.append({"name": name, "state": "disabled", "backlog": 0})
            continue
        entry = {"name": name, **meta.get(status_key(name), {"state": "unknown"}), "backlog": store.backlog(name)}
        out.append(entry if running else {**entry, "stale": True})
    return out


def _overrun(status: dict[str, Any]) -> dict[str, Any]:
    """A device's pace (the poller's ``poll`` figures) once it has missed a slot; absent for one that never has."""
    pace = status.get("poll")
    if not isinstance(pace, dict) or not (pace.get("overruns") or pace.get("overrunning")):
        return {}
    return {"overrun": pace}


def cmd_events(args: argparse.Namespace) -> int:

    cfg = load(args)
    store = stored(cfg)
    if getattr(args, "export", None) is not None:
        from gateway.cli.rules import export_events

        return export_events(store, args)
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

    if args.sub == "firepanel":
        from simulators.firepanel import run_firepanel

        runner = run_firepanel(args.format, script=args.script, random_rate=args.random, heartbeat=args.heartbeat,
                               silent_after=args.silent_after, silent_for=args.silent_for,
                               terminator=args.terminator, baudrate=args.baud, seed=args.seed)
    elif args.sub == "elevator":
        from simulators.elevator import run_elevators

        runner = run_elevators(args.host, args.port, args.count, rtu=args.rtu, baudrate=args.baud)
    else:
        print(f"serving {args.count} simulated meter(s) on {args.host}:{args.port}..{args.port + args.count - 1}",
              file=sys.stderr)
        runner = run_meters(args.host, args.port, args.count)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(duration=args.duration, meters=args.meters, camera=args.camera)
