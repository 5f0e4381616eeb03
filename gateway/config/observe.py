"""Watching the gateway: the local web server (status page, /metrics), the textfile collector, health upstream."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from gateway.core.config import Duration, StrictModel


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class WebConfig(StrictModel):
    """The daemon's own HTTP server: the commissioning page and Prometheus metrics.

    Loopback only by default (a technician reaches it with ``ssh -L``); a LAN address needs TLS and a users file,
    so nobody on the building's network reads residents' data or acknowledges an alarm unseen."""

    enabled: bool = Field(default=True, description="Serve the status page and/or /metrics.")
    listen: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=9847, ge=1, le=65535, description="TCP port.")
    page: bool = Field(default=True, description="The status page at / (and its JSON under /api/).")
    metrics: bool = Field(default=True, description="Prometheus exposition at /metrics.")
    users_file: Path | None = Field(
        default=None,
        description="Who may log in (`gateway web user add NAME` writes it; scrypt hashes, never passwords). "
                    "Without it the page is read-only on loopback and nobody can acknowledge from it.",
    )
    metrics_auth: bool | None = Field(
        default=None,
        description="Ask for a login on /metrics too; default: only when listening beyond loopback.",
    )
    tls_cert: Path | None = Field(default=None, description="Server certificate (PEM); with tls_key, HTTPS.")
    tls_key: Path | None = Field(default=None, description="Private key of tls_cert (keep it 0600).")

    @model_validator(mode="after")
    def _safe_beyond_loopback(self) -> WebConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.enabled and not is_loopback(self.listen):
            if self.tls_cert is None:
                raise ValueError(f"listen = {self.listen!r} is beyond loopback: set tls_cert and tls_key")
            if self.users_file is None:
                raise ValueError(f"listen = {self.listen!r} is beyond loopback: set users_file (a login is needed)")
        return self

    @property
    def login_for_metrics(self) -> bool:
        return self.metrics_auth if self.metrics_auth is not None else not is_loopback(self.listen)


class MetricsConfig(StrictModel):
    """The node-exporter textfile collector, for installs where nothing may listen (or beside the server)."""

    textfile: Path | None = Field(
        default=None,
        description="Write the metrics here (atomically) every `every`, e.g. "
                    "/var/lib/prometheus/node-exporter/gateway.prom.",
    )
    every: Duration = Field(default=15.0, ge=1, le=3600, description="How often the textfile is rewritten.")


class HealthConfig(StrictModel):
    """A periodic `health` message upstream: what a platform watching 200 buildings alerts on."""

    enabled: bool = Field(default=True, description="Publish health on every uplink that speaks the native dialect.")
    interval: Duration = Field(
        default=60.0, ge=1, le=86400,
        description="Seconds between health messages; 60 s is the sane default (a platform alerts on a missed "
                    "one), a few seconds only for commissioning or tests. The clock is probed at least as often.",
    )
