"""The command contract's schema (generated) accepts what platforms send and what the gateway answers."""

from __future__ import annotations

import base64
import time

import jsonschema
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.remote.contract import commands_schema
from gateway.remote.envelope import Dropped, Rejected, Status, decode, public_keys, result_body

pytestmark = pytest.mark.timeout(30)
SCHEMA = commands_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
NOW = time.time()


def _envelope(**command: object) -> dict[str, object]:
    return {"v": 1, "id": "req-1", "expires_at": NOW + 60, "actor": "guard.wang", **command}


GOOD = [
    _envelope(cmd="write", device="ahu-1", point="setpoint", value=21.5),
    _envelope(cmd="write", device="ahu-1", point="setpoint", value=None, verify=False),
    _envelope(cmd="read", device="ahu-1"),
    _envelope(cmd="alarm", action="acknowledge", key="fire/panel-1/zone-07", note="on my way"),
    _envelope(cmd="alarm", action="disable", key="fire/panel-1/zone-07"),
    _envelope(cmd="alarms", all=True),
    _envelope(cmd="values", device="ahu-1"),
    _envelope(cmd="birth"), _envelope(cmd="status"), _envelope(cmd="reload"),
]
BAD = [
    _envelope(cmd="enrol", person="li.wei"),  # faces stay local: no such command
    _envelope(cmd="write", device="ahu 1", point="setpoint", value=1),
    {k: v for k, v in _envelope(cmd="status").items() if k != "expires_at"},
    _envelope(cmd="status") | {"v": 2},
    _envelope(cmd="status") | {"actor": "a/b"},
]


@pytest.mark.parametrize("request_", GOOD)
def test_every_command_a_platform_may_send_is_valid(request_: dict[str, object]) -> None:
    assert not list(VALIDATOR.iter_errors(request_))
    assert decode(orjson.dumps(request_), "site-a", {}).id == "req-1"  # and the gateway takes it


@pytest.mark.parametrize("request_", BAD)
def test_what_the_schema_refuses(request_: dict[str, object]) -> None:
    assert list(VALIDATOR.iter_errors(request_))


def test_a_signed_request_validates_and_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    keys = public_keys({"platform-1": base64.b64encode(raw).decode()})
    text = orjson.dumps(_envelope(cmd="status")).decode()
    signed = {"v": 1, "signed": text, "key": "platform-1", "sig": base64.b64encode(key.sign(text.encode())).decode()}
    assert not list(VALIDATOR.iter_errors(signed))
    assert decode(orjson.dumps(signed), "site-a", keys).signer == "platform-1"
    with pytest.raises(Rejected, match="bad signature"):
        decode(orjson.dumps(signed | {"signed": text.replace("status", "birth")}), "site-a", keys)
    with pytest.raises(Rejected, match="only signed"):
        decode(orjson.dumps(_envelope(cmd="status")), "site-a", keys)
    with pytest.raises(Dropped):
        decode(orjson.dumps(_envelope(cmd="status", site="site-b")), "site-a", {})
    with pytest.raises(Rejected, match="the number 1"):
        decode(orjson.dumps(_envelope(cmd="status") | {"v": True}), "site-a", {})


@pytest.mark.parametrize("status", ["ok", "rejected", "failed", "expired", "duplicate"])
def test_every_result_the_gateway_writes_is_valid(status: Status) -> None:
    body = result_body("req-1", "site-a", "write", status, NOW,
                       result={"result": "verified"} if status == "ok" else None,
                       error=None if status == "ok" else "why", original="ok" if status == "duplicate" else None)
    result_schema = {"$ref": "#/$defs/Result", "$defs": SCHEMA["$defs"]}
    assert not list(jsonschema.Draft202012Validator(result_schema).iter_errors(body))
