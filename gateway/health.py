"""Health upstream and the textfile collector: being written (issue 16)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.daemon import Daemon


async def run_health(daemon: Daemon) -> None:
    """Publish a health message every [health] interval on the uplinks (issue 16)."""
    await asyncio.Event().wait()


async def run_textfile(daemon: Daemon) -> None:
    """Rewrite the [metrics] textfile every `every` seconds (issue 16)."""
    await asyncio.Event().wait()
