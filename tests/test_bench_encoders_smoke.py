"""`gateway bench encoders` at toy size: it runs, reports every encoding it has in both modes, and its figures
add up (no timing is judged: the machine is shared and the figures are for people to read)."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway.bench.encoders import bench_encoders

pytestmark = pytest.mark.timeout(60)


def test_bench_encoders_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_encoders(argparse.Namespace(devices=3, points=5, polls=4, batch=5, json=True))
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "encoders" and code == (0 if doc["ok"] else 1) and doc["problems"] == []
    encodings = doc["encodings"]
    assert {"json", "sparkplug_b"} <= set(encodings)
    for name, modes in encodings.items():
        assert set(modes) == {"live", "replay"}, name
        for mode, r in modes.items():
            assert r["points"] == 3 * 5 * 4 and r["messages"] >= 1, (name, mode)
            assert 0 < r["payload_bytes_per_point"] <= r["wire_bytes_per_point"], (name, mode)
    assert encodings["json"]["live"]["messages"] == 12 and encodings["sparkplug_b"]["live"]["messages"] == 12
    assert encodings["json"]["replay"]["messages"] < 12  # replay travels in batch envelopes
    assert doc["derived"]["sparkplug_vs_json_bytes"]["value"] < 1  # protobuf and aliases: fewer bytes than JSON
    assert [t["figure"] for t in doc["targets"]] == ["encodings.sparkplug_b.live.us_per_1k_points"]


def test_bench_encoders_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_encoders(argparse.Namespace(devices=0)) == 2
    assert "at least 1" in capsys.readouterr().err
