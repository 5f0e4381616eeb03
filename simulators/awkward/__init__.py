"""Awkward Modbus TCP devices: the plant-room meters a driver has to survive, served by pymodbus.

``AwkwardDevice`` (``device.py``) is a register bank whose faults, set in an ``AwkwardConfig``
(``config.py``), are switched on one by one and combined: gaps in its map (exception 2), a
read-size limit (exception 3), busy spells (exception 6 or 5), lost requests, slow answers,
connections closed under the client, and a 32-bit energy counter that wraps. ``hooked.py`` is
the request hook on pymodbus's TCP server that lets a device decide whether and what to answer.

``python -m simulators.awkward --behaviour gaps,limit=32`` serves devices from their own process
and prints ``ready <first_port> <count>``.
"""

from simulators.awkward.config import DEFAULT_GAPS, AwkwardConfig, parse_behaviour, runs
from simulators.awkward.device import (
    SUPPORTED,
    AwkwardDevice,
    AwkwardServer,
    AwkwardStats,
    pattern,
    serve_awkward,
    to_words,
)
from simulators.awkward.hooked import HookedEndpoints, Link, NoReply, Responder

__all__ = ["DEFAULT_GAPS", "SUPPORTED", "AwkwardConfig", "AwkwardDevice", "AwkwardServer", "AwkwardStats",
           "HookedEndpoints", "Link", "NoReply", "Responder", "parse_behaviour", "pattern", "runs", "serve_awkward",
           "to_words"]
