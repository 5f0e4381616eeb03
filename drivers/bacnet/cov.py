"""Change-of-value subscriptions: values told unasked, and polling wherever that cannot be trusted.

A point is left out of polls only while its object's subscription is known to be alive: granted,
and not yet past its lifetime. Subscriptions are renewed halfway through their lifetime, so one
lost renewal still leaves time for the next. A refused subscription (the object has no COV, the
device's subscription table is full) or one that could not be renewed (the device stopped
answering) puts its points straight back into the polls; refused ones are asked again after a
lifetime, doubling up to an hour, unreachable ones after half a lifetime (at most a minute).
Notifications are accepted only from a configured device's address, for our process id and a
subscribed object; anything else is refused, so a device can drop what nobody listens to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import TagList

from drivers.bacnet import stack
from drivers.bacnet.config import BacnetPoint
from drivers.bacnet.stack import Nack
from drivers.base import Sink
from drivers.scheduler import Urgency
from gateway.core.errors import DriverError

if TYPE_CHECKING:
    from drivers.bacnet.driver import BacnetDriver

log = structlog.get_logger("drivers.bacnet.cov")

PROCESS_ID = 1
"""Subscriber process id: the same on every run, so a restart renews its old subscriptions, not adds to them."""
MAX_REFUSED_WAIT = 3600.0


@dataclass(slots=True)
class Subscription:
    device: str
    obj: tuple[str, int]
    points: list[BacnetPoint]
    expires: float = 0.0  # loop time; 0 = not subscribed, the points are polled
    due: float = 0.0  # loop time of the next subscribe (or renewal)
    refusals: int = 0
    renewals: int = 0


class CovManager:
    def __init__(self, driver: BacnetDriver) -> None:
        self.driver = driver
        self.subs: dict[tuple[str, tuple[str, int]], Subscription] = {}
        for device in driver.devices.values():
            if not device.cov:
                continue
            for point in device.points:
                if point.has_status:  # a present value with status flags: the objects COV is defined for
                    key = (device.id, (point.object_type, point.instance))
                    self.subs.setdefault(key, Subscription(device.id, key[1], [])).points.append(point)
        self.by_address = {driver.addresses[d]: d for d in {s.device for s in self.subs.values()}}
        self.sink: Sink | None = None
        self._wake: dict[str, asyncio.Event] = {}

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def covers(self, device: str, point: BacnetPoint) -> bool:
        sub = self.subs.get((device, (point.object_type, point.instance)))
        return sub is not None and point in sub.points and sub.expires > self._now()

    def lost(self, device: str) -> None:
        """The device stopped answering: poll its values again, and subscribe again once it is back."""
        now = self._now()
        for sub in self.subs.values():
            if sub.device == device and sub.expires:
                sub.expires = 0.0
                sub.due = min(sub.due, now + self._retry(device))
        if device in self._wake:
            self._wake[device].set()

    def _retry(self, device: str) -> float:
        return min(self.driver.devices[device].cov_lifetime / 2, 60.0)

    async def run(self, sink: Sink) -> None:
        """Keep every device's subscriptions until cancelled; notifications go to ``sink`` meanwhile."""
        self.sink = sink
        try:
            async with asyncio.TaskGroup() as group:
                for device in sorted({s.device for s in self.subs.values()}):
                    self._wake[device] = asyncio.Event()
                    group.create_task(self._keep(device), name=f"bacnet-cov:{device}")
                await asyncio.Event().wait()
        finally:
            self.sink = None

    async def _keep(self, device: str) -> None:
        subs = [s for s in self.subs.values() if s.device == device]
        wake = self._wake[device]
        while True:
            for sub in subs:
                if sub.due <= self._now() and not await self._subscribe(sub):
                    later = self._now() + self._retry(device)  # it does not answer: spare it the others
                    for other in subs:
                        other.due = max(other.due, later)
                    break
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(s.due for s in subs) - self._now())):
                    await wake.wait()

    async def _subscribe(self, sub: Subscription) -> bool:
        """Subscribe (or renew); False when the device did not answer at all."""
        driver, device = self.driver, self.driver.devices[sub.device]
        lifetime = device.cov_lifetime
        sent = self._now()
        try:
            contact = await driver.identified(sub.device, Urgency.POLL)
            if not contact.cov:
                if sub.due == 0.0:
                    log.info("device does not offer SubscribeCOV; polling", device=sub.device)
                sub.expires, sub.due = 0.0, sent + MAX_REFUSED_WAIT
                return True
            await driver.request(sub.device, Urgency.POLL, stack.subscribe, sub.obj, PROCESS_ID,
                                 lifetime=max(1, round(lifetime)), confirmed=device.cov_confirmed)
        except Nack as nack:
            sub.refusals += 1
            sub.expires = 0.0
            sub.due = sent + min(MAX_REFUSED_WAIT, lifetime * 2 ** (sub.refusals - 1))
            log.info("COV subscription refused; polling", device=sub.device, object=_name(sub.obj),
                     reason=nack.reason)
        except DriverError:
            sub.expires, sub.due = 0.0, sent + self._retry(sub.device)
            return False
        else:
            sub.refusals = 0
            sub.renewals += 1
            sub.expires = sent + lifetime
            sub.due = sent + lifetime / 2
        return True

    def notified(self, source: Address, process: int, obj: tuple[str, int], values: dict[str, TagList]) -> bool:
        """A COV notification: readings for the object's points. False if it is none of ours."""
        device = self.by_address.get(source)
        sub = self.subs.get((device, obj)) if device is not None and process == PROCESS_ID else None
        if sub is None or self.sink is None:
            return False
        if "present-value" not in values:
            return True
        spec = self.driver.devices[sub.device]
        contact = self.driver.contacts[sub.device]
        now = time.time()
        readings = [self.driver.reading(spec, contact, p, values["present-value"], values.get("status-flags"), now)
                    for p in sub.points]
        self.sink.readings(sub.device, readings)
        return True

    async def cancel_all(self) -> None:
        """Withdraw live subscriptions on shutdown, briefly: a device that is gone lets them lapse."""
        live = [s for s in self.subs.values() if s.expires > self._now()]
        if not live or self.driver._stack is None:
            return
        app = self.driver._stack

        async def cancel(sub: Subscription) -> None:
            with contextlib.suppress(DriverError, Nack):
                await stack.subscribe(app, self.driver.addresses[sub.device], sub.obj, PROCESS_ID,
                                      lifetime=None, confirmed=False, limit=0.5)
            sub.expires = 0.0

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(*(cancel(s) for s in live))


def _name(obj: tuple[str, int]) -> str:
    return f"{obj[0]}:{obj[1]}"
