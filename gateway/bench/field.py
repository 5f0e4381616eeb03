"""`gateway bench field`: real meters are awkward; what reaches the store anyway, against a healthy twin.

Every awkward device (``simulators.awkward``: gaps in its map, a read limit, busy spells, slow
answers, lost requests) is polled beside a healthy twin with the same register map and no fault,
each on its own Modbus TCP bus, through the daemon's own wiring; the figure is what a user sees:
good points that reached the store. Beside them, RS-485 lines (``simulators.rtu``) and TCP-to-RS-485
converters (``simulators.converter``) carry healthy units alone, with a dead unit, and with a
garbage unit, so the cost of a bad unit to its neighbours is measured over the whole run, breaker
opening included. Everything runs at once, in one daemon, each device over its own window of
``--seconds`` from its first poll (``gateway.bench.field_runs``). Light at import.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, num, options, ratio, run, workdir

BEHAVIOURS: tuple[tuple[str, str, float, str], ...] = (
    ("gaps", "holding=0-12/20-32/40-52/60-72", 0.95, "holes between its register groups (exception 2)"),
    ("read_limit", "limit=24", 0.95, "at most 24 registers a read (exception 3)"),
    ("busy", "busy=0.1", 0.95, "10 % of requests answered busy (exception 6)"),
    ("slow", "slow={slow:g}", 0.95, "every answer after half the bus timeout"),
    ("loss_20", "lossy=0.2", 0.80, "20 % of requests lost"),
)
"""(name, ``--behaviour`` spec of the awkward device, target twin ratio, what it does)."""
LINE_KINDS = ("rtu", "converter")
LINE_BAD = ("none", "dead", "garbage")
TARGET_NEIGHBOURS = 0.90

# One meter's register group: (type, registers); four groups at 0, 20, 40, 60, 13 registers each.
_GROUP = (("uint16", 1), ("int16", 1), ("float32", 2), ("uint16", 1), ("float32", 2), ("uint32", 2),
          ("uint16", 1), ("int16", 1), ("uint16", 1), ("uint16", 1))
GROUP_STARTS = (0, 20, 40, 60)


def meter_points() -> list[dict[str, Any]]:
    """40 points in four groups with 7 unused registers between them (bridged by the default max_gap 16)."""
    points = []
    for g, base in enumerate(GROUP_STARTS):
        address = base
        for i, (dtype, width) in enumerate(_GROUP):
            points.append({"id": f"g{g}_{i}", "table": "holding", "address": address, "type": dtype})
            address += width
    return points


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    seconds: float = 60.0
    pairs: int = 2
    interval: float = 2.0
    timeout: float = 1.0
    line_units: int = 4
    line_interval: float = 0.5
    line_timeout: float = 0.5
    baud: int = 9600

    def problem(self) -> str | None:
        if self.seconds <= 0 or self.pairs < 1 or self.line_units < 1 or self.line_units > 246:
            return "--seconds and --pairs must be positive, --line-units 1..246"
        if not 0.05 <= self.interval <= 60 or not 0.05 <= self.line_interval <= 60:
            return "--interval and --line-interval must be 0.05..60 s"
        if not 0 < self.timeout <= 30 or not 0 < self.line_timeout <= 30 or self.baud < 1200:
            return "--timeout and --line-timeout must be 0..30 s, --baud at least 1200"
        return None


def add_command(bench: Any) -> None:
    """`gateway bench field` on the bench subparsers."""
    p = bench.add_parser("field", help="awkward meters beside healthy twins; dead and garbage units among healthy ones")
    p.add_argument("--seconds", type=float, default=Options.seconds, help="window per device, from its first poll")
    p.add_argument("--pairs", type=int, default=Options.pairs, help="awkward devices (each with a twin) per behaviour")
    p.add_argument("--interval", type=float, default=Options.interval, help="poll interval of the TCP devices, s")
    p.add_argument("--timeout", type=float, default=Options.timeout, help="TCP bus timeout, s")
    p.add_argument("--line-units", type=int, default=Options.line_units, help="healthy units per line and converter")
    p.add_argument("--line-interval", type=float, default=Options.line_interval, help="poll interval on the lines, s")
    p.add_argument("--line-timeout", type=float, default=Options.line_timeout,
                   help="RS-485 timeout and the converters' serial timeout, s (the converter bus waits twice this)")
    p.add_argument("--baud", type=int, default=Options.baud)
    add_json(p)
    p.set_defaults(fn=bench_field)


def bench_field(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if (problem := opts.problem()) is not None:
        return bad_args(problem)
    report = Report.of("field", opts, args)

    def body(report: Report) -> None:
        with workdir("gateway-bench-field-", "error") as work:  # devices going offline is the point, not news
            _bench(opts, work, report)

    return run(report, body)


def _sum(figures: list[dict[str, Any]], *keys: str) -> dict[str, Any]:
    return {k: sum(f[k] for f in figures) for k in keys}


TOTALS = ("polls", "failed_polls", "samples_stored", "good_points_stored", "points_stored")


def _bench(opts: Options, work: Path, report: Report) -> None:
    from gateway.bench import field_runs as runs
    from gateway.bench.bus_line import bounded
    from gateway.bench.harness import ready_process

    report.say(f"gateway bench field: {len(BEHAVIOURS)} awkward behaviours x {opts.pairs} device(s), each beside a"
               f" healthy twin (same 40-point map, own Modbus TCP bus, every {opts.interval:g} s, timeout"
               f" {opts.timeout:g} s); RS-485 lines and TCP-RS-485 converters at {opts.baud} baud with"
               f" {opts.line_units} healthy units every {opts.line_interval:g} s, alone / with a dead unit / with a"
               " garbage unit; all in one daemon at once, uplink off",
               f"figures: each device over {opts.seconds:g} s from its first poll; good points counted in the store")
    limit = opts.seconds + 120.0
    with ready_process("simulators.awkward", runs.awkward_args(opts), work / "awkward.log") as sim, \
            runs.converters(opts, work) as conv:
        result = bounded(runs.field_run(opts, work, sim, conv), limit)
    devices = result.devices
    behaviours: dict[str, Any] = {}
    for name, spec, _target, what in BEHAVIOURS:
        ids = [d for b, d, _s in runs.awkward_ids(opts) if b == name]
        sides: dict[str, Any] = {}
        for side, members in (("awkward", [d for d in ids if not d.endswith("-twin")]),
                              ("twin", [d for d in ids if d.endswith("-twin")])):
            heard = [result.awkward_stats[d] for d in members]
            sides[side] = {**_sum([devices[d] for d in members], *TOTALS),
                           "polls_in_run": sum(devices[d]["polls_in_run"] for d in members),
                           "requests_heard": sum(h["requests"] for h in heard),
                           "exceptions_sent": _merge(h["exceptions"] for h in heard),
                           "requests_lost": sum(h["dropped"] for h in heard)}
        awkward = [devices[d] for d in ids if not d.endswith("-twin")]
        settled = [f["plan_settled_after_polls"] for f in awkward]
        first = [f["first_all_good_poll"] for f in awkward]
        behaviours[name] = {
            "spec": spec.format(slow=opts.timeout / 2), "what": what, **sides,
            "polls_to_learn": {"plan_settled_after_polls": max(settled),
                               "first_all_good_poll": None if None in first else max(f or 0 for f in first)},
            "devices": {d: devices[d] for d in ids},
        }
    neighbours: dict[str, Any] = {}
    for kind in LINE_KINDS:
        neighbours[kind] = {}
        for bad in LINE_BAD:
            ids = runs.line_ids(opts, kind, bad)
            healthy, rest = ids[:opts.line_units], ids[opts.line_units:]
            entry: dict[str, Any] = {"healthy": _sum([devices[d] for d in healthy], *TOTALS),
                                     "bad_unit": devices[rest[0]] if rest else None,
                                     "probes": result.probes.get(f"{kind}-{bad}")}
            if kind == "rtu":
                entry["line_requests_by_unit"] = result.line_requests[f"rtu-{bad}"]
            neighbours[kind][bad] = entry
    report.figure(run_s=result.seconds, window_s=opts.seconds, behaviours=behaviours, neighbours=neighbours)
    _judge(report, behaviours, neighbours)
    _tables(report, behaviours, neighbours)


def _merge(counts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[str(k)] = out.get(str(k), 0) + v
    return out


def _judge(report: Report, behaviours: dict[str, Any], neighbours: dict[str, Any]) -> None:
    for name, _spec, target, what in BEHAVIOURS:
        b = behaviours[name]
        twin = report.derive(f"twin_ratio_{name}", ratio(b["awkward"]["good_points_stored"],
                                                         b["twin"]["good_points_stored"]),
                             f"behaviours.{name}.awkward.good_points_stored"
                             f" / behaviours.{name}.twin.good_points_stored")
        for side in ("awkward", "twin"):
            report.derive(f"requests_per_poll_{name}_{side}",
                          ratio(b[side]["requests_heard"], b[side]["polls_in_run"]),
                          f"behaviours.{name}.{side}.requests_heard / behaviours.{name}.{side}.polls_in_run")
        report.target(f"twin_ratio_{name}", f"good points stored, {what} / healthy twin", ">=", target, twin)
    for kind in LINE_KINDS:
        for bad in LINE_BAD[1:]:
            value = report.derive(f"neighbour_ratio_{kind}_{bad}",
                                  ratio(neighbours[kind][bad]["healthy"]["good_points_stored"],
                                        neighbours[kind]["none"]["healthy"]["good_points_stored"]),
                                  f"neighbours.{kind}.{bad}.healthy.good_points_stored"
                                  f" / neighbours.{kind}.none.healthy.good_points_stored")
            where = "on one RS-485 line" if kind == "rtu" else "behind one converter"
            report.target(f"neighbour_ratio_{kind}_{bad}", f"healthy units' good points {where}, with a {bad} unit"
                          " / without it", ">=", TARGET_NEIGHBOURS, value)


def _tables(report: Report, behaviours: dict[str, Any], neighbours: dict[str, Any]) -> None:
    from gateway.core.text import table

    derived = report.derived
    rows: list[tuple[Any, ...]] = []
    for name, *_ in BEHAVIOURS:
        b, learn = behaviours[name], behaviours[name]["polls_to_learn"]
        rows.append((name, b["spec"], f"{b['awkward']['good_points_stored']:,}", f"{b['twin']['good_points_stored']:,}",
                     num(derived[f"twin_ratio_{name}"]["value"], 3), f"{b['awkward']['polls']}/{b['twin']['polls']}",
                     b["awkward"]["failed_polls"], learn["plan_settled_after_polls"],
                     "never" if learn["first_all_good_poll"] is None else learn["first_all_good_poll"],
                     num(derived[f"requests_per_poll_{name}_awkward"]["value"], 2),
                     num(derived[f"requests_per_poll_{name}_twin"]["value"], 2)))
    report.say("", "1. awkward devices beside healthy twins (good points stored, each device over its window)",
               table(rows, ["behaviour", "simulator spec", "good pts", "twin good pts", "ratio (derived)",
                            "polls (twin)", "failed", "plan settled after poll", "first all-good poll",
                            "req/poll (derived)", "twin req/poll (derived)"]),
               "(plan settled after poll = the last poll that changed the read plan, 0 = never; req/poll = requests"
               " the simulated devices heard over the whole run / polls completed in it, so a poll cut short at the"
               " end adds its requests)")
    rows = []
    for kind in LINE_KINDS:
        for bad in LINE_BAD:
            n = neighbours[kind][bad]
            unit = n["bad_unit"] or {}
            offline = unit.get("offline_after_s")
            rows.append((kind, bad, f"{n['healthy']['good_points_stored']:,}", n["healthy"]["polls"],
                         n["healthy"]["failed_polls"],
                         "-" if bad == "none" else num(derived[f"neighbour_ratio_{kind}_{bad}"]["value"], 3),
                         "-" if not unit else unit["polls"], "-" if not unit else num(offline, 2),
                         "-" if n["probes"] is None else n["probes"]))
    report.say("", "2. healthy units beside a bad one (dead: silent; garbage: bad CRC, wrong unit or function,"
               " truncated, noise)",
               table(rows, ["bus", "bad unit", "healthy good pts", "healthy polls", "healthy failed",
                            "ratio to none (derived)", "bad-unit polls", "bad offline after s", "probes"]),
               "(ratio = healthy units' good points stored with the bad unit / on the same kind of bus without it;"
               " probes = PROBE-urgency transactions on the bus over the whole run)")
