"""Platform commands: requests the community platform sends down over MQTT, checked layer by layer.

Kept out of ``gateway.commands`` (one handler, whoever asks) because only this path needs an
envelope, signatures, idempotency, expiry and per-actor rate limits: the local CLI's actor comes
from the kernel and its commands cannot be replayed by a broker.
"""
