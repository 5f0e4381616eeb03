"""Device metadata for `meta/<device>`: each device's point catalog, as `gateway points` reads it.

The catalog comes from the config alone (``DeviceConfig.describe()``, the same ``PointInfo`` list the CLI
prints): what a point's values are once decoded, its unit, whether and within what it may be written, its
state names. Wire addresses stay on the box: they mean nothing to a platform.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.core.points import PointInfo

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def point_meta(info: PointInfo) -> dict[str, Any]:
    """One entry of a `meta` message's ``points``: optional keys only when they say something."""
    meta: dict[str, Any] = {"type": info.datatype, "writable": info.writable}
    if info.unit:
        meta["unit"] = info.unit
    if info.min is not None:
        meta["min"] = info.min
    if info.max is not None:
        meta["max"] = info.max
    if info.allowed is not None:
        meta["allowed"] = list(info.allowed)
    if info.states:
        meta["states"] = {str(code): name for code, name in sorted(info.states.items())}
    if info.description:
        meta["description"] = info.description
    return meta


def points_meta(catalog: Iterable[PointInfo]) -> dict[str, dict[str, Any]]:
    return {info.id: point_meta(info) for info in catalog}


def device_meta(cfg: GatewayConfig) -> dict[str, dict[str, Any]]:
    """Device id -> the device-specific part of its `meta` message: ``driver``, ``name`` (when set) and
    ``points``, a point the platform may write saying ``remote: true``. Enabled devices only: a disabled device is
    announced as removed (its retained topics cleared)."""
    out: dict[str, dict[str, Any]] = {}
    for device in cfg.devices:
        if not device.enabled:
            continue
        meta: dict[str, Any] = {"driver": device.driver}
        if device.name:
            meta["name"] = device.name
        meta["points"] = points_meta(device.describe())
        for point_id, point in meta["points"].items():
            spec = device.write_spec(point_id) if point["writable"] else None
            if spec is not None and spec.remote and (spec.remote == "life_safety" or not device.life_safety):
                point["remote"] = True  # the platform may write it: what a remote write is checked against
        out[device.id] = meta
    return out
