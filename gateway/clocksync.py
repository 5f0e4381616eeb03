"""Is the wall clock synchronised? Readings stamped by an unsynchronised Pi (no RTC) can be years off.

systemd-timesyncd marks a synchronised clock with /run/systemd/timesync/synchronized; chrony and ntpd clear the
kernel's STA_UNSYNC, which adjtimex(2) reports (read-only: modes 0). The service's seccomp filter refuses
adjtimex (ProtectClock), so the file is asked first. Under that filter, timesyncd's directory without the flag
means "timesyncd runs and has not synchronised yet": False, not "cannot tell" (a Pi without RTC booting is exactly
the case to say). None only when nobody can tell.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from pathlib import Path

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
TIME_ERROR = 5
"""adjtimex's return value when the clock is not synchronised."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def kernel_synced() -> bool | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "adjtimex"):
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex (208 bytes on 64-bit), modes = 0: read only
    state = int(libc.adjtimex(buf))
    if state < 0:
        return None
    return state != TIME_ERROR


def clock_synced(flag: Path = TIMESYNC_FLAG, kernel: Callable[[], bool | None] = kernel_synced) -> bool | None:
    """True when synchronised; False when the kernel says not, or (adjtimex refused) timesyncd runs without having
    synchronised; None when nobody can tell."""
    if flag.exists():
        return True
    said = kernel()
    if said is None and flag.parent.is_dir():
        return False
    return said
