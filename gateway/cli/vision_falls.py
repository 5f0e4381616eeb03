"""`gateway vision falls` (being written for issue 17)."""

from __future__ import annotations

from typing import Any


def add_command(vision_subparsers: Any) -> None:
    """Registers nothing yet."""
