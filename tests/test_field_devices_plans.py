"""Issue 11: read plans that learn from the device, on the real daemon. A map with gaps (exception 2) and a
read limit (exception 3) are learnt within the first poll, an unreadable point is reported once (event and
`gateway status`), the learnt plan is recalled at the next start (not one exception on the wire) unless the
device's config changed, and `relearn` over the control socket makes the next poll learn again."""

from __future__ import annotations

from pathlib import Path

from conftest import until
from test_field_devices import (
    HOST,
    Expected,
    assert_arrived,
    assert_never_offline,
    daemon_on,
    gateway_status,
    holding,
    learnt_plan,
    polls,
    tcp_config,
    wire,
)

from drivers.modbus.codec import DataType, Table
from gateway.control import request
from gateway.core.data import Quality
from gateway.daemon import control_path
from simulators.awkward import AwkwardDevice, pattern, serve_awkward

# -- a register map with gaps ------------------------------------------------------------------------------

GAPPY = {Table.HOLDING: [range(0, 6), range(8, 12), range(20, 30)], Table.INPUT: [range(0, 10)]}
"""Holding 6, 7 and 12..19 do not exist; input registers only 0..9."""
GAPPY_POINTS = [
    *holding(0, 1, 2, 3, 4, 5),
    {"id": "h7", "address": 7},  # on no register: unreadable on its own
    *holding(8, 9, 10, 11),
    {"id": "temp", "address": 20, "type": "int16", "scale": 0.1},
    {"id": "cold", "address": 21, "type": "int16", "scale": 0.1},
    {"id": "power", "address": 22, "type": "float32"},
    {"id": "energy", "address": 24, "type": "uint32"},
    {"id": "flow", "address": 26, "type": "uint16", "scale": 0.01},
    {"id": "supply", "address": 27, "type": "uint16", "scale": 0.1, "offset": -40},
    *[{"id": f"i{a}", "address": a, "table": "input"} for a in (0, 1, 2, 3)],
    {"id": "i50", "address": 50, "table": "input"},  # on no register either, and alone in its read
]
UNREADABLE = {"h7": "holding 7", "i50": "input 50"}


def gappy_device() -> tuple[AwkwardDevice, Expected]:
    device = AwkwardDevice(mapped=GAPPY)
    device.put(20, 319, DataType.INT16)
    device.put(21, -319, DataType.INT16)
    device.put(22, 230.25, DataType.FLOAT32)
    device.put(24, 4_000_000_123, DataType.UINT32)
    device.put(26, 12345, DataType.UINT16)
    device.put(27, 619, DataType.UINT16)
    expected: Expected = {f"h{a}": pattern(Table.HOLDING, a) for a in (0, 1, 2, 3, 4, 5, 8, 9, 10, 11)}
    expected |= {f"i{a}": pattern(Table.INPUT, a) for a in (0, 1, 2, 3)}
    expected |= {"temp": 31.9, "cold": -31.9, "power": 230.25, "energy": 4_000_000_123, "flow": 123.45,
                 "supply": 21.9}
    return device, expected


async def test_a_map_with_gaps_is_learnt_once_reported_once_and_kept_across_a_restart(tmp_path: Path) -> None:
    device, expected = gappy_device()
    stats = device.stats
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], GAPPY_POINTS)

        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 4)
            learnt_at = stats.exceptions[2]
            await until(lambda: polls(daemon) >= 6)
            assert stats.exceptions[2] == learnt_at, "exception 2 again after the plan was learnt"
            await daemon.recorder.flush()
            report = await gateway_status(path)
        assert_arrived(tape, "meter", expected, within=1)  # the splits happen inside the first poll
        assert_never_offline(tape, "meter")
        for point in UNREADABLE:
            said = [(n, r.quality) for n, r in tape.of("meter", point)]
            assert said == [(1, Quality.BAD)], f"{point}: published {said}, want bad once, in poll 1"
        found = tape.kinds("device.point_unreadable", "meter")
        assert sorted((e.payload["point"], e.payload["address"]) for e in found) == sorted(UNREADABLE.items())
        assert all(e.payload["answer"] == "exception 2 (illegal data address)" for e in found)
        # 0..29 -> 0-5 | 7-11 | 20-29; 7-11 -> 7-8 | 9-11; 7-8 -> 7 | 8; 7 alone; input 50 alone
        assert learnt_at == 5 and wire(daemon)["exception_2"] == 5
        (status,) = report["devices"]
        assert status["id"] == "meter" and status["state"] == "online" and status["failures"] == 0
        assert {p: u["address"] for p, u in status["unreadable"].items()} == UNREADABLE
        assert status["wire"].get("exception_2") == 5

        # The next start recalls the plan: the same reads, and not one exception on the wire.
        asked, answered_with = stats.requests, sum(stats.exceptions.values())
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 3)
            await daemon.recorder.flush()
            report = await gateway_status(path)
            reads_per_poll = len(learnt_plan(daemon)["reads"])
            done = polls(daemon)
            asked_now = stats.requests - asked
        assert sum(stats.exceptions.values()) == answered_with, f"exceptions in the second run: {stats.exceptions}"
        # (a poll may be on the wire, some of its reads sent: its count goes up only when it ends)
        assert done * reads_per_poll <= asked_now <= (done + 1) * reads_per_poll, (asked_now, done, reads_per_poll)
        assert_arrived(tape, "meter", expected, within=1)
        assert not tape.kinds("device.point_unreadable") and not set(UNREADABLE) & {r.point for _, r in tape.readings}
        (status,) = report["devices"]
        assert set(status["unreadable"]) == set(UNREADABLE)  # still listed for the technician


async def test_a_changed_device_config_is_learnt_afresh_at_the_next_start(tmp_path: Path) -> None:
    """The technician removes the point that was on no register. The stored plan is for another map: the
    next start learns again, and `gateway status` no longer lists the removed point."""
    device, expected = gappy_device()
    stats = device.stats
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], GAPPY_POINTS)
        async with daemon_on(path) as (daemon, _):
            await until(lambda: polls(daemon) >= 2)
        before = stats.exceptions[2]
        path = tcp_config(tmp_path, server.ports[0], [p for p in GAPPY_POINTS if p["id"] != "h7"])
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 3)
            await daemon.recorder.flush()
            report = await gateway_status(path)
    # 0..29 refused (the gap 6..7 was bridged) and split at the gaps; input 50 refused: learnt again
    assert stats.exceptions[2] == before + 2
    assert [e.payload["point"] for e in tape.kinds("device.point_unreadable")] == ["i50"]
    assert_arrived(tape, "meter", expected, within=1)
    (status,) = report["devices"]
    assert set(status["unreadable"]) == {"i50"}


async def test_relearn_over_the_control_socket_makes_the_next_poll_learn_again(tmp_path: Path) -> None:
    device, expected = gappy_device()
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], GAPPY_POINTS)
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 2)
            before = device.stats.exceptions[2]
            answer = await request(control_path(daemon.cfg), {"cmd": "relearn", "device": "meter", "actor": "test"})
            assert answer == {"ok": True, "relearned": "meter"}
            at = polls(daemon)
            await until(lambda: polls(daemon) >= at + 3)
        # The poll under way when the command came (if any) had its reads already; the next one learns.
        assert device.stats.exceptions[2] == before + 5
        assert len(tape.kinds("device.point_unreadable")) == 2 * len(UNREADABLE)  # reported again after relearn
        assert_arrived(tape, "meter", expected, within=1)
        assert_never_offline(tape, "meter")


# -- a 32-register read limit ------------------------------------------------------------------------------

LONG_POINTS = [
    *holding(*range(0, 24)),
    {"id": "power", "address": 24, "type": "float32"},  # one span: never split across two reads
    *holding(*range(26, 49)),
    {"id": "energy", "address": 49, "type": "uint32"},
    *holding(*range(51, 100)),
]


async def test_a_32_register_limit_is_found_exactly_and_recalled(tmp_path: Path) -> None:
    device = AwkwardDevice(read_limit=32)
    device.put(24, -1.5, DataType.FLOAT32)
    device.put(49, 123_456_789, DataType.UINT32)
    expected: Expected = {p["id"]: p["address"] for p in LONG_POINTS} | {"power": -1.5, "energy": 123_456_789}
    stats = device.stats
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], LONG_POINTS)
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 12)
            learnt = learnt_plan(daemon)
        assert_arrived(tape, "meter", expected, within=1)  # every refused read was asked again in its own poll
        assert_never_offline(tape, "meter")
        # The limit is bisected between the largest read taken and the smallest refused: found exactly, in a
        # handful of refusals (log2 of 100), each retried at once in the same poll.
        assert learnt["max_registers"] == 32
        refused = stats.exceptions[3]
        assert stats.exceptions == {3: refused} and wire(daemon)["exception_3"] == refused and 3 <= refused <= 12
        assert all(count > 32 for count in stats.by_count if count not in range(1, 33))

        asked = sum(stats.by_count.values())
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 3)
        assert stats.exceptions == {3: refused}, "the learnt limit was forgotten over the restart"
        assert_arrived(tape, "meter", expected, within=1)
        assert sum(stats.by_count.values()) > asked
