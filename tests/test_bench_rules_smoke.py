"""`gateway bench rules` at toy size: it runs, reports both parts, leaves no process behind.

No timing is asserted and no target is judged: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import json

import psutil
import pytest

from gateway.bench.rules import bench_rules, rule_mix, toml_rules


def test_bench_rules_json_has_both_parts(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    args = argparse.Namespace(rules=40, devices=5, points=5, seconds=3, daemon_devices=2, alarms=10, rate=50.0,
                              warmup=0.5, interval=0.5, json=True)
    code = bench_rules(args)
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "rules" and code == (0 if doc["ok"] else 1)
    assert doc["params"] | {"rules": 40, "devices": 5, "points": 5, "seconds": 3, "daemon_devices": 2, "alarms": 10,
                            "rate": 50.0, "warmup": 0.5, "interval": 0.5} == doc["params"]
    engine = doc["engine"]
    assert engine["rules"] == 40 and engine["readings"] == 5 * 5 * 3 and engine["ticks"] == 3
    assert engine["evaluations"] > 0 and engine["evaluations_per_cpu_s"] > 0
    daemon = doc["daemon"]
    assert daemon["alarms_sent"] == 10 and doc["problems"] == []  # every injected alarm raised and committed
    for part in ("event_to_transition", "event_to_committed"):
        assert daemon[part]["n"] == 10 and 0 < daemon[part]["p50_ms"] <= daemon[part]["max_ms"], part
    assert [t["figure"] for t in doc["targets"]] == ["engine.evaluations_per_cpu_s",
                                                     "daemon.event_to_transition.p99_ms"]
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_bench_rules_tables_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_rules(argparse.Namespace(rules=20, devices=2, points=2, seconds=2, daemon=False))
    out = capsys.readouterr().out
    assert "1. pure Engine, one core" in out and "evaluations" in out and "2. in the running daemon" not in out
    assert "target: rule evaluations per CPU second, one core >= 100,000: " in out
    assert code == (0 if "MISSED" not in out else 1)


def test_rule_mix_is_valid_toml_config_material() -> None:
    import tomllib

    from rules.config import Rule

    rules = rule_mix(40, 3, ["a", "b"])
    assert [Rule.model_validate(r).id for r in tomllib.loads(toml_rules(rules))["rules"]] == [r["id"] for r in rules]


def test_bench_rules_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_rules(argparse.Namespace(rules=0)) == 2
    assert "must be positive" in capsys.readouterr().err
