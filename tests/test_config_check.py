"""`gateway check`: every config mistake is reported as `file:line: key.path: message`, all at once."""

from __future__ import annotations

import datetime
import hashlib
import io
import random
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from gateway.config import loader
from gateway.config.loader import ConfigError, ConfigProblem, check_file, config_hash, load_config
from gateway.config.locate import SourceMap, locate

REPO = Path(__file__).resolve().parent.parent

BASE = """\
[site]
id = "tower-a"
name = "Tower A"

[mqtt]
host = "broker.local"
port = 8883

[[buses]]
id = "meters"
driver = "modbus_tcp"
host = "10.0.0.20"

[[devices]]
id = "main-meter"
bus = "meters"
unit = 1
interval = "10s"

[[devices.points]]
id = "voltage_a"
address = 0
type = "float32"
unit = "V"

[[devices.points]]
id = "energy"
address = 100
type = "uint32"
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so reports read `config.toml:LINE: ...`, as they do for a person."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edit(*pairs: tuple[str, str], text: str = BASE) -> str:
    for old, new in pairs:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def report(text: str | bytes, name: str = "config.toml") -> list[str]:
    """The lines `gateway check` prints for this document (it must be invalid)."""
    path = Path(name)
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        load_config(name)
    out = io.StringIO()
    assert check_file(name, out) == 2
    lines = [problem.format() for problem in caught.value.problems]
    assert out.getvalue().splitlines() == lines
    assert str(caught.value) == "\n".join(lines)
    return lines


# -- valid files ------------------------------------------------------------------------------------


def test_valid_config_loads_and_check_prints_a_summary(workdir: Path) -> None:
    Path("config.toml").write_text(BASE)
    cfg = load_config("config.toml")
    assert cfg.devices[0].points[1].id == "energy"
    out = io.StringIO()
    assert check_file("config.toml", out) == 0
    assert out.getvalue() == "config.toml: OK (1 bus, 1 device, 2 points)\n"


def test_byte_order_mark_is_accepted(workdir: Path) -> None:
    Path("config.toml").write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_config(Path("config.toml")).site.id == "tower-a"


def test_shipped_example_passes(workdir: Path) -> None:
    assert check_file(REPO / "config.example.toml", io.StringIO()) == 0


def test_config_hash_is_sha256_of_the_bytes(workdir: Path) -> None:
    Path("config.toml").write_text(BASE)
    digest = config_hash("config.toml")
    assert digest == hashlib.sha256(BASE.encode()).hexdigest()
    assert len(digest) == 64
    with pytest.raises(ConfigError, match="cannot read the file"):
        config_hash("absent.toml")


# -- one problem each -------------------------------------------------------------------------------


def test_unreadable_file(workdir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("absent.toml")
    assert str(caught.value) == "absent.toml: cannot read the file: No such file or directory"
    out = io.StringIO()
    assert check_file("absent.toml", out) == 2
    assert out.getvalue() == "absent.toml: cannot read the file: No such file or directory\n"


def test_not_utf8_points_at_the_line(workdir: Path) -> None:
    text = BASE.encode().replace(b"Tower A", b"Tower \xff")
    assert report(text) == ["config.toml:3: not UTF-8 text (byte 0xff)"]


def test_invalid_toml_reports_tomllib_position(workdir: Path) -> None:
    (line,) = report(edit(("port = 8883", "port = = 8883")))
    assert line.startswith("config.toml:7: invalid value (column ")


def test_invalid_toml_at_end_of_document(workdir: Path) -> None:
    (line,) = report(BASE + 'notes = """never closed\n\n')
    assert line == "config.toml:30: unterminated string"


def test_deeply_nested_toml_is_a_config_error(workdir: Path) -> None:
    (line,) = report("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert line == "config.toml: invalid TOML: arrays or tables nested too deeply"


def test_integer_too_long_for_python_is_a_config_error(workdir: Path) -> None:
    (line,) = report(BASE + "big = " + "1" * 5000 + "\n")
    assert line.startswith("config.toml: invalid TOML: Exceeds the limit (4300 digits)")


def test_user_name_lookup_failure_is_a_config_error(workdir: Path) -> None:
    text = edit(("port = 8883", 'port = 8883\npassword_file = "~a\\u0000b"'))
    assert report(text) == ["config.toml: cannot resolve a file path: embedded null byte"]


def test_unknown_key_suggests_the_field(workdir: Path) -> None:
    assert report(edit(('interval = "10s"', 'intervall = "10s"'))) == [
        'config.toml:18: devices.0.intervall: unknown key "intervall"; did you mean "interval"?'
    ]


def test_unknown_key_without_a_close_match(workdir: Path) -> None:
    assert report(edit(('type = "uint32"', 'type = "uint32"\nmood = "sunny"'))) == [
        'config.toml:30: devices.0.points.1.mood: unknown key "mood"'
    ]


def test_unknown_key_in_optional_nested_table(workdir: Path) -> None:
    text = BASE + '\n[mqtt.tls]\nca_fle = "ca.pem"\n'
    assert report(text) == ['config.toml:32: mqtt.tls.ca_fle: unknown key "ca_fle"; did you mean "ca_file"?']


def test_wrong_type(workdir: Path) -> None:
    assert report(edit(("unit = 1", 'unit = "abc"'))) == [
        'config.toml:17: devices.0.unit: input should be a valid integer (got "abc")'
    ]


def test_table_where_an_array_of_tables_belongs(workdir: Path) -> None:
    assert report(edit(("[site]", "[[site]]"))) == ["config.toml:1: site: should be a table (got an array)"]


def test_out_of_range_port_and_unit(workdir: Path) -> None:
    text = edit(('host = "10.0.0.20"', 'host = "10.0.0.20"\nport = 70000'), ("unit = 1", "unit = 300"))
    assert report(text) == [
        "config.toml:13: buses.0.port: input should be less than or equal to 65535 (got 70000)",
        "config.toml:18: devices.0.unit: input should be less than or equal to 247 (got 300)",
    ]


def test_bad_choice_lists_the_choices(workdir: Path) -> None:
    (line,) = report(edit(('type = "uint32"', 'type = "uint33"')))
    assert line.startswith('config.toml:29: devices.0.points.1.type: input should be "int16", "uint16", ')
    assert line.endswith(' or "bool" (got "uint33")')


def test_bad_identifier_says_what_an_id_is(workdir: Path) -> None:
    assert report(edit(('id = "tower-a"', 'id = "tower a"'))) == [
        'config.toml:2: site.id: should be an id: 1-64 letters, digits, "_" or "-", starting with a letter '
        'or digit (got "tower a")'
    ]


def test_bad_duration(workdir: Path) -> None:
    assert report(edit(('interval = "10s"', 'interval = "10 parsecs"'))) == [
        "config.toml:18: devices.0.interval: invalid duration '10 parsecs': write it like \"500ms\", "
        '"10s", "5m" or "1h30m"'
    ]


def test_missing_key_points_at_its_table_header(workdir: Path) -> None:
    assert report(edit(('bus = "meters"\n', ""))) == ["config.toml:14: devices.0.bus: required key missing"]


def test_missing_section_has_no_line(workdir: Path) -> None:
    assert report(BASE.replace('[site]\nid = "tower-a"\nname = "Tower A"\n', "")) == [
        "config.toml: site: required key missing"
    ]


def test_point_level_rule_points_at_the_point(workdir: Path) -> None:
    assert report(edit(('address = 100\ntype = "uint32"', 'address = 100\ntable = "coil"\ntype = "uint32"'))) == [
        'config.toml:26: devices.0.points.1: a coil point holds one bit: its type must be "bool"'
    ]


def test_duplicate_device_id(workdir: Path) -> None:
    text = BASE + '\n[[devices]]\nid = "main-meter"\nbus = "meters"\nunit = 2\n'
    assert report(text) == ["config.toml:32: devices.1.id: duplicate device id 'main-meter'"]


def test_duplicate_point_id_within_a_device(workdir: Path) -> None:
    assert report(edit(('id = "energy"', 'id = "voltage_a"'))) == [
        "config.toml:27: devices.0.points.1.id: duplicate point (device 'main-meter') id 'voltage_a'"
    ]


def test_device_naming_a_missing_bus(workdir: Path) -> None:
    assert report(edit(('bus = "meters"', 'bus = "nowhere"'))) == [
        "config.toml:16: devices.0.bus: no bus 'nowhere' (buses: meters)"
    ]


def test_unreadable_tls_file_is_relative_to_the_config(workdir: Path) -> None:
    Path("etc").mkdir()
    text = edit(("port = 8883", 'port = 8883\n\n[mqtt.tls]\nca_file = "missing.pem"'))
    assert report(text, "etc/config.toml") == [
        "etc/config.toml:10: mqtt.tls.ca_file: cannot read etc/missing.pem: No such file or directory"
    ]
    Path("etc/missing.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert check_file("etc/config.toml", io.StringIO()) == 0


def test_nul_in_a_file_name_is_a_problem_not_a_crash(workdir: Path) -> None:
    text = BASE + '\n[mqtt.tls]\nca_file = "a\\u0000b"\n'
    (line,) = report(text)
    assert line.startswith("config.toml:32: mqtt.tls.ca_file: cannot read a\\x00b: ")


# -- many problems ----------------------------------------------------------------------------------


def test_schema_problems_are_all_reported_sorted_by_line(workdir: Path) -> None:
    # Sections out of the model's field order: pydantic reports site first, the file has it last.
    text = """\
[[devices]]
id = "main-meter"
bus = "meters"
intervall = "10s"

[[buses]]
id = "meters"
driver = "modbus_tcp"
host = "10.0.0.20"
port = "502x"

[site]
id = "tower a"
"""
    assert report(text) == [
        'config.toml:4: devices.0.intervall: unknown key "intervall"; did you mean "interval"?',
        'config.toml:10: buses.0.port: input should be a valid integer (got "502x")',
        'config.toml:13: site.id: should be an id: 1-64 letters, digits, "_" or "-", starting with a letter '
        'or digit (got "tower a")',
    ]


def test_cross_section_problems_are_all_reported_sorted_by_line(workdir: Path) -> None:
    text = BASE + """
[[devices]]
id = "main-meter"
bus = "nowhere"

[mqtt.tls]
ca_file = "missing.pem"
"""
    assert report(text) == [
        "config.toml:32: devices.1.id: duplicate device id 'main-meter'",
        "config.toml:33: devices.1.bus: no bus 'nowhere' (buses: meters)",
        "config.toml:36: mqtt.tls.ca_file: cannot read missing.pem: No such file or directory",
    ]


# -- fire panels on serial lines -------------------------------------------------------------------

FIRE = BASE + r"""
[[buses]]
id = "fire-port"
driver = "serial_lines"
port = "/dev/ttyUSB0"
encoding = "gbk"

[[devices]]
id = "fire-panel"
bus = "fire-port"
format = "gst_cn"
heartbeat = "90s"

[[devices.patterns]]
event = "fire"
regex = '^FIRE (?P<zone>\d+)'
sample = "FIRE 12"
"""


def test_fire_panel_config_loads(workdir: Path) -> None:
    Path("config.toml").write_text(FIRE, encoding="utf-8")
    cfg = load_config("config.toml")
    panel = cfg.device("fire-panel")
    assert panel.driver == "firepanel"  # its family comes from its bus
    out = io.StringIO()
    assert check_file("config.toml", out) == 0
    assert out.getvalue() == "config.toml: OK (2 buses, 2 devices, 10 points)\n"


def test_bad_regex_points_at_its_line(workdir: Path) -> None:
    assert report(edit((r"(?P<zone>\d+)'", r"(?P<zone>\d+'"), text=FIRE)) == [
        "config.toml:45: devices.1.patterns.0.regex: invalid regular expression: missing ), unterminated "
        'subpattern at position 6 (got "^FIRE (?P<zone>\\\\d+")'
    ]


def test_fire_pattern_must_capture_where(workdir: Path) -> None:
    assert report(edit((r"(?P<zone>\d+)'", r"\d+'"), text=FIRE)) == [
        "config.toml:45: devices.1.patterns.0.regex: a 'fire' pattern must capture where: a named group "
        '(?P<zone>...) or (?P<address>...) (got "^FIRE \\\\d+")'
    ]


def test_misspelt_group_name_suggests_the_right_one(workdir: Path) -> None:
    assert report(edit(("(?P<zone>", "(?P<zoen>"), text=FIRE)) == [
        "config.toml:45: devices.1.patterns.0.regex: unknown group name 'zoen'; did you mean 'zone'? "
        '(got "^FIRE (?P<zoen>\\\\d+)")'
    ]


def test_pattern_that_matches_everything_is_refused(workdir: Path) -> None:
    (line,) = report(edit((r"'^FIRE (?P<zone>\d+)'", r"'(?P<zone>\d*)'"), text=FIRE))
    assert line.startswith("config.toml:45: devices.1.patterns.0.regex: matches an empty line, so it would match "
                           "every line (got ")


def test_sample_the_regex_does_not_match(workdir: Path) -> None:
    assert report(edit(('sample = "FIRE 12"', 'sample = "FIRE twelve"'), text=FIRE)) == [
        'config.toml:46: devices.1.patterns.0.sample: the regex does not match this sample line (got "FIRE twelve")'
    ]


def test_unknown_format_suggests_a_shipped_one(workdir: Path) -> None:
    (line,) = report(edit(('format = "gst_cn"', 'format = "gst"'), text=FIRE))
    assert line.startswith("config.toml:40: devices.1.format: unknown format 'gst' (formats: gst_cn, ")
    assert line.endswith("; did you mean 'gst_cn'?")


def test_modbus_key_on_a_fire_panel(workdir: Path) -> None:
    assert report(edit(('heartbeat = "90s"', 'heartbeat = "90s"\nunit = 3'), text=FIRE)) == [
        'config.toml:42: devices.1.unit: unknown key "unit"'
    ]


def test_bad_terminator_lists_the_choices(workdir: Path) -> None:
    (line,) = report(edit(('encoding = "gbk"', 'terminator = "\\r\\r"'), text=FIRE))
    assert line.startswith("config.toml:35: buses.1.terminator: input should be ")


def test_one_panel_per_serial_line(workdir: Path) -> None:
    text = FIRE + '\n[[devices]]\nid = "second-panel"\nbus = "fire-port"\nformat = "notifier_en"\n'
    assert report(text) == [
        "config.toml:50: devices.2.bus: bus 'fire-port' (serial_lines) carries 1 device and 'fire-panel' is "
        "already on it"
    ]


def test_one_bus_per_serial_port(workdir: Path) -> None:
    text = FIRE + '\n[[buses]]\nid = "rtu"\ndriver = "modbus_rtu"\nport = "/dev/ttyUSB0"\n'
    assert report(text) == ["config.toml:51: buses.2.port: serial port '/dev/ttyUSB0' is already bus 'fire-port'"]


# -- the problem record -----------------------------------------------------------------------------


def test_problem_format() -> None:
    assert ConfigProblem("c.toml", 3, "a.b", "bad").format() == "c.toml:3: a.b: bad"
    assert ConfigProblem("c.toml", None, "a.b", "bad").format() == "c.toml: a.b: bad"
    assert ConfigProblem("c.toml", 2, "", "bad").format() == "c.toml:2: bad"


def test_problem_keeps_the_offending_value(workdir: Path) -> None:
    Path("config.toml").write_text(edit(("unit = 1", "unit = 300")))
    with pytest.raises(ConfigError) as caught:
        load_config("config.toml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.path, problem.value) == (17, "devices.0.unit", 300)


class _TagA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["a"]
    port: int


class _TagB(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["b"]


class _Tagged(BaseModel):
    items: list[Annotated[_TagA | _TagB, Field(discriminator="kind")]]


def test_union_tags_are_not_part_of_the_key_path() -> None:
    # The registry will turn buses and devices into discriminated unions; pydantic then puts the
    # tag into every error location, which no one wrote in the file.
    path, owner = loader._walk(("items", 0, "a"), _Tagged)
    assert (path, owner) == (("items", 0), _TagA)
    assert loader._walk(("items", 0, "a", "port"), _Tagged)[0] == ("items", 0, "port")
    assert loader._walk(("items", 0, "zzz", "port"), _Tagged) == (("items", 0, "port"), None)


# -- locate -----------------------------------------------------------------------------------------

TRICKY = '''\
# [[devices]] in a comment
[site]
id = "x"  # [mqtt]
notes = """
[[devices]]
id = "fake"
"""
literal = \'\'\'
[[devices]]\'\'\'

[mqtt.tls]
ca_file = "a.pem"

[[devices]]
id = "a"
tls = { ca_file = "x", "quoted.key" = 2, 'lit' = 3 }
arr = [
  1,  # ] not the end
  { k = "v" },
  "[[devices]]",
]
a.b."c d" = 1
"e\\u0066" = 2

[[devices.points]]
id = "p0"
[[devices.points]]
id = "p1"

[[ devices ]]
id = "b"
[[devices.points]]
id = "q0"
[devices.extra]
x = 1
'''


@pytest.mark.parametrize(
    ("loc", "line"),
    [
        (("site",), 2),
        (("site", "id"), 3),
        (("site", "notes"), 4),
        (("site", "literal"), 8),
        (("mqtt",), 11),
        (("mqtt", "tls", "ca_file"), 12),
        (("devices",), 14),
        (("devices", 0), 14),
        (("devices", 0, "id"), 15),
        (("devices", 0, "tls"), 16),
        (("devices", 0, "tls", "ca_file"), 16),
        (("devices", 0, "tls", "quoted.key"), 16),
        (("devices", 0, "tls", "lit"), 16),
        (("devices", 0, "arr"), 17),
        (("devices", 0, "arr", 0), 18),
        (("devices", 0, "arr", 1, "k"), 19),
        (("devices", 0, "arr", 2), 20),
        (("devices", 0, "a", "b", "c d"), 22),
        (("devices", 0, "ef"), 23),
        (("devices", 0, "points", 0, "id"), 26),
        (("devices", 0, "points", 1), 27),
        (("devices", 0, "points", 1, "id"), 28),
        (("devices", 1), 30),
        (("devices", 1, "id"), 31),
        (("devices", 1, "points", 0, "id"), 33),
        (("devices", 1, "extra", "x"), 35),
        # absent keys fall back to their nearest parent
        (("devices", 1, "points", 0, "address"), 32),
        (("devices", 1, "points", 7, "id"), 32),
        (("mqtt", "tls", "cert_file"), 11),
        (("devices", 9), 14),
        (("store", "data_dir"), None),
        ((), None),
    ],
)
def test_locate_tricky_document(loc: tuple[str | int, ...], line: int | None) -> None:
    assert tomllib.loads(TRICKY)  # the fixture itself is valid TOML
    assert locate(TRICKY, loc) == line


def test_locate_counts_crlf_lines() -> None:
    assert locate("[a]\r\nx = 1\r\n\r\n[b]\r\ny = 2\r\n", ("b", "y")) == 5


# -- property tests ---------------------------------------------------------------------------------

SCHEMA_KEYS = [
    "site", "id", "name", "mqtt", "tls", "ca_file", "port", "host", "store", "log", "buses", "devices",
    "points", "driver", "bus", "unit", "interval", "address", "type", "table", "timeout", "password",
    "password_file", "data_dir", "level", "bit",
]
SCHEMA_STRINGS = ["modbus_tcp", "modbus", "coil", "bool", "float32", "10s", "1h30m", "10 parsecs", "b0", "d0"]

keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=6))
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(SCHEMA_STRINGS),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)
documents = st.dictionaries(keys, values, max_size=6)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field value that is usually plausible and sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, values)


def _section(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda known, junk: {**junk, **known},
        st.fixed_dictionaries(
            {k: _maybe(v) for k, v in required.items()}, optional={k: _maybe(v) for k, v in optional.items()}
        ),
        st.dictionaries(keys, values, max_size=1),
    )


ids = st.sampled_from(["b0", "b1", "d0", "d1", "p0", "p1", "bad id"])
points = _section(
    {"id": ids, "address": st.integers(-1, 70000)},
    {"type": st.sampled_from(["uint16", "float32", "bool", "nope"]), "table": st.sampled_from(["coil", "input"]),
     "bit": st.integers(-1, 16)},
)
shaped_documents = st.fixed_dictionaries(
    {"site": _section({"id": ids}, {"name": st.text(max_size=5)})},
    optional={
        "mqtt": _section({}, {"port": st.integers(0, 70000), "tls": _section({}, {"ca_file": st.text(max_size=4)}),
                              "keepalive": st.sampled_from(["10s", "1s", "x"])}),
        "buses": st.lists(_section({"id": ids, "driver": st.just("modbus_tcp"), "host": st.just("h")},
                                   {"port": st.integers(0, 70000)}), max_size=3),
        "devices": st.lists(_section({"id": ids, "bus": ids}, {"unit": st.integers(-1, 300), "points":
                                     st.lists(points, max_size=3)}), max_size=3),
    },
)


class Emitter:
    """A small TOML writer that varies its style at random and notes the line of every key path."""

    COMMENTS = ("", "", "  # [[devices]] x = {", '  # "unterminated', "  # ]]")

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.parts: list[str] = []
        self.line = 1
        self.lines: dict[tuple[str | int, ...], int] = {}

    def text(self) -> str:
        return "".join(self.parts)

    def put(self, text: str) -> None:
        self.parts.append(text)
        self.line += text.count("\n")

    def record(self, path: tuple[str | int, ...]) -> None:
        self.lines.setdefault(path, self.line)

    def end_line(self) -> None:
        self.put(self.rnd.choice(self.COMMENTS) + "\n" + self.rnd.choice(["", "", "\n", "# [x]\n"]))

    def key(self, key: str) -> str:
        if re.fullmatch(r"[A-Za-z0-9_-]+", key) and self.rnd.random() < 0.8:
            return key
        if self.rnd.random() < 0.3 and "'" not in key and key.isprintable():
            return f"'{key}'"
        return self.basic(key)

    @staticmethod
    def basic(text: str, multiline: bool = False) -> str:
        out = []
        for char in text:
            if char in '"\\':
                out.append("\\" + char)
            elif char == "\n" and multiline:
                out.append(char)
            elif ord(char) < 0x20 or ord(char) == 0x7F:
                out.append(f"\\u{ord(char):04x}")
            else:
                out.append(char)
        body = "".join(out)
        return f'"""\n{body}"""' if multiline else f'"{body}"'

    def table(self, table: dict[str, Any], path: tuple[str | int, ...], header: tuple[str, ...]) -> None:
        later: list[tuple[str, str, Any]] = []
        for key, value in table.items():
            here = (*path, key)
            if isinstance(value, dict) and self.rnd.random() < 0.6:
                later.append(("table", key, value))
            elif _is_array_of_tables(value) and self.rnd.random() < 0.7:
                later.append(("array", key, value))
            elif isinstance(value, dict) and value and self.rnd.random() < 0.5:
                self.dotted(self.key(key), value, here)
            else:
                self.record(here)
                self.put(f"{self.key(key)} = ")
                self.value(value, here)
                self.end_line()
        for kind, key, value in later:
            names = (*header, self.key(key))
            if kind == "table":
                self.record((*path, key))
                self.put(f"[{'.'.join(names)}]")
                self.end_line()
                self.table(value, (*path, key), names)
            else:
                for index, item in enumerate(value):
                    self.record((*path, key, index))
                    self.put(f"[[{' . '.join(names) if self.rnd.random() < 0.2 else '.'.join(names)}]]")
                    self.end_line()
                    self.table(item, (*path, key, index), names)

    def dotted(self, prefix: str, table: dict[str, Any], path: tuple[str | int, ...]) -> None:
        self.record(path)
        for key, value in table.items():
            here = (*path, key)
            if isinstance(value, dict) and value and self.rnd.random() < 0.5:
                self.dotted(f"{prefix}.{self.key(key)}", value, here)
            else:
                self.record(here)
                self.put(f"{prefix}.{self.key(key)} = ")
                self.value(value, here)
                self.end_line()

    def value(self, value: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(value, dict):
            self.put("{ ")
            for number, (key, item) in enumerate(value.items()):
                self.put(", " if number else "")
                self.record((*path, key))
                self.put(f"{self.key(key)} = ")
                self.value(item, (*path, key))
            self.put(" }")
        elif isinstance(value, list):
            multiline = self.rnd.random() < 0.5
            self.put("[")
            for index, item in enumerate(value):
                self.put("\n  " if multiline else (", " if index else ""))
                self.record((*path, index))
                self.value(item, (*path, index))
                self.put("," if multiline else "")
            self.put("\n]" if multiline else "]")
        elif isinstance(value, bool):
            self.put("true" if value else "false")
        elif isinstance(value, int | float | datetime.date):
            self.put(value.isoformat() if isinstance(value, datetime.date) else repr(value))
        else:
            choice = self.rnd.random()
            if choice < 0.3:
                self.put(self.basic(value + "\n[[devices]]\nid = 1\n", multiline=True))
            elif choice < 0.5 and "'" not in value and value.isprintable():
                self.put(f"'{value}'")
            else:
                self.put(self.basic(value))


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def emit(document: dict[str, Any], seed: int) -> tuple[str, dict[tuple[str | int, ...], int]]:
    emitter = Emitter(random.Random(seed))
    emitter.table(document, (), ())
    return emitter.text(), emitter.lines


def _strings_with_tail(value: Any) -> Any:
    """What the emitter's multi-line strings decode to can differ; compare the structure only."""
    if isinstance(value, dict):
        return {k: _strings_with_tail(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings_with_tail(v) for v in value]
    if isinstance(value, str):
        return value.split("\n[[devices]]\nid = 1\n")[0]
    return value


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "config.toml"


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(document=documents, seed=st.integers(0, 2**32))
def test_locate_finds_every_key_the_emitter_wrote(document: dict[str, Any], seed: int) -> None:
    text, lines = emit(document, seed)
    assert _strings_with_tail(tomllib.loads(text)) == document
    source = SourceMap(text)
    assert {path: source.line(path) for path in lines} == lines


def _only_config_errors(path: Path, data: str | bytes) -> None:
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(problem.format(), str) for problem in exc.problems)
        assert [p.line or 0 for p in exc.problems] == sorted(p.line or 0 for p in exc.problems)
    assert check_file(path, io.StringIO()) in (0, 2)


@FUZZ
@given(document=st.one_of(documents, shaped_documents), seed=st.integers(0, 2**32))
def test_any_toml_document_gives_only_config_errors(scratch: Path, document: dict[str, Any], seed: int) -> None:
    _only_config_errors(scratch, emit(document, seed)[0])


@FUZZ
@given(data=st.one_of(st.text(), st.text(alphabet='[]{}"\'=.,#\n \\abu0'), st.binary()))
def test_any_text_gives_only_config_errors(scratch: Path, data: str | bytes) -> None:
    _only_config_errors(scratch, data)


@FUZZ
@given(
    text=st.one_of(st.text(), st.text(alphabet='[]{}"\'=.,#\n\r\t \\abuU0-_'), st.just(TRICKY)),
    loc=st.lists(st.one_of(st.text(max_size=3), st.integers(-2, 3)), max_size=5),
)
def test_locate_never_raises(text: str, loc: list[str | int]) -> None:
    line = locate(text, loc)
    assert line is None or 1 <= line <= text.count("\n") + 1


def test_a_rule_publishing_what_it_listens_for_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.toml"
    path.write_text('[site]\nid = "s"\n\n[[rules]]\nid = "ping"\nwhen = { event = "ops.ping" }\n'
                    'actions = [ { publish = "ops.ping" } ]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path}:7: rules.0.actions.0.publish: publishes 'ops.ping', which its own"
                                 " `when` listens for: a loop")


def test_camera_mistakes_land_on_their_lines(workdir: Path) -> None:
    cameras = (
        '\n[vision.plates]\nallowlist = ["京A12345", "not a plate"]\n\n'
        '[[cameras]]\nid = "gate"\nurl = "usb:front"\nfps = 0\ndetect = ["faces", "cars"]\n'
        'motion = { regions = [[[0.0, 0.0], [1.5, 0.0], [1.0, 1.0]]] }\n\n'
        '[[cameras]]\nid = "gate"\nurl = "rtsp://10.0.0.9/ch1"\n'
    )
    lines = report(BASE + cameras)
    start = len(BASE.splitlines())
    text = "\n".join(lines)
    assert f"config.toml:{start + 3}: vision.plates.allowlist: " in text and "'not a plate' is not a plate" in text
    assert f"config.toml:{start + 7}: cameras.0.url: " in text and "usb:0" in text
    assert f"config.toml:{start + 8}: cameras.0.fps: input should be greater than 0" in text
    assert f"config.toml:{start + 9}: cameras.0.detect.1: input should be " in text
    assert f"config.toml:{start + 10}: cameras.0.motion.regions" in text and "outside the frame" in text
    # Checks across sections run once every section is valid on its own.
    again = '\n[[cameras]]\nid = "gate"\nurl = "usb:0"\n\n[[cameras]]\nid = "gate"\nurl = "rtsp://10.0.0.9/ch1"\n'
    assert report(BASE + again) == [f"config.toml:{start + 7}: cameras.1.id: duplicate camera id 'gate'"]


def test_a_data_dir_too_long_for_the_control_socket_is_a_config_error(tmp_path: Path) -> None:
    deep = "/tmp/" + "d" * 120
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "s"\n[store]\ndata_dir = "{deep}"\n[mqtt]\nenabled = false\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (problem,) = caught.value.problems
    assert problem.path == "store.data_dir" and "too long for the daemon's control socket" in problem.message
