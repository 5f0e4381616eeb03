"""`gateway bench fleet`: N gateways, one broker, an outage of a minute, and what the platform sees after it.

N real gateways (``gateway run``, each in its own process with its own store and its own simulated
Modbus TCP meters polled every second) publish to one Mosquitto; the platform is a persistent-session
subscriber to ``community/#`` (``fleet_world``, ``fleet_platform``). The fleet runs steady, the broker
is stopped for ``outage`` s and started again on the same port, and the bench measures:

- the steady live rate (messages/s at the platform, before the outage);
- how long the fleet takes to drain: broker back -> no gateway's outbox holds a row stored before it
  came back (each store read from outside, read-only); per gateway: back online (its birth at the
  platform), its first replayed reading, its outbox drained;
- the peak message rate after the return: the most messages in any 1 s (and any 100 ms) window at the
  platform, and the broker's own count of PUBLISH packets received, once a second (``$SYS``);
- readings: every one a gateway stored (its readings history) must reach the platform; copies of one
  reading (by id) are duplicates, allowed by at-least-once and counted.

The run is done twice by default: with the gateways' pacing (``[mqtt] replay_rate``, ``replay_delay``)
and, as the baseline, without it (``replay_rate = 0``, ``replay_delay = 0``). The budget is computed,
not measured: gateways x replay_rate + the steady live rate. Exit 1 if the paced peak exceeds it, or if
a reading was lost, in either run.

Light at import (the CLI registers it): the fleet and the simulators are imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.harness import HOST, Report, add_json, bad_args, cpu_seconds, num, ratio, ready_process, run, workdir

if TYPE_CHECKING:
    from gateway.bench.fleet_platform import Seen
    from gateway.bench.fleet_world import Fleet, Plan

MAX_AUTO = 20
"""Gateways at most when the box decides (--gateways overrides it)."""
PER_CPU = 8
"""Gateways per CPU when the box decides: idle they take ~1 % of a core each; replay and start-up take more."""
PER_GATEWAY_MB = 150
"""Available memory to set aside per gateway when the box decides (a daemon's RSS is ~50-60 MB)."""
TAIL = 3.0
"""Seconds watched after the fleet drained, so the peak window is not cut short."""
SETTLE = 15.0
"""Seconds to wait at the end for stored readings still on their way before calling them lost."""
FULL: dict[str, Any] = {"meters": 3, "steady": 20.0, "outage": 60.0, "drain_limit": 240.0}
QUICK: dict[str, Any] = {"meters": 2, "steady": 2.0, "outage": 8.0, "drain_limit": 60.0, "replay_delay": 2.0,
                         "live_window": 3.0, "reconnect_max": 1.0, "gateways": 3}


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    quick: bool = False
    gateways: int | None = None
    """Gateway processes; default: as many as the box allows (CPUs x 8, available memory / 150 MB, at most 20)."""
    meters: int | None = None
    interval: float = 1.0
    steady: float | None = None
    outage: float | None = None
    replay_rate: float | None = None
    """[mqtt] replay_rate of every gateway in the paced run; default: the gateway's default."""
    replay_delay: float | None = None
    live_window: float | None = None
    reconnect_max: float | None = None
    drain_limit: float | None = None
    pacing: bool = True
    """Run with the gateways' pacing."""
    baseline: bool = True
    """Run again without it (replay_rate = 0, replay_delay = 0)."""


def add_command(bench: Any) -> None:
    """`gateway bench fleet` on the bench subparsers."""
    p = bench.add_parser("fleet", help="N gateways against one broker through a broker outage: drain time, the"
                                       " broker's peak rate against the replay budget, nothing lost")
    p.add_argument("--quick", action="store_true", help="CI size: 3 gateways x 2 meters, an 8 s outage, replay"
                                                        " starting after 2 s, a 3 s live window")
    p.add_argument("--gateways", type=int, help="gateway processes (default: as many as the box allows, <= 20)")
    p.add_argument("--meters", type=int, help="simulated Modbus TCP meters per gateway (default 3; 2 with --quick)")
    p.add_argument("--interval", type=float, help=f"poll interval, seconds (default {Options.interval:g})")
    p.add_argument("--steady", type=float, help="seconds of steady running before the outage (default 20)")
    p.add_argument("--outage", type=float, help="seconds the broker is down (default 60; 8 with --quick)")
    p.add_argument("--replay-rate", type=float, help="[mqtt] replay_rate, messages/s per gateway (default: the"
                                                     " gateway's, 100)")
    p.add_argument("--replay-delay", type=float, help="[mqtt] replay_delay, seconds (default: the gateway's, 10)")
    p.add_argument("--live-window", type=float, help="[mqtt] live_window, seconds (default: the gateway's, 60)")
    p.add_argument("--reconnect-max", type=float, help="[mqtt] reconnect_max, seconds (default: the gateway's, 60)")
    p.add_argument("--drain-limit", type=float, help="seconds after the broker's return before an undrained fleet"
                                                     " is a failure (default 240)")
    p.add_argument("--no-pacing", dest="pacing", action="store_false", default=None,
                   help="only the baseline: replay_rate = 0, replay_delay = 0")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", default=None,
                   help="only the paced run")
    add_json(p)
    p.set_defaults(fn=bench_fleet)


def resolve(opts: Options) -> Options:
    """The full-size (or --quick) values where none were given, the gateway's own [mqtt] defaults, the box's size."""
    from gateway.config.schema import MqttConfig

    size = {**FULL, **(QUICK if opts.quick else {})}
    mqtt = MqttConfig.model_fields
    defaults = {k: float(mqtt[k].default) for k in ("replay_rate", "replay_delay", "live_window", "reconnect_max")}
    given = {k: v for k, v in {**defaults, **size}.items() if getattr(opts, k) is None}
    if opts.gateways is None and "gateways" not in given:
        given["gateways"] = auto_gateways()
    return dataclasses.replace(opts, **given)


def auto_gateways() -> int:
    """As many gateways as this box allows: CPUs x ``PER_CPU``, available memory / ``PER_GATEWAY_MB``, <= 20."""
    available = available_mb()
    by_memory = MAX_AUTO if available is None else int(available // PER_GATEWAY_MB)
    return max(2, min(MAX_AUTO, (os.cpu_count() or 1) * PER_CPU, by_memory))


def available_mb() -> float | None:
    """MemAvailable from /proc/meminfo, in MB (Linux, as the gateway's targets are); None where there is none."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return None


def plan(opts: Options, *, paced: bool) -> Plan:
    from gateway.bench.fleet_world import Plan

    assert opts.gateways is not None and opts.meters is not None and opts.replay_rate is not None
    assert opts.replay_delay is not None and opts.live_window is not None and opts.reconnect_max is not None
    return Plan(opts.gateways, opts.meters, opts.interval, opts.replay_rate if paced else 0.0,
                opts.replay_delay if paced else 0.0, opts.live_window, opts.reconnect_max)


def bench_fleet(args: argparse.Namespace) -> int:
    opts = options_of(args)
    if isinstance(opts, str):
        return bad_args(opts)
    report = Report.of("fleet", opts, args)
    report.figure(machine={"cpus": os.cpu_count(), "memory_available_mb": available_mb()})
    return run(report, lambda report: _bench(opts, report))


def options_of(args: argparse.Namespace) -> Options | str:
    """The resolved options, or what is wrong with them."""
    from gateway.bench.harness import options

    opts = resolve(options(Options, args))
    assert opts.gateways is not None and opts.meters is not None and opts.steady is not None
    assert opts.outage is not None and opts.drain_limit is not None and opts.replay_rate is not None
    assert opts.replay_delay is not None and opts.live_window is not None and opts.reconnect_max is not None
    if min(opts.gateways, opts.meters) < 1 or min(opts.steady, opts.outage, opts.drain_limit) <= 0 \
            or opts.interval < 0.1 or opts.replay_rate < 0 or opts.replay_delay < 0 or opts.live_window < 1 \
            or opts.reconnect_max <= 0:
        return ("--gateways, --meters, --steady, --outage and --drain-limit must be positive, --interval at least"
                " 0.1, --live-window at least 1, --reconnect-max above 0, the replay settings not negative")
    if not (opts.pacing or opts.baseline):
        return "--no-pacing and --no-baseline leave nothing to run"
    return opts


def _bench(opts: Options, report: Report) -> None:
    from simulators.broker import free_ports

    assert opts.gateways is not None and opts.meters is not None
    meters = opts.gateways * opts.meters
    runs = [name for name, on in (("paced", opts.pacing), ("unpaced", opts.baseline)) if on]
    report.say(f"gateway bench fleet: {opts.gateways} gateways (`gateway run`, one process each, own store) x"
               f" {opts.meters} Modbus TCP meters polled every {opts.interval:g} s, one Mosquitto (persistence,"
               f" set_tcp_nodelay true), a persistent-session platform subscriber on community/#; {opts.steady:g} s"
               f" steady, the broker stopped for {opts.outage:g} s, then started again on the same port;"
               f" live_window {opts.live_window:g} s, reconnect_max {opts.reconnect_max:g} s; runs: {', '.join(runs)}"
               f" (paced: replay_rate {opts.replay_rate:g}/s, replay_delay {opts.replay_delay:g} s; unpaced: both 0)",
               "")
    results: dict[str, dict[str, Any] | None] = {"paced": None, "unpaced": None}
    with workdir("gateway-bench-fleet-") as work:
        args = ["meter", "--host", HOST, "--port", str(free_ports(meters)), "--count", str(meters)]
        with ready_process("gateway.bench.wire", args, work / "meters.log") as sim:
            for name in runs:
                report.say(f"{name}: starting the fleet ...")
                results[name] = _run(opts, plan(opts, paced=name == "paced"), work / name, sim.port, report)
                report.say(f"{name}: {_summary(results[name])}")
    report.figure(**results)
    _judge(opts, report, results)


def _run(opts: Options, fleet_plan: Plan, work: Path, first_port: int, report: Report) -> dict[str, Any]:
    from gateway.bench.fleet_world import Fleet

    assert opts.steady is not None and opts.outage is not None and opts.drain_limit is not None
    with Fleet(work, fleet_plan, first_port) as fleet:
        started = time.time()
        time.sleep(opts.steady)
        down = fleet.broker_down()
        report.say(f"  broker down after {down - started:.1f} s of steady running")
        while time.time() - down < opts.outage:
            fleet.check_alive()
            time.sleep(min(0.5, max(0.0, opts.outage - (time.time() - down))))
        backlog = fleet.outbox()
        starting, back = fleet.broker_up()
        report.say(f"  broker back after {back - down:.1f} s; outboxes hold {sum(backlog):,} rows")
        broker_cpu = cpu_seconds(fleet.broker_pid() or 0)
        drained = _drain(fleet, back, opts.drain_limit)
        end = (max(drained.values()) if len(drained) == fleet_plan.gateways else time.time()) + TAIL
        time.sleep(max(0.0, end - time.time()))
        broker_cpu = cpu_seconds(fleet.broker_pid() or 0) - broker_cpu
        rss = fleet.rss_mb()
        missing = _missing(fleet, started, end)
        fleet.check_alive()
        exits = dict(fleet.unexpected_exits)
        fleet.stop_gateways()
        seen = fleet.seen
        stored = fleet.stored(started, end)
        during = fleet.stored(down, back)
    return _figures(fleet_plan, seen, {
        "started": started, "down": down, "starting": starting, "back": back, "end": end, "backlog": backlog,
        "drained": drained, "missing": missing, "stored": len(stored), "during": len(during), "rss": rss,
        "exits": exits, "broker_cpu_s": broker_cpu})


def _drain(fleet: Fleet, back: float, limit: float) -> dict[int, float]:
    """Gateway -> when its outbox no longer held a row stored before ``back`` (read every 100 ms), up to ``limit``."""
    drained: dict[int, float] = {}
    waiting = set(range(fleet.plan.gateways))
    while waiting and time.time() - back < limit:
        now = time.time()
        for g in waiting - fleet.holding(waiting, back):
            drained[g] = now
        waiting -= set(drained)
        fleet.check_alive()
        time.sleep(0.1)
    return drained


def _missing(fleet: Fleet, start: float, end: float) -> int:
    """Readings stored (polled in [start, end)) that never reached the platform, after up to ``SETTLE`` s."""
    deadline = time.monotonic() + SETTLE
    while True:
        missing = fleet.stored(start, end) - fleet.seen.telemetry
        if not missing or time.monotonic() > deadline:
            return len(missing)
        time.sleep(0.2)


def _figures(p: Plan, seen: Seen, t: dict[str, Any]) -> dict[str, Any]:
    """A run's figures, from what reached the platform (``seen``) and the times and counts the run noted (``t``)."""
    from gateway.bench.fleet_platform import count, peak, per_second

    back, end, started, down, starting = t["back"], t["end"], t["started"], t["down"], t["starting"]
    steady_s = down - started

    def after_back(times: list[float]) -> dict[str, float | None]:
        spread = sorted(at - back for at in times)
        return {"first": spread[0] if spread else None, "last": spread[-1] if spread else None,
                "median": statistics.median(spread) if spread else None, "n": len(spread)}

    online = [min((at for at in births if at > down), default=None) for births in seen.births.values()]
    drained = [at for at in t["drained"].values()]
    return {
        "gateways": p.gateways, "meters": p.gateways * p.meters,
        "settings": {"replay_rate": p.replay_rate, "replay_delay_s": p.replay_delay, "live_window_s": p.live_window,
                     "reconnect_max_s": p.reconnect_max},
        "steady": {"seconds": steady_s, "messages_per_s": count(seen.messages, started, down) / steady_s,
                   "readings_per_s": count(seen.readings, started, down) / steady_s},
        "outage": {"seconds": back - down, "readings_stored": t["during"], "outbox_rows_at_return": sum(t["backlog"]),
                   "outbox_rows_per_gateway_max": max(t["backlog"], default=0)},
        "online_after_s": after_back([at for at in online if at is not None]),
        "replay_started_after_s": after_back([at for at in seen.first_hist.values() if at > down]),
        "platform_online_after_s": min((at - back for at in seen.connects if at > down), default=None),
        "drained_after_s": after_back(drained),
        "drain_s": max(drained) - back if len(drained) == p.gateways else None,
        "drained_gateways": len(drained),
        "peak": {"messages_per_s_1s": peak(seen.messages, 1.0, starting, end),
                 "messages_per_s_100ms": peak(seen.messages, 0.1, starting, end),
                 "readings_per_s_1s": peak(seen.readings, 1.0, starting, end),
                 "broker_publish_received_per_s": seen.broker_peak(starting, end),
                 "steady_messages_per_s_1s": peak(seen.messages, 1.0, started, down)},
        "recovery": {"seconds": end - back, "messages": count(seen.messages, starting, end),
                     "readings": count(seen.readings, starting, end), "batch_messages": seen.batches,
                     "hist_readings": seen.hist, "broker_cpu_s": t["broker_cpu_s"]},
        "messages_per_second_after_return": per_second(seen.messages, starting, end),
        "readings": {"stored": t["stored"], "lost": t["missing"], "duplicates": seen.duplicates,
                     "max_copies": seen.max_copies},
        "gateway_rss_mb": {"mean": statistics.fmean(t["rss"]) if t["rss"] else None,
                           "max": max(t["rss"], default=None)},
        "unexpected_exits": t["exits"],
    }


def _summary(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    return (f"drained in {num(r['drain_s'], 1)} s ({r['drained_gateways']}/{r['gateways']} gateways); peak"
            f" {num(r['peak']['messages_per_s_1s'], 0)} msg/s in 1 s at the platform (steady"
            f" {num(r['steady']['messages_per_s'], 1)}); {r['readings']['stored']:,} readings stored,"
            f" {r['readings']['lost']} lost, {r['readings']['duplicates']} duplicates")


def _judge(opts: Options, report: Report, results: dict[str, dict[str, Any] | None]) -> None:
    paced, unpaced = results["paced"], results["unpaced"]
    for name, r in results.items():
        if r is None:
            continue
        if r["readings"]["lost"]:
            report.problem(f"{name}: {r['readings']['lost']} stored readings never reached the platform")
        if r["drain_s"] is None:
            report.problem(f"{name}: {r['gateways'] - r['drained_gateways']} gateway(s) not drained within"
                           f" {opts.drain_limit:g} s of the broker's return")
        if r["unexpected_exits"]:
            report.problem(f"{name}: gateways exited by themselves: {r['unexpected_exits']}")
    budget: float | None = None
    if paced is not None and opts.replay_rate:
        budget = paced["gateways"] * opts.replay_rate + paced["steady"]["messages_per_s"]
        report.derive("budget_messages_per_s", budget,
                      "params.gateways x params.replay_rate + paced.steady.messages_per_s")
        report.derive("paced_peak_of_budget", ratio(paced["peak"]["messages_per_s_1s"], budget),
                      "paced.peak.messages_per_s_1s / budget_messages_per_s")
        report.target("paced.peak.messages_per_s_1s", "paced: peak messages in any 1 s after the return (budget ="
                      " gateways x replay_rate + steady live rate, computed)", "<=", float(budget),
                      paced["peak"]["messages_per_s_1s"], " msg/s")
    if paced is not None and unpaced is not None:
        report.derive("peak_unpaced_to_paced", ratio(unpaced["peak"]["messages_per_s_1s"],
                                                     paced["peak"]["messages_per_s_1s"]),
                      "unpaced.peak.messages_per_s_1s / paced.peak.messages_per_s_1s")
        report.derive("drain_paced_to_unpaced", ratio(paced["drain_s"], unpaced["drain_s"]),
                      "paced.drain_s / unpaced.drain_s")
    _tables(report, results, budget)


def _tables(report: Report, results: dict[str, dict[str, Any] | None], budget: float | None) -> None:
    from gateway.core.text import table

    ran = {k: r for k, r in results.items() if r is not None}

    def row(label: str, get: Any, digits: int = 1) -> tuple[str, ...]:
        return (label, *(num(get(r), digits) for r in ran.values()))

    rows = [
        row("steady live rate, messages/s", lambda r: r["steady"]["messages_per_s"]),
        row("outage, s", lambda r: r["outage"]["seconds"]),
        row("readings stored during the outage", lambda r: r["outage"]["readings_stored"], 0),
        row("outbox rows at the return (fleet)", lambda r: r["outage"]["outbox_rows_at_return"], 0),
        row("platform back online, s after the return", lambda r: r["platform_online_after_s"], 2),
        row("gateways back online, s after the return: first", lambda r: r["online_after_s"]["first"]),
        row("  ... last", lambda r: r["online_after_s"]["last"]),
        row("first replayed reading, s after the return: first", lambda r: r["replay_started_after_s"]["first"]),
        row("  ... last", lambda r: r["replay_started_after_s"]["last"]),
        row("gateway drained, s after the return: median", lambda r: r["drained_after_s"]["median"]),
        row("fleet drained (the last gateway), s after the return", lambda r: r["drain_s"]),
        row("peak messages/s, any 1 s, at the platform", lambda r: r["peak"]["messages_per_s_1s"], 0),
        row("peak messages/s, any 100 ms (x10)", lambda r: r["peak"]["messages_per_s_100ms"], 0),
        row("peak at the broker, PUBLISH received/s ($SYS, ~2 s)", lambda r: r["peak"]["broker_publish_received_per_s"],
            0),
        row("peak readings/s, any 1 s, at the platform", lambda r: r["peak"]["readings_per_s_1s"], 0),
        row("replay batch messages", lambda r: r["recovery"]["batch_messages"], 0),
        row("readings stored (history), whole run", lambda r: r["readings"]["stored"], 0),
        row("  never reached the platform (lost)", lambda r: r["readings"]["lost"], 0),
        row("  reached it twice (duplicates)", lambda r: r["readings"]["duplicates"], 0),
        row("gateway RSS, MB (mean)", lambda r: r["gateway_rss_mb"]["mean"]),
    ]
    report.say("", table(rows, ["", *ran]),
               f"budget (computed: gateways x replay_rate + the paced run's steady live rate): {num(budget, 0)} msg/s;"
               " every other figure is measured: arrivals at the platform (sliding windows), the broker's $SYS"
               " count, the gateways' stores read from outside")
