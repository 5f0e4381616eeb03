"""A simulated BACnet/IP plant-room controller: sensors that drift, a pump that cycles, COV.

It speaks the same wire protocol a field controller does (bacpypes3's own server side), so the
driver is tested against real encodings, segmentation and COV notifications. Tests can also make
it behave like the devices that cause trouble: one without ReadPropertyMultiple, one that refuses
COV subscriptions for some objects, one that goes silent, one that raises fault flags.

On loopback every application needs its own UDP port (bacpypes3 takes any 127.x address on its
own port for itself), and broadcasts do not cross ports: address simulators by unicast.
``python -m simulators.bacnet`` serves devices from their own process (for the bench).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bacpypes3.apdu import (
    AbortPDU,
    Error,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    RejectPDU,
    SimpleAckPDU,
    SubscribeCOVRequest,
)
from bacpypes3.basetypes import EngineeringUnits, ServicesSupported
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject
from bacpypes3.local.binary import BinaryInputObject
from bacpypes3.local.cov import GenericCriteria
from bacpypes3.local.multistate import MultiStateValueObject as _MultiStateValueObject

from drivers.bacnet.stack import Stack, open_stack

MODES = ("off", "auto", "manual")


class SimulatedApp(Stack):
    """The device's application: counts what it is asked, and misbehaves on request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: Counter[str] = Counter()
        self.read_multiple = True
        self.cov = True
        self.refuse_cov: set[str] = set()
        self.max_read_multiple_objects = 0  # > 0: abort a ReadPropertyMultiple asking for more, like a small controller
        self.garble: set[str] = set()  # objects whose ReadProperty gets a reply of the wrong kind
        self.garble_read_multiple = False  # every ReadPropertyMultiple gets a reply of the wrong kind
        self.mute = False

    async def indication(self, apdu: Any) -> None:
        if self.mute:
            return
        self.requests[type(apdu).__name__] += 1
        if isinstance(apdu, ReadPropertyMultipleRequest) and not self.read_multiple:
            await self.response(RejectPDU(reason="unrecognizedService", context=apdu))
            return
        if isinstance(apdu, ReadPropertyMultipleRequest) and 0 < self.max_read_multiple_objects < len(
                apdu.listOfReadAccessSpecs):
            await self.response(AbortPDU(True, reason="segmentationNotSupported", context=apdu))
            return
        if (isinstance(apdu, ReadPropertyRequest) and _name(apdu.objectIdentifier) in self.garble) or (
                isinstance(apdu, ReadPropertyMultipleRequest) and self.garble_read_multiple):
            await self.response(SimpleAckPDU(context=apdu))
            return
        if isinstance(apdu, SubscribeCOVRequest) and apdu.lifetime is not None and (
                not self.cov or _name(apdu.monitoredObjectIdentifier) in self.refuse_cov):
            await self.response(Error(service_choice=apdu.apduService, errorClass="services",
                                      errorCode="covSubscriptionFailed", context=apdu))
            return
        await super().indication(apdu)

    def get_services_supported(self) -> Any:
        supported = super().get_services_supported()
        if not self.read_multiple:
            supported[ServicesSupported.readPropertyMultiple] = 0
        if not self.cov:
            supported[ServicesSupported.subscribeCOV] = 0
        return supported


class MultiStateValueObject(_MultiStateValueObject):  # type: ignore[misc]
    """bacpypes3 gives multi-state values the analog COV rule (a cov-increment they do not have)."""

    _cov_criteria = GenericCriteria


def _name(object_id: Any) -> str:
    return f"{object_id[0]}:{object_id[1]}"


def _objects(analog_inputs: int) -> list[Any]:
    ok = [0, 0, 0, 0]
    objects: list[Any] = [
        AnalogInputObject(objectIdentifier=("analog-input", 1), objectName="Room Temperature", presentValue=21.5,
                          units=EngineeringUnits.degreesCelsius, covIncrement=0.1, statusFlags=ok,
                          eventState="normal", outOfService=False),
        AnalogInputObject(objectIdentifier=("analog-input", 2), objectName="Room CO2", presentValue=620.0,
                          units=EngineeringUnits.partsPerMillion, covIncrement=10.0, statusFlags=ok,
                          eventState="normal", outOfService=False),
        AnalogInputObject(objectIdentifier=("analog-input", 3), objectName="Water Pressure", presentValue=3.2,
                          units=EngineeringUnits.bars, covIncrement=0.05, statusFlags=ok,
                          eventState="normal", outOfService=False),
        BinaryInputObject(objectIdentifier=("binary-input", 1), objectName="Pump Running", presentValue="active",
                          statusFlags=ok, eventState="normal", outOfService=False, polarity="normal"),
        BinaryInputObject(objectIdentifier=("binary-input", 2), objectName="Fire Damper Closed",
                          presentValue="inactive", statusFlags=ok, eventState="normal", outOfService=False,
                          polarity="normal"),
        MultiStateValueObject(objectIdentifier=("multi-state-value", 1), objectName="AHU Mode", presentValue=2,
                              numberOfStates=len(MODES), stateText=list(MODES), statusFlags=ok,
                              eventState="normal", outOfService=False),
        AnalogOutputObject(objectIdentifier=("analog-output", 1), objectName="Valve Position", presentValue=0.0,
                           units=EngineeringUnits.percent, covIncrement=1.0, relinquishDefault=0.0,
                           statusFlags=ok, eventState="normal", outOfService=False),
    ]
    objects += [
        AnalogInputObject(objectIdentifier=("analog-input", 100 + i), objectName=f"Sensor {i}",
                          presentValue=float(i), units=EngineeringUnits.percent, covIncrement=1.0, statusFlags=ok,
                          eventState="normal", outOfService=False)
        for i in range(analog_inputs)
    ]
    return objects


class SimulatedDevice:
    """One simulated controller on one UDP address; values change every ``tick`` seconds."""

    def __init__(self, app: SimulatedApp, tick: float, seed: int | None) -> None:
        self.app = app
        self.objects = {_name(o.objectIdentifier): o for o in app.iter_objects()}
        self._rng = random.Random(seed)
        self._ticks = 0
        self._task = asyncio.create_task(self._run(tick)) if tick > 0 else None

    @property
    def port(self) -> int:
        return int(self.objects["network-port:1"].bacnetIPUDPPort)

    def __getitem__(self, name: str) -> Any:
        return self.objects[name]

    def set(self, name: str, value: Any) -> None:
        self.objects[name].presentValue = value

    def flags(self, name: str, *, in_alarm: bool = False, fault: bool = False, out_of_service: bool = False) -> None:
        """Raise or clear status flags the way a controller does: through event state, reliability, service."""
        obj = self.objects[name]
        obj.eventState = "offnormal" if in_alarm else "normal"
        obj.reliability = "unreliable-other" if fault else "no-fault-detected"
        obj.outOfService = out_of_service
        obj.statusFlags = [int(in_alarm), int(fault), 0, int(out_of_service)]  # tells COV subscribers

    def freeze(self) -> None:
        """Stop the drift, so a test sees exactly the values it set."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def subscriptions(self) -> int:
        """Live COV subscriptions held for clients."""
        return sum(len(d.cov_subscriptions) for d in self.app._cov_detections.values())

    async def _run(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            self.step()

    def step(self) -> None:
        """One tick of plant-room life: a random walk of the sensors, the pump cycling now and then."""
        self._ticks += 1
        walk = self._rng.uniform
        self._nudge("analog-input:1", walk(-0.3, 0.3), 16.0, 28.0)
        self._nudge("analog-input:2", walk(-25, 25), 400.0, 1500.0)
        self._nudge("analog-input:3", walk(-0.06, 0.06), 2.0, 4.5)
        if self._ticks % 10 == 0:
            pump = self.objects["binary-input:1"]
            pump.presentValue = "inactive" if str(pump.presentValue) == "active" else "active"
        if self._ticks % 45 == 0:
            damper = self.objects["binary-input:2"]
            damper.presentValue = "inactive" if str(damper.presentValue) == "active" else "active"
        for name, obj in self.objects.items():
            if name.startswith("analog-input:") and int(name.split(":")[1]) >= 100:
                obj.presentValue = float(obj.presentValue) + 1.0

    def _nudge(self, name: str, delta: float, low: float, high: float) -> None:
        obj = self.objects[name]
        obj.presentValue = round(min(high, max(low, float(obj.presentValue) + delta)), 2)

    async def close(self) -> None:
        self.freeze()
        self.app.close()
        await asyncio.sleep(0)  # let the transport finish closing before the port is reused


async def serve_bacnet(address: str, instance: int, *, name: str | None = None, tick: float = 1.0,
                       analog_inputs: int = 0, seed: int | None = None) -> SimulatedDevice:
    """A simulated controller at ``address`` ("IP[/prefix]:port"), device ``instance``."""
    ip, _, port = address.rpartition(":")
    host, _, prefix = ip.partition("/")
    app = open_stack(host, int(prefix or 32), int(port), instance, name=name or f"Plant Room {instance}",
                     objects=_objects(analog_inputs), factory=SimulatedApp,
                     vendorName="community-gateway simulator", modelName="plant-room controller")
    assert isinstance(app, SimulatedApp)
    return SimulatedDevice(app, tick, seed)


async def run_bacnet(host: str, port: int, instance: int, count: int = 1, *, prefix: int = 32,
                     analog_inputs: int = 0, tick: float = 1.0, ready: bool = False) -> None:
    """Serve ``count`` devices on ports ``port``.. (instances ``instance``..) until cancelled."""
    devices = [await serve_bacnet(f"{host}/{prefix}:{port + i}", instance + i, tick=tick,
                                  analog_inputs=analog_inputs) for i in range(count)]
    if ready:
        print(f"ready {port} {count}", flush=True)
    else:
        print(f"serving {count} BACnet device(s) {instance}..{instance + count - 1} on {host} "
              f"ports {port}..{port + count - 1}", file=sys.stderr)
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        for device in devices:
            await device.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated BACnet/IP controllers, one UDP port each; prints "
                                                 "'ready <first_port> <count>' once listening.")
    parser.add_argument("--host", default="127.0.0.1", help="IP to bind, with /prefix to hear broadcasts")
    parser.add_argument("--port", type=int, default=47901)
    parser.add_argument("--instance", type=int, default=1001)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--analog-inputs", type=int, default=0, help="extra analog inputs per device")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between value changes (0: constant)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        host, _, prefix = args.host.partition("/")
        await run_bacnet(host, args.port, args.instance, args.count, prefix=int(prefix or 32),
                         analog_inputs=args.analog_inputs, tick=args.tick, ready=True)

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
