"""Rules and alarms inside the daemon: the I/O around the pure `rules` package.

Readings and events reach the engine synchronously from the recorder (no queue, no extra hop: a
fire event becomes an alarm and an elevator-recall write within the same loop turn). Alarm
transitions go upstream as events and their state is persisted with the same batch. Writes and
webhooks run as tasks with retries, so a slow sounder never delays the next alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from gateway.commands import CommandError, CommandHandler, WriteCommand
from gateway.config.schema import GatewayConfig
from gateway.core.data import Event, Priority, Reading
from gateway.core.errors import DriverError
from gateway.recorder import Recorder
from rules.alarms import AlarmBook, AlarmError
from rules.config import NotifierConfig, NotifyAction, PublishAction, WriteAction, build_classes
from rules.engine import Cleared, Engine, Fired, Output
from rules.escalation import Transition

log = structlog.get_logger("gateway.automation")
MAX_CHAIN = 8
"""How deep rules may trigger rules through published events within one input."""


class Automation:
    def __init__(self, cfg: GatewayConfig, recorder: Recorder, commands: CommandHandler,
                 stored: dict[str, dict[str, Any]]) -> None:
        self.cfg = cfg
        self.recorder = recorder
        self.commands = commands
        self.classes = build_classes(cfg.alarm_classes)
        tz = ZoneInfo(cfg.site.timezone) if cfg.site.timezone else None
        now = time.time()
        self.engine = Engine(cfg.rules, started=now, tz=tz)
        self.book = AlarmBook()
        for record in stored.values():
            with contextlib.suppress(AlarmError, ValueError, KeyError, TypeError):
                self.book.restore_one(record, self.classes)
        self.engine.restore_active([a.key for a in self.book.active()])
        self.notifiers = {n.id: n for n in cfg.notifiers}
        # Flood control: a bus whose every device is offline is one root-cause alarm, not N.
        self.bus_of = {d.id: d.bus for d in cfg.devices if d.enabled}
        self.devices_on: dict[str, set[str]] = {}
        for device, bus in self.bus_of.items():
            self.devices_on.setdefault(bus, set()).add(device)
        self.offline: set[str] = set()
        self.suppressed: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._depth = 0
        self.latency: list[float] = []  # event in -> first transition out, seconds (for the benchmark)
        recorder.on_event(self._on_event)
        recorder.on_snapshot(self._on_snapshot)

    # -- inputs, from the recorder's listeners -------------------------------------------------

    def _on_snapshot(self, device: str, readings: list[Reading]) -> None:
        now = time.time()
        out: list[Output] = []
        for reading in readings:
            out += self.engine.reading(reading, now)
        self._apply(out, now)

    def _on_event(self, event: Event) -> None:
        if event.kind.startswith("alarm."):
            return  # our own trail: rules react to conditions, not to their own alarms
        if self._depth >= MAX_CHAIN:  # rules publishing events that fire rules: stop a runaway chain
            log.error("rule chain too deep; event not evaluated", kind=event.kind, source=event.source)
            return
        self._depth += 1
        try:
            self._evaluate_event(event)
        finally:
            self._depth -= 1

    def _evaluate_event(self, event: Event) -> None:
        started = time.perf_counter()
        now = time.time()
        if event.kind in ("device.offline", "device.online"):
            self._root_cause(event, now)
        if self._apply(self.engine.event(event, now), now):
            self.latency.append(time.perf_counter() - started)
            del self.latency[:-5000]

    # -- the clock -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick clocked rules every second and alarms exactly at their deadlines."""
        while True:
            now = time.time()
            wake = min(w for w in (self.engine.next_wakeup(), self.book.next_wakeup(), now + 1.0) if w is not None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - now)):
                    await self._wake.wait()
            self._wake.clear()
            now = time.time()
            self._apply(self.engine.tick(now), now)
            self._transitions(self.book.tick(now))

    # -- outputs -------------------------------------------------------------------------------

    def _apply(self, outputs: list[Output], now: float) -> int:
        """Carry out what the engine decided; returns how many alarm transitions that made."""
        made = 0
        for output in outputs:
            if isinstance(output, Fired):
                rule = output.rule
                bus = self._down_bus_explaining(rule)
                if bus is not None:  # its bus is down: already announced by the root-cause alarm
                    self.suppressed[bus] = self.suppressed.get(bus, 0) + 1
                    continue
                if rule.alarm is not None:
                    cls = self.classes[rule.alarm.class_]
                    made += self._transitions(self.book.raise_alarm(
                        output.key, cls, now, message=output.message, source=output.source,
                        severity=rule.alarm.severity, data=_json_safe(output.data)))
                for action in rule.actions:
                    self._act(action, output)
            elif isinstance(output, Cleared):
                made += self._transitions(self.book.clear(output.key, now))
        if outputs:
            self._wake.set()
        return made

    def _root_cause(self, event: Event, now: float) -> None:
        device, bus = event.source, self.bus_of.get(event.source)
        if bus is None or len(self.devices_on[bus]) < 2:
            return
        was_down = self.devices_on[bus] <= self.offline
        (self.offline.add if event.kind == "device.offline" else self.offline.discard)(device)
        down = self.devices_on[bus] <= self.offline
        key, cls = f"bus/{bus}/down", self.classes["equipment"]
        if down and not was_down:
            self.suppressed[bus] = 0
            self._transitions(self.book.raise_alarm(
                key, cls, now, source=bus, severity="major",
                message=f"bus {bus} down: all {len(self.devices_on[bus])} devices offline",
                data={"bus": bus, "devices": sorted(self.devices_on[bus])}))
        elif was_down and not down:
            self._transitions(self.book.clear(key, now))
            self.recorder.event(Event("flood.summary", bus, Priority.EVENT,
                                      {"bus": bus, "suppressed_alarms": self.suppressed.pop(bus, 0),
                                       "devices": sorted(self.devices_on[bus])}))

    def _down_bus_explaining(self, rule: Any) -> str | None:
        """The down bus that explains this rule firing, if it is only about devices on that bus."""
        from rules.config import references

        refs = references(rule)
        if not refs or any(kind != "device" for _, kind, _ in refs):
            return None
        buses = {self.bus_of.get(name) for _, _, name in refs}
        if len(buses) != 1:
            return None
        bus = buses.pop()
        return bus if bus is not None and self.devices_on[bus] <= self.offline else None

    def _transitions(self, transitions: list[Transition]) -> int:
        for t in transitions:
            alarm = self.book.get(t.key)
            if alarm is None:
                continue
            self.recorder.event(t.to_event(alarm))
            self.recorder.alarm_state(t.key, self.book.export_one(t.key))
            if t.tier:
                log.warning("alarm", key=t.key, action=t.action, tier=t.tier, level=t.level,
                            message=alarm.message)
        return len(transitions)

    def _act(self, action: Any, fired: Fired) -> None:
        if isinstance(action, WriteAction):
            self._spawn(self._write(action, fired), fired, f"write {action.write}")
        elif isinstance(action, NotifyAction):
            self._spawn(self._notify(self.notifiers[action.notify], fired), fired, f"notify {action.notify}")
        elif isinstance(action, PublishAction):
            priority = Priority.ALARM if action.priority == "alarm" else Priority.EVENT
            self.recorder.event(Event(action.publish, fired.rule.id, priority,
                                      {**action.data, "rule": fired.rule.id, "key": fired.key}))

    def _spawn(self, coro: Any, fired: Fired, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:  # an action may fail, never silently
                self._failed(fired, what, repr(task.exception()))

        task.add_done_callback(done)

    async def _write(self, action: WriteAction, fired: Fired, attempts: int = 5) -> None:
        device, point = action.write.split(".", 1)
        command = WriteCommand(cmd="write", device=device, point=point, value=action.value,
                               actor=f"rule:{fired.rule.id}")
        error = ""
        for attempt in range(attempts):
            try:
                result = await self.commands.execute(command)
                if result.get("result") != "mismatch":
                    return
                error = f"read back {result.get('read_back')!r}"
            except CommandError as exc:
                error = str(exc)
                break  # refused by the point's limits: retrying cannot help
            except DriverError as exc:
                error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        self._failed(fired, f"write {action.write}", error)

    async def _notify(self, notifier: NotifierConfig, fired: Fired) -> None:
        body = json.dumps({"site": self.cfg.site.id, "rule": fired.rule.id, "key": fired.key,
                           "message": fired.message, "source": fired.source}, ensure_ascii=False).encode()
        request = urllib.request.Request(notifier.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        error = ""
        for attempt in range(notifier.retries + 1):
            try:  # urllib in a worker thread: the stdlib has no asyncio HTTP client
                await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=notifier.timeout).close())
                return
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(60.0, 1.0 * 2**attempt))
        self._failed(fired, f"notify {notifier.id}", error)

    def _failed(self, fired: Fired, what: str, error: str) -> None:
        log.error("rule action failed", rule=fired.rule.id, action=what, error=error)
        self.recorder.event(Event("rule.action_failed", fired.rule.id, Priority.ALARM,
                                  {"rule": fired.rule.id, "key": fired.key, "action": what, "error": error}))

    # -- commands (CLI today, MQTT later: one entry point) -------------------------------------

    def command(self, action: str, key: str, who: str, *, note: str = "", until: float | None = None) -> list[str]:
        now = time.time()
        book = self.book
        if action == "acknowledge":
            transitions = book.acknowledge(key, who, now, note)
        elif action == "reset":
            transitions = book.reset(key, who, now)
        elif action == "shelve":
            transitions = book.shelve(key, who, now, until or now + 3600, note)
        elif action == "unshelve":
            transitions = book.unshelve(key, who, now)
        elif action == "out_of_service":
            transitions = book.out_of_service(key, who, now, note)
        elif action == "in_service":
            transitions = book.in_service(key, who, now)
        else:
            raise AlarmError(f"unknown alarm action {action!r}")
        self._transitions(transitions)
        self._wake.set()
        return [t.action for t in transitions]

    def listing(self, everything: bool = False) -> list[dict[str, Any]]:
        alarms = self.book.all() if everything else self.book.active()
        return [{**self.book.export_one(a.key), "level": a.level, "colour": a.colour} for a in alarms]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return safe
