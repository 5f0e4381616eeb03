"""Output helpers shared by the CLI commands: tables for people, stable JSON for programs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.1f}s ago"


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def load(args: argparse.Namespace) -> Any:
    """The config, or exit 2 with every problem printed as FILE:LINE: key: message."""
    from gateway.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def stored(cfg: Any) -> Any:
    """The gateway's store, read-only, or exit 1 when the daemon has never run with this config."""
    from gateway.daemon import data_path, open_store

    if not data_path(cfg).exists():
        print(f"no store at {data_path(cfg)}: the gateway has not run yet", file=sys.stderr)
        raise SystemExit(1)
    return open_store(cfg, read_only=True)


def fmt(value: Any) -> str:
    """Six significant digits hide float32 noise, but never the integer digits of a counter.

    Plain ``.6g`` shows an energy register of 1234567.8 kWh as ``1.23457e+06``: the technician
    comparing it with the meter's display sees neither the same number nor the same notation.
    """
    if value is None:
        return "-"
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        whole = len(str(int(abs(value))))
        return f"{value:.{max(6, whole + 3)}g}"
    return str(value)
