"""`gateway schema upstream|commands|kinds`: the native JSON contract, generated from its models (no config needed)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_command(sub: Any) -> None:
    p = sub.add_parser("schema", help="the upstream contract: JSON Schema, event catalogue",
                       description="What platforms receive (docs/upstream.md), generated from the code.")
    what = p.add_subparsers(dest="sub", required=True)
    upstream = what.add_parser("upstream", help="print the JSON Schema (2020-12) of every upstream message")
    upstream.set_defaults(fn=cmd_upstream)
    commands = what.add_parser("commands", help="print the JSON Schema of platform commands (cmd/req, cmd/res)")
    commands.set_defaults(fn=cmd_commands)
    kinds = what.add_parser("kinds", help="print the catalogue of event and alarm kinds")
    kinds.add_argument("--json", action="store_true", help="machine-readable output")
    kinds.set_defaults(fn=cmd_kinds)


def cmd_upstream(args: argparse.Namespace) -> int:
    from gateway.northbound.contract import render_schema

    sys.stdout.write(render_schema())
    return 0


def cmd_commands(args: argparse.Namespace) -> int:
    from gateway.remote.contract import render_schema

    sys.stdout.write(render_schema())
    return 0


def cmd_kinds(args: argparse.Namespace) -> int:
    from gateway.cli.common import print_json
    from gateway.northbound.catalogue import KINDS, fields_of, markdown

    if args.json:
        print_json([{"kind": k.kind, "priority": list(k.priority), "source": k.source, "data": fields_of(k.data),
                     "about": k.about, "clears": k.clears} for k in KINDS])
    else:
        sys.stdout.write(markdown())
    return 0
