"""``[commands]``: whether, and which, platform commands the gateway obeys."""

from __future__ import annotations

import base64
import binascii
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from gateway.core.config import Duration, Identifier, StrictModel

RemoteKind = Literal["read", "write", "alarm", "alarms", "values", "birth", "reload", "status"]
DEFAULT_ALLOW: tuple[RemoteKind, ...] = ("read", "values", "alarm", "alarms", "birth", "status")
"""What the platform may do once commands are enabled: look, and handle alarms. Writes and reloads change
the building or the box, so a site names them itself."""


class CommandsConfig(StrictModel):
    """Commands from the community platform (``<prefix>/<site>/cmd/req``). Off until a site turns them on."""

    enabled: bool = Field(default=False, description="Subscribe to cmd/req and obey what the layers below allow.")
    allow: list[RemoteKind] = Field(
        default_factory=lambda: list(DEFAULT_ALLOW),
        description="Command kinds the platform may send. Add \"write\" (and mark points remote = true) or "
                    "\"reload\" explicitly; faces are never enrolled or erased remotely.",
    )
    max_ttl: Duration = Field(
        default=300.0, gt=0, le=86400,
        description="Longest a command may live: one whose expires_at is further ahead (or already past) is "
                    "answered `expired` and never executed.",
    )
    remember: Duration = Field(
        default=7 * 86400.0, ge=60, le=90 * 86400,
        description="How long command ids are kept to answer a redelivery `duplicate` instead of acting twice.",
    )
    public_keys: dict[Identifier, str] = Field(
        default_factory=dict,
        description="Ed25519 public keys (base64 of the 32 raw bytes) by key id. Present = every command must be "
                    "signed by one of them (for brokers shared with other tenants); see docs/commands.md.",
    )
    actor_rate: int = Field(default=30, ge=1, le=10000, description="Commands per minute one platform actor may send.")
    rate: int = Field(default=120, ge=1, le=100000, description="Commands per minute from everyone together.")

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for key_id, text in keys.items():
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{key_id}: not base64") from None
            if len(raw) != 32:
                raise ValueError(f"{key_id}: an Ed25519 public key is 32 bytes, this one is {len(raw)}")
        return keys

    @model_validator(mode="after")
    def _remember_outlives_ttl(self) -> Self:
        if self.remember < self.max_ttl:
            raise ValueError("remember must be at least max_ttl: a redelivered command must still be recognised")
        return self
