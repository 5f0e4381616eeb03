"""`gateway rules test`: replay a recording through the rules before deploying them; and the recording's source,
`gateway events --export`.

Nothing here runs an action or touches a device: the replay lists what the rules would do and when.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gateway.cli.common import load, print_json
from gateway.core.config import parse_duration


def add_commands(sub: Any, config_default: str) -> None:
    rules = sub.add_parser("rules", help="try rules offline against a recording")
    verbs = rules.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser(
        "test", help="replay a recording (gateway events --export) through the rules on simulated time",
        description="Replay readings and events through the config's rules and alarm classes on simulated time;"
                    " print which alarms would fire, escalate and clear, and which actions would run (none is run).")
    p.add_argument("-c", "--config", type=Path, default=Path(config_default), help="config file (TOML)")
    p.add_argument("--replay", type=Path, required=True, metavar="RECORDING",
                   help="JSON lines of readings and events (- for stdin)")
    p.add_argument("--until", metavar="DURATION",
                   help="simulate until this long after the first record, e.g. 2h (default: the last record plus"
                        " the longest escalation deadline)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_rules_test)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The `gateway events` options that write a recording instead of showing the log."""
    p.add_argument("--export", type=Path, metavar="FILE",
                   help="write readings and events as a recording for `gateway rules test --replay` (- = stdout)")
    p.add_argument("--since", metavar="WHEN", help="only the last DURATION (90s, 15m, 1h, 2d) or from an ISO time")


# -- gateway rules test ----------------------------------------------------------------------------------


def cmd_rules_test(args: argparse.Namespace) -> int:
    from rules.replay import RecordingError, Replayer, default_until, parse_recording

    cfg = load(args)  # exit 2 with FILE:LINE: key: message on any config problem
    until_offset: float | None = None
    if args.until is not None:
        try:
            until_offset = parse_duration(args.until)
        except ValueError as exc:
            print(f"--until: {exc}", file=sys.stderr)
            return 2
    try:
        if str(args.replay) == "-":
            records = parse_recording(sys.stdin.buffer)
        else:
            with args.replay.open("rb") as handle:
                records = parse_recording(handle)
    except OSError as exc:
        print(f"{args.replay}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except RecordingError as exc:
        print(f"{args.replay}:{exc.line}: {exc.message}", file=sys.stderr)
        return 2
    records.sort(key=lambda r: r.ts)
    if not records:
        print(f"{args.replay}: no records", file=sys.stderr)
        return 2
    start = records[0].ts
    until = start + until_offset if until_offset is not None else default_until(cfg, records)
    assert until is not None
    replayer = Replayer(cfg, start)
    steps = replayer.run(records, until)
    if args.json:
        print_json({"start": start, "until": until, "records": len(records), "ignored": replayer.skipped,
                    "steps": [{**s.to_dict(), "offset": s.at - start} for s in steps]})
        return 0
    print(f"{len(records)} records from {_stamp(start)}, simulated to {_offset(until - start)}"
          f" ({replayer.ticks} clock steps; {replayer.skipped} alarm/echo events ignored)")
    for step in steps:
        print(timeline_line(step, start))
    raised = sum(1 for s in steps if s.kind == "transition" and s.action == "raise")
    held = sum(1 for s in steps if s.kind == "note" and s.action == "suppressed")
    print(f"{raised} raise(s), {sum(1 for s in steps if s.action == 'escalate')} escalation(s),"
          f" {sum(1 for s in steps if s.action == 'clear')} clear(s),"
          f" {sum(1 for s in steps if s.kind == 'action')} action(s) that would run"
          + (f", {held} held back by a bus that was down" if held else ""))
    return 0


def timeline_line(step: Any, start: float) -> str:
    """``+00:01:12  fire-recall/04  raise  -> active_unack  tier=property  "Fire in zone 04"``."""
    head = f"{_offset(step.at - start)}  "
    if step.kind == "note":
        return f"{head}note: {step.message}"
    if step.kind == "action":
        verb = {"write": "would write", "notify": "would notify", "publish": "would publish"}[step.action]
        return f"{head}{step.key}  {verb} {step.detail}"
    parts = [f"{step.key}  {step.action}  -> {step.state}"]
    if step.level:
        parts.append(f"level={step.level} {step.colour}")
    if step.tier:
        parts.append(f"tier={step.tier}")
    if step.message and step.action in ("raise", "escalate"):
        parts.append(json.dumps(step.message, ensure_ascii=False))
    return head + "  ".join(parts)


def _offset(seconds: float) -> str:
    whole = int(max(0.0, seconds))
    frac = max(0.0, seconds) - whole
    text = f"+{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return text + (f".{int(frac * 1000):03d}" if frac >= 0.0005 else "")


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- gateway events --export -----------------------------------------------------------------------------


def recording_lines(store: Any, since: float = 0.0) -> Iterator[str]:
    """The store's readings (one record per point of each snapshot) and events, merged in time order."""
    def readings() -> Iterator[tuple[float, str]]:
        for device, ts, points in store.samples_since(since):
            for point, sample in points.items():
                record: dict[str, Any] = {"t": "reading", "ts": ts, "device": device, "point": point,
                                          "value": sample.get("v"), "quality": sample.get("q", "good")}
                if sample.get("u"):
                    record["unit"] = sample["u"]
                yield ts, json.dumps(record, ensure_ascii=False)

    def events() -> Iterator[tuple[float, str]]:
        for ev in store.events_since(since):
            record = {"t": "event", "ts": ev["ts"], "kind": ev["kind"], "source": ev["source"],
                      "priority": ev["priority"], "data": ev["data"], "id": ev["id"]}
            yield ev["ts"], json.dumps(record, ensure_ascii=False)

    for _, line in heapq.merge(readings(), events(), key=lambda pair: pair[0]):
        yield line


def export_events(store: Any, args: argparse.Namespace) -> int:
    """`gateway events --export FILE [--since DURATION]`: write the recording; the count goes to stderr."""
    since = 0.0
    if getattr(args, "since", None):
        try:
            since = time.time() - parse_duration(args.since)
        except ValueError as exc:
            print(f"--since: {exc}", file=sys.stderr)
            return 2
    count = 0
    with contextlib.ExitStack() as stack:
        out: IO[str]
        if str(args.export) == "-":
            out = sys.stdout
        else:
            try:
                out = stack.enter_context(args.export.open("w", encoding="utf-8"))
            except OSError as exc:
                print(f"{args.export}: {exc.strerror or exc}", file=sys.stderr)
                return 1
        for line in recording_lines(store, since):
            out.write(line + "\n")
            count += 1
    print(f"{count} records written to {args.export}", file=sys.stderr)
    return 0
