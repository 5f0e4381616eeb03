"""`gateway alarms`: what is in alarm, and the person's side of the lifecycle (ack, shelve, reset).

Every action goes through the daemon (the one alarm book, the one audit trail); the platform's
MQTT commands will take the same path. Listing works from the store when the daemon is down.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gateway.cli.common import actor, load, print_json, stored, table
from gateway.cli.devices import _via_daemon
from gateway.core.config import parse_duration

ACTIONS = {"ack": "acknowledge", "reset": "reset", "shelve": "shelve", "unshelve": "unshelve",
           "disable": "out_of_service", "enable": "in_service"}


def add_commands(sub: Any, config_default: str) -> None:
    alarms = sub.add_parser("alarms", help="list alarms; acknowledge, shelve, reset them")
    verbs = alarms.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("list", help="alarms that are active or await acknowledgement / reset")
    p.add_argument("--all", action="store_true", help="also those back to normal")
    for name, text in (("ack", "acknowledge: I have seen it and own it (stops escalation)"),
                       ("reset", "reset a latched alarm whose condition is gone"),
                       ("shelve", "hide an alarm for a while (it still records, and comes back)"),
                       ("unshelve", "end a shelve early"),
                       ("disable", "take out of service for maintenance"),
                       ("enable", "return to service")):
        q = verbs.add_parser(name, help=text)
        q.add_argument("key", help="alarm key, as `gateway alarms list` shows it")
        q.add_argument("--note", default="", help="why (kept in the trail)")
        if name == "shelve":
            q.add_argument("--for", dest="duration", default="1h", help="how long, e.g. 30m, 2h (default 1h)")
    alarms.add_argument("-c", "--config", default=config_default, help="config file (TOML)")
    alarms.add_argument("--json", action="store_true", help="machine-readable output")
    for p in verbs.choices.values():  # after the verb too; SUPPRESS keeps what was given before it
        p.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file (TOML)")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    alarms.set_defaults(fn=cmd_alarms)


def cmd_alarms(args: argparse.Namespace) -> int:
    cfg = load(args)
    if args.verb == "list":
        return _list(cfg, args)
    command: dict[str, Any] = {"cmd": "alarm", "action": ACTIONS[args.verb], "key": args.key,
                               "actor": actor(), "note": args.note}
    if args.verb == "shelve":
        command["until"] = time.time() + parse_duration(args.duration)
    answer = _via_daemon(cfg, command)
    if answer is None:
        print("the gateway daemon is not running: alarm actions go through it", file=sys.stderr)
        return 1
    if args.json:
        print_json(answer)
    elif answer["ok"]:
        print(f"{args.key}: {', '.join(answer['transitions']) or 'nothing to do'}")
    else:
        print(f"{args.key}: {answer['error']}", file=sys.stderr)
    return 0 if answer["ok"] else 2


def _list(cfg: Any, args: argparse.Namespace) -> int:
    answer = _via_daemon(cfg, {"cmd": "alarms", "all": args.all})
    if answer is not None and answer["ok"]:
        alarms = answer["alarms"]
    else:
        alarms = [a for a in stored(cfg).alarm_states().values()
                  if args.all or a.get("state") != "normal"]
    if args.json:
        print_json(alarms)
        return 0
    now = time.time()
    rows = [(a.get("key"), a.get("state"), ("yellow", "red")[a["level"] - 1] if a.get("level") else "",
             a.get("severity"), _since(a.get("activated_at"), now), a.get("acknowledged_by") or "",
             (a.get("message") or "")[:70]) for a in alarms]
    print(table(rows, ["alarm", "state", "level", "severity", "active for", "acknowledged by", "message"]))
    return 0


def _since(ts: Any, now: float) -> str:
    if not isinstance(ts, int | float):
        return ""
    minutes = max(0.0, now - ts) / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
