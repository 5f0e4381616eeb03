"""Shipped pattern sets ("formats"): how a family of panels prints its events, one TOML file each."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from typing import Any


def available() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml"))


@functools.cache
def load_raw(name: str) -> dict[str, Any]:
    """The file as TOML data; drivers.firepanel.config validates it (and names the file on error)."""
    if name not in available():
        raise ValueError(f"unknown format {name!r} (formats: {', '.join(available())})")
    return tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8"))
