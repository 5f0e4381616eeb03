"""Proxies to a family's shared inference service (being written for issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def connect(family: str, socket: Path) -> dict[str, Any]:
    raise NotImplementedError(f"no shared {family} service yet ({socket})")
