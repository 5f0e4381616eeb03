"""Shipped register maps ("profiles") that a device names and can override point by point."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from typing import Any


def available() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml"))


@functools.cache
def load(name: str) -> dict[str, Any]:
    if name not in available():
        raise ValueError(f"unknown profile {name!r} (profiles: {', '.join(available())})")
    return tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8"))


def apply_profile(data: Any) -> Any:
    """Merge a device's `profile` into its raw config before validation.

    The device's own points come first, in their own order (so a validation error in one still
    points at the right line of the config file), each filled in from the profile point of the
    same id; then the profile's remaining points, less `exclude`.
    """
    if not isinstance(data, dict) or data.get("profile") not in available():
        return data  # an unknown profile is reported by the `profile` field's own validator
    profile = load(data["profile"])
    base = {p["id"]: p for p in profile.get("points", [])}
    own = data.get("points", [])
    if not isinstance(own, list):
        return data  # let the schema report the wrong type
    exclude = data.get("exclude", [])
    exclude = set(exclude) if isinstance(exclude, list) else set()
    merged = [({**base[p["id"]], **p} if isinstance(p, dict) and p.get("id") in base else p) for p in own]
    own_ids = {p.get("id") for p in own if isinstance(p, dict)}
    merged += [dict(p) for pid, p in base.items() if pid not in own_ids and pid not in exclude]
    out = {**data, "points": merged}
    out.setdefault("life_safety", profile.get("profile", {}).get("life_safety", False))
    return out
