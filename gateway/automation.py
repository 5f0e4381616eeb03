"""Rules and alarms inside the daemon: the I/O around the pure ``rules.runtime.RulesRuntime``.

Readings and events reach the runtime synchronously from the bus (no queue, no extra hop: a fire event becomes an
alarm and an elevator-recall write within the same loop turn). The runtime decides; this module carries out what
it returns: alarm transitions and published events go to the bus (stored, sent upstream) with the alarm's state,
writes go through the ``CommandHandler`` and webhooks over HTTP, both as tasks with retries, so a slow sounder never
delays the next alarm. Every time read and sleep goes through the injected ``Clock``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import structlog

from gateway.commands import CommandError, CommandHandler, WriteCommand
from gateway.config.schema import GatewayConfig
from gateway.core.data import Event, Priority, Reading
from gateway.core.errors import DriverError
from gateway.core.timing import SYSTEM_CLOCK, Backoff, Clock
from rules.alarms import AlarmBook
from rules.config import NotifierConfig
from rules.engine import Engine
from rules.reconfigure import reconfigured
from rules.runtime import MAX_CHAIN, Action, ChainStopped, Notify, PersistAlarm, Publish, RulesRuntime, Write

__all__ = ["MAX_CHAIN", "Automation", "RulesBus"]

log = structlog.get_logger("gateway.automation")
WRITE_ATTEMPTS = 5


class RulesBus(Protocol):
    """What the rules need from the daemon's bus: hear readings and events, publish events and alarm state."""

    def on_event(self, handler: Callable[[Event], None]) -> None: ...

    def on_snapshot(self, handler: Callable[[str, list[Reading]], None]) -> None: ...

    def event(self, ev: Event) -> None: ...

    def alarm_state(self, key: str, record: dict[str, Any]) -> None: ...


class Automation:
    def __init__(self, cfg: GatewayConfig, bus: RulesBus, commands: CommandHandler,
                 stored: dict[str, dict[str, Any]], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg = cfg
        self.bus = bus
        self.commands = commands
        self.clock = clock
        self.runtime = RulesRuntime.from_config(cfg, started=clock.time(), stored=stored.values())
        for key, why in self.runtime.not_restored:
            log.warning("stored alarm not restored", key=key, error=why)
        self.notifiers = {n.id: n for n in cfg.notifiers}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._depth = 0
        self._publishing: set[str] = set()  # ids of events the runtime published: already fed back by it
        self.latency: list[float] = []  # event in -> its alarm transitions out, seconds (for the benchmark)
        bus.on_event(self._on_event)
        bus.on_snapshot(self._on_snapshot)

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def book(self) -> AlarmBook:
        return self.runtime.book

    # -- inputs, from the bus's listeners ------------------------------------------------------------------------

    def _on_snapshot(self, device: str, readings: list[Reading]) -> None:
        self._perform(self.runtime.readings(device, readings, self.clock.time()))

    def _on_event(self, event: Event) -> None:
        if event.id in self._publishing:
            return  # the runtime published it and has fed it to the rules already
        if self._depth >= MAX_CHAIN:  # a loop through another subscriber of the bus: stop it here too
            log.error("rule chain too deep; event not evaluated", kind=event.kind, source=event.source)
            return
        self._depth += 1
        try:
            started = self.clock.monotonic()
            actions = self.runtime.event(event, self.clock.time())
            self._perform(actions)
            if any(isinstance(a, Publish) and a.transition is not None for a in actions):
                self.latency.append(self.clock.monotonic() - started)
                del self.latency[:-5000]
        finally:
            self._depth -= 1

    # -- the clock -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick clocked rules every second and alarms exactly at their deadlines."""
        while True:
            now = self.clock.time()
            due = self.runtime.next_wakeup()
            wake = now + 1.0 if due is None else min(due, now + 1.0)
            await self._sleep(max(0.0, wake - now))
            self._wake.clear()
            self._perform(self.runtime.tick(self.clock.time()))

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the clock until ``seconds`` pass or an input wakes the loop, whichever comes first."""
        if self._wake.is_set():
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    # -- outputs -------------------------------------------------------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        """Carry out what the runtime decided, in its order."""
        wake = self.runtime.tick_now  # read first: publishing may bring another input in meanwhile
        for action in actions:
            if isinstance(action, Publish):
                self._publishing.add(action.event.id)
                try:
                    self.bus.event(action.event)
                finally:
                    self._publishing.discard(action.event.id)
                t = action.transition
                if t is not None and t.tier:
                    log.warning("alarm", key=t.key, action=t.action, tier=t.tier, alarm_level=t.level,
                                message=action.message)
            elif isinstance(action, PersistAlarm):
                self.bus.alarm_state(action.key, action.record)
            elif isinstance(action, Write):
                self._spawn(self._write(action), action.rule, action.key, f"write {action.device}.{action.point}")
            elif isinstance(action, Notify):
                self._spawn(self._notify(self.notifiers[action.notifier], action), action.rule, action.key,
                            f"notify {action.notifier}")
            elif isinstance(action, ChainStopped):
                log.error("rule chain too deep; event not evaluated", kind=action.kind, source=action.source)
        if wake:
            self._wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], rule: str, key: str, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:  # an action may fail, never silently
                self._failed(rule, key, what, repr(task.exception()))

        task.add_done_callback(done)

    async def _write(self, action: Write, attempts: int = WRITE_ATTEMPTS) -> None:
        command = WriteCommand(cmd="write", device=action.device, point=action.point, value=action.value,
                               actor=f"rule:{action.rule}")
        error = ""
        backoff = Backoff(0.5, 30.0, jitter=(1.0, 1.0))
        for attempt in range(attempts):
            if attempt:  # no wait after the last attempt: a failed recall is reported at once
                await self.clock.sleep(backoff.next())
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
        self._failed(action.rule, action.key, f"write {action.device}.{action.point}", error)

    async def _notify(self, notifier: NotifierConfig, action: Notify) -> None:
        body = json.dumps({"site": self.cfg.site.id, "rule": action.rule, "key": action.key,
                           "message": action.message, "source": action.source}, ensure_ascii=False).encode()
        request = urllib.request.Request(notifier.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        error = ""
        backoff = Backoff(1.0, 60.0, jitter=(1.0, 1.0))
        for attempt in range(notifier.retries + 1):
            if attempt:
                await self.clock.sleep(backoff.next())
            try:  # urllib in a worker thread: the stdlib has no asyncio HTTP client
                await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=notifier.timeout).close())
                return
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        self._failed(action.rule, action.key, f"notify {notifier.id}", error)

    def _failed(self, rule: str, key: str, what: str, error: str) -> None:
        log.error("rule action failed", rule=rule, action=what, error=error)
        self.bus.event(Event("rule.action_failed", rule, Priority.ALARM,
                                  {"rule": rule, "key": key, "action": what, "error": error}, ts=self.clock.time()))

    # -- commands (CLI today, MQTT later: one entry point) -------------------------------------------------------

    def command(self, action: str, key: str, who: str, *, note: str = "", until: float | None = None) -> list[str]:
        """Acknowledge, reset, shelve ... an alarm; the transitions it made, by name. Raises ``AlarmError``."""
        actions = self.runtime.command(action, key, who, self.clock.time(), note=note, until=until)
        self._perform(actions)
        return [a.transition.action for a in actions if isinstance(a, Publish) and a.transition is not None]

    def listing(self, everything: bool = False) -> list[dict[str, Any]]:
        return self.runtime.listing(everything)

    def reconfigure(self, cfg: GatewayConfig) -> None:
        """A reloaded config's rules, alarm classes and notifiers, in place of the running ones: the alarm book
        and the state of unchanged rules are carried over (``rules.reconfigure``). Actions already under way
        (a write being retried, a webhook) finish as they started."""
        self.runtime = reconfigured(self.runtime, cfg, now=self.clock.time())
        self.cfg = cfg
        self.notifiers = {n.id: n for n in cfg.notifiers}
        self._wake.set()  # the next deadline may be another one now

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
