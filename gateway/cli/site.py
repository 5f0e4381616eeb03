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
        "devices": _device_rows(cfg, store, meta),
        "cameras": [{"id": c.id, **meta.get(f"camera:{c.id}", {"state": "never started"})}
                    for c in cfg.cameras if c.enabled],
        "alarms": alarm_counts(store.alarm_states()),
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
    alarms = report["alarms"]
    print(f"alarms {alarms['active']} active, {alarms['unacknowledged']} unacknowledged"
          + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(alarms["by_state"].items())) + ")"
             if alarms["active"] else "") + ("; `gateway alarms list` shows them" if alarms["active"] else ""))
    dropped = report["counters"].get("store.telemetry_dropped", 0)
    if dropped:
        print(f"telemetry dropped for disk cap: {dropped}")
    print()
    rows: list[tuple[Any, ...]] = [
        (d["id"], d["state"], ago(d["since"], now) if d["since"] else "-", ago(d["last_poll"], now),
         "-" if d["polls"] is None else d["polls"], "-" if d["failures"] is None else d["failures"],
         d["kind"] or "(not in the config)", (d["error"] or "")[:60])
        for d in report["devices"]
    ]
    print(table(rows, ["device", "state", "since", "last poll", "polls", "failures", "kind", "last error"]))
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


def _device_rows(cfg: Any, store: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every device the store knows and every configured one, then every enabled camera: one row shape.

    ``kind`` is the device's family ("modbus", "bacnet", "firepanel"; None once it has left the config) or
    "camera". A configured device the daemon has not reported yet is "unknown" ("disabled" if so configured);
    a fire panel is reported once its port opens. A camera's row is what its worker last said (the ``cameras``
    list has all of it): its state, when it said so (``last_poll``), no polls or failures.
    """
    kinds = {d.id: d.driver for d in cfg.devices}
    rows = [{"id": d.id, "kind": kinds.get(d.id), "state": d.state, "since": d.since, "last_poll": d.last_poll,
             "last_ok": d.last_ok, "error": d.error, "polls": d.polls, "failures": d.failures, "errors": d.errors,
             "wire": meta.get(f"device:{d.id}", {}).get("counters", {}),
             "unreadable": meta.get(f"device:{d.id}", {}).get("unreadable", {}),
             **_overrun(meta.get(f"device:{d.id}", {}))}
            for d in store.devices()]
    known = {r["id"] for r in rows}
    rows += [{"id": d.id, "kind": d.driver, "state": "unknown" if d.enabled else "disabled", "since": None,
              "last_poll": None, "last_ok": None, "error": None, "polls": 0, "failures": 0, "errors": {}, "wire": {},
              "unreadable": {}} for d in cfg.devices if d.id not in known]
    for camera in cfg.cameras:
        if not camera.enabled:
            continue
        said = meta.get(f"camera:{camera.id}", {})
        state = str(said.get("state", "never started"))
        rows.append({"id": camera.id, "kind": "camera", "state": state, "since": None, "last_poll": said.get("ts"),
                     "last_ok": said.get("ts") if state == "streaming" else None, "error": said.get("error"),
                     "polls": None, "failures": None, "errors": {}, "wire": {}, "unreadable": {}})
    return rows


def alarm_counts(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The alarm book as stored (the daemon need not run): how many are not normal, by state, how many wait for
    an acknowledgement, and the active ones, most urgent first (as `gateway alarms list` orders them)."""
    from rules.alarm_state import UNACKED

    active = [a for a in records.values() if a.get("state", "normal") != "normal"]
    active.sort(key=lambda a: (a.get("state") not in UNACKED, a.get("activated_at") or 0.0, str(a.get("key"))))
    by_state: dict[str, int] = {}
    for a in active:
        by_state[str(a.get("state"))] = by_state.get(str(a.get("state")), 0) + 1
    return {"active": len(active), "by_state": by_state,
            "unacknowledged": sum(1 for a in active if a.get("state") in UNACKED),
            "list": [{k: a.get(k) for k in ("key", "state", "severity", "source", "message", "activated_at",
                                            "acknowledged_by")} for a in active]}


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


def add_event_filters(p: argparse.ArgumentParser) -> None:
    """`gateway events` filters; ``--since`` is the export's option too (``add_export_arguments``)."""
    p.add_argument("--kind", action="append", default=[], metavar="GLOB",
                   help="only events of this kind, a glob such as 'fire.*' (repeatable); with --export and no"
                        " --device, no readings either (a reading has no kind)")
    p.add_argument("--device", action="append", default=[], metavar="ID",
                   help="only events from this device (the event's source; repeatable)")


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from ``now`` ("90s", "15m", "1h", "2d") or an ISO time (local unless it
    says its zone) -> a Unix time; ValueError says how to write it."""
    from datetime import datetime

    from gateway.core.config import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{text!r}: write a duration like 90s, 15m, 1h or 2d, or an ISO time like "
                         "2026-03-01T08:00 (local) or 2026-03-01T00:00Z") from None


class EventFilter:
    """Which events: kinds by glob, sources, not before a time; one SQL condition, so the log is filtered where
    it lies (it may hold a million rows) rather than in Python."""

    def __init__(self, kinds: list[str], devices: list[str], since: float | None) -> None:
        self.kinds = kinds
        self.devices = devices
        clauses: list[str] = []
        self.params: list[Any] = []
        if kinds:
            clauses.append("(" + " OR ".join(["kind GLOB ?"] * len(kinds)) + ")")
            self.params += kinds
        if devices:
            clauses.append(f"source IN ({', '.join(['?'] * len(devices))})")
            self.params += devices
        if since is not None:
            clauses.append("ts >= ?")
            self.params.append(since)
        self.sql = " AND ".join(clauses) or "1"
        self.since = since

    def start(self, store: Any, last: int) -> int:
        """The seq just before the ``last`` newest matching events (0: all of them)."""
        if not last:
            if self.since is None:
                return 0
            first = store.db.execute("SELECT MIN(seq) FROM events WHERE ts >= ?", (self.since,)).fetchone()[0]
            return int(first) - 1 if first is not None else store.last_event_seq()  # by the index on ts
        row = store.db.execute(f"SELECT seq FROM events WHERE {self.sql} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                               (*self.params, last - 1)).fetchone()
        return int(row[0]) - 1 if row else 0

    def after(self, store: Any, seq: int, upto: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        rows = store.db.execute(
            f"SELECT seq, id, ts, kind, source, priority, payload FROM events WHERE seq > ? AND seq <= ? AND "
            f"{self.sql} ORDER BY seq LIMIT ?", (seq, upto, *self.params, limit))
        return [(n, {"id": id_, "ts": ts, "kind": kind, "source": source, "priority": prio, "data": json.loads(data)})
                for n, id_, ts, kind, source, prio, data in rows]


class FilteredRecording:
    """The store as `--export` reads it, with the filters: events by kind and source, readings by device. Asked
    for kinds of events only (``--kind`` without ``--device``), it exports no readings: a reading has no kind, and
    all of them would bury the few events asked for."""

    def __init__(self, store: Any, events: EventFilter) -> None:
        self.store = store
        self.events = events

    def samples_since(self, since: float = 0.0) -> Any:
        if not self.events.devices:
            return iter(()) if self.events.kinds else self.store.samples_since(since)
        rows = self.store.db.execute(
            f"SELECT device, ts, points FROM samples WHERE ts >= ? AND device IN "
            f"({', '.join(['?'] * len(self.events.devices))}) ORDER BY ts, rowid", (since, *self.events.devices))
        return ((device, ts, json.loads(points)) for device, ts, points in rows)

    def events_since(self, since: float = 0.0) -> Any:
        rows = self.store.db.execute(
            f"SELECT id, ts, kind, source, priority, payload FROM events WHERE ts >= ? AND {self.events.sql} "
            "ORDER BY ts, seq", (since, *self.events.params))
        return ({"id": id_, "ts": ts, "kind": kind, "source": source, "priority": prio, "data": json.loads(data)}
                for id_, ts, kind, source, prio, data in rows)


def cmd_events(args: argparse.Namespace) -> int:
    now = time.time()
    since = None
    if getattr(args, "since", None):
        try:
            since = parse_since(args.since, now)
        except ValueError as exc:
            print(f"--since: {exc}", file=sys.stderr)
            return 2
    kinds, devices = getattr(args, "kind", []), getattr(args, "device", [])
    if any(not k.strip() for k in kinds) or any(not d.strip() for d in devices):
        print("--kind and --device need a value (e.g. --kind 'fire.*' --device panel-b3)", file=sys.stderr)
        return 2
    if args.last < 0:
        print("-n must be 0 (everything) or more", file=sys.stderr)
        return 2
    chosen = EventFilter(kinds, devices, since)
    cfg = load(args)
    store = stored(cfg)
    if getattr(args, "export", None) is not None:
        from gateway.cli.rules import export_events

        if since is not None:  # the export reads a duration: an ISO time becomes the one that reaches back to it
            args.since = f"{max(0.0, now - since):.3f}s"
        return export_events(FilteredRecording(store, chosen) if kinds or devices else store, args)
    last = chosen.start(store, args.last)

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
            top = store.last_event_seq()  # rows past the last match are passed over once, not scanned each time
            batch = chosen.after(store, last, top)
            show(batch)
            full = len(batch) == 1000
            last = batch[-1][0] if full else top
            if full:
                continue
            if not args.follow:
                return 0
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
