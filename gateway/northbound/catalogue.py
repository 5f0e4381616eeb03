"""Every event and alarm kind the gateway emits, with its ``data`` typed: the contract's event catalogue.

Each kind names its data model (extra fields allowed: fields are only ever added within a major version),
the priorities it can travel at, what its ``source`` names and what it means. ``upstream_schema()`` types
``data`` by kind from this table; a kind not listed here (a rule's ``publish`` action names its own) keeps
an open ``data`` object. ``tests/test_contract.py`` scans the source: a kind emitted anywhere and missing
here fails the suite, and ``docs/upstream.md`` carries ``markdown()`` verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

Absent = SkipJsonSchema[None]
"""An optional field is absent, never null, on the wire (``X | Absent = None``)."""
Label = Literal["alarm", "event", "telemetry"]
Scalar = float | int | bool | str | None
AlarmState = Literal["normal", "active_unack", "active_ack", "cleared_unack", "latched", "shelved", "out_of_service"]
AlarmAction = Literal["raise", "clear", "acknowledge", "reset", "shelve", "unshelve", "out_of_service", "in_service",
                      "escalate", "chatter"]
ALARM_ACTIONS: tuple[str, ...] = get_args(AlarmAction)


class Data(BaseModel):
    """An event's ``data``: the fields listed are always there unless marked optional; others may be added."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)


# -- the gateway itself ------------------------------------------------------------------------------------------
class GatewayStarted(Data):
    version: str = Field(description="Gateway software version.")
    config: str = Field(description="sha256 of the config file it runs.")
    devices: int = Field(description="Devices polled or listened to.")
    cameras: int = Field(description="Cameras watched.")


class Stopped(Data):
    """No fields."""


class TaskEnded(Data):
    restart_in: float = Field(description="Seconds until the task is started again.")


class TaskCrashed(TaskEnded):
    error: str = Field(description="The exception, repr'd (at most 500 characters).")
    trace: str = Field(description="The last lines of the traceback.")
    restarts: int = Field(description="Crashes of this task since the daemon started.")


class ConfigApplied(Data):
    config: str = Field(description="sha256 of the config file now running (the birth carries it too).")
    previous: str = Field(description="sha256 of the config it replaced.")
    changed: dict[str, list[str]] = Field(
        description="What changed, by part: devices_added/removed/changed, buses_*, rebuild (buses restarted), "
                    "restart (pollers restarted), reporting, rules, mqtt (uplink reconnected), privacy, cameras_*, "
                    "commands, log, other; {} when only the file's bytes changed.")
    by: str = Field(description="Who asked: signal:SIGHUP, local:<user> (...) or the platform's actor.")


class ConfigRejected(Data):
    reason: str = Field(description="Why nothing was changed.")
    problems: list[str] = Field(description="The file's problems, each FILE:LINE: key: message.")
    running: str = Field(description="sha256 of the config still running.")
    config: str | Absent = Field(None, description="sha256 of the refused file, when it could be read.")
    by: str = Field(description="Who asked.")


class ClockSynchronized(Data):
    """Readings stamped in [since, until] (as the unsynchronised clock read) may be off by up to step_s."""

    since: float = Field(description="When the gateway first saw its clock unsynchronised (the start, usually), "
                                     "as that clock read.")
    until: float = Field(description="What the unsynchronised clock would read at this event: the end of the "
                                     "readings stamped on it.")
    step_s: float = Field(description="How far the wall clock moved against the monotonic clock meanwhile: add it "
                                      "to those timestamps (a slewed clock corrected them gradually).")
    unsynced_for_s: float = Field(description="Seconds the gateway ran on the unsynchronised clock.")


class CommandDropped(Data):
    reason: str = Field(description="Why the latest one was dropped: not JSON, no id, other site, flood, ...")
    dropped: dict[str, int] = Field(description="Requests dropped since start, by reason.")


# -- devices and points -----------------------------------------------------------------------------------------
class DeviceOnline(Data):
    offline_for: float = Field(description="Seconds the device had been offline.")


class DeviceOffline(Data):
    error: str = Field(description="The last failure, e.g. \"DeviceTimeout: no answer in 1 s\".")
    kind: str = Field(description="Failure kind: timeout, unreachable, exception, garbage, ...")
    failures: int = Field(description="Failed polls in a row (the device's offline_after).")


class DeviceWrite(Data):
    device: str = Field(description="Device written to.")
    point: str = Field(description="Point written to.")
    value: Scalar = Field(description="The value asked for, as given (a number, true/false, a state name or null).")
    actor: str = Field(description="Who asked: a local user (and the sudo user behind it) or a rule.")
    result: Literal["written", "verified", "mismatch", "refused", "failed"] = Field(
        description="verified / mismatch: read back and compared; refused: checked and not sent; failed: sent, "
                    "the device did not take it.")
    latency_ms: float | Absent = Field(None, description="Time the write took.")
    read_back: Scalar | Absent = Field(None, description="The value read back after the write.")
    error: str | Absent = Field(None, description="Why it was refused or failed.")


class DeviceOverrun(Data):
    interval: float = Field(description="Configured poll period, seconds.")
    actual: float = Field(description="The period the device is really polled at, seconds.")
    missed: int = Field(description="Poll slots missed (a poll still running when the next was due) since the "
                                    "last device.overrun event, or since start.")


class OverrunCleared(DeviceOverrun):
    clears: str = Field(description="device.overrun")


class Cleared(Data):
    clears: str = Field(description="The kind this event ends.")


class PointUnreadable(Data):
    point: str = Field(description="The point left out of every later poll.")
    address: str = Field(description="Where it lives on the wire.")
    answer: str = Field(description="What the device answered (an exception code, a timeout).")


class PointChanged(Data):
    point: str = Field(description="A watched point (events = true, or alarm = true in the device config).")
    value: Scalar = Field(description="Its new value.")
    previous: Scalar | Absent = Field(None, description="The value before; absent for the first one seen.")
    unit: str | Absent = Field(None, description="Engineering unit.")


class PointChatter(Data):
    point: str = Field(description="The point that changed too often.")
    suppressed: int = Field(description="Change events held back in the window.")
    window_s: int = Field(description="Window length, seconds.")


class CounterJump(Data):
    point: str = Field(description="The counter point.")
    register_: float = Field(alias="register", description="The register value that went back (or wrapped).")
    total: float = Field(description="The running total published from now on.")


# -- the store, rules, flood control -----------------------------------------------------------------------------
class DiskFull(Data):
    error: str = Field(description="What the disk said.")
    reserve_released: bool = Field(description="The space held back for alarms and events was released.")


class DiskRecovered(Cleared):
    shed: dict[str, int] = Field(description="What was not written while full, counted per kind.")


class TelemetryDropped(Data):
    dropped: int = Field(description="Oldest telemetry messages deleted to keep the store under its cap.")


class ActionFailed(Data):
    rule: str = Field(description="The rule whose action failed.")
    key: str = Field(description="The alarm or firing key it acted for.")
    action: str = Field(description="What it tried, e.g. \"write pump.run\" or \"notify ops\".")
    error: str = Field(description="Why it failed.")


class FloodSummary(Data):
    bus: str = Field(description="The bus that came back.")
    suppressed_alarms: int = Field(description="Device alarms held back while the whole bus was down.")
    devices: list[str] = Field(description="The devices on that bus.")


class AlarmTransition(Data):
    """One entry of an alarm's trail (ISA-18.2 lifecycle; ``docs/upstream.md``: close an alarm at ``normal``)."""

    key: str = Field(description="Alarm instance: rule id, or rule id/instance.")
    class_: str = Field(alias="class", description="Alarm class: fire, fall, entrapment, leak, security, ...")
    episode: int = Field(description="Activations that needed a new acknowledgement; key + episode = one incident.")
    seq: int = Field(description="Order of the whole trail, across alarms and restarts: order transitions by it.")
    action: AlarmAction = Field(description="The transition, also the kind's suffix.")
    before: AlarmState = Field(description="State before.")
    state: AlarmState = Field(description="State after: the alarm is over only at normal.")
    who: str = Field(description="rule, system, or the person who acted.")
    at: float = Field(description="When, Unix seconds.")
    level: int = Field(description="Escalation level reached this episode: 0, 1, 2.")
    colour: Literal["none", "yellow", "red"] = Field(description="Colour of that level.")
    tier: str | None = Field(description="Role to notify now; null when this transition notifies nobody.")
    message: str = Field(description="Text for people.")
    severity: str = Field(description="critical, major, minor, ...")
    activated_at: float | None = Field(description="When this episode began; null if never active.")
    detail: dict[str, Any] = Field(description="Transition details: note, reason, until, chatter counts, ...")
    context: dict[str, Any] = Field(description="What the rule saw when it fired (the triggering event's data).")


# -- fire panels ------------------------------------------------------------------------------------------------
class PanelLine(Data):
    """A fire panel's printed line, parsed. Location fields are as the panel printed them."""

    text: str = Field(description="The line, decoded.")
    pattern: str = Field(description="The line pattern that matched.")
    zone: str | Absent = Field(None, description="Zone.")
    loop: str | Absent = Field(None, description="Loop.")
    address: str | Absent = Field(None, description="Device address on the loop.")
    device: str | Absent = Field(None, description="Detector or module type as printed.")
    description: str | Absent = Field(None, description="Location text.")
    state: str | Absent = Field(None, description="State word printed.")
    panel_time: str | Absent = Field(None, description="The panel's own clock, as printed (not the event time).")
    repeat: bool | Absent = Field(None, description="fire/prealarm/supervisory: already latched at this place.")
    was_active: bool | Absent = Field(None, description="fire.fault_cleared: a fault was latched there.")
    was_disabled: bool | Absent = Field(None, description="fire.enable: it had been disabled.")
    cleared: dict[str, list[str]] | Absent = Field(None, description="fire.reset: what the reset cleared.")
    parse_failed: bool | Absent = Field(None, description="Known only by a life-safety word in a noisy line.")
    noise: str | Absent = Field(None, description="Line noise found in it.")
    raw_hex: str | Absent = Field(None, description="The raw bytes, when noise or decoding errors touched them.")
    complete: bool | Absent = Field(None, description="false: cut short (no terminator before a timeout).")
    decode_errors: bool | Absent = Field(None, description="Bytes the encoding could not decode.")


class PanelUnparsed(Data):
    raw_hex: str = Field(description="The raw bytes.")
    text: str | Absent = Field(None, description="The line, decoded.")
    mentions: str | Absent = Field(None, description="The life-safety word it carries (then priority alarm).")
    error: str | Absent = Field(None, description="The parser's failure on it (then priority alarm).")
    complete: bool | Absent = Field(None, description="false: cut short.")
    decode_errors: bool | Absent = Field(None, description="Bytes the encoding could not decode.")


class CommLost(Data):
    reason: Literal["silent", "port"] = Field(description="silent: no line or heartbeat in time; port: I/O error.")
    silent_for: float | Absent = Field(None, description="Seconds without a line.")
    heartbeat: float | Absent = Field(None, description="The heartbeat period configured.")
    error: str | Absent = Field(None, description="The port's error.")


class CommRestored(Cleared):
    silent_for: float = Field(description="Seconds it had been silent.")


# -- cameras ------------------------------------------------------------------------------------------------
class CameraData(Data):
    camera: str = Field(description="Camera id.")


class FaceRecognized(CameraData):
    person: str = Field(description="The enrolled person's id.")
    score: float = Field(description="Match score, 0-1.")


class FaceUnknown(CameraData):
    score: float = Field(description="Best match score, below the threshold.")


class PlateRead(CameraData):
    plate: str = Field(description="The plate, normalised, e.g. 京A12345.")
    score: float = Field(description="Reading confidence, 0-1: the weakest character's, over the frames voted.")
    list: Literal["allowlist", "blocklist"] | None = Field(description="The list it is on, or null.")


class FallDetected(CameraData):
    confidence: float = Field(description="0-1.")
    track: str = Field(description="Person track id within the camera.")
    descent_torso: float = Field(description="Descent measured, in torso lengths.")
    torso_angle_deg: float = Field(description="Torso angle from vertical at the end.")
    down_s: float = Field(description="Seconds the person has stayed down.")
    unconfirmed: bool | Absent = Field(None, description="True when the daemon raised it, not the camera: a "
                                       "fall.suspected was followed by neither fall.detected nor fall.cancelled in "
                                       "time (the camera's worker ended, or its stream stalled); the figures are those "
                                       "of the fall.suspected.")
    reason: str | Absent = Field(None, description="With unconfirmed: worker_exited or no_answer.")


class FallCancelled(CameraData):
    track: str = Field(description="Person track id within the camera (that of the fall.suspected).")
    down_s: float = Field(description="Seconds the person was down before getting up.")


class FallSuspected(CameraData):
    track: str = Field(description="Person track id within the camera.")
    descent_torso: float = Field(description="Descent measured, in torso lengths.")
    torso_angle_deg: float = Field(description="Torso angle from vertical when the person was seen down.")
    descent_s: float = Field(description="Seconds from the last upright frame the descent is measured from to the "
                                         "first frame down: the fall took at most this long.")
    hold_s: float = Field(description="Seconds the person must stay down before fall.detected; fall.cancelled "
                                      "instead means they got up.")


class PlateUnreadable(CameraData):
    score: float = Field(description="Confidence of the read, 0-1, below what is needed.")
    width_px: float = Field(description="Plate width in the frame, pixels.")
    reason: str = Field(description="Why it was not published as a plate: low_confidence (a character below "
                                    "vision.plates.min_char_conf), invalid_format or no_text.")
    crop: str | Absent = Field(None, description="File name of the crop kept on the box for review, if any.")


class CameraConnected(CameraData):
    url: str = Field(description="Stream URL, password redacted.")


class CameraLost(CameraData):
    reason: str = Field(description="stalled (no frame in time) or ended.")
    retry_in: float = Field(description="Seconds until it reconnects.")


class CameraError(CameraData):
    stage: str = Field(description="start, or the analyser that failed (faces, plates, falls).")
    error: str = Field(description="What went wrong.")


class CameraFlood(CameraData):
    suppressed: int = Field(description="Events held back (counted, not stored); alarms always pass.")
    window_s: int = Field(description="Window length, seconds.")


@dataclass(frozen=True, slots=True)
class KindInfo:
    kind: str
    data: type[Data]
    priority: tuple[Label, ...]
    """Priorities it travels at; several when the config decides (an alarm class, a watched point)."""
    source: str
    about: str
    clears: str | None = None


def _k(kind: str, data: type[Data], priority: str, source: str, about: str, clears: str | None = None) -> KindInfo:
    return KindInfo(kind, data, tuple(priority.split("|")), source, about, clears)  # type: ignore[arg-type]


_FIRE = {  # kind: (priority, what the panel printed)
    "fire.alarm": ("alarm", "a fire alarm at a detector or zone"),
    "fire.prealarm": ("alarm", "a pre-alarm (early warning)"),
    "fire.supervisory": ("alarm", "a supervisory condition (sprinkler valve, pump)"),
    "fire.reset": ("alarm", "the panel was reset (`cleared`: what it cleared)"),
    "fire.fault": ("event", "a fault (detector, loop, power)"),
    "fire.fault_cleared": ("event", "a fault cleared"),
    "fire.disable": ("event", "a point or zone disabled"),
    "fire.enable": ("event", "a point or zone enabled again"),
    "fire.activation": ("event", "an output activated (sounder, damper, lift recall)"),
    "fire.silence": ("event", "sounders silenced"),
}
_ALARM_ABOUT = {
    "raise": "condition came (a new episode from normal or latched)",
    "clear": "condition went; NOT the end of the alarm",
    "acknowledge": "a person acknowledged it",
    "reset": "a latched alarm was reset",
    "shelve": "hidden by a person until a deadline",
    "unshelve": "shelve ended",
    "out_of_service": "removed for maintenance",
    "in_service": "returned from maintenance",
    "escalate": "unacknowledged too long: next level and tier",
    "chatter": "raise/clear toggles rate-limited (phase start/continue/end)",
}

KINDS: tuple[KindInfo, ...] = (
    _k("gateway.started", GatewayStarted, "event", "site id", "the daemon started"),
    _k("gateway.stopped", Stopped, "event", "site id", "the daemon stopped cleanly"),
    _k("gateway.task_ended", TaskEnded, "event", "task name", "a task returned; restarted"),
    _k("gateway.task_crashed", TaskCrashed, "event", "task name (device:ID, bus:ID, camera:ID, ...)",
       "a task raised; restarted with backoff"),
    _k("clock.synchronized", ClockSynchronized, "event", "site id", "the wall clock synchronised after the "
       "gateway ran on an unsynchronised one: which timestamps to distrust"),
    _k("config.applied", ConfigApplied, "event", "site id", "a reload applied the config file: what changed"),
    _k("config.rejected", ConfigRejected, "event", "site id", "a reload was refused: nothing changed"),
    _k("command.dropped", CommandDropped, "event", "site id", "platform commands not answered (no id to answer, "
       "another site's, a flood beyond the rate); at most one a minute"),
    _k("device.online", DeviceOnline, "event", "device id", "an offline device answers again"),
    _k("device.offline", DeviceOffline, "event", "device id", "offline_after polls failed in a row; points bad"),
    _k("device.write", DeviceWrite, "event", "device id", "a write, audited, whatever its outcome"),
    _k("device.point_unreadable", PointUnreadable, "event", "device id", "a point the device never answers"),
    _k("device.overrun", DeviceOverrun, "event", "device id", "polls outlast the interval: the device is "
       "polled slower than configured"),
    _k("device.overrun_cleared", OverrunCleared, "event", "device id", "it keeps up again", "device.overrun"),
    _k("point.changed", PointChanged, "event|alarm", "device id", "a watched point changed"),
    _k("point.chatter", PointChatter, "event", "device id", "point.changed events held back"),
    _k("point.counter_wrap", CounterJump, "event", "device id", "a counter register wrapped; the total goes on"),
    _k("point.counter_reset", CounterJump, "event", "device id", "a counter register went back (reset or "
       "replaced); the total goes on"),
    _k("store.disk_full", DiskFull, "alarm", "store", "disk full: telemetry shed, alarms and events kept"),
    _k("store.disk_recovered", DiskRecovered, "alarm", "store", "space is back", "store.disk_full"),
    _k("store.telemetry_dropped", TelemetryDropped, "event", "store", "oldest telemetry deleted at the cap"),
    _k("rule.action_failed", ActionFailed, "alarm", "rule id", "a rule's write or notification failed"),
    _k("flood.summary", FloodSummary, "event", "bus id", "a whole bus is back; its device alarms were held"),
    *(_k(f"alarm.{action}", AlarmTransition, "alarm|event", "what the alarm is about (device, camera, bus)",
         _ALARM_ABOUT[action]) for action in ALARM_ACTIONS),
    *(_k(kind, PanelLine, priority, "panel device id", about,
         {"fire.fault_cleared": "fire.fault", "fire.enable": "fire.disable"}.get(kind))
      for kind, (priority, about) in _FIRE.items()),
    _k("panel.unparsed", PanelUnparsed, "event|alarm", "panel device id", "a line no pattern matched (alarm "
       "when it mentions a life-safety word)"),
    _k("panel.comm_lost", CommLost, "alarm", "panel device id", "the panel went silent or its port failed"),
    _k("panel.comm_restored", CommRestored, "alarm", "panel device id", "heard again", "panel.comm_lost"),
    _k("face.recognized", FaceRecognized, "event", "camera id", "an enrolled person seen (kept local by default)"),
    _k("face.unknown", FaceUnknown, "event", "camera id", "a face matching nobody (kept local by default)"),
    _k("plate.read", PlateRead, "event", "camera id", "a plate read (kept local by default)"),
    _k("plate.unreadable", PlateUnreadable, "event", "camera id", "a plate seen but not read with the confidence "
       "needed (kept local by default)"),
    _k("fall.suspected", FallSuspected, "event", "camera id", "a person went down fast; fall.detected follows "
       "unless they get up within the hold (then fall.cancelled)"),
    _k("fall.cancelled", FallCancelled, "event", "camera id", "the person of a fall.suspected got up within the "
       "hold: no alarm follows"),
    _k("fall.detected", FallDetected, "alarm", "camera id", "a person fell and stays down (unconfirmed: raised by "
       "the daemon when the camera never said)"),
    _k("camera.connected", CameraConnected, "event", "camera id", "stream opened"),
    _k("camera.lost", CameraLost, "event", "camera id", "stream stalled or ended; reconnecting"),
    _k("camera.error", CameraError, "event", "camera id", "the worker or an analyser failed"),
    _k("camera.flood", CameraFlood, "event", "camera id", "over 120 events a minute; the excess counted"),
)
CATALOGUE: dict[str, KindInfo] = {info.kind: info for info in KINDS}


def lookup(kind: str) -> KindInfo | None:
    return CATALOGUE.get(kind)


def data_model(kind: str) -> type[Data] | None:
    """The model of ``data`` for a known kind; None for a kind nobody catalogued (a rule's own)."""
    info = CATALOGUE.get(kind)
    return info.data if info else None


def fields_of(model: type[Data]) -> list[str]:
    """Field names as on the wire, optional ones with a ``?``."""
    return [f"{field.alias or name}{'' if field.is_required() else '?'}" for name, field in model.model_fields.items()]


def markdown() -> str:
    """The catalogue as the table in ``docs/upstream.md`` (a test keeps the two equal)."""
    rows = ["| kind | priority | source | data | meaning |", "| --- | --- | --- | --- | --- |"]
    for info in KINDS:
        data = ", ".join(f"`{f}`" for f in fields_of(info.data)) or "(none)"
        about = info.about + (f"; clears `{info.clears}`" if info.clears else "")
        rows.append(f"| `{info.kind}` | {' or '.join(info.priority)} | {info.source} | {data} | {about} |")
    return "\n".join(rows) + "\n"
