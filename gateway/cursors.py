"""Each uplink's cursor in the one outbox, when there are several (``Store(uplinks=...)``).

An uplink's acknowledgements are rows of ``outbox_acks``; a row leaves the outbox once every configured uplink
has acknowledged it. A dead uplink therefore keeps its backlog in the outbox, and the live ones must not pay
for it: each uplink keeps, per class, a floor at or below which it has acknowledged everything (outbox seqs
only grow), and reads from there. A round costs what it reads, whatever another uplink holds back. With one
uplink the store needs none of this: an acknowledged row is deleted at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.core.data import Priority

COLUMNS = "seq, prio, kind, subject, id, ts, body, created"


class Cursors:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._floors: dict[str, dict[int, int]] = {}

    def reset(self) -> None:
        """Acknowledgements were forgotten (an uplink removed): every floor is read afresh."""
        self._floors.clear()

    def unacknowledged(self, want: int, uplink: str) -> list[Any]:
        """Up to ``want`` rows ``uplink`` has not acknowledged, alarms first, oldest first within a class."""
        floors = self._floors.setdefault(uplink, {})
        out: list[Any] = []
        for prio in Priority:
            if len(out) >= want:
                break
            floor = floors.get(prio, 0)
            top = self.db.execute("SELECT MAX(seq) FROM outbox WHERE prio = ?", (prio,)).fetchone()[0]
            if top is None or top <= floor:
                continue
            rows = self.db.execute(
                f"SELECT {COLUMNS} FROM outbox WHERE prio = ? AND seq > ? AND seq <= ? AND NOT EXISTS"
                " (SELECT 1 FROM outbox_acks a WHERE a.uplink = ? AND a.seq = outbox.seq) ORDER BY seq LIMIT ?",
                (prio, floor, top, uplink, want - len(out))).fetchall()
            # every row between the floor and the first one found (or the top) is acknowledged
            floors[prio] = rows[0][0] - 1 if rows else top
            out += rows
        return out

    def acknowledge(self, seqs: Sequence[int], uplink: str, uplinks: Sequence[str]) -> None:
        """Note ``uplink``'s acknowledgements and delete the rows every one of ``uplinks`` has (in a transaction)."""
        among = ", ".join(f"?{i + 2}" for i in range(len(uplinks)))
        self.db.executemany("INSERT OR IGNORE INTO outbox_acks (uplink, seq) VALUES (?, ?)",
                            [(uplink, s) for s in seqs])
        # by primary key, uplink by uplink: never a scan of the acknowledgements a dead uplink leaves behind
        self.db.executemany(
            f"DELETE FROM outbox WHERE seq = ?1 AND (SELECT COUNT(*) FROM outbox_acks WHERE uplink IN ({among})"
            f" AND seq = ?1) >= {len(uplinks)}", [(s, *uplinks) for s in seqs])
        self.db.executemany(
            f"DELETE FROM outbox_acks WHERE uplink IN ({among}) AND seq = ?1"
            " AND NOT EXISTS (SELECT 1 FROM outbox WHERE seq = ?1)", [(s, *uplinks) for s in seqs])

    def acknowledged(self) -> dict[str, int]:
        """Rows each uplink has acknowledged that are still in the outbox: every acknowledgement it has, since one
        is kept only while its row is there (``acknowledge`` and ``forget_orphans`` drop the others in the same
        transaction as the row). A count per uplink along the primary key."""
        return {uplink: int(n) for uplink, n in self.db.execute("SELECT uplink, COUNT(*) FROM outbox_acks"
                                                                " GROUP BY uplink")}

    def forget_gone(self, uplinks: Sequence[str]) -> None:
        """Drop the acknowledgements of uplinks not in ``uplinks``, and the rows every remaining one has (in a
        transaction); also acknowledgements of rows gone another way (telemetry dropped for the disk cap)."""
        self.reset()
        marks = ",".join("?" * len(uplinks))
        self.db.execute(f"DELETE FROM outbox_acks WHERE uplink NOT IN ({marks})", tuple(uplinks))
        if len(uplinks) > 1:
            self.db.execute(f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox_acks GROUP BY seq"
                            f" HAVING COUNT(*) >= {len(uplinks)})")
        else:
            self.db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox_acks)")
        self.forget_orphans()

    def forget_orphans(self) -> None:
        """Acknowledgements of rows that went another way (telemetry dropped for the disk cap): a live uplink's
        would otherwise pile up for as long as a dead one's backlog is capped."""
        self.db.execute("DELETE FROM outbox_acks WHERE seq NOT IN (SELECT seq FROM outbox)")
