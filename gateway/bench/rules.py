"""`gateway bench rules`: what 1,000 rules cost, and how fast an event becomes an alarm in the daemon.

1. Evaluations per second on one core: the pure ``Engine`` with a realistic mix of 1,000 rules
   (thresholds with deadband on meter points, ``for`` durations, event count windows, device
   offline, a few CEL expressions, all/any combinations) fed readings from 200 devices x 20 points
   (one poll of each device per simulated second), a stream of door, motion and access events, a
   device now and then going offline and back, and the one-second clock tick, all on simulated
   time. The inputs are built before the clock starts; the figure is ``engine.evaluations`` over
   the process's CPU time (one thread, so one core).
2. Event in -> alarm out inside the running daemon: the real ``Daemon`` in-process (uplink off)
   with the same kind of rule set over its own devices, Modbus TCP simulators polled through it
   (``gateway.bench.wire`` in their own process, so their CPU is not the gateway's), and fire
   alarms injected as the fire panel's driver hands them over (``bus.event``). Two figures per
   alarm: to the first alarm transition (``Automation.latency``, the engine and alarm book), and to
   the moment the store's commit holding the ``alarm.raise`` returns (synchronous=full, so an
   fsync): from then on a power cut cannot lose it and the uplink may send it.

Light at import (the CLI registers it): the engine and the daemon are imported when the bench runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, latency_ms, num, options, ratio, run, workdir

TARGET_EVALS = 100_000
TARGET_P99_MS = 10.0
PANEL = "fire-panel"
EVENT_KINDS = ("door.forced", "motion", "access.denied", "door.held_open")


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    rules: int = 1000
    devices: int = 200
    points: int = 20
    seconds: float = 60.0
    events_per_s: float = 20.0
    daemon: bool = True
    daemon_devices: int = 20
    interval: float = 1.0
    alarms: int = 300
    rate: float = 50.0
    warmup: float = 2.0
    seed: int = 1


def add_command(bench: Any) -> None:
    """`gateway bench rules` on the bench subparsers."""
    p = bench.add_parser("rules", help="rule evaluations/s (1,000 rules, one core); event -> alarm latency")
    p.add_argument("--rules", type=int, default=Options.rules)
    p.add_argument("--devices", type=int, default=Options.devices, help="devices feeding the pure-engine figure")
    p.add_argument("--points", type=int, default=Options.points)
    p.add_argument("--seconds", type=float, default=Options.seconds,
                   help="simulated seconds of input for the engine figure")
    p.add_argument("--daemon-devices", type=int, default=Options.daemon_devices,
                   help="Modbus TCP simulators polled by the daemon")
    p.add_argument("--alarms", type=int, default=Options.alarms, help="fire alarms injected into the daemon")
    p.add_argument("--rate", type=float, default=Options.rate, help="alarms per second")
    p.add_argument("--no-daemon", dest="daemon", action="store_false", help="only the pure-engine figure")
    add_json(p)
    p.set_defaults(fn=bench_rules)


# -- the rule mix -------------------------------------------------------------------------------------------


def rule_mix(count: int, devices: int, point_ids: Sequence[str], seed: int = 1) -> list[dict[str, Any]]:
    """``count`` rules as an engineer would write them (the dicts the TOML tables parse to).

    Per 20 rules: 8 thresholds with deadband, 3 with a ``for``, 3 event count windows, 2 device
    offline, 1 CEL expression, 3 all/any combinations. Points are spread over every device.
    """
    rng = random.Random(seed)
    rules: list[dict[str, Any]] = []

    def ref(i: int, k: int = 0) -> str:
        return f"dev-{(i * 7 + k) % devices}.{point_ids[(i * 3 + k * 5) % len(point_ids)]}"

    for i in range(count):
        slot = i % 20
        alarm = {"class": rng.choice(["equipment", "leak", "security"]), "message": f"rule {i}: {{value}}"}
        rule: dict[str, Any] = {"id": f"r{i:04d}", "alarm": alarm}
        limit = round(rng.uniform(40, 90), 1)
        if slot < 8:
            side = "above" if slot % 2 else "below"
            rule["when"] = {"point": ref(i), side: limit if side == "above" else 100 - limit, "deadband": 2.0}
        elif slot < 11:
            rule["when"] = {"point": ref(i), "above": limit, "deadband": 1.0}
            rule["for"] = f"{rng.choice([10, 30, 60])}s"
        elif slot < 14:
            rule["when"] = {"event": EVENT_KINDS[i % len(EVENT_KINDS)], "source": f"door-{i % 50}", "count": 3,
                            "within": "5m"}
        elif slot < 16:
            rule["when"] = {"device": f"dev-{i % devices}", "state": "offline"}
        elif slot < 17:
            rule["when"] = {"expr": f'points["{ref(i)}"] > 1.5 * points["{ref(i, 1)}"] + 10.0'}
        else:
            rule["when"] = {"all": [{"point": ref(i), "above": limit, "deadband": 1.0},
                                    {"any": [{"point": ref(i, 2), "below": 30.0},
                                             {"device": f"dev-{(i + 1) % devices}", "state": "offline"}]}]}
        rules.append(rule)
    return rules


def toml_rules(rules: Sequence[dict[str, Any]]) -> str:
    """``[[rules]]`` tables with inline values (JSON strings and numbers are valid TOML)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)

    return "".join("\n[[rules]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in rule.items()) for rule in rules)


# -- 1. the pure engine -------------------------------------------------------------------------------------


@dataclass(slots=True)
class EngineResult:
    rules: int = 0
    readings: int = 0
    events: int = 0
    ticks: int = 0
    evaluations: int = 0
    outputs: int = 0
    cpu: float = 0.0
    wall: float = 0.0


def engine_run(opts: Options) -> EngineResult:
    from gateway.bench.modbus import point_map
    from gateway.core.data import Event, Priority, Quality, Reading
    from rules.config import Rule
    from rules.engine import Engine

    rng = random.Random(opts.seed)
    point_ids = [p["id"] for p in point_map(opts.points)]
    rules = [Rule.model_validate(r) for r in rule_mix(opts.rules, opts.devices, point_ids, opts.seed)]
    start = 1_763_870_400.0
    values = {(d, p): rng.uniform(0, 100) for d in range(opts.devices) for p in range(len(point_ids))}
    inputs: list[tuple[float, Reading | Event | None]] = []
    offline: set[int] = set()
    for second in range(int(opts.seconds)):
        base = start + second
        for d in range(opts.devices):
            ts = base + d / opts.devices
            for p, point in enumerate(point_ids):
                v = min(100.0, max(0.0, values[(d, p)] + rng.gauss(0, 3)))
                values[(d, p)] = v
                inputs.append((ts, Reading(f"dev-{d}", point, round(v, 2), None, Quality.GOOD, ts)))
        for _ in range(int(opts.events_per_s)):
            kind = rng.choice(EVENT_KINDS)
            inputs.append((base + rng.random(), Event(kind, f"door-{rng.randrange(50)}", Priority.EVENT, {}, ts=base)))
        if second % 5 == 0:  # now and then a device drops off the bus and comes back
            d = rng.randrange(opts.devices)
            kind = "device.online" if d in offline else "device.offline"
            offline ^= {d}
            inputs.append((base + 0.5, Event(kind, f"dev-{d}", Priority.EVENT, {}, ts=base)))
        inputs.append((base + 0.999, None))  # the daemon's one-second tick
    inputs.sort(key=lambda x: x[0])
    engine = Engine(rules, started=start)
    result = EngineResult(rules=len(engine.states))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for now, item in inputs:
        if item is None:
            out = engine.tick(now)
            result.ticks += 1
        elif isinstance(item, Reading):
            out = engine.reading(item, now)
            result.readings += 1
        else:
            out = engine.event(item, now)
            result.events += 1
        result.outputs += len(out)
    result.cpu, result.wall = time.process_time() - cpu0, time.perf_counter() - wall0
    result.evaluations = engine.evaluations
    return result


# -- 2. inside the daemon -----------------------------------------------------------------------------------


@dataclass(slots=True)
class DaemonResult:
    sent: int = 0
    transition: list[float] = field(default_factory=list)
    committed: list[float] = field(default_factory=list)
    polls: int = 0
    evaluations: int = 0
    seconds: float = 0.0


def daemon_config(opts: Options, work: Path, first_port: int) -> Path:
    from gateway.bench.modbus import config_text, point_map

    points = point_map(opts.points)
    text = config_text(work / "data", first_port, opts.daemon_devices, points, interval=f"{opts.interval}s")
    text = text.replace('level = "warning"', 'level = "error"')  # every raise logs a warning
    mix = rule_mix(opts.rules - 1, opts.daemon_devices, [p["id"] for p in points], opts.seed)
    fire = {"id": "fire", "when": {"event": "fire.alarm", "source": PANEL},
            "clear_when": {"event": "fire.reset", "source": PANEL},
            "alarm": {"class": "fire", "severity": "critical", "message": "Fire in zone {zone}", "instance": "{n}"}}
    path = work / "gateway.toml"
    path.write_text(text + toml_rules([fire, *mix]), encoding="utf-8")
    return path


async def daemon_run(opts: Options, config: Path) -> DaemonResult:
    from gateway.config import load_config
    from gateway.core.data import Event, Priority
    from gateway.daemon import Daemon
    from gateway.store import Batch

    daemon = Daemon(load_config(config))
    assert daemon.automation is not None
    store = daemon.store.store
    committed: dict[str, float] = {}
    commit = store.commit

    def timed_commit(batch: Batch, now: float | None = None) -> None:  # runs on the store's thread
        commit(batch, now)
        done = time.perf_counter()
        for ev in batch.events:
            if ev.kind == "alarm.raise":
                committed.setdefault(ev.payload["key"], done)

    store.commit = timed_commit  # type: ignore[method-assign]
    result = DaemonResult()
    task = asyncio.create_task(daemon.run(), name="bench-daemon")
    try:
        await asyncio.sleep(opts.warmup)  # every device polled, connections made
        polls0 = sum(p.state.polls for p in daemon.pollers.values())
        evals0 = daemon.automation.engine.evaluations
        del daemon.automation.latency[:]
        sent: dict[str, float] = {}
        started = time.perf_counter()
        for i in range(opts.alarms):
            n = f"{i:05d}"
            sent[f"fire/{n}"] = time.perf_counter()
            daemon.bus.event(Event("fire.alarm", PANEL, Priority.ALARM, {"zone": i % 40 + 1, "n": n}))
            await asyncio.sleep(1 / opts.rate)
        async with asyncio.timeout(30):
            while len(committed) < len(sent):  # noqa: ASYNC110 (the store's thread fills it)
                await asyncio.sleep(0.01)
        result.seconds = time.perf_counter() - started
        result.polls = sum(p.state.polls for p in daemon.pollers.values()) - polls0
        result.evaluations = daemon.automation.engine.evaluations - evals0
        result.transition = sorted(daemon.automation.latency)
        result.committed = sorted(committed[k] - t for k, t in sent.items() if k in committed)
        result.sent = len(sent)
    finally:
        daemon.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(20):
                await task
    return result


# -- the command --------------------------------------------------------------------------------------------


def bench_rules(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if min(opts.rules, opts.devices, opts.points, opts.seconds, opts.alarms, opts.rate, opts.interval) <= 0 \
            or opts.daemon_devices < 1:
        return bad_args("--rules, --devices, --points, --seconds, --alarms, --rate and --interval must be positive")
    report = Report.of("rules", opts, args)
    return run(report, lambda report: _bench(opts, report))


def _bench(opts: Options, report: Report) -> None:
    from gateway.core.text import table

    report.say(f"gateway bench rules: {opts.rules} rules (8/20 thresholds with deadband, 3/20 with a for, 3/20 event"
               " count windows, 2/20 device offline, 1/20 CEL, 3/20 all/any)")
    e = engine_run(opts)
    inputs = e.readings + e.events + e.ticks
    engine: dict[str, Any] = {
        "rules": e.rules, "readings": e.readings, "events": e.events, "ticks": e.ticks, "inputs": inputs,
        "evaluations": e.evaluations, "outputs": e.outputs, "cpu_s": e.cpu, "wall_s": e.wall,
        "evaluations_per_cpu_s": ratio(e.evaluations, e.cpu), "evaluations_per_wall_s": ratio(e.evaluations, e.wall),
        "inputs_per_cpu_s": ratio(inputs, e.cpu), "inputs_per_wall_s": ratio(inputs, e.wall),
    }
    report.figure(engine=engine)
    report.target("engine.evaluations_per_cpu_s", "rule evaluations per CPU second, one core", ">=", TARGET_EVALS,
                  engine["evaluations_per_cpu_s"])
    rows = [("evaluations", f"{e.evaluations:,}", num(engine["evaluations_per_cpu_s"], 0),
             num(engine["evaluations_per_wall_s"], 0)),
            ("inputs (readings + events + ticks)", f"{inputs:,}", num(engine["inputs_per_cpu_s"], 0),
             num(engine["inputs_per_wall_s"], 0))]
    report.say(f"\n1. pure Engine, one core: {opts.devices} devices x {opts.points} points read every simulated"
               f" second, {opts.events_per_s:g} events/s, one tick/s, {opts.seconds:g} simulated s ({e.readings:,}"
               f" readings, {e.events:,} events, {e.ticks} ticks; {e.outputs:,} fired/cleared)",
               table(rows, ["", "count", "per CPU s", "per wall s"]), f"CPU {e.cpu:.2f} s")
    report.figure(daemon=None)
    if not opts.daemon:
        return
    from gateway.bench.modbus import bank_size, point_map, simulator

    with workdir("gateway-bench-rules-", "error") as work, \
            simulator(opts.daemon_devices, bank_size(point_map(opts.points)), work) as sim:
        d = asyncio.run(daemon_run(opts, daemon_config(opts, work, sim.port)))
    daemon: dict[str, Any] = {
        "alarms_sent": d.sent, "event_to_transition": latency_ms(d.transition),
        "event_to_committed": latency_ms(d.committed), "modbus_polls": d.polls,
        "modbus_polls_per_s": ratio(d.polls, d.seconds), "evaluations": d.evaluations, "seconds": d.seconds,
    }
    report.figure(daemon=daemon)
    report.target("daemon.event_to_transition.p99_ms", "event in -> alarm out in the daemon, p99", "<", TARGET_P99_MS,
                  daemon["event_to_transition"]["p99_ms"], " ms")
    if len(d.transition) != d.sent or len(d.committed) != d.sent:
        report.problem(f"of {d.sent} fire alarms injected, {len(d.transition)} raised an alarm and"
                       f" {len(d.committed)} were committed")

    def cells(label: str, stats: dict[str, Any]) -> tuple[str, ...]:
        return (label, num(stats["p50_ms"], 2), num(stats["p99_ms"], 2), num(stats["max_ms"], 2), str(stats["n"]))

    report.say(f"\n2. in the running daemon (in-process, uplink off, store synchronous=full): {opts.rules} rules,"
               f" {opts.daemon_devices} Modbus TCP devices x {opts.points} points polled every {opts.interval:g} s,"
               f" {d.sent} fire alarms injected at {opts.rate:g}/s as the panel driver hands them over",
               table([cells("event in -> alarm transition (engine + alarm book)", daemon["event_to_transition"]),
                      cells("event in -> alarm.raise committed to the outbox", daemon["event_to_committed"])],
                     ["", "p50 ms", "p99 ms", "max ms", "n"]),
               f"Modbus polls during the run {d.polls} ({num(daemon['modbus_polls_per_s'], 0)}/s); rule evaluations"
               f" {d.evaluations:,}")
