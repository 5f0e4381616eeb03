"""`gateway reload`: the running daemon applies its config file again, only what changed, and says what it did."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from gateway.cli.common import actor, ask_daemon, print_json

LABELS = {
    "devices_added": "devices added", "devices_removed": "devices removed", "devices_changed": "devices changed",
    "buses_added": "buses added", "buses_removed": "buses removed", "buses_changed": "buses changed",
    "rebuild": "buses restarted (driver and every device on it)", "restart": "pollers restarted",
    "reporting": "reporting changed", "rules": "rule set swapped, alarms kept", "mqtt": "uplink reconnected",
    "privacy": "privacy changed", "cameras_added": "cameras added", "cameras_removed": "cameras removed",
    "cameras_changed": "cameras restarted", "commands": "platform commands", "log": "logging",
    "observe": "health and metrics textfile", "other": "also",
}
"""ConfigChange.summary() keys, as a person reads them."""


def cmd_reload(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.control import SOCKET_NAME

    problems: list[str] = []
    data_dir: Path | None
    try:
        data_dir = load_config(args.config).store.data_dir
    except ConfigError as exc:  # the daemon refuses such a file too; ask it anyway, so the refusal is audited
        problems = [p.format() for p in exc.problems]
        data_dir = _data_dir(args.config)
    command = {"cmd": "reload", "actor": actor()}
    answer = ask_daemon(data_dir / SOCKET_NAME, command) if data_dir is not None else None
    if answer is None:
        if problems:
            print("\n".join(problems), file=sys.stderr)
        print("the gateway daemon is not running: nothing to reload (`gateway check` checks the file)",
              file=sys.stderr)
        return 1
    if args.json:
        print_json(answer)
    if not answer.get("ok"):
        print(answer.get("error"), file=sys.stderr)
        return 1
    if not answer["applied"]:
        if not args.json:
            print(f"config refused, nothing changed: {answer['reason']}", file=sys.stderr)
            for problem in answer["problems"]:
                print(problem, file=sys.stderr)
        return 1
    if not args.json:
        _show(answer)
    return 0


def _show(answer: dict[str, Any]) -> None:
    for warning in answer.get("warnings", []):
        print(f"warning: {warning}")
    changed = answer["changed"]
    if not changed:
        print(f"nothing changed (config {answer['config'][:12]})")
        return
    print(f"config applied: {answer['config'][:12]} (was {answer['previous'][:12] or '-'})")
    for key, values in changed.items():
        print(f"  {LABELS.get(key, key)}: {', '.join(values)}")


def _data_dir(path: Path) -> Path | None:
    """The data directory a config names, read from the TOML alone (the file has problems elsewhere)."""
    from gateway.config.schema import StoreConfig

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    store = raw.get("store")
    named = store.get("data_dir") if isinstance(store, dict) else None
    if not isinstance(named, str):
        default: Path = StoreConfig.model_fields["data_dir"].default
        return default
    where = Path(named).expanduser()
    return where if where.is_absolute() else path.parent / where
