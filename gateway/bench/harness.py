"""What every `gateway bench ...` shares: options, the processes it starts, and one way to report.

Every bench takes ``--json``. Without it people get tables as the run goes; with it stdout holds
exactly one JSON object and nothing else::

    {"bench": "modbus", "params": {...}, "<figure>": <value>, ..., "derived": {...},
     "targets": [{"figure": ..., "what": ..., "op": "<", "value": ..., "actual": ..., "met": true}],
     "problems": [...], "ok": true}

Figures are measured in the run: counted (at the server side where it is about the wire), timed, or
read from /proc. A number computed from measured figures, such as the gain of one run over another,
sits under ``derived`` with the formula it came from, and its column says "derived" in the tables.
Targets live in the benches, never in tests. A missed target, a lost message or a failed run makes
the exit status 1; bad arguments make it 2.

This module is imported by ``gateway --help`` (through the commands' registration): it must stay
light. Heavy imports belong inside the functions that run a bench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import operator
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.core.progress import Progress

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
"""Seconds a simulator or a spawned daemon may take to come up before the bench gives up."""

OptionsT = TypeVar("OptionsT")


# -- options -------------------------------------------------------------------------------------


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (params, figures, derived, targets) instead of tables")


def options(cls: type[OptionsT], args: argparse.Namespace) -> OptionsT:
    """A bench's options from the CLI; attributes a Namespace lacks (or leaves None) take their defaults."""
    assert is_dataclass(cls)
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**given)


# -- reporting -----------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                   ">=": operator.ge}


@dataclass(frozen=True, slots=True)
class Target:
    """A figure's target: ``actual op value``. A figure that was not measured misses it."""

    figure: str
    what: str
    op: str
    value: float
    actual: float | None
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.actual is not None and math.isfinite(self.actual) and _OPS[self.op](self.actual, self.value)

    def line(self) -> str:
        if self.actual is None or not math.isfinite(self.actual):
            actual = "not measured"
        else:
            actual = f"{self.actual:,.0f}" if abs(self.actual) >= 1000 else f"{self.actual:.4g}"
            actual += self.unit
        return (f"target: {self.what} {self.op} {self.value:,g}{self.unit}: {'met' if self.met else 'MISSED'}"
                f" ({actual})")


class Report:
    """One run of a bench: its parameters, what it measured, its targets, and what went wrong.

    ``say`` is for people and is silent under ``--json``; ``finish`` prints the JSON object (or the
    target lines) and returns the exit status.
    """

    RESERVED = frozenset({"bench", "params", "derived", "targets", "problems", "ok"})

    def __init__(self, bench: str, params: Any, *, json_out: bool) -> None:
        self.bench = bench
        self.params: dict[str, Any] = asdict(params) if is_dataclass(params) and not isinstance(params, type) \
            else dict(params)
        self.json_out = json_out
        self.figures: dict[str, Any] = {}
        self.derived: dict[str, dict[str, Any]] = {}
        self.targets: list[Target] = []
        self.problems: list[str] = []
        self.ticker: Progress | None = None
        """The running bench's progress line (``run``), blanked while ``say`` prints."""

    @classmethod
    def of(cls, bench: str, params: Any, args: argparse.Namespace) -> Report:
        return cls(bench, params, json_out=bool(getattr(args, "json", False)))

    def say(self, *lines: str) -> None:
        if self.json_out:
            return
        with self.ticker.paused() if self.ticker is not None else contextlib.nullcontext():
            for line in lines:
                print(line)
            with contextlib.suppress(OSError):
                sys.stdout.flush()

    def figure(self, **figures: Any) -> None:
        """Measured figures, under their stable names."""
        clash = self.RESERVED.intersection(figures)
        if clash:
            raise ValueError(f"figure names {sorted(clash)} are reserved")
        self.figures.update(figures)

    def derive(self, name: str, value: float | None, source: str) -> float | None:
        """A number computed from measured figures; ``source`` says how (e.g. "a / baseline.a")."""
        self.derived[name] = {"value": value, "from": source}
        return value

    def target(self, figure: str, what: str, op: str, value: float, actual: float | None, unit: str = "") -> Target:
        target = Target(figure, what, op, value, actual, unit)
        self.targets.append(target)
        return target

    def problem(self, text: str) -> None:
        """Something went wrong in the run (a lost message, a failed write): the exit status is 1."""
        self.problems.append(text)

    def failed(self, exc: BaseException) -> None:
        """The run could not complete: said on stderr at once, and reported as a problem."""
        text = f"bench {self.bench} failed: {exc}"
        print(text, file=sys.stderr)
        self.problems.append(text)

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.met for t in self.targets)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"bench": self.bench, "params": self.params, **self.figures, "derived": self.derived,
                               "targets": [{"figure": t.figure, "what": t.what, "op": t.op, "value": t.value,
                                            "actual": t.actual, "unit": t.unit, "met": t.met} for t in self.targets],
                               "problems": self.problems, "ok": self.ok}
        cleaned: dict[str, Any] = clean(doc)
        return cleaned

    def finish(self) -> int:
        if self.json_out:
            print(json.dumps(self.as_json(), ensure_ascii=False, indent=2))
        else:
            if self.targets:
                print()
            for target in self.targets:
                print(target.line())
            for text in self.problems:
                if not text.startswith(f"bench {self.bench} failed"):  # already on stderr
                    print(f"PROBLEM: {text}")
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        return 0 if self.ok else 1


def clean(value: Any) -> Any:
    """JSON-safe and readable: NaN and infinities become null (strict parsers reject them), floats keep six
    significant digits (more is noise in a timing), tuples become lists."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def run(report: Report, body: Callable[[Report], None]) -> int:
    """Run a bench's body; a failure of the machinery is a problem in the report, not a traceback."""
    try:
        with ticking(report):
            body(report)
    except (OSError, RuntimeError, TimeoutError) as exc:
        report.failed(exc)
    return report.finish()


@contextlib.contextmanager
def ticking(report: Report) -> Iterator[None]:
    """``bench NAME: 12 s elapsed`` redrawn every second on a terminal (never with --json), so a run of
    minutes between two tables is seen to be alive."""
    bar = Progress(f"bench {report.bench}:", unit="s elapsed", quiet=report.json_out)
    if not bar.enabled:
        yield
        return
    stop = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.update(round(time.monotonic() - start))

    thread = threading.Thread(target=tick, name="bench-progress", daemon=True)
    report.ticker = bar
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report.ticker = None
        bar.clear()  # the tables and targets follow; the elapsed time was only to show it was alive


def num(x: float | None, digits: int = 1) -> str:
    """A figure for a table: thousands separated, "n/a" when it was not measured."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero (for ``Report.derive``)."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def gain(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def percentile(samples: Sequence[float], q: float) -> float | None:
    """``gateway.core.timing.percentile``, or None for no samples (a figure that was not measured)."""
    from gateway.core.timing import percentile as quantile

    return quantile(samples, q) if samples else None


def latency_ms(samples: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and max in milliseconds of latencies in seconds, and how many there were."""
    def ms(q: float) -> float | None:
        value = percentile(samples, q)
        return None if value is None else round(1000 * value, 3)

    return {"p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0), "n": len(samples)}


# -- processes -----------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of a process so far, from /proc (Linux, as the gateway's targets are)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    values = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; it ends at the last ")"
    return (int(values[11]) + int(values[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(resident, peak resident) in MB from /proc/PID/status."""
    found = {"VmRSS": math.nan, "VmHWM": math.nan}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in found:
                found[key] = int(rest.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within ``grace`` seconds; never leaves it running."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a child's log, indented, to append to an error message."""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        if text:
            return "\n  " + "\n  ".join(text)
    return ""


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's next stdout line, without blocking past ``timeout`` or on a child that died.

    Reads raw chunks, so anything after the first newline is dropped: the protocols here are one
    line at a time (a "ready" line, then one answer per question).
    """
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no output within {timeout:g}s")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"exited with code {proc.wait()} before it answered")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


@dataclass(slots=True)
class Child:
    """A process started by ``ready_process``: its handle, the port it said it serves, its log."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, question: str, timeout: float = 10.0) -> str:
        """Write one line to the child's stdin and return its one-line answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(question.encode() + b"\n")
        self.proc.stdin.flush()
        try:
            return read_line(self.proc, timeout)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{question!r}: {exc}{log_tail(self.log)}") from exc


@contextlib.contextmanager
def ready_process(module: str, args: list[str], log_path: Path) -> Iterator[Child]:
    """``python -m module args`` until it prints ``ready <port> ...``; stopped (never left running) after.

    Its stderr goes to ``log_path``, whose tail is shown if it does not come up. Its stdin is a pipe
    the bench may ask questions on (``Child.ask``); closing it tells the child to leave.
    """
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log_file)
    try:
        try:
            line = read_line(proc, READY_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{module}: {exc}{log_tail(log_path)}") from exc
        word, port, _ = [*line.split(), "", "", ""][:3]
        if word != "ready" or not port.isdigit():
            raise RuntimeError(f"{module} said {line!r}, expected 'ready <port> <count>'")
        yield Child(proc, int(port), log_path)
    finally:
        stop_process(proc)


def spawn_daemon(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``gateway run -c config`` as its own process, stderr (its log) to ``log_path``."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log_file)


@contextlib.contextmanager
def workdir(prefix: str, level: str = "warning", base: str | None = None) -> Iterator[Path]:
    """A scratch directory, with the gateway's logs quietened to ``level`` on stderr; both undone after."""
    import structlog

    from gateway.core import logs

    saved = structlog.get_config()
    logs.configure(level, "console", stream=sys.stderr)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as tmp:
            yield Path(tmp)
    finally:
        structlog.configure(**saved)


def bad_args(message: str) -> int:
    print(f"bench: {message}", file=sys.stderr)
    return 2
