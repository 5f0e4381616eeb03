"""Uplinks: brokers, credentials, and the dialect each speaks (``[mqtt]`` and ``[[uplinks]]``)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gateway.core.config import Duration, Identifier, StrictModel


class TlsConfig(StrictModel):
    ca_file: Path | None = Field(default=None, description="CA bundle that signed the broker's certificate.")
    cert_file: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(default=None, description="Private key of cert_file (keep it 0600).")
    verify_hostname: bool = Field(default=True, description="Check the broker's name against its certificate.")


LIFE_SAFETY_KINDS = ("fire.alarm", "fire.prealarm", "fire.supervisory", "fall.detected", "alarm.raise",
                     "alarm.escalate", "elevator.entrapment", "store.disk_full")
"""Kinds no privacy setting may keep from the platform (a sample of every family of alarms)."""


Carried = Literal["alarm", "event", "telemetry"]
CLASSES: tuple[Carried, ...] = ("alarm", "event", "telemetry")


class SparkplugConfig(StrictModel):
    """Sparkplug B 3.0: spBv1.0/<group_id>/<message type>/<edge_node_id>[/<device>]."""

    group_id: str = Field(default="community", pattern=r"^[^#+/\s]+$", description="The Sparkplug group.")
    edge_node_id: str | None = Field(
        default=None, pattern=r"^[^#+/\s]+$", description="The edge node id; default: the site id.",
    )
    primary_host: str | None = Field(
        default=None, pattern=r"^[^#+/\s]+$",
        description="Primary host application id: hold data while its spBv1.0/STATE/<id> says offline.",
    )
    commands: bool = Field(
        default=False,
        description="Obey NCMD/DCMD writes (through [commands]: allow, remote points, limits, audit); Node "
                    "Control/Rebirth is always answered.",
    )
    qos: Literal[0, 1] = Field(
        default=1,
        description="MQTT QoS of births, data and DDEATH. 1 (default): a row leaves the outbox only on the broker's "
                    "PUBACK, as on every uplink; 0: the spec's letter (a message dropped with the link is lost). "
                    "The NDEATH will is QoS 1 either way.",
    )


class HomeAssistantConfig(StrictModel):
    """Home Assistant MQTT discovery: retained configs under the discovery prefix, states under the site root."""

    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[^#+\s]+(/[^#+\s]+)*$")
    commands: bool = Field(
        default=False,
        description="Offer writable remote points as HA number/switch/select entities (through [commands]).",
    )


class MqttConfig(StrictModel):
    enabled: bool = Field(default=True, description="false: keep everything in the outbox, send nothing.")
    host: str = Field(default="127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Default 1883, or 8883 with [mqtt.tls].")
    client_id: str | None = Field(
        default=None, max_length=128,
        description="Default: the site id, the topic's own segment, so one broker ACL pattern (%c) serves every site.",
    )
    username: str | None = Field(default=None, description="Broker user name.")
    password: SecretStr | None = Field(default=None, description="Prefer password_file; both may not be set.")
    password_file: Path | None = Field(default=None, description="File holding the password (first line).")
    topic_prefix: str = Field(
        default="community", pattern=r"^[^#+\s]+(/[^#+\s]+)*$",
        description="Topics are <topic_prefix>/<site.id>/...; no wildcards.",
    )
    keepalive: Duration = Field(default=30.0, ge=5, le=3600)
    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1",
        description="MQTT version. With 5, platform commands may name a response topic (under this site), "
                    "correlation data and a message expiry, and results honour them.",
    )
    tls: TlsConfig | None = Field(default=None, description="Present = connect with TLS.")
    reconnect_min: Duration = Field(default=1.0, gt=0, le=60, description="First reconnect delay.")
    reconnect_max: Duration = Field(default=60.0, gt=0, le=3600, description="Cap of the doubling delay.")
    batch: int = Field(
        default=200, ge=1, le=10000,
        description="Messages taken from the outbox per round; new alarms are looked for between rounds.",
    )
    encoding: Literal["json", "sparkplug_b", "homeassistant"] = Field(
        default="json",
        description="The dialect this uplink speaks: json = the native contract v2 (docs/upstream.md), sparkplug_b = "
                    "Sparkplug B 3.0 (docs/sparkplug.md), homeassistant = Home Assistant MQTT discovery "
                    "(docs/homeassistant.md).",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="Brokers to walk in turn, \"host\" or \"host:port\" (the nodes of a cluster); present, it "
                    "replaces host/port. The uplink reports which one it is on and replays wherever it lands.",
    )
    hosts_order: Literal["spread", "listed"] = Field(
        default="spread",
        description="spread: each gateway starts at the node its client id picks, so a fleet sharing one list "
                    "spreads over the cluster (listed: always the first entry first).",
    )
    carries: list[Carried] = Field(
        default_factory=lambda: list(CLASSES),
        description="Which classes of the outbox this uplink sends (each uplink drains the one outbox on its own).",
    )
    kinds: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Event kinds (glob patterns) this uplink sends; readings and summaries are not events.",
    )
    sparkplug: SparkplugConfig = Field(
        default_factory=lambda: SparkplugConfig(), description="With encoding = \"sparkplug_b\".",
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=lambda: HomeAssistantConfig(), description="With encoding = \"homeassistant\".",
    )
    live_window: Duration = Field(
        default=60.0, ge=1, le=86400,
        description="Anything delivered later than this after it was stored is replay: flagged hist, batched, "
                    "paced by replay_rate.",
    )
    replay_batch: int = Field(
        default=100, ge=1, le=1000, description="Replayed telemetry or events per batch message (alarms: one each).",
    )
    replay_rate: float = Field(
        default=100.0, ge=0, le=100_000,
        description="Replay messages per second at most (0: no cap); live data and alarms are never held back. "
                    "Protects the platform when a district's gateways reconnect at once.",
    )
    replay_delay: Duration = Field(
        default=10.0, ge=0, le=3600,
        description="Replay starts after a random delay of up to this after connecting (alarms go at once).",
    )
    keep_local: list[str] = Field(
        default_factory=lambda: ["face.*", "plate.*"],
        description="Event kinds (glob patterns) recorded on the box only, never sent upstream; the default keeps "
                    "residents' face and plate events local. [] sends everything.",
    )

    @field_validator("keep_local")
    @classmethod
    def _never_an_alarm(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            kept = [kind for kind in LIFE_SAFETY_KINDS if fnmatchcase(kind, pattern)]
            if kept:
                raise ValueError(f"{pattern!r} would keep {kept[0]} on the box: only identity events (face.*, "
                                 "plate.*) and other non-alarm kinds may be kept local")
        return patterns

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for entry in hosts:
            name, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            if not (name or entry).strip() or (port and not (port.isdigit() and 0 < int(port) < 65536)):
                raise ValueError(f"{entry!r}: write \"host\" or \"host:port\" (port 1-65535)")
        return hosts

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    def brokers(self) -> list[tuple[str, int]]:
        """Where to connect, in the order to try: ``hosts`` if given, else host and port."""
        if not self.hosts:
            return [(self.host, self.effective_port)]
        out = []
        for entry in self.hosts:
            if entry.count(":") == 1:
                name, _, port = entry.partition(":")
                out.append((name, int(port)))
            else:  # a bare name, or an IPv6 address without a port
                out.append((entry, self.effective_port))
        return out


class UplinkConfig(MqttConfig):
    """One more uplink (``[[uplinks]]``): its own broker, credentials, dialect and share of the outbox."""

    name: Identifier = Field(description="Unique; names the uplink's cursor in the outbox, its status and its log.")
