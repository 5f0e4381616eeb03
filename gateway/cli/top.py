"""`gateway top`: being written (issue 16); registers nothing yet."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any, default_config: str) -> None:
    """Add this module's commands to the CLI's subparsers."""
