"""`gateway bench observe`: what watching the gateway costs it: the daemon's extra CPU and RSS with the status
page, /metrics and the metrics textfile on, against the same daemon with them off.

The real daemon (``gateway run``, its own process) polls simulated Modbus TCP meters (``simulators.meter``, all in
one ``gateway.bench.wire meter`` process, each meter on its own bus) and publishes to a real Mosquitto started by
the bench. It runs twice with the same devices: ``off`` ([web] enabled = false, no textfile) and ``on`` ([web] on
with the page and /metrics, the textfile rewritten every ``--textfile-every`` s) while the bench scrapes /metrics
every ``--scrape-every`` s, as Prometheus would, and polls the page's JSON (/api/state) every ``--page-every`` s,
as an open status page does. Health upstream is at its default (on, every 60 s) in both: it is not what is
compared. With ``--rounds N`` the runs alternate off, on, off, on, ... and the medians are compared.

Each run: the daemon comes up (every meter online, the uplink connected, asked over its control socket), warms
up, then one window is measured: its CPU over the window (utime + stime from /proc) as % of one core, its RSS (the
median of ``RSS_SAMPLES`` readings of /proc status across the window), the polls it did (its own counters, asked
before and after, per second between the two answers), and every HTTP request's outcome and time. The extra CPU
and RSS (on - off) are computed; the targets are the issue's: < 2 % of a core and < 10 MB at 100 devices. Less
CPU is no success if the loop was starved: an "on" run that polled less than ``POLLS_KEPT`` of the "off" run's
rate (beyond one poll per device, what the window's edges can cut from each device's cycle) is a problem, and the
bench exits 1. Light at import (the CLI registers it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.harness import (
    HOST,
    READY_TIMEOUT,
    Report,
    add_json,
    bad_args,
    cpu_seconds,
    latency_ms,
    log_tail,
    memory_mb,
    num,
    options,
    ready_process,
    run,
    spawn_daemon,
    stop_process,
    workdir,
)

SITE = "observe"
TARGET_CPU = 2.0
"""% of one core: the daemon's extra CPU with the page, /metrics and the textfile on."""
TARGET_RSS = 10.0
"""MB: its extra resident memory."""
POLLS_KEPT = 0.99
"""The least share of the "off" run's poll rate an "on" run must keep: watching must not slow the polling."""
RSS_SAMPLES = 5
"""RSS readings across a window (their median is the run's figure: one reading can catch a passing peak)."""


@dataclass(frozen=True)
class Options:
    devices: int = 100
    interval: float = 5.0
    """Poll interval of every meter, seconds."""
    seconds: float = 60.0
    """The measured window of each run."""
    warmup: float = 15.0
    scrape_every: float = 5.0
    page_every: float = 1.0
    textfile_every: float = 15.0
    rounds: int = 1


def add_command(bench: Any) -> None:
    """`gateway bench observe` on the bench subparsers."""
    p = bench.add_parser("observe", help="the daemon's extra CPU and RSS with the status page, /metrics (scraped) and"
                                         " the metrics textfile on, against off, at 100 simulated meters")
    p.add_argument("--devices", type=int, help=f"simulated Modbus TCP meters (default {Options.devices})")
    p.add_argument("--interval", type=float, help=f"their poll interval, seconds (default {Options.interval:g})")
    p.add_argument("--seconds", type=float, help=f"measured window of each run (default {Options.seconds:g})")
    p.add_argument("--warmup", type=float, help=f"seconds after the daemon is up before the window (default"
                                                f" {Options.warmup:g})")
    p.add_argument("--scrape-every", type=float, help=f"GET /metrics every ... s (default {Options.scrape_every:g})")
    p.add_argument("--page-every", type=float, help=f"GET /api/state every ... s (default {Options.page_every:g})")
    p.add_argument("--textfile-every", type=float, help=f"[metrics] every in the 'on' runs (default"
                                                        f" {Options.textfile_every:g})")
    p.add_argument("--rounds", type=int, help="off/on pairs, alternated; medians compared (default 1)")
    add_json(p)
    p.set_defaults(fn=bench_observe)


def bench_observe(args: argparse.Namespace) -> int:
    opts = options(Options, args)
    if opts.devices < 1 or opts.rounds < 1 or min(opts.interval, opts.seconds, opts.scrape_every, opts.page_every) \
            <= 0 or opts.warmup < 0:
        return bad_args("--devices, --rounds, --interval, --seconds, --scrape-every and --page-every must be"
                        " positive, --warmup not negative")
    if opts.textfile_every < 1:
        return bad_args("--textfile-every: at least 1 s ([metrics] every)")
    report = Report.of("observe", opts, args)

    def body(report: Report) -> None:
        with workdir("gateway-bench-observe-") as work:
            _bench(opts, work, report)

    return run(report, body)


# -- the runs --------------------------------------------------------------------------------------


def _bench(opts: Options, work: Path, report: Report) -> None:
    from simulators.broker import Mosquitto, free_ports

    report.say(f"gateway bench observe: {opts.devices} meter(s) polled every {opts.interval:g} s -> gateway run ->"
               f" mosquitto; {opts.rounds} round(s) of off / on (page + /metrics scraped every"
               f" {opts.scrape_every:g} s, /api/state every {opts.page_every:g} s, textfile every"
               f" {opts.textfile_every:g} s); warm-up {opts.warmup:g} s, window {opts.seconds:g} s")
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with Mosquitto(work) as broker:
        args = ["meter", "--host", HOST, "--port", str(free_ports(opts.devices)), "--count", str(opts.devices)]
        with ready_process("gateway.bench.wire", args, work / "meters.log") as meters:
            for n in range(opts.rounds):
                for label in ("off", "on"):
                    measured = _run(opts, work / f"{label}-{n}", broker.port, meters.port, label == "on", report)
                    runs[label].append(measured)
                    report.say(f"{label} #{n + 1}: CPU {num(measured['cpu_percent'], 2)} % of a core, RSS"
                               f" {num(measured['rss_mb'])} MB, {measured['polls']} polls")
    _report(opts, report, runs)


def _config(opts: Options, data: Path, broker_port: int, first_meter: int, web_port: int | None,
            textfile: Path | None) -> str:
    from simulators.meter import METER_POINTS

    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)  # JSON strings and numbers are valid TOML

    points = "\n".join("[[devices.points]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in raw.items()
                                                      if v is not None) for raw in METER_POINTS)
    text = [f'[site]\nid = "{SITE}"\n', f"[store]\ndata_dir = {value(str(data))}\n",
            '[log]\nlevel = "warning"\nformat = "json"\n',
            f'[mqtt]\nhost = "{HOST}"\nport = {broker_port}\nreconnect_min = 0.1\nreconnect_max = 1.0\n',
            f'[web]\nenabled = true\nlisten = "{HOST}"\nport = {web_port}\n' if web_port else
            "[web]\nenabled = false\n"]
    if textfile is not None:
        text.append(f"[metrics]\ntextfile = {value(str(textfile))}\nevery = {opts.textfile_every:g}\n")
    for m in range(opts.devices):
        text.append(f'[[buses]]\nid = "bus-{m}"\ndriver = "modbus_tcp"\nhost = "{HOST}"\nport = {first_meter + m}\n'
                    'timeout = "1s"\n')
        text.append(f'[[devices]]\nid = "meter-{m}"\nbus = "bus-{m}"\ninterval = "{opts.interval:g}s"\n\n' + points)
    return "\n".join(text)


def _run(opts: Options, work: Path, broker_port: int, first_meter: int, on: bool, report: Report) -> dict[str, Any]:
    from simulators.broker import free_port

    work.mkdir(parents=True)
    web_port = free_port() if on else None
    textfile = work / "gateway.prom" if on else None
    config = work / "gateway.toml"
    config.write_text(_config(opts, work / "data", broker_port, first_meter, web_port, textfile), encoding="utf-8")
    log_path = work / "gateway.log"
    proc = spawn_daemon(config, log_path)
    try:
        socket = work / "data" / _socket_name()
        up = _wait_up(proc, socket, opts.devices, log_path)
        _sleep(proc, opts.warmup, log_path)
        before = _observe(socket)
        load = _Load(web_port, opts) if web_port else None
        rss_seen: list[float] = []
        with load.running() if load else contextlib.nullcontext():
            t0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
            for _ in range(RSS_SAMPLES):
                _sleep(proc, opts.seconds / RSS_SAMPLES, log_path)
                rss_seen.append(memory_mb(proc.pid)[0])
            t1, cpu1 = time.monotonic(), cpu_seconds(proc.pid)
            peak = memory_mb(proc.pid)[1]
        after = _observe(socket)
        if textfile is not None:
            _check_textfile(textfile, report)
    finally:
        stop_process(proc)
    polls = sum(d["polls"] for d in after["devices"]) - sum(d["polls"] for d in before["devices"])
    span = max(1e-3, float(after["ts"]) - float(before["ts"]))
    measured: dict[str, Any] = {"web": on, "textfile": on, "up_after_s": up, "window_s": t1 - t0,
                                "cpu_s": cpu1 - cpu0, "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
                                "rss_mb": statistics.median(rss_seen), "rss_samples_mb": rss_seen,
                                "peak_rss_mb": peak, "polls": polls, "polls_span_s": span,
                                "polls_per_s": polls / span}
    if load is not None:
        measured["http"] = load.figures()
        for path, got in load.failures.items():
            report.problem(f"GET {path}: {got}")
    return measured


def _socket_name() -> str:
    from gateway.control import SOCKET_NAME

    return SOCKET_NAME


def _observe(socket: Path) -> dict[str, Any]:
    """The daemon's own picture of itself, over its control socket."""
    import asyncio

    from gateway.control import request

    answer = asyncio.run(request(socket, {"cmd": "observe"}))
    if not answer.get("ok"):
        raise RuntimeError(f"the daemon did not answer observe: {answer}")
    observed: dict[str, Any] = answer["observed"]
    return observed


def _wait_up(proc: Any, socket: Path, devices: int, log_path: Path) -> float:
    """Seconds until every meter is online and the uplink connected."""
    started = time.monotonic()
    while True:
        _alive(proc, log_path)
        with contextlib.suppress(OSError, ConnectionError, TimeoutError, ValueError):
            seen = _observe(socket)
            online = sum(1 for d in seen["devices"] if d["state"] == "online")
            if online == devices and all(u["state"] == "connected" for u in seen["uplinks"]):
                return time.monotonic() - started
        if time.monotonic() - started > READY_TIMEOUT:
            raise TimeoutError(f"the daemon was not up within {READY_TIMEOUT:g} s{log_tail(log_path)}")
        time.sleep(0.2)


def _alive(proc: Any, log_path: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"the daemon exited with code {proc.returncode}{log_tail(log_path)}")


def _sleep(proc: Any, seconds: float, log_path: Path) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _alive(proc, log_path)
        time.sleep(min(left, 0.1))
    _alive(proc, log_path)


def _check_textfile(path: Path, report: Report) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        names = {f.name for f in text_string_to_metric_families(path.read_text("utf-8"))}
    except (OSError, ValueError) as exc:
        report.problem(f"the metrics textfile {path.name}: {exc}")
        return
    if "gateway_device_polls" not in names:
        report.problem(f"the metrics textfile {path.name} has no gateway_device_polls")


@dataclass
class _Endpoint:
    path: str
    every: float
    times: list[float] = field(default_factory=list)
    bytes: int = 0
    failed: int = 0
    conn: http.client.HTTPConnection | None = None


class _Load:
    """Prometheus and an open status page, as seen from the daemon: keep-alive GETs on their own timers."""

    def __init__(self, port: int, opts: Options) -> None:
        self.port = port
        self.endpoints = [_Endpoint("/metrics", opts.scrape_every), _Endpoint("/api/state", opts.page_every)]
        self.failures: dict[str, str] = {}
        self._stop = threading.Event()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._run, name="bench-observe-load", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            for e in self.endpoints:
                if e.conn is not None:
                    e.conn.close()

    def _run(self) -> None:
        start = time.monotonic()
        due = {e.path: start for e in self.endpoints}
        while not self._stop.is_set():
            now = time.monotonic()
            for e in self.endpoints:
                if now >= due[e.path]:
                    self._get(e)
                    due[e.path] += e.every
            self._stop.wait(max(0.0, min(due.values()) - time.monotonic()))

    def _get(self, e: _Endpoint) -> None:
        if e.conn is None:
            e.conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        t0 = time.perf_counter()
        try:
            e.conn.request("GET", e.path, headers={"Host": f"{HOST}:{self.port}"})
            response = e.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            e.failed += 1
            self.failures.setdefault(e.path, f"{type(exc).__name__}: {exc}")
            e.conn.close()
            e.conn = None
            return
        if response.status != 200:
            e.failed += 1
            self.failures.setdefault(e.path, f"HTTP {response.status} {body[:200]!r}")
            return
        e.times.append(time.perf_counter() - t0)
        e.bytes = len(body)

    def figures(self) -> dict[str, Any]:
        return {e.path: {"requests": len(e.times) + e.failed, "failed": e.failed, "body_bytes": e.bytes,
                         **latency_ms(e.times)} for e in self.endpoints}


# -- the report ------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _report(opts: Options, report: Report, runs: dict[str, list[dict[str, Any]]]) -> None:
    report.figure(off=runs["off"], on=runs["on"])
    cpu = {label: _median(r, "cpu_percent") for label, r in runs.items()}
    rss = {label: _median(r, "rss_mb") for label, r in runs.items()}
    of = "median of " if opts.rounds > 1 else ""
    extra_cpu = report.derive("extra_cpu_percent", cpu["on"] - cpu["off"],
                              f"{of}on[].cpu_percent - {of}off[].cpu_percent")
    extra_rss = report.derive("extra_rss_mb", rss["on"] - rss["off"], f"{of}on[].rss_mb - {of}off[].rss_mb")
    report.say("", f"{'':34}{'off':>10}{'on':>10}",
               f"{'CPU, % of one core (/proc)':34}{num(cpu['off'], 2):>10}{num(cpu['on'], 2):>10}",
               f"{'RSS, MB (/proc status)':34}{num(rss['off']):>10}{num(rss['on']):>10}",
               f"{'polls in the window':34}{runs['off'][-1]['polls']:>10}{runs['on'][-1]['polls']:>10}",
               f"extra (derived): CPU {num(extra_cpu, 2)} % of a core, RSS {num(extra_rss)} MB")
    for path, seen in runs["on"][-1].get("http", {}).items():
        report.say(f"GET {path}: {seen['requests']} requests, {seen['failed']} failed, p50 {seen['p50_ms']} ms,"
                   f" max {seen['max_ms']} ms, {seen['body_bytes']:,} bytes")
    _polls_kept(opts, report, runs)
    report.target("extra_cpu_percent", f"extra CPU at {opts.devices} devices", "<", TARGET_CPU, extra_cpu, " %")
    report.target("extra_rss_mb", f"extra RSS at {opts.devices} devices", "<", TARGET_RSS, extra_rss, " MB")


def _polls_kept(opts: Options, report: Report, runs: dict[str, list[dict[str, Any]]]) -> None:
    """A problem when the "on" runs polled slower than the "off" runs: a starved loop uses less CPU, and would
    otherwise pass. The slack is one poll per device over the window (each device's cycle is cut at its edges)."""
    off = _median(runs["off"], "polls_per_s")
    for n, run_on in enumerate(runs["on"]):
        expected = off * run_on["polls_span_s"]
        if run_on["polls"] < POLLS_KEPT * expected - opts.devices:
            report.problem(f"on #{n + 1} polled {run_on['polls']} times where the off runs' rate gives"
                           f" {expected:.0f}: watching slowed the polling (below {100 * POLLS_KEPT:g} %, beyond one"
                           " poll per device)")
