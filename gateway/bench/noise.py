"""`gateway bench noise`: genuine fire-panel lines with random noise between them, at several rates.

Real RS-232/485 lines from panels pick up stray bytes (power-up, ground loops, a technician's
laptop). Every genuine fire line must still come out as a fire alarm naming its zone: the figures
are counted through the real driver's line path (splitter, decoder, patterns, the life-safety
words), for the GBK and the English format. Target: 0 fire lines downgraded, 0 missed.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, options, run

RATES = (0.0, 0.1, 0.3, 0.6, 1.0)
"""Chance, between two genuine lines, of a burst of noise bytes."""


@dataclass(frozen=True)
class Options:
    lines: int = 400
    seed: int = 7
    max_noise: int = 48


def add_command(bench: Any) -> None:
    """`gateway bench noise` on the bench subparsers."""
    p = bench.add_parser("noise", help="fire lines through line noise at several rates: none may be lost or downgraded")
    p.add_argument("--lines", type=int, default=Options.lines, help="genuine lines per format and rate")
    p.add_argument("--seed", type=int, default=Options.seed)
    p.add_argument("--max-noise", type=int, default=Options.max_noise, help="longest burst of noise bytes")
    add_json(p)
    p.set_defaults(fn=bench_noise)


def bench_noise(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if opts.lines < 2 or opts.max_noise < 1:
        return bad_args("--lines must be at least 2 and --max-noise at least 1")
    report = Report.of("noise", opts, args)
    return run(report, lambda report: _bench(opts, report))


def _bench(opts: Options, report: Report) -> None:
    from gateway.core.text import table

    results: dict[str, dict[str, dict[str, int]]] = {}
    rows = []
    for fmt in ("gst_cn", "notifier_en"):
        results[fmt] = {}
        for rate in RATES:
            counts = _one(fmt, rate, opts)
            results[fmt][f"{rate:g}"] = counts
            rows.append((fmt, f"{rate:g}", counts["fire_lines"], counts["alarms"], counts["downgraded"],
                         counts["missed"], counts["rescued"], counts["noise_bytes"]))
    report.figure(formats=results)
    worst = {k: sum(c[k] for f in results.values() for c in f.values()) for k in ("downgraded", "missed")}
    report.target("downgraded", "fire lines that became anything but a fire alarm", "<=", 0, worst["downgraded"])
    report.target("missed", "fire lines that made no event at all", "<=", 0, worst["missed"])
    report.say("gateway bench noise: genuine lines (half of them fires) with noise bursts between them, through the "
               "driver's line path", "",
               table(rows, ["format", "noise rate", "fire lines", "fire alarms", "downgraded", "missed",
                            "rescued (parsed again)", "noise bytes"]))


def _one(fmt: str, rate: float, opts: Options) -> dict[str, int]:
    from drivers.firepanel.config import FirePanel, SerialLineBus
    from drivers.firepanel.driver import FirePanelDriver
    from drivers.firepanel.parser import LineSplitter
    from simulators.firepanel import FirePanelSimulator

    rng = random.Random(f"{opts.seed}-{fmt}-{rate}")
    sim = FirePanelSimulator(fmt, heartbeat=0)
    driver = FirePanelDriver(SerialLineBus(id="b", driver="serial_lines", port="/dev/null"),
                             [FirePanel(id="panel", bus="b", format=fmt)])
    stream, zones, noise_bytes = bytearray(), [], 0
    for i in range(opts.lines):
        if rng.random() < rate:
            burst = bytes(rng.randrange(256) for _ in range(rng.randint(1, opts.max_noise)))
            stream += burst
            noise_bytes += len(burst)
        zone = 1 + i % 97
        kind = "fire" if i % 2 == 0 else rng.choice(["fault", "fault_clear", "prealarm", "supervisory"])
        if kind == "fire":
            zones.append(zone)
        stream += (sim.render(kind, zone=zone, address=i % 250 + 1) + "\r\n").encode(sim.encoding)
    splitter = LineSplitter(b"\n", 1024)
    events = []
    for line in [*splitter.feed(bytes(stream)), *filter(None, [splitter.flush()])]:
        events += driver.monitor.take(line, 0.0, 0.0).events
    fires = [e for e in events if e.kind == "fire.alarm"]
    # A fire line is found by the zone it names; any event of another kind carrying it is a downgrade.
    fire_zones = {str(e.payload.get("zone", "")).lstrip("0") for e in fires}
    fire_texts = " ".join(str(e.payload.get("text", "")) for e in fires)
    missed = downgraded = 0
    for zone in zones:
        if str(zone) in fire_zones or f"{zone:02d}区" in fire_texts or f"Z{zone:03d}" in fire_texts:
            continue
        other = [e for e in events if e.kind != "fire.alarm" and (f"{zone:02d}区" in str(e.payload.get("text", ""))
                                                                  or f"Z{zone:03d}" in str(e.payload.get("text", "")))]
        if other:
            downgraded += 1
        else:
            missed += 1
    rescued = sum(1 for e in fires if e.payload.get("noise") is not None or e.payload.get("parse_failed"))
    return {"fire_lines": len(zones), "alarms": len(fires), "downgraded": downgraded, "missed": missed,
            "rescued": rescued, "noise_bytes": noise_bytes}
