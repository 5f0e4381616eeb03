"""A launcher for ``gateway run`` whose store can be made full on demand: the disk scenario's fallback.

Where the bench may not mount a small file system for the data directory (no root, no
CAP_SYS_ADMIN), a full disk is emulated inside SQLite: while the file named by
``GATEWAY_CHAOS_FULL`` exists, the store's connection is capped at the pages it has
(``PRAGMA max_page_count``), so every write that needs a new page fails with SQLITE_FULL, as on a
full disk; when the file goes, the cap is lifted. The daemon itself is unchanged: this module wraps
``Store.commit`` and ``Store.acknowledge`` in the launched process only, and the daemon never
imports it. Run as ``python -c "from gateway.bench.chaos_hook import main; main()" run -c FILE``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAG_ENV = "GATEWAY_CHAOS_FULL"
LAUNCHER = ["-c", "from gateway.bench.chaos_hook import main; main()"]
UNCAPPED = 1073741823
"""SQLite's default max_page_count."""


def main() -> None:
    from gateway import store
    from gateway.cli import main as cli_main

    flag = Path(os.environ[FLAG_ENV])
    capped: dict[int, bool] = {}

    def cap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: store.Store, *args: Any) -> Any:
            full = flag.exists()
            if capped.get(id(self), False) != full:
                pages = self.db.execute("PRAGMA page_count").fetchone()[0] if full else UNCAPPED
                self.db.execute(f"PRAGMA max_page_count = {int(pages)}")
                capped[id(self)] = full
            return method(self, *args)

        return wrapper

    store.Store.commit = cap(store.Store.commit)  # type: ignore[method-assign]
    store.Store.acknowledge = cap(store.Store.acknowledge)  # type: ignore[method-assign]
    sys.argv[0] = "gateway"
    raise SystemExit(cli_main(sys.argv[1:]))
