"""What one check found: a status, one line for people, what to do about it, and details for programs.

The JSON shape (``Result.as_dict``) is stable: ``name``, ``status``, ``summary``, ``advice``, ``details``;
keys are only ever added to ``details``. Names are stable too (``bus:<id>``, ``broker:<uplink>``, ...), so a
fleet tool can track one check across runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return {"ok": 0, "warn": 1, "fail": 2}[self.value]


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    summary: str
    """What was found, one line; never a secret."""
    advice: str = ""
    """What to do about it (empty when nothing needs doing)."""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "summary": self.summary, "advice": self.advice,
                "details": self.details}


def ok(name: str, summary: str, **details: Any) -> Result:
    return Result(name, Status.OK, summary, "", details)


def warn(name: str, summary: str, advice: str, **details: Any) -> Result:
    return Result(name, Status.WARN, summary, advice, details)


def fail(name: str, summary: str, advice: str, **details: Any) -> Result:
    return Result(name, Status.FAIL, summary, advice, details)


def worst(results: Iterable[Result]) -> Status:
    return max((r.status for r in results), key=lambda s: s.rank, default=Status.OK)


def exit_code(results: Iterable[Result]) -> int:
    """0 when every check is ok, 1 when the worst is a warning, 2 when anything failed."""
    return worst(results).rank
