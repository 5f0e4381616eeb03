"""Where and how an uplink connects: the brokers it walks (``hosts``: the nodes of a cluster), its credentials.

The brokers are walked in turn: a failure (a refused connect, a dropped connection) moves on to the next at
once, and only when a whole round has failed does the uplink back off (doubling, jittered, capped by
``reconnect_min``/``reconnect_max``), so a district's gateways do not hammer a cluster that is down. A success
resets both. With one broker this is the plain reconnect backoff. Wherever it lands, the uplink replays the
outbox from its cursor: nothing is lost, at least once.
"""

from __future__ import annotations

import ssl
import zlib

from gateway.config.uplink import MqttConfig
from gateway.core.timing import Backoff


def first_broker(config: MqttConfig, client_id: str) -> int:
    """Where a gateway starts its walk: with ``spread``, a node its client id picks (stable across restarts), so
    200 gateways sharing one ``hosts`` list do not all land on the first node of a cluster."""
    return zlib.crc32(client_id.encode()) if config.hosts_order == "spread" else 0


class BrokerWalk:
    def __init__(self, brokers: list[tuple[str, int]], first: float, cap: float, start: int = 0) -> None:
        if not brokers:
            raise ValueError("an uplink needs at least one broker")
        self.brokers = brokers
        self.index = start % len(brokers)
        self.failures = 0
        """Failures since the last successful connect."""
        self.backoff = Backoff(first, max(first, cap), jitter=(0.5, 1.0))

    @property
    def current(self) -> tuple[str, int]:
        return self.brokers[self.index]

    @property
    def label(self) -> str:
        host, port = self.current
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def connected(self) -> None:
        self.failures = 0
        self.backoff.reset()

    def failed(self) -> float:
        """Move on to the next broker; the delay before trying it (0 within a round, a backoff after one)."""
        self.failures += 1
        self.index = (self.index + 1) % len(self.brokers)
        if self.failures % len(self.brokers):
            return 0.0
        return self.backoff.next()


def credentials(config: MqttConfig) -> tuple[str | None, ssl.SSLContext | None]:
    """The password (``password_file`` read at each connect: a rotated one applies) and the TLS context."""
    password = config.password.get_secret_value() if config.password else None
    if config.password_file:
        password = config.password_file.read_text().splitlines()[0] if config.password_file.stat().st_size else ""
    tls = config.tls
    if tls is None:
        return password, None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.check_hostname = tls.verify_hostname
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return password, context
