"""`gateway bench encoders`: what each uplink dialect costs to encode, and what it puts on the wire, per point.

One workload for all: ``devices`` meters of ``points`` points each (floats with a unit, counters, a relay, a
status word; now and then a stale or bad point), polled ``polls`` times, stored as the recorder stores them
(readings facts). Each encoding is made by ``make_encoder`` as an uplink makes it, is born and describes the
devices (not timed), then encodes the rows in the uplink's batches (``batch``): live (every poll its own
message) and replayed (older than the live window: the JSON contract's ``batch/telemetry`` envelopes,
Sparkplug's historical DDATA several polls to a message). Figures: CPU microseconds per 1,000 points, payload
bytes per point, and with the topic (what an MQTT PUBLISH carries besides its fixed header). A dialect the
build does not have is skipped, and said.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from typing import Any

from gateway.bench.harness import Report, add_json, bad_args, num, options, ratio, run

ENCODINGS = ("json", "sparkplug_b", "homeassistant")
SITE = "bench-site"
TARGET_SPB_US_PER_1K = 10_000.0
"""Sparkplug may cost at most 10 ms of CPU per 1,000 points (10 us a point): far under a Pi's budget at 1 poll/s."""


@dataclass(frozen=True)  # no slots: the CLI reads the defaults off the class
class Options:
    devices: int = 100
    points: int = 20
    polls: int = 50
    batch: int = 200
    replay_batch: int = 100
    seed: int = 1


def add_command(bench: Any) -> None:
    """`gateway bench encoders` on the bench subparsers."""
    p = bench.add_parser("encoders", help="encode cost per 1k points and bytes per point: JSON v2, Sparkplug B, HA")
    p.add_argument("--devices", type=int, default=Options.devices)
    p.add_argument("--points", type=int, default=Options.points, help="points per device")
    p.add_argument("--polls", type=int, default=Options.polls, help="polls of every device")
    p.add_argument("--batch", type=int, default=Options.batch, help="rows per encode call (the uplink's batch)")
    add_json(p)
    p.set_defaults(fn=bench_encoders)


def bench_encoders(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if min(opts.devices, opts.points, opts.polls, opts.batch, opts.replay_batch) < 1:
        return bad_args("--devices, --points, --polls and --batch must be at least 1")
    report = Report.of("encoders", opts, args)
    return run(report, lambda report: _bench(opts, report))


def catalog(opts: Options) -> dict[str, dict[str, Any]]:
    """The devices as ``catalog.device_meta`` describes them: what births and discovery configs are made of."""
    points: dict[str, dict[str, Any]] = {}
    for i in range(opts.points):
        kind = ("float", "float", "float", "int", "bool")[i % 5]
        points[f"p{i:02d}"] = {"type": kind, "writable": kind == "bool", **({"unit": "kW"} if kind == "float" else {})}
    return {f"meter-{d:03d}": {"driver": "modbus", "points": points} for d in range(opts.devices)}


def workload(opts: Options, devices: dict[str, dict[str, Any]], start: float) -> list[Any]:
    """Every poll of every device as a readings fact, in the order the recorder would store them."""
    from gateway import facts
    from gateway.core.data import Quality, Reading

    rng = random.Random(opts.seed)
    out = []
    for poll in range(opts.polls):
        ts = start + poll
        for device, meta in devices.items():
            readings = []
            for point, info in meta["points"].items():
                kind = info["type"]
                value: Any = (round(rng.uniform(0, 400), 3) if kind == "float" else rng.randrange(0, 1 << 20)
                              if kind == "int" else rng.random() < 0.5)
                roll = rng.random()
                quality = Quality.BAD if roll < 0.005 else Quality.STALE if roll < 0.02 else Quality.GOOD
                readings.append(Reading(device, point, None if quality is Quality.BAD else value, info.get("unit"),
                                        quality, ts))
            out.append(facts.readings(device, ts, readings))
    return out


def measure(encoding: str, opts: Options, devices: dict[str, dict[str, Any]], facts_: list[Any],
            replay: bool) -> dict[str, Any]:
    from gateway.config.uplink import MqttConfig
    from gateway.facts import StoredFact
    from gateway.northbound.dialects import make_encoder
    from gateway.northbound.encoder import Session

    config = MqttConfig(encoding=encoding, live_window=60, replay_batch=opts.replay_batch)
    encoder = make_encoder(config, SITE, lambda: devices)
    now = time.time()
    session = Session(1, now, "bench")
    born = [encoder.birth(session, now), *encoder.describe(session, devices, now)]
    created = now - 3600 if replay else now
    rows = [StoredFact(i + 1, created, fact) for i, fact in enumerate(facts_)]
    payload = topics = messages = 0
    cpu = time.process_time()
    encoded = [encoder.encode(rows[i:i + opts.batch], now) for i in range(0, len(rows), opts.batch)]
    cpu = time.process_time() - cpu
    for batch in encoded:
        for e in batch:
            if e.message is not None:
                messages += 1
                payload += len(e.message.payload)
                topics += len(e.message.topic) + (0 if e.message.absolute else len(f"community/{SITE}/"))
    points = len(rows) * opts.points
    return {"messages": messages, "points": points, "cpu_s": cpu,
            "us_per_1k_points": ratio(cpu * 1e6 * 1000, points), "payload_bytes_per_point": ratio(payload, points),
            "wire_bytes_per_point": ratio(payload + topics, points),
            "birth_bytes_per_device": ratio(sum(len(m.payload) for m in born), len(devices))}


def _bench(opts: Options, report: Report) -> None:
    from gateway.core.text import table

    devices = catalog(opts)
    facts_ = workload(opts, devices, time.time() - 3600)
    report.say(f"gateway bench encoders: {opts.devices} devices x {opts.points} points x {opts.polls} polls "
               f"({opts.devices * opts.points * opts.polls:,} points), encoded in batches of {opts.batch}")
    results: dict[str, dict[str, Any]] = {}
    for encoding in ENCODINGS:
        try:
            results[encoding] = {mode: measure(encoding, opts, devices, facts_, mode == "replay")
                                 for mode in ("live", "replay")}
        except (ImportError, ValueError) as exc:  # a dialect this build lacks
            report.say(f"  {encoding}: skipped ({exc})")
    report.figure(encodings=results)
    rows = [(encoding, mode, f"{r['messages']:,}", num(r["us_per_1k_points"], 0), num(r["payload_bytes_per_point"]),
             num(r["wire_bytes_per_point"]), num(r["birth_bytes_per_device"], 0))
            for encoding, modes in results.items() for mode, r in modes.items()]
    report.say("", table(rows, ["encoding", "mode", "messages", "CPU us / 1k points", "payload B / point",
                                "+ topic B / point", "birth B / device"]))
    json_live = results.get("json", {}).get("live", {}).get("us_per_1k_points")
    spb_live = results.get("sparkplug_b", {}).get("live", {}).get("us_per_1k_points")
    report.derive("sparkplug_vs_json_cost", ratio(spb_live, json_live),
                  "encodings.sparkplug_b.live.us_per_1k_points / encodings.json.live.us_per_1k_points")
    report.derive("sparkplug_vs_json_bytes", ratio(
        results.get("sparkplug_b", {}).get("live", {}).get("wire_bytes_per_point"),
        results.get("json", {}).get("live", {}).get("wire_bytes_per_point")),
        "encodings.sparkplug_b.live.wire_bytes_per_point / encodings.json.live.wire_bytes_per_point")
    report.target("encodings.sparkplug_b.live.us_per_1k_points", "Sparkplug encode CPU per 1,000 points", "<=",
                  TARGET_SPB_US_PER_1K, spb_live, " us")
