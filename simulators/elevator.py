"""A simulated elevator controller speaking the `elevator` profile's register map.

It answers hall calls between floors with doors that open and close, and takes two faults on
demand: an entrapment (stuck between floors, car occupied, fault code set) and fire recall (the
recall coil, written by the gateway, sends the car to the recall floor and parks it doors open).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext

from simulators.endpoints import ModbusEndpoints, port_range, quiet_pymodbus, sequential_block

# The elevator profile's map (drivers/modbus/profiles/elevator.toml), function code -> addresses.
HR_FLOOR, HR_DIRECTION, HR_DOOR, HR_MODE, HR_FAULT, HR_LOAD = range(6)
DI_RUNNING, DI_DOOR_ZONE, DI_OCCUPIED, DI_ALARM_BUTTON = range(4)
CO_FIRE_RECALL = 0

STOPPED, UP, DOWN = 0, 1, 2
CLOSED, OPENING, OPEN, CLOSING = 0, 1, 2, 3
NORMAL, INSPECTION, FIRE_RECALL, OUT_OF_SERVICE = 0, 1, 2, 3
FAULT_ENTRAPMENT = 0x21  # "stopped outside door zone", as many controllers number it

_HR, _DI, _CO = 3, 2, 1  # pymodbus function codes used to address the datastore


class ElevatorSimulator:
    """The car's state machine; ``step()`` advances it by one tick (0.25 s of simulated time)."""

    def __init__(self, floors: int = 18, *, recall_floor: int = 1, seed: int = 1) -> None:
        quiet_pymodbus()
        self.floors = floors
        self.recall_floor = recall_floor
        self.random = random.Random(seed)
        self.context = ModbusDeviceContext(
            hr=sequential_block([0] * 8), ir=sequential_block([0] * 2),
            co=sequential_block([False] * 2), di=sequential_block([False] * 8),
        )
        self.position = 1.0  # floors; integer = level with a landing
        self.target: int | None = None
        self.door = CLOSED
        self.door_timer = 0
        self.trapped = False
        self.occupied = False
        self._publish()

    # -- faults the tests and the demo inject -------------------------------------------------

    def trap_between_floors(self) -> None:
        """The car stops between two landings with somebody inside."""
        self.position = int(self.position) + 0.5 if self.position < self.floors else self.floors - 0.5
        self.trapped, self.occupied, self.target, self.door = True, True, None, CLOSED
        self._publish()

    def release(self) -> None:
        self.trapped = False
        self._publish()

    def press_alarm_button(self, pressed: bool = True) -> None:
        self.context.setValues(_DI, DI_ALARM_BUTTON, [pressed])

    def call(self, floor: int) -> None:
        self.target = max(1, min(self.floors, floor))

    # -- the state machine --------------------------------------------------------------------

    @property
    def mode(self) -> int:
        return FIRE_RECALL if self._recall_commanded() else NORMAL

    def _recall_commanded(self) -> bool:
        values = self.context.getValues(_CO, CO_FIRE_RECALL, 1)
        return isinstance(values, list) and bool(values[0])

    def step(self) -> None:
        if self.trapped:
            self._publish()
            return
        if self._recall_commanded():
            self.target = self.recall_floor
        elif self.target is None and self.door == CLOSED and self.random.random() < 0.05:
            self.target = self.random.randint(1, self.floors)
            self.occupied = self.random.random() < 0.7
        if self.door != CLOSED:
            self._doors()
        elif self.target is not None and abs(self.position - self.target) > 1e-6:
            self.position += 0.25 if self.target > self.position else -0.25
        elif self.target is not None:
            self.target = None if not self._recall_commanded() else self.target
            self.door, self.door_timer = OPENING, 0
        self._publish()

    def _doors(self) -> None:
        self.door_timer += 1
        if self.door == OPENING and self.door_timer >= 2:
            self.door, self.door_timer = OPEN, 0
        elif self.door == OPEN and self._recall_commanded():
            if abs(self.position - self.recall_floor) > 1e-6 and self.door_timer >= 2:
                self.door, self.door_timer = CLOSING, 0  # recall: close and go, parked doors stay open
        elif self.door == OPEN and self.door_timer >= 8:
            self.door, self.door_timer = CLOSING, 0
            self.occupied = self.random.random() < 0.5
        elif self.door == CLOSING and self.door_timer >= 2:
            self.door, self.door_timer = CLOSED, 0

    def _publish(self) -> None:
        moving = self.target is not None and abs(self.position - self.target) > 1e-6 and self.door == CLOSED
        direction = STOPPED
        if moving and self.target is not None:
            direction = UP if self.target > self.position else DOWN
        in_zone = abs(self.position - round(self.position)) < 1e-6
        self.context.setValues(_HR, HR_FLOOR, [round(self.position) if in_zone else int(self.position)])
        self.context.setValues(_HR, HR_DIRECTION, [direction])
        self.context.setValues(_HR, HR_DOOR, [self.door])
        self.context.setValues(_HR, HR_MODE, [self.mode])
        self.context.setValues(_HR, HR_FAULT, [FAULT_ENTRAPMENT if self.trapped else 0])
        self.context.setValues(_HR, HR_LOAD, [self.random.randint(60, 240) if self.occupied else 0])
        self.context.setValues(_DI, DI_RUNNING, [moving])
        self.context.setValues(_DI, DI_DOOR_ZONE, [in_zone])
        self.context.setValues(_DI, DI_OCCUPIED, [self.occupied])


class ElevatorServer(ModbusEndpoints):
    """Elevators on Modbus TCP (one port each), ticking four times a second."""

    def __init__(self, host: str, ports: list[int], cars: list[ElevatorSimulator], tick: float = 0.25) -> None:
        contexts = [ModbusServerContext(devices=c.context, single=True) for c in cars]  # type: ignore[no-untyped-call]
        super().__init__(host, ports, contexts)
        self.cars = cars
        self.tick = tick

    def step_all(self) -> None:
        for car in self.cars:
            car.step()

    async def start_all(self) -> None:
        await super().start_all()
        self.tick_every(self.tick, self.step_all, "elevator-tick")


async def serve_elevators(host: str, port: int, count: int = 1, *, seeds: Sequence[int] | None = None,
                          tick: float = 0.25) -> ElevatorServer:
    cars = [ElevatorSimulator(seed=(seeds[i] if seeds else i + 1)) for i in range(count)]
    server = ElevatorServer(host, port_range(port, count), cars, tick)
    await server.start_all()
    return server


async def run_elevators(host: str, port: int, count: int, *, rtu: bool = False, baudrate: int = 9600) -> None:
    """`gateway simulate elevator`: serve until cancelled, saying where to point the gateway."""
    import sys

    if rtu:
        from simulators.rtu import RtuLine, Unit

        cars = [ElevatorSimulator(seed=i + 1) for i in range(count)]
        async with RtuLine({i + 1: Unit(c.context) for i, c in enumerate(cars)}, baudrate=baudrate) as line:
            print(f"elevators as units 1..{count} on an RS-485 line at {baudrate} baud; point a modbus_rtu bus"
                  f" at port = \"{line.port}\"", file=sys.stderr, flush=True)
            await tick_cars(cars)
        return
    server = await serve_elevators(host, port, count)
    print(f"elevators on {host}:{server.ports[0]}..{server.ports[-1]} (unit 1 each)", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


async def tick_cars(cars: Sequence[ElevatorSimulator], period: float = 0.25) -> None:
    """For cars served on an RTU line: advance them until cancelled."""
    while True:
        await asyncio.sleep(period)
        for car in cars:
            car.step()
