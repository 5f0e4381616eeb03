"""`gateway bench commands`: platform -> write on a Modbus TCP meter -> result at the platform, while meters poll.

A real Mosquitto; ``gateway run`` in its own process (store synchronous=full) polling ``devices`` simulated
meters every ``interval`` s (``gateway.bench.wire meter``, a process of their own that counts the writes
it serves); the platform is one MQTT client in the bench's process (``gateway.bench.commands_platform``).
Every request is a write of a meter's relay (open, close, open ...) with read-back, so each one is a
real actuation: checked, queued ahead of polls on its bus, written, read back, committed with its
ledger row and audit line, and delivered through the outbox.

1. before: ``before`` s of polling alone, counted as polls per device per second at the platform;
2. round trip: ``commands`` writes at ``rate`` a second, round robin over the meters: publish -> result
   at the platform, p50/p99;
3. sustained: as fast as the gateway answers (``window`` requests outstanding, a new one for each
   result) for ``burst`` s, with ``actor_rate`` and ``rate`` raised in the bench's config so the limits
   do not bind: answered/s, and the polls per device in the burst against before.

Each write answered ``ok`` must have been served by a meter exactly once (counted at the meters).
Light at import (the CLI registers it): the rest is imported when the bench runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.harness import (
    HOST,
    READY_TIMEOUT,
    Child,
    Report,
    add_json,
    bad_args,
    cpu_seconds,
    latency_ms,
    log_tail,
    num,
    options,
    ratio,
    ready_process,
    run,
    spawn_daemon,
    stop_process,
    workdir,
)

if TYPE_CHECKING:
    from gateway.bench.commands_platform import Phase
    from simulators.broker import Mosquitto

TARGET_P99_MS = 300.0
TARGET_POLLING = 0.9
"""Polls per device during the sustained run, at least this share of those before it: commands never starve
polling."""
SITE = "bench-commands"
ROOT = f"community/{SITE}"
SETTLE = 30.0
"""Seconds to wait for the last results of a run (and for the polls after it) before calling them lost."""
WRITES = ("fc5", "fc6", "fc15", "fc16")
FULL: dict[str, Any] = {"devices": 100, "commands": 300, "burst": 20.0, "window": 64, "before": 5.0}
QUICK: dict[str, Any] = {"devices": 10, "commands": 20, "burst": 2.0, "window": 8, "before": 1.0}


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    quick: bool = False
    devices: int | None = None
    """Simulated Modbus TCP meters, each on its own port; default 100, or 10 with --quick."""
    interval: float = 1.0
    commands: int | None = None
    """Writes in the round-trip run; default 300, or 20 with --quick."""
    rate: float = 10.0
    """Writes a second in the round-trip run."""
    burst: float | None = None
    """Seconds of the sustained run; default 20, or 2 with --quick."""
    window: int | None = None
    """Requests outstanding in the sustained run; default 64, or 8 with --quick."""
    before: float | None = None
    """Seconds of polling alone before the commands; default 5, or 1 with --quick."""
    broker_nodelay: bool = True
    """Mosquitto with ``set_tcp_nodelay true``, as docs/upstream.md advises; off: its default, Nagle on."""


def add_command(bench: Any) -> None:
    """`gateway bench commands` on the bench subparsers."""
    p = bench.add_parser("commands", help="platform command round trip (write + read-back on Modbus TCP) and the"
                                          " sustained command rate, while 100 meters poll")
    p.add_argument("--quick", action="store_true", help="CI size: 10 meters, 20 round trips, a 2 s burst")
    p.add_argument("--devices", type=int, help="simulated Modbus TCP meters (default 100; 10 with --quick)")
    p.add_argument("--interval", type=float, help=f"poll interval, seconds (default {Options.interval:g})")
    p.add_argument("--commands", type=int, help="writes in the round-trip run (default 300; 20 with --quick)")
    p.add_argument("--rate", type=float, help=f"round-trip writes a second (default {Options.rate:g})")
    p.add_argument("--burst", type=float, help="seconds of the sustained run (default 20; 2 with --quick)")
    p.add_argument("--window", type=int, help="requests outstanding in the sustained run (default 64; 8 with"
                                              " --quick)")
    p.add_argument("--before", type=float, help="seconds of polling alone first (default 5; 1 with --quick)")
    p.add_argument("--broker-nagle", dest="broker_nodelay", action="store_false", default=None,
                   help="leave Nagle's algorithm on at the broker (Mosquitto's default; docs/upstream.md advises"
                        " set_tcp_nodelay true, which this bench sets otherwise)")
    add_json(p)
    p.set_defaults(fn=bench_commands)


def resolve(opts: Options) -> Options:
    """The full-size (or --quick) values where none were given."""
    size = QUICK if opts.quick else FULL
    return dataclasses.replace(opts, **{k: v for k, v in size.items() if getattr(opts, k) is None})


@dataclass(slots=True)
class Result:
    round_trip: Phase
    sustained: Phase
    polling: dict[str, float]
    writes_served: int
    polled_after: bool
    duplicate_results: int
    publish_errors: int
    cpu_percent: float | None
    """The daemon's CPU over the sustained run, % of one core."""


def bench_commands(args: argparse.Namespace) -> int:
    """The tables; exit 1 if a command went unanswered, was refused or written twice, or a target was missed."""
    opts = resolve(options(Options, args))
    assert opts.devices is not None and opts.commands is not None and opts.window is not None
    assert opts.burst is not None and opts.before is not None
    if min(opts.devices, opts.commands, opts.window) < 1 or min(opts.rate, opts.burst, opts.before) <= 0 \
            or opts.interval < 0.05:
        return bad_args("--devices, --commands, --window, --rate, --burst and --before must be positive, --interval"
                        " at least 0.05")
    report = Report.of("commands", opts, args)
    return run(report, lambda report: _bench(opts, report))


def _bench(opts: Options, report: Report) -> None:
    from simulators.broker import Mosquitto, free_ports

    assert opts.devices is not None
    report.say(f"gateway bench commands: {opts.devices} Modbus TCP meters polled every {opts.interval:g} s by"
               " `gateway run` (its own process, store synchronous=full), real Mosquitto"
               f" ({'set_tcp_nodelay true' if opts.broker_nodelay else 'Nagle on'}); the platform is an MQTT client"
               " in this process (TCP_NODELAY); every command writes a meter's relay and reads it back")
    with workdir("gateway-bench-commands-") as work, _broker(Mosquitto(work), opts) as broker:
        args = ["meter", "--host", HOST, "--port", str(free_ports(opts.devices)), "--count", str(opts.devices)]
        with ready_process("gateway.bench.wire", args, work / "meters.log") as meters:
            config = _config(opts, work, broker.port, meters.port)
            result = asyncio.run(_run(opts, config, work / "gateway.log", broker.port, meters))
    _report(opts, report, result)


def _broker(broker: Mosquitto, opts: Options) -> Mosquitto:
    if opts.broker_nodelay:
        with broker.conf.open("a") as conf:  # written, not started yet: start reads it as it then is
            conf.write("set_tcp_nodelay true\n")
    return broker


def _config(opts: Options, work: Path, mqtt_port: int, first_port: int) -> Path:
    """The site as an engineer would write it, with commands on and the rate limits raised out of the way."""
    from simulators.meter import METER_POINTS

    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)  # JSON strings, numbers and booleans are valid TOML

    assert opts.devices is not None
    points = []
    for raw in METER_POINTS:
        point = {k: v for k, v in raw.items() if v is not None}
        if point["id"] == "relay_closed":
            point.update(writable=True, remote=True)
        points.append("[[devices.points]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in point.items()))
    text = [f'[site]\nid = "{SITE}"\n', f"[store]\ndata_dir = {value(str(work / 'data'))}\n",
            '[log]\nlevel = "warning"\nformat = "json"\n',
            f'[mqtt]\nhost = "{HOST}"\nport = {mqtt_port}\nreconnect_min = "100ms"\n',
            '[commands]\nenabled = true\nallow = ["write", "read", "status"]\nactor_rate = 10000\nrate = 100000\n']
    for i in range(opts.devices):
        text.append(f'[[buses]]\nid = "bus-{i}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {first_port + i}\n'
                    'timeout = "1s"\n')
        text.append(f'[[devices]]\nid = "meter-{i}"\nbus = "bus-{i}"\ninterval = "{opts.interval}s"\n\n'
                    + "\n".join(points))
    path = work / "gateway.toml"
    path.write_text("\n".join(text), encoding="utf-8")
    return path


def _writes(meters: Child) -> int:
    """Writes the meters have served so far (Modbus write function codes)."""
    answer = meters.ask("requests")
    counts = json.loads(answer.removeprefix("requests "))
    return sum(int(counts.get(fc, 0)) for fc in WRITES)


async def _run(opts: Options, config: Path, log: Path, mqtt_port: int, meters: Child) -> Result:
    from gateway.bench.commands_platform import platform

    assert opts.devices is not None and opts.commands is not None and opts.window is not None
    assert opts.burst is not None and opts.before is not None
    async with platform(mqtt_port, ROOT, opts.devices) as side:
        proc = spawn_daemon(config, log)
        try:
            try:
                await side.ready(READY_TIMEOUT)
            except TimeoutError:
                raise RuntimeError(f"the gateway did not come up within {READY_TIMEOUT:g}s (exit code"
                                   f" {proc.poll()}){log_tail(log)}") from None
            quiet = time.time()
            await asyncio.sleep(opts.before)
            polling = {"before": time.time()}
            written = await asyncio.to_thread(_writes, meters)
            round_trip = await side.paced("rt", opts.commands, opts.rate, SETTLE)
            cpu = cpu_seconds(proc.pid)
            sustained = await side.closed_loop("burst", opts.burst, opts.window, SETTLE)
            cpu = cpu_seconds(proc.pid) - cpu
            polled_after = await side.polled_after(sustained.ended + opts.interval, SETTLE)
            written = await asyncio.to_thread(_writes, meters) - written
            if proc.poll() is not None:
                raise RuntimeError(f"gateway run exited with code {proc.returncode}{log_tail(log)}")
        finally:
            stop_process(proc)
        before, before_low = side.poll_rates(quiet, polling["before"])
        during, _ = side.poll_rates(round_trip.started, round_trip.ended)
        burst, burst_low = side.poll_rates(sustained.started, sustained.ended)
        span = sustained.ended - sustained.started
        return Result(round_trip, sustained,
                      {"before_per_device_per_s": before, "before_lowest_device_per_s": before_low,
                       "round_trip_per_device_per_s": during, "sustained_per_device_per_s": burst,
                       "sustained_lowest_device_per_s": burst_low, "configured_per_device_per_s": 1 / opts.interval},
                      written, polled_after, side.duplicate_results, side.publish_errors,
                      100 * cpu / span if span > 0 else None)


def _report(opts: Options, report: Report, r: Result) -> None:
    rt, sus = r.round_trip, r.sustained
    rt_latency, sus_latency = latency_ms(rt.latencies()), latency_ms(sus.latencies())
    span = sus.answer_span()
    answered_per_s = len(sus.answered) / span if span else None
    ok = rt.statuses().get("ok", 0) + sus.statuses().get("ok", 0)
    report.figure(
        round_trip={**rt_latency, "sent": len(rt.sent), "answered": len(rt.answered), "statuses": rt.statuses()},
        sustained={"sent": len(sus.sent), "answered": len(sus.answered), "answered_per_s": answered_per_s,
                   "seconds": span, "statuses": sus.statuses(), "latency": sus_latency,
                   "daemon_cpu_percent": r.cpu_percent},
        polling=r.polling, device_writes={"served": r.writes_served, "answered_ok": ok},
        duplicate_results=r.duplicate_results,
    )
    polling = report.derive("polling_sustained_vs_before", ratio(r.polling["sustained_per_device_per_s"],
                                                                 r.polling["before_per_device_per_s"]),
                            "polling.sustained_per_device_per_s / polling.before_per_device_per_s")
    for phase in (rt, sus):
        if not phase.done:
            report.problem(f"{phase.name}: {len(phase.sent) - len(phase.answered)} of {len(phase.sent)} commands never"
                           f" answered ({r.publish_errors} publishes failed)")
        refused = {s: n for s, n in phase.statuses().items() if s != "ok"}
        if refused:
            report.problem(f"{phase.name}: answers other than ok: {refused}")
    if r.writes_served != ok:
        report.problem(f"the meters served {r.writes_served} writes for {ok} commands answered ok")
    if not r.polled_after:
        report.problem("not every meter's polls after the sustained run reached the platform")
    if r.polling["sustained_lowest_device_per_s"] == 0:
        report.problem("a meter was not polled at all during the sustained run")
    assert opts.devices is not None
    if opts.devices >= FULL["devices"]:
        report.target("round_trip.p99_ms", f"round trip p99 while {opts.devices} meters poll", "<", TARGET_P99_MS,
                      rt_latency["p99_ms"], " ms")
        report.target("derived.polling_sustained_vs_before", "polls per device, sustained run / before", ">=",
                      TARGET_POLLING, polling)
    else:
        report.say(f"targets: none printed (they hold with {FULL['devices']} meters polling)")
    _tables(report, r, rt_latency, sus_latency, answered_per_s)


def _tables(report: Report, r: Result, rt: dict[str, Any], sus: dict[str, Any], per_s: float | None) -> None:
    from gateway.core.text import table

    rows = [("round trip, paced", f"{len(r.round_trip.answered)}/{len(r.round_trip.sent)}", num(rt["p50_ms"]),
             num(rt["p99_ms"]), num(rt["max_ms"]), "-", "-"),
            ("sustained", f"{len(r.sustained.answered)}/{len(r.sustained.sent)}", num(sus["p50_ms"]),
             num(sus["p99_ms"]), num(sus["max_ms"]), num(per_s, 0), num(r.cpu_percent, 0))]
    p = r.polling
    report.say("", table(rows, ["platform -> write + read-back -> result", "answered", "p50 ms", "p99 ms", "max ms",
                                "answered/s", "daemon CPU %"]),
               "", table([("polls per device per s", num(p["before_per_device_per_s"], 3),
                           num(p["round_trip_per_device_per_s"], 3), num(p["sustained_per_device_per_s"], 3),
                           num(p["sustained_lowest_device_per_s"], 3))],
                         ["", "before", "round trip", "sustained", "sustained, lowest meter"]),
               f"(configured: {num(p['configured_per_device_per_s'], 3)}; counted by poll time at the platform);"
               f" writes served at the meters {r.writes_served}; results delivered twice {r.duplicate_results}")
