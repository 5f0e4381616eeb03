"""`gateway doctor`: the first command a technician runs on a box: every check at once, one line each.

Exit status 0 when every check is ok, 1 when the worst is a warning, 2 when anything failed. ``--json`` prints
one object (``checks``: name, status, summary, advice, details). docs/doctor.md lists what is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from gateway.cli.common import print_json

MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
WIDTH = 100
"""Columns of the line naming the skipped checks (the check lines themselves are as long as they must be)."""


def add_commands(sub: Any, default_config: str) -> None:
    """Add this module's commands to the CLI's subparsers."""
    from gateway.doctor import BUDGET

    help_ = "check this box: config, service, clock, disk, ports, buses, brokers, certificates, cameras, outbox"
    p = sub.add_parser("doctor", help=help_, description=help_ + ". Exit status 0 = all ok, 1 = a warning, "
                       "2 = a failure.")
    p.add_argument("-c", "--config", type=Path, default=Path(default_config), help="config file (TOML)")
    p.add_argument("--json", action="store_true", help="one JSON object: checks with name/status/summary/advice")
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="leave out checks by name or glob, e.g. --skip 'camera:*' (repeatable)")
    p.add_argument("--timeout", type=float, default=BUDGET,
                   help=f"seconds the whole run may take (default {BUDGET:g})")
    p.set_defaults(fn=cmd_doctor)


def render(report: Any) -> str:
    """One line per check (what to do after the arrow); a bad config's lines below its own."""
    width = max((len(r.name) for r in report.results), default=0)
    lines = []
    for r in report.results:
        line = f"{MARK[r.status.value]}  {r.name:<{width}}  {r.summary}"
        if r.advice:
            line += f" -> {r.advice}"
        lines.append(line)
        lines += [f"      {text}" for text in r.details.get("problems", []) + r.details.get("warnings", [])]
    counts = {s: sum(r.status.value == s for r in report.results) for s in ("ok", "warn", "fail")}
    lines.append(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail in {report.elapsed:.1f} s")
    if report.skipped:
        lines += textwrap.wrap(f"skipped {len(report.skipped)}: {', '.join(_kinds(report.skipped))}", WIDTH,
                               subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines)


def _kinds(names: list[str]) -> list[str]:
    """Skipped names, those of one kind summed up (``bus:* (298)``): --skip 'bus:*' at a big site is one word."""
    kinds = collections.Counter(name.partition(":")[0] for name in names if ":" in name)
    shown: list[str] = []
    summed: set[str] = set()
    for name in names:
        kind = name.partition(":")[0]
        if ":" not in name or kinds[kind] == 1:
            shown.append(name)
        elif kind not in summed:
            summed.add(kind)
            shown.append(f"{kind}:* ({kinds[kind]})")
    return shown


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.core import logs
    from gateway.doctor import diagnose

    if not 1 <= args.timeout <= 600:
        print("--timeout must be between 1 and 600 seconds", file=sys.stderr)
        return 2
    logs.configure("error", "console", stream=sys.stderr)  # drivers' chatter stays out of the report
    loop = asyncio.new_event_loop()
    try:
        report = loop.run_until_complete(diagnose(args.config, budget=args.timeout, skip=args.skip))
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
    finally:
        loop.close()  # not asyncio.run: it would wait for every worker thread, however stuck
    if args.json:
        print_json(report.as_dict())
    else:
        print(render(report))
    sys.stdout.flush()
    if _stuck_threads():
        # A DNS lookup or a stat stuck in the kernel sits in a worker thread no timeout can end, and the
        # interpreter would wait for it at exit: the report is out, so leave now.
        os._exit(report.exit_code)
    return report.exit_code


def _stuck_threads(grace: float = 0.5) -> bool:
    """Whether a worker thread is still busy after ``grace`` seconds (idle ones end once the loop is closed)."""
    workers = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in workers:
        thread.join(grace / max(1, len(workers)))
    return any(t.is_alive() for t in workers)
