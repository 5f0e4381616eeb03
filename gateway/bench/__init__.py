"""`gateway bench ...`: performance figures, measured outside the daemon (which never imports this package).

One module per bench, each registering its own command (``add_command``) and importing what it
measures only when it runs, so ``gateway --help`` stays fast. ``harness`` is what they share:
options, ``--json`` and exit status, child processes, percentiles through ``gateway.core.timing``.
The BACnet bench is registered by the BACnet driver plugin's ``bench`` hook, not here.
"""

from __future__ import annotations

from typing import Any


def add_commands(bench_subparsers: Any) -> None:
    """Register every bench (BACnet's comes from its driver plugin) on the `bench` subparsers."""
    from gateway.bench import (
        bus,
        chaos,
        commands,
        encoders,
        field,
        firepanel,
        fleet,
        modbus,
        noise,
        observe,
        pipeline,
        rules,
        soak,
        uplink,
        vision,
        vision_cameras,
    )

    for module in (modbus, uplink, pipeline, bus, firepanel, rules, vision, field, chaos, soak, noise, commands,
                   encoders, fleet, observe, vision_cameras):
        module.add_command(bench_subparsers)
