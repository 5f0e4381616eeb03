"""The shape of the code: what the daemon loads, who may import whom, how long a module may grow.

The daemon must not carry the benches, the demo or the simulators (they are for people and tests);
``drivers``, ``rules`` and ``models`` build on the kernel (``gateway.core``) only; the kernel builds
on nothing else of the project. Checked from the source (AST) and from a fresh interpreter.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("gateway", "drivers", "rules", "models", "simulators")
MAX_LINES = 450
OVER_LENGTH: dict[str, str] = {
    # path: why it may stay longer for now. Empty: every module is within the limit. An entry here
    # is a debt to pay back by splitting the module, not a permission.
}
FOREIGN_IMPORTS: dict[tuple[str, str], str] = {
    # (module, what of gateway it imports outside the kernel): why. Empty: none does, not even for types.
}
BENCHES = {"modbus", "uplink", "bus", "firepanel", "rules", "vision", "bacnet", "field", "chaos", "soak", "noise",
           "pipeline", "commands", "encoders", "fleet"}


def modules(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> Iterator[str]:
    """Every module a file imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            yield base
            for alias in node.names:  # `from gateway import demo` imports the module gateway.demo
                if is_module(f"{base}.{alias.name}"):
                    yield f"{base}.{alias.name}"


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_daemon_loads_no_bench_demo_or_simulator() -> None:
    code = "import gateway.daemon, sys; print(sorted(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded: list[str] = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert "gateway.daemon" in loaded
    banned = [m for m in loaded if within(m, "simulators") or within(m, "gateway.bench") or m.startswith("gateway.demo")
              or m.startswith("models.bench")]
    assert banned == []


def test_drivers_rules_and_models_build_on_the_kernel_only() -> None:
    found = set()
    for path in modules("drivers", "rules", "models"):
        for name in imported(path):
            if within(name, "gateway") and name != "gateway" and not within(name, "gateway.core"):
                found.add((str(path.relative_to(ROOT)), name))
    assert found - set(FOREIGN_IMPORTS) == set()


def test_the_kernel_builds_on_nothing_else_of_the_project() -> None:
    found = {(str(path.relative_to(ROOT)), name) for path in modules("gateway/core") for name in imported(path)
             if any(within(name, p) for p in PROJECT) and not within(name, "gateway.core") and name != "gateway"}
    assert found == set()


def test_no_module_is_over_the_length_limit() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules(*PROJECT)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert {p: n for p, n in long.items() if p not in OVER_LENGTH} == {}


def _bench_parsers() -> dict[str, argparse.ArgumentParser]:
    from gateway.cli import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(action.choices)

    return subcommands(subcommands(build_parser())["bench"])


def test_every_bench_offers_json(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    benches = _bench_parsers()
    assert set(benches) >= BENCHES
    for name in benches:
        with pytest.raises(SystemExit) as stopped:
            main(["bench", name, "--help"])
        assert stopped.value.code == 0
        assert "--json" in capsys.readouterr().out, f"gateway bench {name} --help does not list --json"


def test_bacnet_bench_comes_from_its_driver_plugin() -> None:
    from drivers.registry import plugins
    from gateway.bench import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="what"))
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert "bacnet" not in action.choices and set(action.choices) >= BENCHES - {"bacnet"}
    assert plugins()["bacnet"].bench == "gateway.bench.bacnet:add_command"
