"""`gateway bench field` at toy size: it runs, leaves no process (socat, simulators) behind, reports every scenario.

No timing is asserted and no target is judged: a one-second window says nothing about a breaker's cost,
and the machine is shared. Only the shape, and that every figure is a number.
"""

from __future__ import annotations

import argparse
import json
import numbers

import psutil
import pytest

from gateway.bench.field import BEHAVIOURS, LINE_BAD, LINE_KINDS, bench_field, meter_points

TOTALS = {"polls", "failed_polls", "samples_stored", "good_points_stored", "points_stored"}
DEVICE = {"polls", "polls_in_run", "failed_polls", "samples_stored", "good_points_stored", "points_stored",
          "first_all_good_poll", "plan_settled_after_polls", "offline_after_s", "counters"}


def number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def test_bench_field_json_has_every_behaviour_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(seconds=1.0, pairs=1, interval=1.0, line_units=2, json=True)
    code = bench_field(args)
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "field" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    assert doc["params"] == {"seconds": 1.0, "pairs": 1, "interval": 1.0, "timeout": 1.0, "line_units": 2,
                             "line_interval": 0.5, "line_timeout": 0.5, "baud": 9600}
    assert number(doc["run_s"]) and doc["window_s"] == 1.0
    names = [name for name, *_ in BEHAVIOURS]
    assert list(doc["behaviours"]) == names == ["gaps", "read_limit", "busy", "slow", "loss_20"]
    for name, b in doc["behaviours"].items():
        assert set(b) == {"spec", "what", "awkward", "twin", "polls_to_learn", "devices"}, name
        for side in ("awkward", "twin"):
            assert set(b[side]) == TOTALS | {"polls_in_run", "requests_heard", "exceptions_sent", "requests_lost"}
            assert all(number(b[side][k]) for k in TOTALS | {"polls_in_run", "requests_heard", "requests_lost"})
            assert b[side]["polls"] >= 1 and b[side]["requests_heard"] >= 1, (name, side)
        assert b["twin"]["points_stored"] == len(meter_points()) * b["twin"]["samples_stored"]
        assert set(b["devices"]) == {f"{name}-0", f"{name}-0-twin"}
        for device in b["devices"].values():
            assert set(device) == DEVICE
        learn = b["polls_to_learn"]
        assert number(learn["plan_settled_after_polls"])
        assert learn["first_all_good_poll"] is None or number(learn["first_all_good_poll"])
    # the device's own answers, counted by the simulator: the gaps and the limit were met on the wire
    assert doc["behaviours"]["gaps"]["awkward"]["exceptions_sent"].get("2", 0) >= 1
    assert doc["behaviours"]["read_limit"]["awkward"]["exceptions_sent"].get("3", 0) >= 1
    assert doc["behaviours"]["gaps"]["polls_to_learn"]["plan_settled_after_polls"] >= 1
    assert set(doc["neighbours"]) == set(LINE_KINDS)
    for kind, lines in doc["neighbours"].items():
        assert set(lines) == set(LINE_BAD), kind
        for bad, line in lines.items():
            assert set(line["healthy"]) == TOTALS and all(number(v) for v in line["healthy"].values())
            assert line["healthy"]["polls"] >= 1 and number(line["probes"]), (kind, bad)
            assert (line["bad_unit"] is None) == (bad == "none")
            if line["bad_unit"] is not None:
                assert set(line["bad_unit"]) == DEVICE and line["bad_unit"]["good_points_stored"] == 0
            if kind == "rtu":
                assert set(line["line_requests_by_unit"]) == {str(u) for u in range(1, 3 + (bad != "none"))}
    ratios = {f"twin_ratio_{n}" for n in names} | {f"neighbour_ratio_{k}_{b}" for k in LINE_KINDS for b in LINE_BAD[1:]}
    assert ratios <= set(doc["derived"])
    for name in ratios:
        assert number(doc["derived"][name]["value"]) and "/" in doc["derived"][name]["from"], name
    assert {t["figure"] for t in doc["targets"]} == ratios
    assert all(isinstance(t["met"], bool) and number(t["actual"]) for t in doc["targets"])
    assert psutil.Process().children(recursive=True) == []


def test_bench_field_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_field(argparse.Namespace(seconds=0)) == 2
    assert bench_field(argparse.Namespace(pairs=0)) == 2
    assert bench_field(argparse.Namespace(interval=0.01)) == 2
    assert "bench:" in capsys.readouterr().err
