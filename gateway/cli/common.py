"""Output helpers shared by the CLI commands: tables for people, stable JSON for programs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.core.text import ago, fmt, print_json, table

__all__ = ["actor", "ago", "ask_daemon", "fmt", "load", "print_json", "stored", "table"]


def ask_daemon(path: Path, command: dict[str, Any]) -> dict[str, Any] | None:
    """The running daemon's answer over its control socket ``path``; None when no daemon is listening."""
    import asyncio

    from gateway.control import request

    if not path.exists():
        return None
    try:
        return asyncio.run(request(path, command))
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except PermissionError:
        print(f"no access to the gateway daemon's control socket {path}: run this as a member of the "
              "'gateway' group, or with sudo", file=sys.stderr)
        raise SystemExit(1) from None


def load(args: argparse.Namespace, warnings: list[Any] | None = None) -> Any:
    """The config, or exit 2 with every problem printed as FILE:LINE: key: message."""
    from gateway.cli.ownership import hand_over_at_exit
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, warnings=warnings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    hand_over_at_exit(cfg.store.data_dir)  # under sudo: what this command creates there stays the service's
    return cfg


def stored(cfg: Any) -> Any:
    """The gateway's store, read-only, or exit 1 when the daemon has never run with this config."""
    import sqlite3

    from gateway.daemon import data_path, open_store

    path = data_path(cfg)
    try:
        if not path.exists():
            print(f"no store at {path}: the gateway has not run yet", file=sys.stderr)
            raise SystemExit(1)
        return open_store(cfg, read_only=True)
    except (PermissionError, sqlite3.OperationalError) as exc:
        print(f"cannot read the store {path} ({exc}): run this as a member of the 'gateway' group, "
              "or with sudo", file=sys.stderr)
        raise SystemExit(1) from None


def actor() -> str:
    """Who ran the command, for every audit trail: under sudo, the person behind it too."""
    import getpass
    import os

    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo by {sudo})" if sudo and sudo != user else user
