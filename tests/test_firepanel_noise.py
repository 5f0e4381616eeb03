"""Noise on a fire panel's serial line never turns a fire line into anything less than a fire alarm.

Real RS-232/485 lines pick up stray bytes (power-up, ground loops, a technician's laptop). Whatever
bytes arrive between genuine lines, in GBK (where a stray lead byte swallows the next character) or
in plain ASCII, every fire line must come out as a `fire.alarm` naming its zone, and lose nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.firepanel.config import FirePanel, SerialLineBus
from drivers.firepanel.driver import FirePanelDriver, PanelMonitor
from drivers.firepanel.parser import LineSplitter
from gateway.config import ConfigError, load_config
from simulators.firepanel import FirePanelSimulator

FORMATS = ("gst_cn", "notifier_en")


def monitor(fmt: str) -> tuple[PanelMonitor, str]:
    driver = FirePanelDriver(SerialLineBus(id="b", driver="serial_lines", port="/dev/null"),
                             [FirePanel(id="panel", bus="b", format=fmt)])
    return driver.monitor, driver.panel.encoding(driver.bus)


def lines(fmt: str, zones: list[int]) -> list[bytes]:
    sim = FirePanelSimulator(fmt, heartbeat=0)
    out = []
    for i, zone in enumerate(zones):
        kind = "fire" if i % 2 == 0 else "fault"  # fires among ordinary lines
        out.append((sim.render(kind, zone=zone, address=100 + zone) + "\r\n").encode(sim.encoding))
    return out


def feed(fmt: str, stream: bytes) -> list[dict[str, object]]:
    panel, _ = monitor(fmt)
    splitter = LineSplitter(b"\n", 1024)
    events = []
    for line in [*splitter.feed(stream), *filter(None, [splitter.flush()])]:
        events += [{"kind": e.kind, "priority": e.priority.label, **e.payload}
                   for e in panel.take(line, 0.0, 0.0).events]
    return events


noise = st.binary(max_size=64) | st.lists(st.integers(0x81, 0xFE), min_size=1, max_size=3).map(bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), gaps=st.lists(noise, min_size=8, max_size=8))
def test_noise_between_lines_never_downgrades_or_drops_a_fire_line(fmt: str, gaps: list[bytes]) -> None:
    zones = list(range(11, 19))
    genuine = lines(fmt, zones)
    stream = b"".join(gap + line for gap, line in zip(gaps, genuine, strict=True))
    events = feed(fmt, stream)
    fires = [e for e in events if e["kind"] == "fire.alarm"]
    for zone in zones[::2]:  # every fire line, by its zone: an alarm, whatever came before it
        hits = [e for e in fires if e.get("zone") in (f"{zone:02d}", f"{zone:03d}", str(zone))
                or f"{zone:02d}区" in str(e.get("text")) or f"Z{zone:03d}" in str(e.get("text"))]
        assert hits, (fmt, zone, stream, events)
        assert all(e["priority"] == "alarm" for e in hits)
    assert not [e for e in events if e["kind"] == "panel.unparsed" and "火警" in str(e.get("text"))]


def test_a_stray_gbk_lead_byte_costs_one_character_not_the_keyword() -> None:
    fmt = "gst_cn"
    (line,) = lines(fmt, [4])
    events = feed(fmt, b"\x85" + line)
    (fire,) = [e for e in events if e["kind"] == "fire.alarm"]
    assert fire["zone"] == "04" and fire["address"] == "104" and fire["noise"] == "\ufffd"


def test_a_fire_line_noise_broke_in_the_middle_is_still_a_fire_alarm_and_says_so() -> None:
    fmt = "gst_cn"
    (line,) = lines(fmt, [6])
    broken = line.replace(b"06", b"0\x136")  # the zone column garbled: no pattern matches
    (fire,) = [e for e in feed(fmt, broken) if e["kind"] == "fire.alarm"]
    assert fire["parse_failed"] is True and fire["priority"] == "alarm" and fire["pattern"] == "keyword:火警"
    assert bytes.fromhex(str(fire["raw_hex"])) == broken  # the bytes are kept for the record


def test_a_pattern_that_can_backtrack_forever_is_refused_at_check(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nid = "s"\n[store]\ndata_dir = "' + str(tmp_path) + '"\n[mqtt]\nenabled = false\n'
        '[[buses]]\nid = "b"\ndriver = "serial_lines"\nport = "/dev/ttyUSB0"\n'
        '[[devices]]\nid = "panel"\nbus = "b"\n'
        '[[devices.patterns]]\nevent = "fire"\nregex = \'^FIRE (?P<zone>\\d+)((\\S+\\s*)*)$\'\n'
        'sample = "FIRE 12 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (problem,) = caught.value.problems
    assert problem.line == 16 and problem.path == "devices.0.patterns.0.regex"
    assert "exponential time" in problem.message
