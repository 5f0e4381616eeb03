"""Which encoder an uplink speaks, by its config's ``encoding``: one place to add a dialect."""

from __future__ import annotations

from gateway.config.schema import MqttConfig
from gateway.northbound.encoder import Encoder


def make_encoder(config: MqttConfig, site_id: str) -> Encoder:
    if config.encoding == "json":
        from gateway.northbound.json_v2 import JsonEncoder

        return JsonEncoder(site_id, live_window=config.live_window, replay_batch=config.replay_batch)
    raise ValueError(f"unknown encoding {config.encoding!r}")  # the config's Literal makes this unreachable
