"""`gateway top`: the running daemon on one terminal screen, refreshed every second.

What a technician on site wants at a glance, from the daemon's own picture of itself (``observe``
on the control socket, the same snapshot /metrics and the health message read): which devices are
polled slower than configured or failing, how busy each bus is, the active alarms (life-safety
first), what waits in the outbox and for how long, whether the uplink delivers, and what the
process costs. Drawn with the standard library's curses (nothing to install on a Pi); ``--once``
prints one frame as plain text for scripts and tickets, ``--once --json`` the snapshot itself.

Devices with a problem are listed first: a site has hundreds and the screen shows a few dozen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from gateway.core.text import table

REFRESH = 1.0
"""Seconds between two snapshots: also the span CPU %, delivered/s and bus utilisation are taken over (from the
two snapshots' counters; the first frame shows the daemon's own 30 s averages)."""
ASK_WITHIN = 5.0
"""Seconds a snapshot may take before the screen says the daemon is not answering."""
SEVERITY = {"critical": 0, "major": 1, "minor": 2, "warning": 3}
MAX_ALARMS = 5
MAX_BUSES = 8
SLOW = 1.2
"""A device whose actual poll interval exceeds its configured one by this factor is marked slow."""
OLD_OUTBOX = 60.0
"""Seconds an outbox class's oldest message may wait before it is shown as a warning."""

Line = tuple[str, str]
"""A line of the screen and its style: "", "title", "head", "bad", "warn" or "dim"."""


class NoAccess(Exception):
    """The control socket's mode keeps this user out: retrying will not help."""


def add_commands(sub: Any, default_config: str) -> None:
    """Add this module's commands to the CLI's subparsers."""
    p = sub.add_parser("top", help="live view of the running daemon: devices, buses, alarms, outbox, uplinks",
                       description="A live terminal view of the running gateway, refreshed every second: devices "
                                   "(actual vs configured poll interval, failures, state), bus utilisation, active "
                                   "alarms, outbox depth and age, uplinks, and the process. q quits.")
    p.add_argument("-c", "--config", type=Path, default=Path(default_config), help="config file (TOML)")
    p.add_argument("--once", action="store_true", help="print one frame as text and exit (for scripts)")
    p.add_argument("--json", action="store_true", help="with --once: print the daemon's snapshot as JSON")
    p.set_defaults(fn=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    from gateway.cli.common import load
    from gateway.daemon import control_path

    if args.json and not args.once:
        print("gateway top: --json needs --once (a live screen is not JSON)", file=sys.stderr)
        return 2
    path = control_path(load(args))
    try:
        if args.once:
            return _once(path, args.json)
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            print("gateway top needs a terminal; for scripts use `gateway top --once` (or --once --json)",
                  file=sys.stderr)
            return 2
        return _live(path)
    except NoAccess as exc:
        print(exc, file=sys.stderr)
        return 1


# -- the daemon's snapshot -------------------------------------------------------------------------


def ask(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The running daemon's snapshot, or None and why there is none (said on the screen, then retried)."""
    from gateway.control import request

    async def observe() -> dict[str, Any]:
        async with asyncio.timeout(ASK_WITHIN):
            return await request(path, {"cmd": "observe"})

    try:
        answer: Any = asyncio.run(observe())
    except PermissionError:
        raise NoAccess(f"no access to the gateway daemon's control socket {path}: run this as a member of the "
                       "'gateway' group, or with sudo") from None
    except (FileNotFoundError, ConnectionRefusedError):
        return None, f"the gateway daemon is not running (nothing answers on {path})"
    except TimeoutError:
        return None, f"the gateway daemon did not answer within {ASK_WITHIN:g} s"
    except (OSError, ValueError) as exc:  # ConnectionError, a garbled or oversized line
        return None, f"no answer from the gateway daemon: {exc}"
    if not isinstance(answer, dict) or not answer.get("ok") or not isinstance(answer.get("observed"), dict):
        why = answer.get("error") if isinstance(answer, dict) else None
        return None, f"the gateway daemon gave no snapshot ({why or 'unexpected answer'}): is it older than this CLI?"
    return answer["observed"], ""


def cpu_percent(snap: dict[str, Any], prev: dict[str, Any] | None) -> float | None:
    """The daemon's CPU use between two snapshots, in % of one core; None without an earlier one."""
    if prev is None or prev.get("started") != snap.get("started"):
        return None  # none yet, or the daemon restarted in between
    try:
        span = float(snap["ts"]) - float(prev["ts"])
        used = float(snap["process"]["cpu_seconds"]) - float(prev["process"]["cpu_seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, 100 * used / span) if span > 0 else None


# -- one frame -------------------------------------------------------------------------------------


def frame(snap: dict[str, Any], prev: dict[str, Any] | None = None) -> list[Line]:
    """The screen for one snapshot (``prev``, a second older, gives CPU %), top to bottom; devices last, as
    they are the part a short terminal cuts."""
    try:
        return _frame(snap, prev)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # another release, a bug
        return [("gateway top", "title"), (f"cannot show the daemon's snapshot: {type(exc).__name__}: {exc}", "bad")]


def _frame(snap: dict[str, Any], prev: dict[str, Any] | None) -> list[Line]:
    ts = snap.get("ts")
    now = float(ts) if isinstance(ts, int | float) and 0 < ts < 2**31 else time.time()
    synced = snap.get("clock_synced")
    clock = "clock synced" if synced else "clock NOT synced" if synced is False else "clock unknown"
    lines: list[Line] = [(f"gateway top  {snap.get('site', '?')}  {snap.get('version', '')}  up "
                          f"{_span(snap.get('uptime_s'))}  {clock}  {time.strftime('%H:%M:%S', time.localtime(now))}"
                          "  (q quits)", "title")]
    proc = snap.get("process") or {}
    cpu = cpu_percent(snap, prev)
    lines.append((f"process  cpu {'-' if cpu is None else f'{cpu:.1f} %'}  rss {_mb(proc.get('rss_bytes'))}  "
                  f"fds {proc.get('open_fds', '-')}  threads {proc.get('threads', '-')}  store "
                  f"{_mb(proc.get('store_bytes'))}  disk free {_mb(proc.get('disk_free_bytes'))}", ""))
    before = {u.get("name"): u for u in _same_run(snap, prev).get("uplinks") or [] if isinstance(u, dict)}
    for up in snap.get("uplinks") or []:
        rate = _rate(snap, prev, up.get("delivered"), before.get(up.get("name"), {}).get("delivered"),
                     up.get("delivered_per_s"))
        text = (f"uplink   {up.get('name')}: {up.get('state')}{' to ' + str(up['broker']) if up.get('broker') else ''}"
                f"  {'-' if rate is None else f'{rate:,.1f}'}/s delivered  backlog {_count(up.get('backlog'))}"
                f"  connects {up.get('connects', 0)}")
        ok = up.get("state") == "connected"
        error = "" if ok or not up.get("error") else f"  ({printable(str(up['error']))})"
        lines.append((text + error, "" if ok else "bad"))
    outbox = snap.get("outbox") or {}
    parts, oldest = [], 0.0
    for label, box in outbox.items():
        age = box.get("oldest_age_s")
        oldest = max(oldest, age or 0.0)
        parts.append(f"{label} {_count(box.get('depth'))}" + (f" (oldest {_span(age)})" if age is not None else ""))
    lines.append(("outbox   " + "   ".join(parts), "warn" if oldest > OLD_OUTBOX else ""))
    lines += _alarms(snap, now)
    lines += _buses(snap.get("buses") or [], _same_run(snap, prev).get("buses") or [], _span_s(snap, prev))
    lines += _devices(snap.get("devices") or [])
    return lines


def _alarms(snap: dict[str, Any], now: float) -> list[Line]:
    alarms = snap.get("alarms") or {}
    listed = [a for a in alarms.get("list") or [] if isinstance(a, dict)]
    active, unack = alarms.get("active", len(listed)), alarms.get("unacknowledged", 0)
    out: list[Line] = [("", ""), (f"alarms   {active} active, {unack} unacknowledged",
                                  "bad" if unack else "warn" if active else "head")]
    if not listed:
        return out
    safety = {d.get("id") for d in snap.get("devices") or [] if d.get("life_safety")}

    def rank(a: dict[str, Any]) -> tuple[Any, ...]:
        since = a.get("activated_at")
        return (a.get("source") not in safety, SEVERITY.get(str(a.get("severity")), 9),
                not str(a.get("state", "")).endswith("_unack"), since if isinstance(since, int | float) else 0.0)

    ordered = sorted(listed, key=rank)
    rows = [("LIFE" if a.get("source") in safety else "", a.get("severity", ""), a.get("state", ""),
             printable(str(a.get("key", ""))), printable(str(a.get("source", ""))), _ago(a.get("activated_at"), now),
             printable(str(a.get("message") or ""))[:80]) for a in ordered[:MAX_ALARMS]]
    text = table(rows, ["", "severity", "state", "alarm", "source", "active for", "message"]).splitlines()
    out.append((text[0], "head"))
    out += [(line, "bad" if str(a.get("state", "")).endswith("_unack") else "warn")
            for line, a in zip(text[2:], ordered, strict=False)]
    if len(ordered) > MAX_ALARMS:
        out.append((f"... {len(ordered) - MAX_ALARMS} more: gateway alarms list", "dim"))
    return out


def _same_run(snap: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    """The earlier snapshot when it is of the same daemon run (counters only grow within one), else nothing."""
    return prev if prev is not None and prev.get("started") == snap.get("started") else {}


def _span_s(snap: dict[str, Any], prev: dict[str, Any] | None) -> float | None:
    earlier = _same_run(snap, prev)
    now, then = snap.get("ts"), earlier.get("ts")
    if isinstance(now, int | float) and isinstance(then, int | float) and now > then:
        return float(now - then)
    return None


def _per_s(now: Any, then: Any, span: float | None) -> float | None:
    """A counter's rate between two snapshots ``span`` seconds apart; None when one is missing."""
    if span is None or not isinstance(now, int | float) or not isinstance(then, int | float):
        return None
    return max(0.0, now - then) / span


def _rate(snap: dict[str, Any], prev: dict[str, Any] | None, now: Any, then: Any, fallback: Any) -> float | None:
    """Per second between the two snapshots; the daemon's own window average when there is no earlier one."""
    rate = _per_s(now, then, _span_s(snap, prev))
    if rate is not None:
        return rate
    return fallback if isinstance(fallback, int | float) else None


def _buses(buses: list[dict[str, Any]], earlier: list[dict[str, Any]] | None = None,
           span: float | None = None) -> list[Line]:
    if not buses:
        return []
    before = {b.get("id"): b for b in earlier or [] if isinstance(b, dict)}

    def utilisation(b: dict[str, Any]) -> Any:
        """Busy time per second since the earlier snapshot, per transaction slot; else the daemon's 30 s figure."""
        busy = _per_s(b.get("busy_seconds"), before.get(b.get("id"), {}).get("busy_seconds"), span)
        if busy is None:
            return b.get("utilisation")
        concurrency = b.get("concurrency")
        return min(1.0, busy / max(1, concurrency if isinstance(concurrency, int) else 1))

    shown = {id(b): utilisation(b) for b in buses}
    rows = [(b.get("id"), b.get("driver"), len(b.get("devices") or []), _pct(shown[id(b)]),
             _count(b.get("transactions")), _count(b.get("waiting"))) for b in buses[:MAX_BUSES]]
    text = table(rows, ["bus", "driver", "devices", "utilisation", "transactions", "waiting"]).splitlines()
    out: list[Line] = [("", ""), (text[0], "head")]
    out += [(line, "warn" if (shown[id(b)] or 0) > 0.8 else "") for line, b in zip(text[2:], buses, strict=False)]
    if len(buses) > MAX_BUSES:
        out.append((f"... {len(buses) - MAX_BUSES} more buses", "dim"))
    return out


def _slow(d: dict[str, Any]) -> bool:
    actual, configured = d.get("actual_interval_s"), d.get("interval_s")
    if d.get("overrunning"):
        return True
    return isinstance(actual, int | float) and isinstance(configured, int | float) and actual > SLOW * configured > 0


def _devices(devices: list[dict[str, Any]]) -> list[Line]:
    if not devices:
        return [("", ""), ("no devices", "dim")]
    ordered = sorted(devices, key=lambda d: (d.get("state") == "online", not _slow(d), str(d.get("id"))))
    rows = []
    for d in ordered:
        actual, configured = d.get("actual_interval_s"), d.get("interval_s")
        interval = "streamed" if configured is None else f"{_secs(actual)} / {_secs(configured)}"
        rows.append((("* " if d.get("life_safety") else "") + printable(str(d.get("id"))), d.get("bus") or "-",
                     d.get("state"), interval + (" SLOW" if _slow(d) else ""), _count(d.get("polls")),
                     _count(d.get("failures")), _count(d.get("retries")),
                     _span(d.get("last_ok_age_s"), never="never"), printable(str(d.get("error") or ""))[:60]))
    text = table(rows, ["device", "bus", "state", "interval actual / set", "polls", "failures", "retries",
                        "last ok", "error"]).splitlines()
    out: list[Line] = [("", ""), (text[0], "head")]
    for line, d in zip(text[2:], ordered, strict=False):
        out.append((line, "" if d.get("state") == "online" and not _slow(d) else
                    "warn" if d.get("state") == "online" else "bad"))
    out.append(("* life-safety device", "dim"))
    return out


def waiting(why: str) -> list[Line]:
    return [("gateway top  (q quits)", "title"), ("", ""), (why, "bad"), ("retrying every second", "dim")]


def fit(lines: list[Line], height: int) -> list[Line]:
    """As many lines as the screen has rows; the last one says how many more there are."""
    if height <= 0:
        return []
    if len(lines) <= height:
        return lines
    cut = len(lines) - height + 1
    return [*lines[: height - 1], (f"... {cut} more lines (a taller terminal shows them)", "dim")]


def printable(text: str) -> str:
    """``text`` as one line a terminal draws as it is: control characters (a newline or an escape sequence in a
    device's error or an alarm's message) become a blank, format characters (bidi overrides) go."""
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif category != "Cf":
            out.append(ch)
    return "".join(out)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal columns (a Chinese character takes two), control characters blanked."""
    used, out = 0, []
    for ch in printable(text):
        cols = 2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
        if used + cols > width:
            break
        used += cols
        out.append(ch)
    return "".join(out)


# -- numbers for people ----------------------------------------------------------------------------


def _span(seconds: Any, never: str = "-") -> str:
    if not isinstance(seconds, int | float):
        return never
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(ts: Any, now: float) -> str:
    return _span(max(0.0, now - ts)) if isinstance(ts, int | float) else "-"


def _secs(value: Any) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) and value else "-"


def _pct(fraction: Any) -> str:
    return f"{100 * fraction:.1f} %" if isinstance(fraction, int | float) else "-"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _mb(value: Any) -> str:
    if not isinstance(value, int | float) or value < 0:
        return "-"
    return f"{value / 2**30:.1f} GB" if value >= 2**30 else f"{value / 2**20:.1f} MB"


# -- text and screen -------------------------------------------------------------------------------


def _once(path: Path, as_json: bool) -> int:
    first, why = ask(path)
    second = None
    if first is not None:
        time.sleep(REFRESH)  # a second snapshot: CPU % and the daemon's rates are over the second between them
        second, why = ask(path)
    if first is None or second is None:
        print(f"gateway top: {why}", file=sys.stderr)
        return 1
    if as_json:
        from gateway.core.text import print_json

        print_json(second)
    else:
        print("\n".join(printable(text).rstrip() for text, _ in frame(second, first)))
    return 0


def _live(path: Path) -> int:
    import curses
    import locale
    import signal

    def leave(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through curses.wrapper, which gives the terminal back

    locale.setlocale(locale.LC_ALL, "")  # curses writes UTF-8 (Chinese alarm texts) only with the locale set
    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)
    try:
        return int(curses.wrapper(_screen, path))
    except KeyboardInterrupt:  # Ctrl-C: as q
        return 0


def _screen(stdscr: Any, path: Path) -> int:
    import curses

    with contextlib.suppress(curses.error):
        curses.curs_set(0)
    styles = {"title": curses.A_REVERSE | curses.A_BOLD, "head": curses.A_BOLD, "bad": curses.A_BOLD,
              "warn": curses.A_NORMAL, "dim": curses.A_DIM, "": curses.A_NORMAL}
    if curses.has_colors():
        with contextlib.suppress(curses.error):
            curses.use_default_colors()
            curses.init_pair(1, curses.COLOR_RED, -1)
            curses.init_pair(2, curses.COLOR_YELLOW, -1)
            styles["bad"] = curses.color_pair(1) | curses.A_BOLD
            styles["warn"] = curses.color_pair(2)
    snap: dict[str, Any] | None = None
    prev: dict[str, Any] | None = None
    why = "asking the gateway daemon..."
    due = 0.0
    while True:
        if time.monotonic() >= due:
            got, why = ask(path)
            prev, snap = (snap, got) if got is not None else (None, None)
            due = time.monotonic() + REFRESH
        _draw(stdscr, frame(snap, prev) if snap is not None else waiting(why), styles)
        stdscr.timeout(max(10, int(1000 * (due - time.monotonic()))))
        key = stdscr.getch()
        if key in (ord("q"), ord("Q")):
            return 0
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()


def _draw(stdscr: Any, lines: list[Line], styles: dict[str, int]) -> None:
    import curses

    height, width = stdscr.getmaxyx()
    stdscr.erase()
    for y, (text, style) in enumerate(fit(lines, height)):
        with contextlib.suppress(curses.error):  # the bottom-right cell, or a terminal shrinking meanwhile
            stdscr.addstr(y, 0, clip(text, width - 1), styles.get(style, 0))
    stdscr.refresh()
