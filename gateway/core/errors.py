"""What can go wrong in the field, as types: drivers raise them, the core counts and reports them."""

from __future__ import annotations


class DriverError(Exception):
    """An expected field failure: the device is unwell, the gateway is not."""


class DeviceTimeout(DriverError):
    pass


class DeviceUnreachable(DriverError):
    """The connection could not be made or was lost."""


class ExceptionResponse(DriverError):
    """The device answered with a protocol-level exception (Modbus exception code, BACnet error)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"exception response code {code}")
        self.code = code


class BadResponse(DriverError):
    """The device answered something malformed: wrong length, wrong id, undecodable bytes."""


class WriteRefused(Exception):
    """A write that must not go to the wire: unknown or read-only point, value out of limits."""


_KINDS = {DeviceTimeout: "timeout", DeviceUnreachable: "unreachable", ExceptionResponse: "exception",
          BadResponse: "garbage"}


def error_kind(exc: DriverError) -> str:
    """A short, stable name for counters: timeout, unreachable, exception, garbage."""
    for cls in type(exc).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    return type(exc).__name__
