"""The command contract's JSON Schema, generated from the models that check requests (never by hand).

``gateway schema commands`` prints it: what a platform may send on ``cmd/req`` (plain or signed) and
what it gets back on ``cmd/res``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from gateway.commands import AlarmCommand, AlarmsCommand, ReadCommand, ReloadCommand, ValuesCommand, WriteCommand
from gateway.remote.envelope import ACTOR_PATTERN, ID_PATTERN, SignedRequest, V

SCHEMA_ID = "https://community-gateway.example/schemas/commands-v1.json"


class _Platform(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BirthCommand(_Platform):
    """Republish status, device metadata and availability."""

    cmd: Literal["birth"]


class StatusCommand(_Platform):
    """The daemon's version, config hash, uplink, outbox depth and device states."""

    cmd: Literal["status"]


class RemoteAlarmCommand(AlarmCommand):
    """An alarm action; ``disable``/``enable`` are the platform's names for out_of_service/in_service."""

    action: Literal["acknowledge", "reset", "shelve", "unshelve", "out_of_service", "in_service",  # type: ignore[assignment]
                    "disable", "enable"]


_COMMANDS = Annotated[
    Union[ReadCommand, WriteCommand, RemoteAlarmCommand, AlarmsCommand, ValuesCommand,  # noqa: UP007
          BirthCommand, StatusCommand, ReloadCommand],
    Field(discriminator="cmd"),
]


class Envelope(BaseModel):
    """The fields every request carries besides its command's own (``actor`` here is the platform's person)."""

    v: Literal[1]
    id: str = Field(pattern=ID_PATTERN, description="Unique per request; a redelivery is answered `duplicate`.")
    expires_at: float = Field(description="Epoch seconds; never executed after it, nor if further ahead than "
                                          "[commands] max_ttl.")
    actor: str = Field(pattern=ACTOR_PATTERN, description="Who on the platform asked; audited as "
                                                          "mqtt:<key id or unsigned>/<actor>.")
    site: str | None = Field(default=None, description="Optional; another site's request is dropped.")


class Result(BaseModel):
    """``cmd/res`` (or the MQTT 5 response topic): one per answered request, through the outbox."""

    model_config = ConfigDict(extra="allow")
    v: Literal[1]
    type: Literal["cmd_result"]
    site: str
    req: str = Field(description="The request's id.")
    cmd: str
    status: Literal["ok", "rejected", "failed", "expired", "duplicate"]
    ts: float
    result: dict[str, Any] | None = Field(default=None, description="What the command returned (ok, some failed, "
                                                                   "and a duplicate's first result).")
    error: str | None = Field(default=None, description="Why, in words, when not ok.")
    original: str | None = Field(default=None, description="A duplicate's first outcome (`unknown`: it was running "
                                                           "when the gateway stopped; it is never run again).")


def commands_schema() -> dict[str, Any]:
    commands = TypeAdapter(_COMMANDS).json_schema(ref_template="#/$defs/{model}")
    defs = commands.pop("$defs", {})
    for model in (Envelope, SignedRequest, Result):
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    for definition in defs.values():  # the envelope names the actor; a command's own actor field is not sent
        if "cmd" in definition.get("properties", {}):
            definition["properties"].pop("actor", None)
            definition.pop("additionalProperties", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"Community gateway platform commands, version {V}",
        "description": "cmd/req takes a Request (or a SignedRequest wrapping one); cmd/res carries a Result. "
                       "docs/commands.md explains each command and status.",
        "oneOf": [{"$ref": "#/$defs/Request"}, {"$ref": "#/$defs/SignedRequest"}],
        "$defs": {**defs, "Request": {"allOf": [{"$ref": "#/$defs/Envelope"}, commands]}},
    }


def render_schema() -> str:
    return json.dumps(commands_schema(), indent=2, ensure_ascii=False) + "\n"
