"""`gateway bench rules` at toy size: it runs, prints both tables, leaves no process behind.

No timing is asserted: the machine is shared and the figures are for people to read.
"""

from __future__ import annotations

import argparse
import re

import psutil
import pytest

from gateway.bench_rules import bench_rules, rule_mix, toml_rules


def test_bench_rules_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    args = argparse.Namespace(rules=40, devices=5, points=5, seconds=3, daemon_devices=2, alarms=10, rate=50.0,
                              warmup=0.5, interval=0.5)
    assert bench_rules(args) == 0  # 0: every injected alarm was raised and committed
    out = capsys.readouterr().out
    assert re.search(r"^evaluations\s+[\d,]+\s+[\d,]+\s+[\d,]+$", out, re.M), out
    assert re.search(r"^event in -> alarm transition \(engine \+ alarm book\)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+10$",
                     out, re.M), out
    assert re.search(r"^event in -> alarm.raise committed to the outbox\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+10$", out, re.M)
    assert re.search(r"^target p99 < 10 ms \(event in -> alarm out\): (met|NOT met)$", out, re.M), out
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_rule_mix_is_valid_toml_config_material() -> None:
    import tomllib

    from rules.config import Rule

    rules = rule_mix(40, 3, ["a", "b"])
    assert [Rule.model_validate(r).id for r in tomllib.loads(toml_rules(rules))["rules"]] == [r["id"] for r in rules]


def test_bench_rules_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_rules(argparse.Namespace(rules=0)) == 2
    assert "must be positive" in capsys.readouterr().err
