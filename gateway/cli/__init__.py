"""`gateway`: the technician's command line. Every command has --json with a stable shape."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.bench import add_commands as add_bench_commands
from gateway.cli import backup, doctor, top, web
from gateway.cli.alarms import add_commands as add_alarm_commands
from gateway.cli.commissioning import add_commands as add_commissioning_commands
from gateway.cli.common import load
from gateway.cli.devices import cmd_audit, cmd_profiles, cmd_read, cmd_values, cmd_write
from gateway.cli.points import add_command as add_points_command
from gateway.cli.reload import cmd_reload
from gateway.cli.rules import add_commands as add_rule_commands
from gateway.cli.rules import add_export_arguments
from gateway.cli.schema import add_command as add_schema_command
from gateway.cli.site import (
    add_event_filters,
    cmd_check,
    cmd_demo,
    cmd_events,
    cmd_run,
    cmd_schema,
    cmd_simulate,
    cmd_status,
)
from gateway.cli.vision import add_commands as add_vision_commands
from gateway.cli.vision import add_simulate as add_camera_simulate
from gateway.cli.vision_tools import add_commands as add_vision_tools

DEFAULT_CONFIG = "/etc/gateway/config.toml"


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Community edge gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help_: str, *, config: bool = True,
                json_: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if config:
            p.add_argument("-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="config file (TOML)")
        if json_:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(fn=fn)
        return p

    command("run", cmd_run, "run the gateway daemon", json_=False)
    command("check", cmd_check, "validate a config file; exit 2 on problems", json_=False)
    command("reload", cmd_reload, "the running daemon applies its changed config: what changed, or the file's "
            "problems (exit 1, nothing changed)")
    cfg = sub.add_parser("config", help="config helpers").add_subparsers(dest="sub", required=True)
    schema = cfg.add_parser("schema", help="print the config JSON Schema (for editors)")
    schema.set_defaults(fn=cmd_schema)
    command("status", cmd_status, "devices, uplink and outbox at a glance")
    p = command("read", cmd_read, "read a device live, bypassing the store")
    p.add_argument("device")
    p.add_argument("point", nargs="?")
    p = command("values", cmd_values, "the latest value of every point, from the running daemon's memory")
    p.add_argument("device", nargs="?")
    p = command("write", cmd_write, "write a point (checked, queued ahead of polls, read back, audited)")
    p.add_argument("device")
    p.add_argument("point")
    p.add_argument("value", help="a number, true/false, or a state name such as \"open\"")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the read-back check")
    p = command("audit", cmd_audit, "who wrote what, when, and how it went")
    p.add_argument("-n", "--last", type=int, default=50)
    profiles = sub.add_parser("profiles", help="shipped device register maps").add_subparsers(
        dest="sub", required=True)
    p = profiles.add_parser("list", help="list the profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profiles, name=None)
    p = profiles.add_parser("show", help="print one profile (TOML, or --json)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profiles)
    add_alarm_commands(sub, DEFAULT_CONFIG)
    add_rule_commands(sub, DEFAULT_CONFIG)
    add_points_command(sub, DEFAULT_CONFIG)
    add_schema_command(sub)
    add_commissioning_commands(sub, DEFAULT_CONFIG)
    add_vision_commands(sub)
    add_vision_tools(sub)
    for module in (doctor, top, web, backup):
        module.add_commands(sub, DEFAULT_CONFIG)
    p = command("events", cmd_events, "show the event log")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("-n", "--last", type=int, default=50, help="start with the last N events (0 = all)")
    add_export_arguments(p)
    add_event_filters(p)
    p = command("demo", cmd_demo, "simulated meters -> daemon -> local broker, live on screen",
                config=False, json_=False)
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)")
    p.add_argument("--meters", type=int, default=3)
    p.add_argument("--camera", action="store_true",
                   help="add a lobby camera: faces and a fall, on-device (needs scripts/setup.sh --vision)")
    sim = sub.add_parser("simulate", help="run simulated field devices").add_subparsers(dest="sub", required=True)
    p = sim.add_parser("meter", help="3-phase power meters on Modbus TCP, one port each")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(fn=cmd_simulate)
    p = sim.add_parser("elevator", help="elevator controllers (profile \"elevator\") on Modbus TCP or an RTU line")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5030)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--rtu", action="store_true", help="serve units 1..COUNT on a pty pair (a simulated RS-485 line)")
    p.add_argument("--baud", type=int, default=9600)
    p.set_defaults(fn=cmd_simulate)
    p = sim.add_parser("firepanel", help="a fire panel printing event lines on a pty pair (GBK for gst_cn)")
    p.add_argument("--format", default="gst_cn", help="shipped format: gst_cn, notifier_en")
    p.add_argument("--script", type=Path,
                   help="lines to print, with @sleep N, @silent N, @send TEMPLATE k=v, @hex BYTES")
    p.add_argument("--random", type=float, default=0.0, metavar="RATE", help="random events, RATE per second")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeat lines (0 = none)")
    p.add_argument("--silent-after", type=float, default=None, help="go silent after N seconds")
    p.add_argument("--silent-for", type=float, default=60.0, help="how long the silence lasts")
    p.add_argument("--terminator", choices=["crlf", "lf", "cr"], default="crlf")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(fn=cmd_simulate)
    add_camera_simulate(sim)
    bench = sub.add_parser("bench", help="performance figures (every bench: --json for one JSON object)",
                           description="Performance figures, measured on this machine against simulated devices."
                                       " Exit status 1 when a printed target is missed or something was lost."
                           ).add_subparsers(dest="what", required=True)
    add_bench_commands(bench)
    _plugin_hooks(sub, sim, bench)
    return parser


def _plugin_hooks(commands: Any, simulate: Any, bench: Any) -> None:
    """Each driver plugin may add technician commands, a simulator and a bench of its own."""
    from drivers.plugin import load_object
    from drivers.registry import plugins

    for plugin in plugins().values():
        for ref, where in ((plugin.commands, commands), (plugin.simulate, simulate), (plugin.bench, bench)):
            if ref:
                load_object(ref)(where)


def _load_config(args: argparse.Namespace) -> Any:
    """What plugin commands call for the config (they cannot import the core's loader)."""
    if getattr(args, "config", None) is None:
        args.config = Path(DEFAULT_CONFIG)
    return load(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.load_config = _load_config
    try:
        result: int = args.fn(args)
    except BrokenPipeError:  # `gateway read --json | head`: the reader left; that is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    return result
