"""How long the oldest undelivered message of each class has waited in the outbox.

Thresholds (docs/doctor.md): an alarm is in flight for a moment, so one waiting up to ``ALARM_GRACE`` is fine;
longer is a warning, and past ``ALARM_FAIL`` a failure, whatever the reason, since the platform has not seen it.
Events warn after ``EVENT_WARN`` and telemetry after ``TELEMETRY_WARN`` (a replay after an outage is paced by
``replay_rate`` and may take a while). Where no enabled uplink carries a class, its rows are kept by design:
a warning at most, saying so.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from gateway.doctor.context import Context
from gateway.doctor.result import Result, Status, fail, ok, warn

ALARM_GRACE = 5.0
ALARM_FAIL = 60.0
EVENT_WARN = 300.0
TELEMETRY_WARN = 900.0
CLASSES = ("alarm", "event", "telemetry")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _from_store(ctx: Context) -> tuple[dict[str, int], dict[str, float | None]] | str:
    """Depth and oldest age per class, read from the store; or why it could not be read."""
    from gateway.daemon import data_path, open_store

    try:
        if not data_path(ctx.config).exists():
            return "no store yet"
    except PermissionError:  # inside the service's 0750 data directory, Path.exists raises EACCES
        return "this user may not look into the data directory"
    try:
        store = open_store(ctx.config, read_only=True)
    except (PermissionError, sqlite3.Error) as exc:
        return f"cannot read the store ({exc})"
    try:
        depth, oldest = store.outbox_depth(), store.outbox_oldest()
    except sqlite3.Error as exc:
        return f"cannot read the store ({exc})"
    finally:
        store.close()
    now = time.time()
    return depth, {label: max(0.0, now - oldest[label]) if label in oldest else None for label in CLASSES}


async def outbox(ctx: Context) -> Result:
    from gateway.northbound.routes import uplink_configs

    view = await ctx.daemon()
    if view.observed and isinstance(view.observed.get("outbox"), dict):
        seen = view.observed["outbox"]
        depth = {c: int(seen.get(c, {}).get("depth", 0) or 0) for c in CLASSES}
        ages: dict[str, float | None] = {c: seen.get(c, {}).get("oldest_age_s") for c in CLASSES}
        states = {u["name"]: u.get("state") for u in view.observed.get("uplinks", [])}
    else:
        read = await asyncio.to_thread(_from_store, ctx)
        if isinstance(read, str):
            return warn("outbox", f"cannot tell: {read}", view.problem or "run doctor again once the service runs")
        depth, ages = read
        states = {}
    carriers = {c: [n for n, u in uplink_configs(ctx.config).items() if u.enabled and c in u.carries] for c in CLASSES}
    details: dict[str, Any] = {"depth": depth, "oldest_age_s": {c: None if a is None else round(a, 1)
                                                                for c, a in ages.items()},
                               "uplinks": states, "running": view.running}
    summary = ", ".join(f"{c} {depth.get(c, 0):,}" + (f" (oldest {_age(a)})" if (a := ages.get(c)) else "")
                        for c in CLASSES)
    verdicts: list[tuple[Status, str]] = []
    for label, warn_after, fail_after in (("alarm", ALARM_GRACE, ALARM_FAIL), ("event", EVENT_WARN, None),
                                          ("telemetry", TELEMETRY_WARN, None)):
        age = ages.get(label)
        if age is None or age <= warn_after:
            continue
        if not carriers[label]:
            verdicts.append((Status.WARN, f"no enabled uplink carries {label}s: they stay on this box"))
            continue
        up = any(states.get(n) == "connected" for n in carriers[label])
        status = Status.FAIL if fail_after is not None and age > fail_after else Status.WARN
        if not view.running:
            why = "the daemon is not running: nothing is sent (see service)"
        elif up and label == "alarm":
            why = ("the uplink is connected but alarms are not acknowledged: the broker may refuse them (its ACL, "
                   "its log); journalctl -u gateway -p warning")
        elif up:
            why = f"the uplink is replaying a backlog ({label}s) at its replay_rate; it catches up by itself"
        else:
            why = "the uplink is down: see the broker lines"
        verdicts.append((status, f"{label}s have waited {_age(age)}: {why}"))
    if not verdicts:
        return ok("outbox", summary, **details)
    status = max((s for s, _ in verdicts), key=lambda s: s.rank)
    advice = "; ".join(text for s, text in verdicts if s is status)
    return (fail if status is Status.FAIL else warn)("outbox", summary, advice, **details)
