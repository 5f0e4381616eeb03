"""Prometheus exposition of one observer snapshot (gateway/observe.py): /metrics and the textfile collector.

A custom collector over the snapshot dict, put in a fresh registry per scrape and rendered by prometheus-client's
``generate_latest`` (text format 0.0.4), so the names, escaping and format are the maintained library's, and a
scrape costs one snapshot, not a second bookkeeping of every counter beside the daemon's own.

Names follow the Prometheus conventions: prefix ``gateway_``, counters end in ``_total``, base units (seconds,
bytes, ratios 0..1). Rates are Prometheus's job: counters are exported, never per-second figures we computed,
except the camera fps the worker itself measures. Every name is in docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The Content-Type of `exposition`'s body: text format 0.0.4, which every Prometheus reads (our names are all
legacy-valid, so the library's default underscore escaping never changes one)."""

UPLINK_STATES = ("starting", "connected", "disconnected", "disabled")
ALARM_STATES = ("active_unack", "active_ack", "cleared_unack", "latched", "shelved", "out_of_service")
"""Every state a standing alarm can be in (``normal`` ones are not in the alarm book)."""


def _num(value: Any) -> float | None:
    """A finite number from the snapshot, or None (absent, null, or something a bug put there)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class _Families:
    """Builds the families of one snapshot; a family with no sample is still declared (HELP/TYPE)."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=list(labels))
        self.families[name] = fam
        return fam

    def gauge(self, name: str, doc: str, labels: Iterable[str] = (), unit: str = "") -> GaugeMetricFamily:
        fam = GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)
        self.families[name] = fam
        return fam


def _add(fam: CounterMetricFamily | GaugeMetricFamily, labels: list[str], value: Any) -> None:
    number = _num(value)
    if number is not None:
        fam.add_metric(labels, number)


def _gateway(f: _Families, snap: Mapping[str, Any]) -> None:
    info = InfoMetricFamily("gateway_build", "The gateway's version and site (value always 1).",
                            labels=["version", "site"])
    info.add_metric([_label(snap.get("version")), _label(snap.get("site"))], {})
    f.families["gateway_build"] = info
    _add(f.gauge("gateway_start_time_seconds", "When the daemon started (Unix time)."), [], snap.get("started"))
    _add(f.gauge("gateway_uptime_seconds", "Seconds since the daemon started."), [], snap.get("uptime_s"))
    synced = snap.get("clock_synced")
    f.gauge("gateway_clock_synced", "1 when the wall clock is synchronised (timesyncd or the kernel), 0 when not, "
            "NaN when nobody can tell.").add_metric([], math.nan if synced is None else float(bool(synced)))


def _devices(f: _Families, devices: Iterable[Mapping[str, Any]]) -> None:
    polls = f.counter("gateway_device_polls", "Polls of the device (successful or not).", ["device", "bus"])
    failed = f.counter("gateway_device_failed_polls", "Polls that failed.", ["device", "bus"])
    kinds = f.counter("gateway_device_failures", "Failed exchanges with the device by kind (polls and the "
                      "breaker's probes while offline).", ["device", "bus", "kind"])
    retries = f.counter("gateway_device_retries", "Requests the driver repeated for the device.", ["device", "bus"])
    overruns = f.counter("gateway_device_overruns", "Poll slots missed because the previous poll ran late.",
                         ["device", "bus"])
    age = f.gauge("gateway_device_last_success_age_seconds", "Seconds since the last successful poll "
                  "(absent before the first).", ["device", "bus"])
    interval = f.gauge("gateway_device_poll_interval_seconds", "Configured poll interval.", ["device", "bus"])
    actual = f.gauge("gateway_device_poll_actual_interval_seconds", "Measured interval between polls "
                     "(stretched above the configured one when the bus cannot keep up).", ["device", "bus"])
    up = f.gauge("gateway_device_up", "1 when the device is online (0 offline, or not yet heard).", ["device", "bus"])
    for d in devices:
        key = [_label(d.get("id")), _label(d.get("bus"))]
        _add(polls, key, d.get("polls"))
        _add(failed, key, d.get("failures"))
        errors = d.get("errors")
        if isinstance(errors, Mapping):
            for kind, n in sorted(errors.items()):
                _add(kinds, [*key, str(kind)], n)
        _add(retries, key, d.get("retries"))
        _add(overruns, key, d.get("overruns"))
        _add(age, key, d.get("last_ok_age_s"))
        _add(interval, key, d.get("interval_s"))
        _add(actual, key, d.get("actual_interval_s"))
        up.add_metric(key, float(d.get("state") == "online"))


def _buses(f: _Families, buses: Iterable[Mapping[str, Any]]) -> None:
    util = f.gauge("gateway_bus_utilisation_ratio", "Fraction of the wire's capacity in use (busy time over "
                   "the last 30 s, per concurrent transaction slot).", ["bus", "driver"])
    busy = f.counter("gateway_bus_busy_seconds", "Seconds the wire spent in transactions.", ["bus", "driver"])
    trans = f.counter("gateway_bus_transactions", "Request/response transactions on the wire.", ["bus", "driver"])
    waiting = f.gauge("gateway_bus_waiting_requests", "Requests queued for the wire now.", ["bus", "driver"])
    for b in buses:
        key = [_label(b.get("id")), _label(b.get("driver"))]
        _add(util, key, b.get("utilisation"))
        _add(busy, key, b.get("busy_seconds"))
        _add(trans, key, b.get("transactions"))
        _add(waiting, key, b.get("waiting"))


def _outbox(f: _Families, outbox: Mapping[str, Any]) -> None:
    depth = f.gauge("gateway_outbox_messages", "Messages stored and not yet delivered, by delivery class.",
                    ["class"])
    age = f.gauge("gateway_outbox_oldest_age_seconds", "Age of the oldest undelivered message by class "
                  "(0 when the class is empty).", ["class"])
    for label, entry in sorted(outbox.items()):
        if isinstance(entry, Mapping):
            _add(depth, [label], entry.get("depth"))
            _add(age, [label], entry.get("oldest_age_s") or 0)


def _uplinks(f: _Families, uplinks: Iterable[Mapping[str, Any]]) -> None:
    up = f.gauge("gateway_uplink_up", "1 when the uplink is connected to its broker.", ["uplink"])
    state = f.gauge("gateway_uplink_state", "1 for the uplink's current state, 0 for the others.",
                    ["uplink", "state"])
    connects = f.counter("gateway_uplink_connects", "Successful connections to a broker (the first one and "
                         "every reconnect).", ["uplink"])
    messages = f.counter("gateway_uplink_messages_delivered", "Messages of outbox rows the broker acknowledged "
                         "(a replay batch is one).", ["uplink"])
    rows = f.counter("gateway_uplink_rows_delivered", "Outbox rows (readings, events, alarms, ...) those messages "
                     "carried; rows the uplink passes over are not counted.", ["uplink"])
    backlog = f.gauge("gateway_uplink_backlog_messages", "Outbox messages this uplink has yet to deliver.",
                      ["uplink"])
    for u in uplinks:
        key = [_label(u.get("name"))]
        current = _label(u.get("state"))
        up.add_metric(key, float(current == "connected"))
        for s in sorted({*UPLINK_STATES, current} - {""}):
            state.add_metric([*key, s], float(s == current))
        _add(connects, key, u.get("connects"))
        _add(messages, key, u.get("delivered"))
        _add(rows, key, u.get("rows_delivered"))
        _add(backlog, key, u.get("backlog"))


def _alarms(f: _Families, alarms: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
    by_state = alarms.get("by_state")
    by_state = by_state if isinstance(by_state, Mapping) else {}
    fam = f.gauge("gateway_alarms", "Alarms in the alarm book by ISA-18.2 state.", ["state"])
    for s in sorted({*ALARM_STATES, *map(str, by_state)}):
        _add(fam, [s], by_state.get(s, 0))
    _add(f.gauge("gateway_alarms_active", "Alarms not back to normal (every state above)."), [],
         alarms.get("active", 0))
    _add(f.gauge("gateway_alarms_unacknowledged", "Alarms waiting for an acknowledgement."), [],
         alarms.get("unacknowledged", 0))
    _add(f.counter("gateway_rule_evaluations", "Rule evaluations by the local rule engine."), [],
         rules.get("evaluations", 0))


def _cameras(f: _Families, cameras: Iterable[Mapping[str, Any]]) -> None:
    frames = f.counter("gateway_camera_frames", "Frames read from the stream.", ["camera"])
    analysed = f.counter("gateway_camera_analysed_frames", "Frames the models looked at.", ["camera"])
    dropped = f.counter("gateway_camera_dropped_frames", "Frames not analysed: skipped to keep the analysis "
                        "rate, gated (no motion) or undecodable (frames - analysed).", ["camera"])
    gated = f.counter("gateway_camera_gated_frames", "Frames the motion gate kept from the models.", ["camera"])
    bad = f.counter("gateway_camera_bad_frames", "Frames that could not be decoded.", ["camera"])
    errors = f.counter("gateway_camera_errors", "Model failures on a frame.", ["camera"])
    fps = f.gauge("gateway_camera_frames_per_second", "Frames read per second (last 30 s).", ["camera"])
    infer = f.gauge("gateway_camera_inference_seconds", "Smoothed time one model takes per analysed frame.",
                    ["camera", "model"])
    up = f.gauge("gateway_camera_up", "1 when the camera's stream is being read.", ["camera"])
    for c in cameras:
        key = [_label(c.get("id"))]
        _add(frames, key, c.get("frames"))
        _add(analysed, key, c.get("analysed"))
        n, a = _num(c.get("frames")), _num(c.get("analysed"))
        if n is not None and a is not None:
            dropped.add_metric(key, max(0.0, n - a))
        _add(gated, key, c.get("gated"))
        _add(bad, key, c.get("bad"))
        _add(errors, key, c.get("errors"))
        _add(fps, key, c.get("fps"))
        ms = c.get("inference_ms")
        if isinstance(ms, Mapping):
            for model, value in sorted(ms.items()):
                number = _num(value)
                if number is not None:
                    infer.add_metric([*key, str(model)], number / 1000)
        up.add_metric(key, float(c.get("state") == "streaming"))


def _commands(f: _Families, commands: Mapping[str, Any]) -> None:
    answered = f.counter("gateway_commands_answered", "Platform commands answered, by outcome.", ["outcome"])
    dropped = f.counter("gateway_commands_dropped", "Platform requests dropped unanswered, by reason.", ["reason"])
    for fam, key in ((answered, "answered"), (dropped, "dropped")):
        counts = commands.get(key)
        if isinstance(counts, Mapping):
            for label, n in sorted(counts.items()):
                _add(fam, [str(label)], n)


def _process(f: _Families, p: Mapping[str, Any]) -> None:
    _add(f.gauge("gateway_process_resident_memory_bytes", "Resident memory of the daemon."), [],
         p.get("rss_bytes"))
    _add(f.counter("gateway_process_cpu_seconds", "User and system CPU time the daemon used."), [],
         p.get("cpu_seconds"))
    known = {key: number for key in ("open_fds", "threads", "disk_free_bytes")
             if (number := _num(p.get(key))) is not None and number >= 0}  # -1: /proc or statvfs could not tell
    for name, key, doc in (("gateway_process_open_fds", "open_fds", "Open file descriptors."),
                           ("gateway_process_threads", "threads", "Threads of the daemon."),
                           ("gateway_disk_free_bytes", "disk_free_bytes",
                            "Free space (for unprivileged users) on the store's file system.")):
        _add(f.gauge(name, doc), [], known.get(key))
    _add(f.gauge("gateway_store_bytes", "Bytes the SQLite store uses."), [], p.get("store_bytes"))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _listing(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def families(snapshot: Mapping[str, Any]) -> list[Metric]:
    """Every metric family of one snapshot (a part missing from it gives declared families without samples)."""
    f = _Families()
    _gateway(f, snapshot)
    _devices(f, _listing(snapshot.get("devices")))
    _buses(f, _listing(snapshot.get("buses")))
    _outbox(f, _mapping(snapshot.get("outbox")))
    _uplinks(f, _listing(snapshot.get("uplinks")))
    _alarms(f, _mapping(snapshot.get("alarms")), _mapping(snapshot.get("rules")))
    _cameras(f, _listing(snapshot.get("cameras")))
    _commands(f, _mapping(snapshot.get("commands")))
    _process(f, _mapping(snapshot.get("process")))
    return list(f.families.values())


class SnapshotCollector(Collector):
    """A prometheus-client collector over one snapshot dict."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot)


def registry(snapshot: Mapping[str, Any]) -> CollectorRegistry:
    """A fresh registry holding only the snapshot's families (no default process/platform collectors)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot))
    return reg


def exposition(snapshot: Mapping[str, Any]) -> bytes:
    """The snapshot as Prometheus text format 0.0.4 (serve it with `CONTENT_TYPE`)."""
    return generate_latest(registry(snapshot))
