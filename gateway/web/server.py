"""The web server: being written (issue 16)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.daemon import Daemon


async def serve(daemon: Daemon) -> None:
    """Serve [web] until cancelled (issue 16)."""
    await asyncio.Event().wait()
