"""docs/commands.md says what the code does: its requests are taken, its results are well formed, its recipes work.

The guide is what a platform team codes against; an example the gateway would refuse, or a key recipe that gives a
key the config rejects, would cost them a day. The ACL templates are proved on a broker in test_command_acl.py.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator

from drivers.modbus.config import ModbusPoint
from gateway.commands import parse_command
from gateway.remote.config import CommandsConfig, RemoteKind
from gateway.remote.contract import commands_schema
from gateway.remote.envelope import Rejected, Status, decode, public_keys, result_body
from gateway.remote.service import ALARM_ALIASES

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDE = (DOCS / "commands.md").read_text("utf-8")
SITE = "sunshine-b3"
NOT_PARSED = {"birth", "status", "reload"}
"""Answered by the daemon itself (reload: by the reloader), not by the command union's parser."""


def blocks(lang: str, text: str = GUIDE) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def examples() -> list[dict[str, Any]]:
    return [json.loads(block) for block in blocks("json")]


def config_keys() -> dict[str, str]:
    """The example key of the config block (commented out there)."""
    [config] = [b for b in blocks("toml") if "[commands]" in b]
    keys = tomllib.loads(config.replace("# public_keys", "public_keys"))["commands"]["public_keys"]
    assert isinstance(keys, dict)
    return keys


def test_the_config_example_is_one_the_gateway_takes() -> None:
    [config] = [b for b in blocks("toml") if "[commands]" in b]
    commands = CommandsConfig.model_validate(tomllib.loads(config.replace("# public_keys", "public_keys"))["commands"])
    assert commands.enabled and "write" in commands.allow and set(commands.public_keys) == {"ops-2026"}
    [points] = [b for b in blocks("toml") if "[[devices.points]]" in b]
    for device in tomllib.loads(points)["devices"]:
        for point in device["points"]:
            ModbusPoint.model_validate(point)


def test_every_command_has_an_example_and_every_example_request_is_taken() -> None:
    requests = [e for e in examples() if "cmd" in e and "type" not in e]
    assert {r["cmd"] for r in requests} == set(get_args(RemoteKind))
    for data in requests:
        envelope = decode(json.dumps(data).encode(), SITE, {}).envelope
        if envelope.cmd not in NOT_PARSED:
            fields = envelope.command()
            fields["action"] = ALARM_ALIASES.get(fields.get("action", ""), fields.get("action"))
            parse_command({k: v for k, v in fields.items() if v is not None})


def test_every_example_result_is_one_the_gateway_sends() -> None:
    results = [e for e in examples() if e.get("type") == "cmd_result"]
    statuses = {r["status"] for r in results}
    assert statuses <= set(get_args(Status)) and {"ok", "rejected"} <= statuses
    for r in results:
        made = result_body(r["req"], r["site"], r["cmd"], r["status"], r["ts"], result=r.get("result"),
                           error=r.get("error"), original=r.get("original"))
        assert made == r
    table = GUIDE.split("### Statuses", 1)[1].split("\n\n", 2)[1]
    described = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert sorted(described) == sorted(get_args(Status)), "the status table names every status once"


def test_every_example_is_valid_by_the_command_schema() -> None:
    schema = commands_schema()
    requests = Draft202012Validator(schema)
    results = Draft202012Validator({"$ref": "#/$defs/Result", "$defs": schema["$defs"]})
    for example in examples():
        (results if example.get("type") == "cmd_result" else requests).validate(example)


def test_the_signed_example_verifies_with_the_example_key() -> None:
    [signed] = [e for e in examples() if "signed" in e]
    request = decode(json.dumps(signed).encode(), SITE, public_keys(config_keys()))
    assert request.signer == "ops-2026" and request.envelope.actor == "guard.wang"
    tampered = dict(signed, signed=signed["signed"].replace("acknowledge", "reset"))
    with pytest.raises(Rejected, match="bad signature"):
        decode(json.dumps(tampered).encode(), SITE, public_keys(config_keys()))


def test_the_python_recipe_signs_what_the_gateway_verifies() -> None:
    [recipe] = blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(recipe, "docs/commands.md", "exec"), namespace)
    private = Ed25519PrivateKey.generate()
    keys = public_keys(CommandsConfig(public_keys={"ops-2026": namespace["public_key_for_config"](private)})
                       .public_keys)
    payload = namespace["signed_request"](private, "ops-2026", {"v": 1, "id": "s-1", "expires_at": 1.0e10,
                                                                 "actor": "noc", "cmd": "status"})
    assert decode(payload, SITE, keys).signer == "ops-2026"
    with pytest.raises(Rejected, match="bad signature"):
        decode(namespace["signed_request"](Ed25519PrivateKey.generate(), "ops-2026",
                                           {"v": 1, "id": "s-2", "expires_at": 1.0e10, "actor": "x", "cmd": "status"}),
               SITE, keys)


def test_the_openssl_recipe_gives_the_raw_key_the_config_takes(tmp_path: Path) -> None:
    [shell] = blocks("sh")
    lines = [line.split("  #")[0].strip() for line in shell.splitlines() if line.startswith("openssl")]
    assert len(lines) == 2
    for line in lines:
        proc = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, timeout=30, check=False)
        assert proc.returncode == 0, (line, proc.stderr)
    printed = proc.stdout.decode().strip()
    private = serialization.load_pem_private_key((tmp_path / "platform-ops.pem").read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert printed == base64.b64encode(raw).decode()
    CommandsConfig(public_keys={"ops-2026": printed})


def test_both_guides_carry_the_same_acl_templates() -> None:
    upstream = (DOCS / "upstream.md").read_text("utf-8")
    for broker in ("mosquitto", "emqx"):
        pattern = rf"<!-- acl:{broker} -->\n```\w*\n(.*?)```"
        [here], [there] = re.findall(pattern, GUIDE, re.DOTALL), re.findall(pattern, upstream, re.DOTALL)
        assert here == there, f"the {broker} ACL differs between docs/commands.md and docs/upstream.md"
