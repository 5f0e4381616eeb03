"""Config schema of serial text-line ports, fire panels on them, and the panels' line patterns."""

from __future__ import annotations

import difflib
import functools
import re
from typing import Literal, Self

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from drivers.base import BusConfig, DeviceConfig
from drivers.firepanel import formats
from drivers.firepanel.backtracking import nested_repeat
from gateway.core.config import Duration, SerialPortConfig, StrictModel
from gateway.core.points import Datatype, PointInfo

Encoding = Literal["utf-8", "gbk", "gb2312", "gb18030", "latin-1"]
LineEvent = Literal[
    "fire", "prealarm", "supervisory", "fault", "fault_clear", "disable", "enable", "activation",
    "silence", "reset", "heartbeat", "ignore",
]
GROUPS = ("zone", "loop", "address", "device", "description", "time", "state")
"""Named groups a pattern may capture; anything else is a typo caught at config time."""
LOCATED: frozenset[str] = frozenset({"fire", "prealarm", "supervisory", "disable", "enable", "activation"})
"""Events about one place: their pattern must capture where (``zone`` or ``address``)."""
STATE_INFO: dict[str, tuple[Datatype, str]] = {
    "comm_ok": ("bool", "The panel is heard: false from panel.comm_lost until it prints again"),
    "fire_zones_active": ("int", "Zones in fire (an address without a zone counts as one), latched until reset"),
    "fire_zones": ("string", "Those zones, comma-separated in sorted order; empty when none"),
    "prealarms_active": ("int", "Places in pre-alarm, latched until reset"),
    "supervisory_active": ("int", "Places with a supervisory signal, latched until reset"),
    "faults_active": ("int", "Faults present: each clears by itself or at a reset"),
    "disabled_active": ("int", "Places disabled: they outlast a reset and end with an enable"),
    "silenced": ("bool", "Sounders silenced, until the reset or the next new fire"),
}
"""The panel's latched state (drivers/firepanel/driver.py ``PanelMonitor.state``): type and meaning."""
STATE_POINTS = tuple(STATE_INFO)


class SerialLineBus(BusConfig, SerialPortConfig):
    """A serial port on which one device prints text lines unasked, e.g. a fire panel's printer port."""

    driver: Literal["serial_lines"]
    encoding: Encoding | None = Field(
        default=None,
        description="Text encoding of the lines; default: the panel format's (gst_cn: gbk). gb2312 is read as "
                    "GBK, its superset, since panels labelled GB2312 print GBK-only characters in place names.",
    )
    terminator: Literal["\n", "\r\n", "\r"] = Field(
        default="\n", description="End of a line. \"\\n\" also ends CR LF lines (the CR is ignored); use \"\\r\" "
                                  "for panels that end lines with a bare carriage return.",
    )
    max_line: int = Field(
        default=1024, ge=16, le=4096,
        description="Longest line in bytes (printers print 80-132 columns); a longer one is cut into pieces, "
                    "each kept and parsed. Bounded so a hostile line cannot stall matching.",
    )
    timeout: Duration = Field(
        default=2.0, gt=0, le=60,
        description="A line left unfinished this long (no terminator, no further byte) is taken as complete.",
    )


class LinePattern(StrictModel):
    """One regular expression that turns a line into an event, with named groups for its fields."""

    event: LineEvent = Field(description="What a matching line means.")
    regex: str = Field(
        min_length=1,
        description="Python regular expression, searched in the decoded line (trimmed). Named groups: "
                    + ", ".join(GROUPS) + " (time = the panel's own clock, kept as printed).",
    )
    sample: str | None = Field(default=None, description="A line this pattern must match (checked by `gateway check`).")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str, info: ValidationInfo) -> str:
        compiled = compile_pattern(regex)
        unknown = [g for g in compiled.groupindex if g not in GROUPS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], GROUPS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (groups: {', '.join(GROUPS)})"
            raise ValueError(f"unknown group name {unknown[0]!r}{hint}")
        event = info.data.get("event")
        if event in LOCATED and not {"zone", "address"} & set(compiled.groupindex):
            raise ValueError(f"a {event!r} pattern must capture where: a named group (?P<zone>...) or (?P<address>...)")
        if compiled.search("") is not None:
            raise ValueError("matches an empty line, so it would match every line")
        nested = nested_repeat(regex)
        if nested is not None:
            raise ValueError(f"can take exponential time on a line that almost matches: {nested}; "
                             "repeat one thing at a time, e.g. (\\S+(?:\\s+\\S+)*) becomes (.*?)")
        return regex

    @field_validator("sample")
    @classmethod
    def _matches_sample(cls, sample: str | None, info: ValidationInfo) -> str | None:
        regex = info.data.get("regex")
        if sample is not None and regex is not None and compile_pattern(regex).search(sample.strip()) is None:
            raise ValueError("the regex does not match this sample line")
        return sample


@functools.cache
def compile_pattern(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ValueError(f"invalid regular expression: {exc.msg}{where}") from None
    except (RecursionError, OverflowError, MemoryError) as exc:  # absurd nesting or repeat counts
        raise ValueError(f"invalid regular expression: {type(exc).__name__}") from None


LifeSafetyEvent = Literal["fire", "prealarm", "supervisory"]


class FormatInfo(StrictModel):
    description: str
    encoding: Encoding
    alarm_words: list[str] = Field(default_factory=list)
    keywords: dict[LifeSafetyEvent, list[str]] = Field(default_factory=dict)


class SimulatorStyle(StrictModel):
    device: str
    description: str
    time_format: str


class Template(StrictModel):
    """How the simulator prints one event; its optional keys are defaults for the fields."""

    event: LineEvent
    text: str
    device: str | None = None
    description: str | None = None


class PanelFormat(StrictModel):
    """A shipped pattern set: drivers/firepanel/formats/<name>.toml."""

    format: FormatInfo
    patterns: list[LinePattern] = Field(min_length=1)
    simulator: SimulatorStyle
    templates: dict[str, Template] = Field(default_factory=dict)


@functools.cache
def load_format(name: str) -> PanelFormat:
    try:
        return PanelFormat.model_validate(formats.load_raw(name))
    except ValidationError as exc:  # a shipped file is broken: say which file and where
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"shipped format {name!r} is broken (formats/{name}.toml {where}: {first['msg']})") from None


class FirePanel(DeviceConfig):
    """A fire alarm control panel reporting over a serial line, one text line per event."""

    driver: Literal["firepanel"] = "firepanel"
    life_safety: bool = Field(
        default=True, description="A fire panel is life safety (kept for symmetry with polled devices).",
    )
    format: str | None = Field(
        default=None,
        description="A shipped pattern set: " + ", ".join(formats.available()) + ". Its patterns come after "
                    "the device's own `patterns`.",
    )
    patterns: list[LinePattern] = Field(
        default_factory=list, description="Patterns tried before the format's: additions and overrides, in order.",
    )
    heartbeat: Duration = Field(
        default=120.0, ge=0, le=86400,
        description="Silence longer than this raises panel.comm_lost (an alarm); set it to 2-3 times the "
                    "panel's status-line period. 0 turns supervision off, for panels that print nothing when quiet.",
    )
    alarm_words: list[str] | None = Field(
        default=None, description="An unparsed line containing one of these is raised as an alarm; default: the "
                                  "format's (e.g. 火警, FIRE).",
    )
    keywords: dict[LifeSafetyEvent, list[str]] | None = Field(
        default=None,
        description="Life-safety words per event (e.g. { fire = [\"火警\"] }): a line carrying one is that event "
                    "even when line noise defeats every pattern; default: the format's.",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, name: str | None) -> str | None:
        if name is not None:
            if name not in formats.available():
                close = difflib.get_close_matches(name, formats.available(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown format {name!r} (formats: {', '.join(formats.available())}){hint}")
            load_format(name)
        return name

    @model_validator(mode="after")
    def _has_patterns(self) -> Self:
        if self.format is None and not self.patterns:
            raise ValueError(f"give a `format` ({', '.join(formats.available())}) or your own `patterns`")
        return self

    def panel_format(self) -> PanelFormat | None:
        return load_format(self.format) if self.format else None

    def all_patterns(self) -> list[tuple[str, LinePattern]]:
        """(label, pattern) in the order they are tried: the device's own, then the format's."""
        own = [(f"patterns.{i}", p) for i, p in enumerate(self.patterns)]
        shipped_format = self.panel_format()
        shipped = ([(f"{self.format}.{i}", p) for i, p in enumerate(shipped_format.patterns)]
                   if shipped_format else [])
        return own + shipped

    def encoding(self, bus: SerialLineBus) -> str:
        shipped = self.panel_format()
        chosen = bus.encoding or (shipped.format.encoding if shipped else "utf-8")
        return "gbk" if chosen == "gb2312" else chosen

    def life_safety_words(self) -> dict[str, list[str]]:
        shipped = self.panel_format()
        chosen = self.keywords if self.keywords is not None else (shipped.format.keywords if shipped else {})
        return {str(event): list(words) for event, words in chosen.items()}

    def words(self) -> list[str]:
        shipped = self.panel_format()
        return self.alarm_words if self.alarm_words is not None else (shipped.format.alarm_words if shipped else [])

    def describe(self) -> list[PointInfo]:
        """The panel's latched state, read-only; it has no address: the driver keeps it from the lines heard."""
        return [PointInfo(point, datatype, description=text) for point, (datatype, text) in STATE_INFO.items()]

