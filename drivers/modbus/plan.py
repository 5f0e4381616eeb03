"""A device's register map as the fewest reads it accepts, learnt from its own answers. Pure: no I/O.

Half the meters in a plant room come without register documentation, so the configured limits are
only a first guess. The plan starts from the coalesced reads and changes as the device answers:

* exception 2 (illegal data address) on a read of several points: the read spanned an unmapped gap.
  It is split, first at its gaps, else in halves, and each part is asked again in the same poll,
  until every point is read or proven unreadable on its own. A point unreadable alone is dropped
  from the plan and reported once (a config problem, not ``bad`` telemetry forever).
* exception 3 (illegal data value) on a read of several points: the read was longer than the device
  takes. The limit for that kind of read (registers or bits) halves, the whole plan is rebuilt.
* A multi-register value is one span and is never split.

What was learnt is exported (``learned``) for the store and given back on the next start
(``restore``), keyed by a fingerprint of the device's config, so a changed map starts afresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Sequence
from typing import Any

from drivers.modbus.codec import (
    BIT_TABLES,
    Block,
    DataType,
    Order,
    Span,
    Table,
    decode,
    plan_reads,
    register_count,
    slice_for,
)
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.values import named, scaled
from gateway.core.data import Quality, Reading, Value
from gateway.core.numbers import float32_shortest

_FAST = {
    dtype: struct.Struct(fmt) for dtype, fmt in {
        DataType.INT16: ">h", DataType.UINT16: ">H", DataType.INT32: ">i", DataType.UINT32: ">I",
        DataType.INT64: ">q", DataType.UINT64: ">Q", DataType.FLOAT32: ">f", DataType.FLOAT64: ">d",
    }.items()
}
"""One compiled Struct per type, shared by every point of that type (one per point was 170 B a point)."""

LEARNED_VERSION = 1


def point_span(index: int, point: ModbusPoint) -> Span:
    width = 1 if point.table in BIT_TABLES else register_count(point.type)
    return Span(index, point.table, point.address, width)


def block_of(spans: Sequence[Span]) -> Block:
    """The one read that covers these spans (same table), in address order."""
    ordered = sorted(spans, key=lambda s: (s.address, s.count, s.key))
    start = ordered[0].address
    end = max(s.address + s.count for s in ordered)
    return Block(ordered[0].table, start, end - start, tuple(ordered))


def split(block: Block) -> list[Block]:
    """Two or more smaller reads: at the gaps between points if there are any, else in halves."""
    spans = list(block.spans)
    runs: list[list[Span]] = [[spans[0]]]
    for span in spans[1:]:
        last_end = max(s.address + s.count for s in runs[-1])
        if span.address > last_end:
            runs.append([span])
        else:
            runs[-1].append(span)
    if len(runs) == 1:
        half = len(spans) // 2
        runs = [spans[:half], spans[half:]]
    return [block_of(run) for run in runs if run]


class DevicePlan:
    """The reads one poll makes, and what the device taught us about them."""

    def __init__(self, device: ModbusDevice) -> None:
        self.device = device
        self.points = device.points
        self.fingerprint = _fingerprint(device)
        self.max_registers = device.max_registers
        self.max_bits = device.max_bits
        self.unreadable: dict[str, str] = {}
        """Point id -> why (its address and the device's answer); left out of every read."""
        self.reported: set[str] = set()
        self.version = 0
        """Bumped whenever the plan changes, so the owner knows to store it again."""
        self.blocks = self._replan()
        self._accepted = {False: 1, True: 1}
        """Largest read the device took, registers (False) and bits (True)."""
        self._refused: dict[bool, int | None] = {False: None, True: None}
        """Smallest read it refused as too long; between the two lies its limit, found by halving the gap."""
        # Big-endian points (most meters) decode with one struct.unpack_from on the packed reply;
        # other orders go through codec.decode, which is the reference for both. Both tables are
        # indexed by the point's position (a span's key): a list is 8 bytes a point, a dict or set 45-80.
        self._fast: list[struct.Struct | None] = [
            _FAST.get(p.type) if p.word_order is Order.BIG and p.byte_order is Order.BIG else None
            for p in device.points
        ]
        # The commonest point of all, a plain big-endian float32 (no scale, offset or states), skips the
        # general path: its value is its shortest float32 form and nothing else (a third of a poll's CPU).
        self._plain_float: list[struct.Struct | None] = [
            fast if fast is not None and p.type is DataType.FLOAT32 and p.scale == 1.0 and p.offset == 0.0
            and p.states is None else None for fast, p in zip(self._fast, device.points, strict=True)
        ]

    @functools.cached_property
    def by_id(self) -> dict[str, ModbusPoint]:
        """Point id -> its config, for writes and single reads: built on the first, never for polling alone."""
        return {p.id: p for p in self.points}

    # -- learning ---------------------------------------------------------------------------------

    def _replan(self, groups: Sequence[Sequence[Span]] | None = None) -> list[Block]:
        if groups is not None:
            return [block_of(g) for g in groups if g]
        spans = (point_span(i, p) for i, p in enumerate(self.points) if p.id not in self.unreadable)
        return plan_reads(spans, max_registers=self.max_registers, max_bits=self.max_bits,
                          max_gap=self.device.max_gap)

    def refused_address(self, block: Block) -> list[Block]:
        """Exception 2: the parts to ask instead; a single point is marked unreadable (no parts)."""
        parts = self._replace(block, split(block) if len(block.spans) > 1 else [])
        if len(block.spans) == 1:
            self._unreadable(block.spans[0], "exception 2 (illegal data address)")
        return parts

    def refused_length(self, block: Block) -> list[Block]:
        """Exception 3: learn a smaller read limit and rebuild; a single point is unreadable."""
        if len(block.spans) == 1:
            self._unreadable(block.spans[0], "exception 3 (illegal data value)")
            return self._replace(block, [])
        bits = block.table in BIT_TABLES
        refused = min(block.count, self._refused[bits] or block.count)
        self._refused[bits] = refused
        widest = max(s.count for s in block.spans)
        accepted = self._accepted[bits]
        limit = max(widest, min(refused - 1, (accepted + refused) // 2 if accepted < refused else refused // 2))
        self._set_limit(bits, limit)
        return [b for b in self.blocks if set(b.spans) <= set(block.spans)]

    def _set_limit(self, bits: bool, limit: int) -> None:
        if bits:
            self.max_bits = limit
        else:
            self.max_registers = limit
        self.version += 1
        # Keep splits learnt from gaps: rebuild each existing read within the new limit.
        rebuilt: list[Block] = []
        for existing in self.blocks:
            cap = self.max_bits if existing.table in BIT_TABLES else self.max_registers
            rebuilt += plan_reads(existing.spans, max_registers=cap, max_bits=cap, max_gap=existing.count)
        self.blocks = rebuilt

    def accepted(self, block: Block) -> None:
        """A read the device answered: a lower bound of its limit."""
        bits = block.table in BIT_TABLES
        if block.count > self._accepted[bits]:
            self._accepted[bits] = block.count

    @property
    def searching(self) -> bool:
        """Whether the read limit is still being narrowed down (a larger read may yet be taken)."""
        return any(refused is not None and self._accepted[bits] < refused - 1
                   and self._accepted[bits] >= (self.max_bits if bits else self.max_registers)
                   for bits, refused in self._refused.items())

    def settle(self) -> None:
        """After a poll that learnt: try a larger read while the limit is not found, and put back together
        neighbouring reads that proved readable and touch (no register between them), within the limit."""
        for bits, refused in self._refused.items():
            accepted, limit = self._accepted[bits], self.max_bits if bits else self.max_registers
            if refused is not None and accepted >= limit and accepted < refused - 1:
                self._set_limit(bits, (accepted + refused) // 2)
        runs: list[list[Block]] = []
        for block in sorted(self.blocks, key=lambda b: (b.table.value, b.start)):
            last = runs[-1][-1] if runs else None
            if last is not None and last.table == block.table and last.end == block.start:
                runs[-1].append(block)
            else:
                runs.append([block])
        rebuilt: list[Block] = []
        for run in runs:  # a run of touching reads, each answered: read it in as few reads as the limit allows
            cap = self.max_bits if run[0].table in BIT_TABLES else self.max_registers
            spans = [s for b in run for s in b.spans]
            rebuilt += plan_reads(spans, max_registers=cap, max_bits=cap, max_gap=65535) if len(run) > 1 else run
        if rebuilt != self.blocks:
            self.blocks = rebuilt
            self.version += 1

    def _replace(self, block: Block, parts: list[Block]) -> list[Block]:
        index = self.blocks.index(block) if block in self.blocks else len(self.blocks)
        self.blocks[index:index + 1] = parts
        self.version += 1
        return parts

    def _unreadable(self, span: Span, answer: str) -> None:
        point = self.points[span.key]
        self.unreadable[point.id] = f"{point.table.value} {point.address}: {answer}"

    def take_unreadable(self) -> dict[str, str]:
        """Points found unreadable since the last call (each reported once)."""
        fresh = {p: why for p, why in self.unreadable.items() if p not in self.reported}
        self.reported |= fresh.keys()
        return fresh

    def relearn(self) -> None:
        self.max_registers, self.max_bits = self.device.max_registers, self.device.max_bits
        self._accepted, self._refused = {False: 1, True: 1}, {False: None, True: None}
        self.unreadable.clear()
        self.reported.clear()
        self.blocks = self._replan()
        self.version += 1

    def decode_block(self, block: Block, data: Sequence[Any], ts: float) -> list[Reading]:
        """Pure: a block's raw registers or bits -> readings. A point that does not decode is ``bad``."""
        readings = []
        packed: bytes | None = None
        if block.table not in (Table.COIL, Table.DISCRETE) and len(data) >= block.count:
            try:
                packed = struct.pack(f">{block.count}H", *data[: block.count])
            except (struct.error, TypeError):
                packed = None  # a register out of 0..65535: let the checked path say which point is bad
        device, points, plain_float, start = self.device.id, self.points, self._plain_float, block.start
        for span in block.spans:
            point = points[span.key]
            if packed is not None and (plain := plain_float[span.key]) is not None:
                try:
                    raw = plain.unpack_from(packed, (span.address - start) * 2)[0]
                except struct.error:  # a reply shorter than the block claims
                    raw = math.nan
                if math.isfinite(raw):
                    readings.append(Reading(device, point.id, float32_shortest(raw), point.unit, Quality.GOOD, ts))
                else:
                    readings.append(Reading(device, point.id, None, point.unit, Quality.BAD, ts))
                continue
            try:
                fast = self._fast[span.key] if packed is not None else None
                if fast is not None and packed is not None:
                    value: Value = scaled(fast.unpack_from(packed, (span.address - block.start) * 2)[0], point)
                elif block.table in (Table.COIL, Table.DISCRETE):
                    value = bool(slice_for(block, span, data)[0])
                else:
                    part = slice_for(block, span, data)
                    value = scaled(decode(part, point.type, point.word_order, point.byte_order, point.bit), point)
                quality = Quality.GOOD
                if isinstance(value, float) and not math.isfinite(value):
                    value, quality = None, Quality.BAD
                else:
                    value = named(value, point)
            except (ValueError, struct.error):  # struct.error: a reply shorter than the block
                value, quality = None, Quality.BAD
            readings.append(Reading(device, point.id, value, point.unit, quality, ts))
        return readings

    def bad_block(self, block: Block, ts: float) -> list[Reading]:
        return [
            Reading(self.device.id, self.points[s.key].id, None, self.points[s.key].unit, Quality.BAD, ts)
            for s in block.spans
        ]

    # -- keeping it across restarts ---------------------------------------------------------------

    def learned(self) -> dict[str, Any]:
        return {
            "v": LEARNED_VERSION, "fingerprint": self.fingerprint,
            "max_registers": self.max_registers, "max_bits": self.max_bits,
            "unreadable": dict(self.unreadable),
            "reads": [[self.points[s.key].id for s in b.spans] for b in self.blocks],
        }

    def restore(self, data: Any) -> bool:
        """Take back a stored plan; False (and nothing changed) if it is for another config or malformed."""
        if not isinstance(data, dict) or (data.get("v"), data.get("fingerprint")) != (LEARNED_VERSION,
                                                                                     self.fingerprint):
            return False
        try:
            max_registers, max_bits = int(data["max_registers"]), int(data["max_bits"])
            unreadable = {str(k): str(v) for k, v in dict(data["unreadable"]).items()}
            reads = [[str(p) for p in read] for read in data["reads"]]
        except (KeyError, TypeError, ValueError):
            return False
        index = {p.id: i for i, p in enumerate(self.points)}
        wanted = set(index) - set(unreadable)
        listed = [p for read in reads for p in read]
        if set(listed) != wanted or len(listed) != len(wanted) or not set(unreadable) <= set(index):
            return False
        groups = [[point_span(index[p], self.points[index[p]]) for p in read] for read in reads]
        if any(len({s.table for s in g}) != 1 for g in groups if g):
            return False
        self.max_registers = max(1, min(max_registers, self.device.max_registers))
        self.max_bits = max(1, min(max_bits, self.device.max_bits))
        self.unreadable, self.reported = unreadable, set(unreadable)
        self.blocks = self._replan(groups)
        return True


def _fingerprint(device: ModbusDevice) -> str:
    """What the plan depends on: the points' tables, addresses and types, and the configured limits."""
    shape = [(p.id, p.table.value, p.address, p.type.value) for p in device.points]
    text = json.dumps([shape, device.max_registers, device.max_bits, device.max_gap, device.unit])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


