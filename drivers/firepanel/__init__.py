"""Fire alarm control panels that print one text line per event on a serial port."""

from __future__ import annotations

from drivers.firepanel.config import FirePanel, SerialLineBus
from drivers.plugin import DriverPlugin, Indexed
from gateway.core.config import Problem


def validate(buses: Indexed, devices: Indexed) -> list[Problem]:
    """One panel per port: nothing on the line says which of two talkers a line came from."""
    problems: list[Problem] = []
    first: dict[str, str] = {}
    for index, device in devices:
        if not device.enabled:
            continue
        if device.bus in first:
            problems.append(Problem(("devices", index, "bus"), f"bus {device.bus!r} (serial_lines) carries "
                                    f"1 device and {first[device.bus]!r} is already on it", device.bus))
        first.setdefault(device.bus, device.id)
    return problems


PLUGIN = DriverPlugin(
    name="firepanel",
    buses=(SerialLineBus,),
    device=FirePanel,
    driver="drivers.firepanel.driver:FirePanelDriver",
    validate=validate,
)
