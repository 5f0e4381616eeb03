"""Community edge gateway: field devices in, alarms and summaries out, nothing lost on the way."""

import sys as _sys

__version__ = "0.1.0"

if "structlog" not in _sys.modules and "rich" not in _sys.modules:
    # structlog's console renderer imports rich, if it is installed, for its tracebacks: 4.8 MB resident
    # (measured) on a Pi that also runs vision, for a traceback journald shows plainly anyway. Hide it
    # while structlog loads; whoever needs rich later (the CEL library, for rules) still imports it.
    _sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del _sys.modules["rich"]
