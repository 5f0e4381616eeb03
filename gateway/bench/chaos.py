"""`gateway bench chaos`: the real daemon through crashes, outages and a full disk, and nothing lost.

Each scenario starts a world of its own (``chaos_world``: a persistent Mosquitto, a persistent-session
platform subscriber, three Modbus TCP meters polled every 200 ms, a GBK fire panel on a pty pair
printing fire alarms, and ``gateway run``), lets it settle, makes its faults (``chaos_faults``),
then waits for everything stored to reach the platform and stops the daemon as systemd would.
Per scenario it reports what was stored but never delivered (the outbox and the event log against
what the platform received; the readings history against the telemetry received), fire lines
printed against ``fire.alarm`` messages received, duplicates (allowed: delivery is at least once),
per-device telemetry order inversions (counted, allowed), the drain time after the last fault, and
the daemon's RSS and descriptor growth. Any loss makes the exit status 1; a scenario this machine
cannot run is skipped with its reason, never reported as passed.

Light at import (the CLI registers it): the worlds and the simulators are imported when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.harness import Report, add_json, bad_args, num, options, run, workdir

if TYPE_CHECKING:
    from gateway.bench.chaos_faults import Scenario
    from gateway.bench.chaos_world import Plan

KEYS = ("broker_kill", "gateway_kill", "disk_full", "clock_jump", "device_flap", "serial_unplug")


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    quick: bool = False
    faults: int | None = None
    """Faults per scenario; default 5, or 2 with --quick."""
    only: tuple[str, ...] = ()
    disk: str = "auto"
    parallel: int | None = None
    """Scenarios run at once (each in its own world); default 1, or 3 with --quick."""

    @property
    def at_once(self) -> int:
        return self.parallel or (3 if self.quick else 1)

    def plan(self) -> Plan:
        from gateway.bench.chaos_world import Plan

        if self.quick:
            return Plan(faults=self.faults or 2, hold=1.0, gap=1.0, settle=1.0, drain_limit=20.0)
        return Plan(faults=self.faults or 5, hold=2.0, gap=3.0, settle=3.0, drain_limit=60.0)


def add_command(bench: Any) -> None:
    """`gateway bench chaos` on the bench subparsers."""
    p = bench.add_parser("chaos", help="the daemon through broker/gateway kills, a full disk, clock jumps, a flapping"
                                       " device and an unplugged panel: nothing lost")
    p.add_argument("--quick", action="store_true", help="CI size: 2 short faults per scenario (under a minute)")
    p.add_argument("--faults", type=int, help="faults per scenario (default 5; 2 with --quick)")
    p.add_argument("--only", nargs="+", choices=KEYS, help="run these scenarios only")
    p.add_argument("--parallel", type=int, help="scenarios run at once, each in its own world (default 1; 3 with"
                                                " --quick)")
    p.add_argument("--disk", choices=["auto", "tmpfs", "cap"], default=Options.disk,
                   help="how the disk fills: a tmpfs on the data directory (root), SQLite's page cap, or the first"
                        " that works")
    add_json(p)
    p.set_defaults(fn=bench_chaos)


def bench_chaos(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if (opts.faults is not None and opts.faults < 1) or (opts.parallel is not None and opts.parallel < 1):
        return bad_args("--faults and --parallel must be at least 1")
    opts = Options(opts.quick, opts.faults, tuple(opts.only or ()), opts.disk, opts.parallel)
    report = Report.of("chaos", opts, args)
    report.params["plan"] = dataclasses.asdict(opts.plan())

    def body(report: Report) -> None:
        with workdir("gateway-bench-chaos-", "critical") as work:  # the faults make the daemon complain: on purpose
            asyncio.run(_bench(opts, work, report))

    return run(report, body)


async def _bench(opts: Options, work: Path, report: Report) -> None:
    from gateway.bench.chaos_faults import SCENARIOS

    plan = opts.plan()
    chosen = [s for s in SCENARIOS if not opts.only or s.key in opts.only]
    report.say(f"gateway bench chaos: {len(chosen)} scenarios, {plan.faults} fault(s) each ({plan.hold:g} s each,"
               f" {plan.gap:g} s apart); per scenario a fresh world: persistent Mosquitto, persistent-session"
               f" platform subscriber (QoS 1), {plan.meters} Modbus TCP meters x {plan.points} points every"
               f" {plan.interval:g} s, a GBK fire panel on a pty printing {plan.line_rate:g} fire alarms/s,"
               f" `gateway run` (store synchronous=full); all on 127.0.0.1; {opts.at_once} scenario(s) at once", "")
    slots = asyncio.Semaphore(opts.at_once)

    async def one(scenario: Scenario) -> dict[str, Any]:
        async with slots:
            result = await _scenario(scenario, work / scenario.key, plan, opts.disk)
        report.say(f"{scenario.key} ({scenario.title}): {_summary(result)}")
        return result

    done = await asyncio.gather(*(one(s) for s in chosen))
    results = {s.key: r for s, r in zip(chosen, done, strict=True)}
    for key, result in results.items():
        for text in _losses(key, result):
            report.problem(text)
    report.figure(scenarios=results, ran=[k for k, r in results.items() if r["ran"]],
                  skipped={k: r["skipped"] for k, r in results.items() if not r["ran"]})
    lost = [_lost(r) for r in results.values() if r["ran"] and "error" not in r]
    report.derive("lost_total", sum(lost), "sum over scenarios that ran of stored_not_delivered.total +"
                  " telemetry_not_delivered + (alarm_lines.sent - alarm_lines.delivered)")
    report.say("", _table(results),
               "stored, not delivered = rows in the outbox or the event log at the end that the platform never got;"
               " telemetry not delivered = readings stored (history) whose telemetry message never arrived;"
               " inversions = a device's telemetry delivered after a newer one of the same device (counted, allowed);"
               " drain = end of the last fault -> everything stored by then, and every fire line printed, at the"
               " platform; RSS and fd growth = daemon at the end minus after the settle (a restarted daemon is a new"
               " process); dropped by policy (not loss: never stored, or let go by the store's rules) = telemetry"
               " over the disk cap, and what a full disk sheds",
               *(f"{key}: SKIPPED ({r['skipped']}); not a pass" for key, r in results.items() if not r["ran"]))


def _lost(r: dict[str, Any]) -> int:
    lines = r["alarm_lines"]
    return int(r["stored_not_delivered"]["total"] + r["telemetry_not_delivered"] + lines["sent"] - lines["delivered"])


def _losses(key: str, r: dict[str, Any]) -> list[str]:
    if not r["ran"]:
        return []
    if "error" in r:
        return [f"{key}: the scenario did not complete: {r['error']}"]
    out = []
    stored, lines = r["stored_not_delivered"], r["alarm_lines"]
    if stored["total"]:
        out.append(f"{key}: {stored['total']} stored messages never reached the platform ({stored['outbox']} in the"
                   f" outbox, {stored['events']} of the event log)")
    if r["telemetry_not_delivered"]:
        out.append(f"{key}: {r['telemetry_not_delivered']} stored readings' telemetry never reached the platform")
    if lines["sent"] != lines["delivered"]:
        out.append(f"{key}: {lines['sent']} fire lines printed, {lines['delivered']} fire.alarm received;"
                   f" missing {lines['missing']}")
    if r["drain_s"] is None:
        out.append(f"{key}: not drained within {r['drain_limit_s']:g} s of the last fault")
    if r["daemon"]["unexpected_exits"]:
        out.append(f"{key}: the daemon exited by itself with {r['daemon']['unexpected_exits']}")
    return out


async def _scenario(scenario: Scenario, work: Path, plan: Plan, disk: str) -> dict[str, Any]:
    from gateway.bench.chaos_world import World

    await asyncio.to_thread(work.mkdir)
    started = time.monotonic()
    limit = plan.settle + plan.faults * (plan.hold + plan.gap + 45.0) + plan.drain_limit + 90.0
    with scenario.prepare(work, disk) as setup:
        if isinstance(setup, str):
            return {"ran": False, "skipped": setup}
        out: dict[str, Any] = {"ran": True, "method": setup.method or "as shipped", "drain_limit_s": plan.drain_limit}
        try:
            async with asyncio.timeout(limit), World(work, plan, setup) as world:
                await asyncio.sleep(plan.settle)
                rss0, fds0 = world.stats()
                faults = await scenario.perform(world, plan)
                drain = await world.drain()
                rss1, fds1 = world.stats()
                code = await world.stop_daemon()
                store = await world.account()
                arrivals = world.arrivals
                sent = set(world.sent)
                daemon = {"rss_mb_start": rss0, "rss_mb_end": rss1, "rss_growth_mb": _minus(rss1, rss0),
                          "fds_start": fds0, "fds_end": fds1, "fd_growth": _minus(fds1, fds0),
                          "processes": world.incarnations, "unexpected_exits": world.unexpected_exits,
                          "exit_code": code}
        except (OSError, RuntimeError, TimeoutError, sqlite3.Error, ValueError) as exc:
            return {**out, "error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - started}
    return {
        **out, "faults": faults, "fault_count": len(faults),
        "stored_not_delivered": {"outbox": store["outbox_not_delivered"], "events": store["events_not_delivered"],
                                 "total": store["not_delivered"]},
        "telemetry_not_delivered": store["telemetry_not_delivered"], "dropped_by_policy": store["dropped_by_policy"],
        "alarm_lines": {"sent": len(sent), "delivered": len(sent & arrivals.fire_markers),
                        "missing": sorted(sent - arrivals.fire_markers)[:20]},
        "duplicates": {"count": arrivals.duplicates, "max_copies": arrivals.max_copies},
        "order_inversions": arrivals.inversions, "drain_s": drain, "daemon": daemon,
        "delivered": {"messages": arrivals.count, "distinct": len(arrivals.copies),
                      "telemetry": len(arrivals.telemetry), "by_kind": dict(arrivals.kinds)},
        "stored": {"events": store["events"], "samples": store["samples"], "outbox_left": store["outbox_rows"],
                   "counters": store["counters"], "event_kinds": store["event_kinds"]},
        "seconds": time.monotonic() - started,
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _summary(r: dict[str, Any]) -> str:
    if not r["ran"]:
        return f"SKIPPED: {r['skipped']}"
    if "error" in r:
        return f"FAILED: {r['error']}"
    lines = r["alarm_lines"]
    return (f"{r['method']}; {r['fault_count']} faults; stored not delivered {r['stored_not_delivered']['total']},"
            f" telemetry not delivered {r['telemetry_not_delivered']}; fire lines {lines['sent']} printed,"
            f" {lines['delivered']} delivered; drain {num(r['drain_s'], 2)} s; {r['seconds']:.1f} s"
            + "".join(f"; {n} {what} dropped by policy" for what, n in _dropped(r["dropped_by_policy"]).items() if n))


def _dropped(policy: dict[str, Any]) -> dict[str, int]:
    """What the store's own rules let go (telemetry over the disk cap, what was shed while the disk was full)."""
    return {"telemetry messages (over the cap)": policy["telemetry_over_cap"],
            **{f"{kind} (disk full)": n for kind, n in policy["shed_while_full"].items()}}


def _table(results: dict[str, dict[str, Any]]) -> str:
    from gateway.core.text import table

    rows = []
    for key, r in results.items():
        if not r["ran"] or "error" in r:
            rows.append((key, "SKIPPED" if not r["ran"] else "FAILED", *["-"] * 9))
            continue
        d = r["daemon"]
        rows.append((key, r["fault_count"], r["stored_not_delivered"]["total"], r["telemetry_not_delivered"],
                     f"{r['alarm_lines']['sent']}/{r['alarm_lines']['delivered']}",
                     f"{r['duplicates']['count']} (max {r['duplicates']['max_copies']})", r["order_inversions"],
                     num(r["drain_s"], 2), num(d["rss_growth_mb"], 1),
                     "-" if d["fd_growth"] is None else d["fd_growth"], r["delivered"]["distinct"]))
    return table(rows, ["scenario", "faults", "stored, not delivered", "telemetry not delivered",
                        "fire lines printed/delivered", "duplicates", "inversions", "drain s", "RSS growth MB",
                        "fd growth", "messages delivered"])
