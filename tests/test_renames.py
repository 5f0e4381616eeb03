"""Renamed config keys: the old names load exactly as the new ones, and `gateway check` says where to change them."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from gateway.config.loader import ConfigError, ConfigProblem, check_file, load_config
from gateway.config.renames import ANY, RENAMED

# Every old name in gateway/config/renames.py, each on a line of its own (the test finds the lines by text).
OLD = """\
[site]
id = "tower-a"

[mqtt]
enabled = false

[[buses]]
id = "meters"
driver = "modbus_tcp"
host = "10.0.0.20"

[[buses]]
id = "bacnet"
driver = "bacnet_ip"
bind = "10.0.0.5/24:47808"
instance = 999

[[devices]]
id = "lift"
bus = "meters"
unit = 1
priority = "life_safety"
breaker_failures = 5
report = { mode = "periodic", every = "5m" }

[devices.report_points.level]
mode = "periodic"
every = "30s"

[[devices.points]]
id = "level"
address = 0

[[devices]]
id = "meter"
bus = "meters"
unit = 2
priority = "normal"

[[devices.points]]
id = "energy"
address = 0
type = "uint32"

[[devices]]
id = "ahu"
bus = "bacnet"
address = "10.0.0.30"
device_instance = 3001
rpm = false
rpm_objects = 10

[[devices.points]]
id = "valve"
object = "analog-output:1"
writable = true
priority = 9
"""

NEW = (OLD.replace('priority = "life_safety"', "life_safety = true")
       .replace('priority = "normal"', "life_safety = false")
       .replace("breaker_failures = 5", "offline_after = 5")
       .replace('every = "5m"', 'period = "5m"')
       .replace('every = "30s"', 'period = "30s"')
       .replace("rpm = false", "read_multiple = false")
       .replace("rpm_objects = 10", "read_multiple_objects = 10")
       .replace("priority = 9", "write_priority = 9"))

# (line as written, key path `gateway check` names, new key)
EXPECTED = [
    ('priority = "life_safety"', "devices.0.priority", "life_safety"),
    ("breaker_failures = 5", "devices.0.breaker_failures", "offline_after"),
    ('every = "5m"', "devices.0.report.every", "period"),
    ('every = "30s"', "devices.0.report_points.level.every", "period"),
    ('priority = "normal"', "devices.1.priority", "life_safety"),
    ("rpm = false", "devices.2.rpm", "read_multiple"),
    ("rpm_objects = 10", "devices.2.rpm_objects", "read_multiple_objects"),
    ("priority = 9", "devices.2.points.0.priority", "write_priority"),
]
WARNING = re.compile(r"^warning: config\.toml:(\d+): (\S+): deprecated: write `(\w+)` instead")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def line_of(text: str, fragment: str) -> int:
    found = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(found) == 1, fragment
    return found[0]


def check(text: str) -> tuple[int, list[str]]:
    Path("config.toml").write_text(text, encoding="utf-8")
    out = io.StringIO()
    code = check_file("config.toml", out)
    return code, out.getvalue().splitlines()


def test_old_names_load_to_the_same_config_as_the_new(workdir: Path) -> None:
    Path("old.toml").write_text(OLD, encoding="utf-8")
    Path("new.toml").write_text(NEW, encoding="utf-8")
    warnings: list[ConfigProblem] = []
    old = load_config("old.toml", warnings=warnings)
    assert old.model_dump() == load_config("new.toml").model_dump()
    assert len(warnings) == len(EXPECTED)
    lift, meter, ahu = old.devices
    assert (lift.life_safety, lift.offline_after, lift.report.period, lift.report_points["level"].period) == (
        True, 5, 300.0, 30.0)
    assert meter.life_safety is False
    assert (ahu.read_multiple, ahu.read_multiple_objects, ahu.points[0].write_priority) == (False, 10, 9)


def test_check_prints_one_warning_per_old_key_on_its_line(workdir: Path) -> None:
    code, lines = check(OLD)
    assert code == 0
    assert lines[-1] == "config.toml: OK (2 buses, 3 devices, 3 points)"
    found = [WARNING.match(line) for line in lines[:-1]]
    assert all(found), lines
    assert [(int(m[1]), m[2], m[3]) for m in found if m] == [
        (line_of(OLD, text), path, new) for text, path, new in EXPECTED]
    assert all("the old name is read until the next release" in line for line in lines[:-1])


def test_new_names_give_no_warning(workdir: Path) -> None:
    assert check(NEW) == (0, ["config.toml: OK (2 buses, 3 devices, 3 points)"])


def test_every_rename_is_exercised() -> None:
    """A rename added to renames.py without a line in OLD fails here, so it is checked like the others."""
    def matches(where: tuple[str, ...], path: list[str]) -> bool:
        return len(where) == len(path) and all(w in (ANY, p) for w, p in zip(where, path, strict=True))

    for rename in RENAMED:
        assert any(path.split(".")[-1] == rename.old and new == rename.new
                   and matches(rename.where, path.split(".")[:-1]) for _, path, new in EXPECTED), rename


@pytest.mark.parametrize(("old", "bad", "message"), [
    ("breaker_failures = 5", "breaker_failures = 0", "devices.0.breaker_failures: input should be greater than"),
    ('priority = "life_safety"', 'priority = "urgent"', "devices.0.priority: input should be a valid boolean"),
    ('every = "30s"', 'every = "soon"', "devices.0.report_points.level.every: invalid duration"),
    ("rpm_objects = 10", "rpm_objects = 500", "devices.2.rpm_objects: input should be less than or equal to 200"),
    ("priority = 9", "priority = 6", "devices.2.points.0.priority: priority 6 is reserved"),
])
def test_a_bad_value_under_an_old_name_lands_on_its_line(workdir: Path, old: str, bad: str, message: str) -> None:
    text = OLD.replace(old, bad)
    Path("config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config("config.toml")
    (problem,) = caught.value.problems
    assert problem.format().startswith(f"config.toml:{line_of(text, bad)}: {message}"), problem.format()


def test_old_and_new_name_both_written_is_an_error_on_the_old_one(workdir: Path) -> None:
    text = OLD.replace("rpm = false", "rpm = false\nread_multiple = true")
    code, lines = check(text)
    assert code == 2
    assert lines == [f"config.toml:{line_of(text, 'rpm = false')}: devices.2.rpm: unknown key \"rpm\""]
