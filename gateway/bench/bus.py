"""`gateway bench bus`: one shared RS-485 line under load, a dead unit on it, and writes in between.

An RS-485 line at 9600 baud carries a few dozen transactions a second, so it is the bus, not the
gateway's CPU, that runs out. This bench measures what the bus scheduler and the breaker are for:
1. how much a dead unit slows the healthy units on its line, once its breaker has opened, against
   the same dead unit polled at full rate (the breaker effectively off);
2. how long a write waits while every unit polls back to back, with writes queued at WRITE
   urgency as shipped, against the same writes queued with the polls at POLL urgency;
3. for scale, points per second over many Modbus TCP devices, one transaction at a time each.

Cycle times and request counts come from the simulated line's own log of what it heard (see
``gateway.bench.bus_line``, where the runs are). Devices poll every 50 ms, which on a serial line
means back to back. Light at import: the runs are imported when the bench starts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, num, options, ratio, run, workdir

BUS_ID = "rs485-1"
INTERVAL = 0.05
"""Poll interval of every serial device: far below a cycle of the line, so polls run back to back."""
DEAD_COUNTS = (0, 1, 3)
SETPOINT = "setpoint"
SETPOINT_RANGE = (5.0, 90.0)
TARGET_CYCLE_RATIO = 1.10
TARGET_WRITE_P99_MS = 300.0

# A heating or pump controller as it sits on a building's RS-485 line: 20 holding registers in one
# contiguous block and 3 coils. (id, type, unit, scale, raw words)
HOLDING: tuple[tuple[str, str, str | None, float, tuple[int, ...]], ...] = (
    ("status", "uint16", None, 1.0, (1,)),
    ("supply_temp", "int16", "°C", 0.1, (652,)),
    ("return_temp", "int16", "°C", 0.1, (418,)),
    ("outdoor_temp", "int16", "°C", 0.1, (95,)),
    ("pressure", "uint16", "bar", 0.01, (180,)),
    ("flow", "float32", "m³/h", 1.0, (0x4120, 0x0000)),
    ("power", "float32", "kW", 1.0, (0x4150, 0x0000)),
    ("energy", "uint32", "kWh", 1.0, (0, 12345)),
    ("run_hours", "uint32", "h", 1.0, (0, 4321)),
    ("pump_speed", "uint16", "%", 1.0, (75,)),
    ("valve_position", "uint16", "%", 1.0, (40,)),
    (SETPOINT, "int16", "°C", 0.1, (600,)),
    ("mode", "uint16", None, 1.0, (1,)),
    ("fault_code", "uint16", None, 1.0, (0,)),
    ("alarm_word", "uint16", None, 1.0, (0,)),
    ("firmware", "uint16", None, 1.0, (0x0103,)),
)
COILS = ("pump_run", "burner_enable", "alarm_reset")


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    devices: int = 10
    seconds: float = 10.0
    baud: int = 9600
    timeout: float = 0.5
    writes: int = 50
    tcp_devices: int = 100
    tcp_points: int = 20

    def problem(self) -> str | None:
        from drivers.modbus.config import ModbusRtuBus

        if self.devices < 2 or self.devices > 247:
            return "--devices must be 2..247 (units on one line, one of them may be dead)"
        if self.seconds <= 0 or self.timeout <= 0 or self.writes < 1 or self.tcp_devices < 1 or self.tcp_points < 1:
            return "--seconds, --timeout, --writes, --tcp-devices and --tcp-points must be positive"
        try:
            ModbusRtuBus(id=BUS_ID, driver="modbus_rtu", port="/dev/null", baudrate=self.baud, timeout=self.timeout)
        except ValueError as exc:
            return f"--baud/--timeout: {exc}"
        return None


def add_command(bench: Any) -> None:
    """`gateway bench bus` on the bench subparsers."""
    p = bench.add_parser("bus", help="one shared RS-485 line: dead units, write latency; TCP points/s")
    p.add_argument("--devices", type=int, default=Options.devices, help="units on the simulated RS-485 line (2..247)")
    p.add_argument("--seconds", type=float, default=Options.seconds, help="measurement window per scenario")
    p.add_argument("--baud", type=int, default=Options.baud)
    p.add_argument("--timeout", type=float, default=Options.timeout,
                   help="bus timeout, s (what a dead unit costs per request)")
    p.add_argument("--writes", type=int, default=Options.writes, help="writes per read-back mode and per urgency")
    p.add_argument("--tcp-devices", type=int, default=Options.tcp_devices)
    p.add_argument("--tcp-points", type=int, default=Options.tcp_points)
    add_json(p)
    p.set_defaults(fn=bench_bus)


def bench_bus(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if (problem := opts.problem()) is not None:
        return bad_args(problem)
    report = Report.of("bus", opts, args)

    def body(report: Report) -> None:
        with workdir("gateway-bench-bus-", "error") as work:  # dead units going offline is the point, not news
            _bench(opts, work, report)

    return run(report, body)


def scenarios(devices: int) -> list[tuple[str, str, int, bool]]:
    """(key, label, dead units, breaker on) of the cycle runs; never as many dead as there are units."""
    runs = [("all_healthy" if n == 0 else f"dead_{n}", "all healthy" if n == 0 else f"{n} dead", n, True)
            for n in DEAD_COUNTS if n < devices]
    return [*runs, ("dead_1_breaker_off", "1 dead, breaker off", 1, False)]


def _bench(opts: Options, work: Path, report: Report) -> None:
    from gateway.bench import bus_line as line

    registers = sum(len(words) for *_, words in HOLDING)
    report.say(f"gateway bench bus: {opts.devices} units on one simulated RS-485 line at {opts.baud} baud 8N1 (bus"
               f" timeout {opts.timeout:g} s), every unit polled every {1000 * INTERVAL:g} ms (so back to back),"
               " uplink off, store synchronous=full",
               f"each unit: {len(HOLDING)} points in {registers} holding registers + {len(COILS)} coils; measured"
               f" {opts.seconds:g} s after a warm-up in which breakers of dead units open",
               "figures are noisy: the cores are shared with other work; the serial timing is simulated in-process")
    per_run = line.WARMUP_LIMIT + line.SETTLE + 2 * opts.seconds + 30
    runs = [line.bounded(line.cycle_run(opts, work, key, label, line.dead_units(opts.devices, n), breaker=breaker,
                                        revive=key == "dead_1"), per_run)
            for key, label, n, breaker in scenarios(opts.devices)]
    cycles = {r.key: r.figures() for r in runs}
    report.figure(cycles=cycles)
    base = cycles["all_healthy"]["mean_cycle_ms"]
    ratios = {r.key: report.derive(f"cycle_ratio_{r.key}", ratio(cycles[r.key]["mean_cycle_ms"], base),
                                   f"cycles.{r.key}.mean_cycle_ms / cycles.all_healthy.mean_cycle_ms")
              for r in runs[1:]}
    report.target("cycle_ratio_dead_1", "healthy units' mean cycle with 1 dead unit / all healthy", "<=",
                  TARGET_CYCLE_RATIO, ratios.get("dead_1"))
    report.say("", "1. healthy units' cycle time on one shared line (time between two polls of the same unit)",
               cycle_table(runs, cycles, ratios),
               "(ratio (derived) = mean cycle / all-healthy mean cycle. 'breaker off' = offline_after 100, the dead"
               " unit polled at full rate. req/poll = requests the line heard from the healthy units per poll it heard"
               " start (function 3);"
               " dead bus = wire time from each request to a dead unit to the next request heard; probes ="
               " PROBE-urgency transactions in the scheduler; bus busy = scheduler's slot-held time, gap waits"
               " excluded)")
    one = cycles.get("dead_1", {})
    if one.get("recovery_limit_s"):
        back = one.get("recovered_after_s")
        report.say("1 dead: the dead unit made to answer again after the window; came back online after: "
                   + (f"{back:.2f} s" if back is not None else f"NOT within {one['recovery_limit_s']:g} s"))
    restarts = sum(r.restarts for r in runs)
    if restarts:
        report.say(f"WARNING: {restarts} poll task crash(es) restarted by the supervisor during these runs")

    limit = line.WARMUP_LIMIT + 2 * opts.writes * (line.WRITE_PAUSE + line.WRITE_LIMIT) + 30
    shipped = line.bounded(line.write_run(opts, work, "writes-write-urgency", baseline=False), limit).figures()
    baseline = line.bounded(line.write_run(opts, work, "writes-poll-urgency", baseline=True), limit).figures()
    report.figure(writes={"write_urgency": shipped, "poll_urgency": baseline})
    gains = {mode: report.derive(f"write_p99_poll_over_write_{mode}",
                                 ratio(baseline[mode]["p99_ms"], shipped[mode]["p99_ms"]),
                                 f"writes.poll_urgency.{mode}.p99_ms / writes.write_urgency.{mode}.p99_ms")
             for mode in ("no_read_back", "with_read_back")}
    p99s = [shipped[mode]["p99_ms"] for mode in gains]
    report.target("writes.write_urgency.*.p99_ms", "write p99 as shipped, worse of the two read-back modes", "<",
                  TARGET_WRITE_P99_MS, None if None in p99s else max(p99s), " ms")
    report.say("", f"2. write latency, request to completion through CommandHandler, {opts.writes} writes each way to"
               f" a holding register (one FC16), one at a time, while all {opts.devices} units poll back to back",
               write_table(shipped, baseline, gains),
               f"(bus load during the writes: {shipped['polls_per_s']:.1f} polls/s as shipped,"
               f" {baseline['polls_per_s']:.1f} polls/s in the baseline; baseline = the same driver with writes and"
               " read-backs queued at POLL urgency, FIFO behind every waiting poll)")
    for name, run_ in (("as shipped", shipped), ("baseline", baseline)):
        for mode in gains:
            bad = {k: v for k, v in run_[mode]["outcomes"].items() if k not in ("written", "verified")}
            if bad:
                report.say(f"  {name}, {mode.replace('_', ' ')}: not ok: "
                           + ", ".join(f"{v} {k}" for k, v in sorted(bad.items())))

    tcp = line.tcp_run(opts, work)
    report.figure(tcp=tcp)
    from gateway.bench.polling import rows
    from gateway.core.text import table

    report.say("", f"3. Modbus TCP: {opts.tcp_devices} devices x {opts.tcp_points} points, one bus each with"
               f" max_in_flight 1, polled back to back for {opts.seconds:g} s (simulator in its own process)",
               table([*rows(tcp), ["polls/s per device", num(tcp["polls_per_s_per_device"], 1)]], ["", "value"]))


def cycle_table(runs: Sequence[Any], cycles: dict[str, dict[str, Any]], ratios: dict[str, float | None]) -> str:
    from gateway.core.text import table

    rows = []
    for r in runs:
        c = cycles[r.key]
        rows.append((
            r.label, f"{c['healthy']}+{c['dead']}", num(c["mean_cycle_ms"], 0), num(c["max_cycle_ms"], 0),
            num(ratios.get(r.key, 1.0), 2), num(c["polls_per_s"], 2), num(c["polls_per_s_per_device"], 2),
            num(c["requests_per_poll"], 2), str(c["failed_polls"]), str(c["dead_unit_requests"]), str(c["probes"]),
            num(c["dead_bus_s"], 2), num(c["dead_bus_percent"], 1), num(c["bus_busy_percent"], 0),
        ))
    return table(rows, ["scenario", "healthy+dead", "mean cycle ms", "max cycle ms", "ratio (derived)", "polls/s",
                        "polls/s/dev", "req/poll", "failed", "dead-unit req", "probes", "dead bus s", "dead bus %",
                        "bus busy %"])


def write_table(shipped: dict[str, Any], baseline: dict[str, Any], gains: dict[str, float | None]) -> str:
    from gateway.core.text import table

    rows = []
    for name, run_ in (("WRITE urgency (as shipped)", shipped), ("POLL urgency (baseline)", baseline)):
        for mode in ("no_read_back", "with_read_back"):
            w = run_[mode]
            derived = gains[mode] if run_ is shipped else None
            rows.append((f"{name}, {mode.replace('_', ' ').replace('read back', 'read-back')}",
                         f"{w['ok']}/{w['total']}", num(w["p50_ms"], 0), num(w["p99_ms"], 0), num(w["max_ms"], 0),
                         "-" if derived is None else f"{derived:.1f}x"))
    return table(rows, ["write path", "ok", "p50 ms", "p99 ms", "max ms", "p99 POLL/WRITE (derived)"])
