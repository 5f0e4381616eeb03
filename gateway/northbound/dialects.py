"""Which encoder an uplink speaks, by its config's ``encoding``: one place to add a dialect."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.schema import MqttConfig
from gateway.northbound.encoder import Encoder


def make_encoder(config: MqttConfig, site_id: str,
                 devices: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None, *,
                 command_ttl: float = 30.0) -> Encoder:
    """``devices``: the running config's device catalog (``catalog.device_meta``), for dialects that must describe
    a device before its first data whenever that comes (Sparkplug's DBIRTH). ``command_ttl``: the longest a
    command made from a dialect without expiries of its own may wait (``[commands] max_ttl``)."""
    if config.encoding == "json":
        from gateway.northbound.json_v2 import JsonEncoder

        return JsonEncoder(site_id, live_window=config.live_window, replay_batch=config.replay_batch)
    if config.encoding == "homeassistant":
        from gateway.northbound.homeassistant import HomeAssistantEncoder

        ha = config.homeassistant
        return HomeAssistantEncoder(site_id, topic_prefix=config.topic_prefix, discovery_prefix=ha.discovery_prefix,
                                    commands=ha.commands, carries=config.carries, live_window=config.live_window,
                                    command_ttl=command_ttl)
    if config.encoding == "sparkplug_b":
        from gateway.northbound.sparkplug import SparkplugEncoder

        return SparkplugEncoder(site_id, config, devices, command_ttl=command_ttl)
    raise ValueError(f"unknown encoding {config.encoding!r}")  # the config's Literal makes this unreachable
