"""The request envelope a platform wraps around a command, and the result it gets back.

A request is ``{"v": 1, "id", "expires_at", "actor", "cmd", ...the command's own fields}``; a signed
request carries that JSON text verbatim in ``signed``, with an Ed25519 signature over its UTF-8 bytes in
``sig`` and the key's id in ``key``, so no JSON canonicalisation is needed on either side. Everything
here runs on hostile bytes: it raises ``Dropped`` (nothing to answer: no id, not for this site) or
``Rejected`` (answered ``rejected``), never anything else.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

V = 1
MAX_REQUEST = 16 * 1024
"""Bytes; the largest command (a write with a note) is well under 1 KiB."""
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
ACTOR_PATTERN = r"^[^\x00-\x1f\x7f/]{1,64}$"
_ID = re.compile(ID_PATTERN)
ENVELOPE_KEYS = frozenset({"v", "id", "expires_at", "actor", "site"})
Status = Literal["ok", "rejected", "failed", "expired", "duplicate"]


class Envelope(BaseModel):
    """What every request carries besides its command."""

    model_config = ConfigDict(extra="allow", frozen=True)

    v: Literal[1] = Field(description="Envelope version.")
    id: str = Field(pattern=ID_PATTERN, description="Chosen by the platform, unique per request: a redelivery "
                                                    "with the same id is answered `duplicate`, never executed again.")
    expires_at: float = Field(description="Epoch seconds after which the command must not be executed.")
    actor: str = Field(pattern=ACTOR_PATTERN, description="Who on the platform asked (a guard, an engineer, a job).")
    site: str | None = Field(default=None, description="Optional: the site it is meant for; others drop it.")
    cmd: str = Field(description="read, write, alarm, alarms, values, birth, reload or status.")

    @field_validator("v", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true is not the version 1
            raise ValueError("must be the number 1")
        return value

    @field_validator("expires_at")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of epoch seconds")
        return value

    def command(self) -> dict[str, Any]:
        """The command's own fields, as ``gateway.commands.parse_command`` takes them."""
        return {k: v for k, v in (self.model_extra or {}).items() if k not in ENVELOPE_KEYS} | {"cmd": self.cmd}


class SignedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1]
    signed: str = Field(max_length=MAX_REQUEST, description="The request's JSON text, exactly as signed.")
    key: str = Field(max_length=64, description="Id of the public key (``[commands] public_keys``) that signed it.")
    sig: str = Field(max_length=200, description="Base64 Ed25519 signature over the UTF-8 bytes of `signed`.")


class Dropped(Exception):
    """Not answered (there is no id to answer, or it is another site's); counted by reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Rejected(Exception):
    """Answered ``rejected`` with this reason."""

    def __init__(self, request_id: str, reason: str, actor: str = "", cmd: str = "", target: str = "") -> None:
        super().__init__(reason)
        self.request_id, self.reason, self.actor, self.cmd, self.target = request_id, reason, actor, cmd, target


@dataclass(frozen=True, slots=True)
class Delivery:
    """What MQTT 5 adds to a request: where to answer, what to echo, how long the broker kept it."""

    reply_to: str | None = None
    """Relative to the uplink's root; None: the default ``cmd/res``."""
    correlation: bytes | None = None
    expiry: float | None = None
    """Seconds the broker says the request has left to live (Message Expiry Interval)."""
    uplink: str | None = None
    """The uplink the request came in on, which answers it; None: ``[mqtt]``."""


def delivery(properties: object, root: str, uplink: str | None = None) -> Delivery:
    """A request's MQTT 5 properties (paho's, or None): the response topic (only ``cmd/res[/...]`` under the
    uplink's ``root``: we publish nowhere else), correlation data and expiry; and the uplink it came in on."""
    if properties is None:
        return Delivery(uplink=uplink)
    reply = getattr(properties, "ResponseTopic", None)
    prefix = f"{root}/"
    relative = reply[len(prefix):] if isinstance(reply, str) and reply.startswith(prefix) else None
    if relative is not None and ("+" in relative or "#" in relative or not relative.startswith("cmd/res")):
        relative = None  # only cmd/res[/...], which a broker ACL grants the gateway (docs/commands.md): a refused
        # MQTT 5 publish is still PUBACKed, and its result would be gone
    correlation = getattr(properties, "CorrelationData", None)
    expiry = getattr(properties, "MessageExpiryInterval", None)
    return Delivery(relative, bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
                    float(expiry) if isinstance(expiry, int) else None, uplink)


@dataclass(frozen=True, slots=True)
class Request:
    envelope: Envelope
    signer: str | None
    """The key id that signed it; None when the site takes unsigned commands."""

    @property
    def id(self) -> str:
        return self.envelope.id


def decode(payload: bytes, site: str, keys: Mapping[str, Ed25519PublicKey]) -> Request:
    """Bytes off the wire to a request for this site, or ``Dropped``/``Rejected``."""
    if len(payload) > MAX_REQUEST:
        raise Dropped("too large")
    data = _json(payload)
    signer = None
    if keys or "signed" in data:
        claimed = _claims(data.get("signed"))  # unverified: for the answer and the audit only
        if claimed is None or _id_of(claimed) is None:
            claimed = data
        _for_this_site(claimed, site)  # another site's request is not ours to answer, signed or not
        if not keys:
            raise _rejected(claimed, "signed commands are not configured here (no [commands] public_keys)")
        try:
            signed = SignedRequest.model_validate(data)
        except ValidationError:
            raise _rejected(claimed, "unsigned: this site takes only signed commands") from None
        public = keys.get(signed.key)
        if public is None:
            raise _rejected(claimed, f"bad signature: unknown key {signed.key[:64]!r}")
        if not _verified(public, signed):
            raise _rejected(claimed, "bad signature")
        data, signer = _json(signed.signed.encode()), signed.key
    _for_this_site(data, site)
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise _rejected(data, _first_error(exc)) from None
    return Request(envelope, signer)


def result_body(request_id: str, site: str, cmd: str, status: Status, ts: float, *,
                result: dict[str, Any] | None = None, error: str | None = None,
                original: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"v": V, "type": "cmd_result", "site": site, "req": request_id, "cmd": cmd,
                            "status": status, "ts": round(ts, 3)}
    if result is not None:
        body["result"] = result
    if error is not None:
        body["error"] = error[:500]
    if original is not None:
        body["original"] = original  # a duplicate's first outcome
    return body


def _json(payload: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise Dropped("not JSON") from None
    if not isinstance(data, dict):
        raise Dropped("not a JSON object")
    return data


def _for_this_site(data: Mapping[str, Any], site: str) -> None:
    named = data.get("site")
    if named is not None and named != site:
        raise Dropped("other site")


def _claims(signed: Any) -> dict[str, Any] | None:
    """What a signed request's text says, before its signature is checked (None: not a JSON object)."""
    if not isinstance(signed, str):
        return None
    try:
        data = orjson.loads(signed)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _id_of(data: Mapping[str, Any]) -> str | None:
    """The request id, if there is one worth answering to."""
    request_id = data.get("id")
    return request_id if isinstance(request_id, str) and _ID.fullmatch(request_id) else None


def target_of(data: Mapping[str, Any]) -> str:
    """What a request points at, as it says (for the audit): ``device.point``, a device, an alarm's key, or ""."""
    device, point, key = data.get("device"), data.get("point"), data.get("key")
    if data.get("cmd") == "alarm" and isinstance(key, str):
        return key[:128]
    if isinstance(device, str):
        return f"{device[:64]}.{point[:64]}" if isinstance(point, str) else device[:64]
    return ""


def _rejected(data: Mapping[str, Any], reason: str) -> Exception:
    """Rejected when there is an id to answer (with what the request claims, for the audit), else dropped."""
    request_id = _id_of(data)
    if request_id is None:
        return Dropped("no id")
    return Rejected(request_id, reason, _text(data.get("actor")), _text(data.get("cmd")), target_of(data))


def _verified(public: Ed25519PublicKey, signed: SignedRequest) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(base64.b64decode(signed.sig, validate=True), signed.signed.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"bad request: {where}: {first['msg']}" if where else f"bad request: {first['msg']}"


def _text(value: Any) -> str:
    return value[:64] if isinstance(value, str) else ""


def public_keys(configured: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """``[commands] public_keys`` as key objects (validated by the config already)."""
    if not configured:
        return {}
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return {k: Ed25519PublicKey.from_public_bytes(base64.b64decode(v)) for k, v in configured.items()}
