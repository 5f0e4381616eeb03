"""Finds the driver plugins and builds the config unions from them; names no protocol.

In-tree drivers are found by scanning this package for subpackages that export ``PLUGIN``;
installed ones by the ``community_gateway.drivers`` entry-point group. A plugin that fails to
import fails here, loudly, naming the package.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib import metadata
from typing import Annotated, Any, Union

from pydantic import Field, create_model

import drivers
from drivers.base import Driver
from drivers.plugin import DriverPlugin

ENTRY_POINTS = "community_gateway.drivers"


class PluginError(ImportError):
    pass


@functools.cache
def plugins() -> dict[str, DriverPlugin]:
    """Family name -> plugin, in-tree first, then installed ones, each family once."""
    found: dict[str, DriverPlugin] = {}
    sources: list[tuple[str, Any]] = []
    for info in sorted(pkgutil.iter_modules(drivers.__path__), key=lambda i: i.name):
        if info.ispkg:
            sources.append((f"drivers.{info.name}", lambda n=f"drivers.{info.name}": importlib.import_module(n)))
    for entry in sorted(metadata.entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        sources.append((entry.value, entry.load))
    for origin, load in sources:
        try:
            loaded = load()
        except Exception as exc:
            raise PluginError(f"driver plugin {origin} failed to import: {exc}") from exc
        plugin = getattr(loaded, "PLUGIN", loaded)
        if not isinstance(plugin, DriverPlugin):
            if origin.startswith("drivers."):
                continue  # a helper subpackage, not a driver
            raise PluginError(f"{origin} does not export a DriverPlugin")
        if plugin.name in found:
            raise PluginError(f"driver family {plugin.name!r} is defined twice ({origin})")
        kinds = {kind for p in found.values() for kind in p.bus_kinds}
        if clash := kinds & set(plugin.bus_kinds):
            raise PluginError(f"{origin}: bus driver {sorted(clash)[0]!r} is already taken")
        found[plugin.name] = plugin
    if not found:
        raise PluginError("no driver plugins found")
    return found


@functools.cache
def _families() -> dict[str, DriverPlugin]:
    return {kind: plugin for plugin in plugins().values() for kind in plugin.bus_kinds}


def plugin_for_bus(kind: object) -> DriverPlugin | None:
    """The plugin whose buses have this ``driver`` kind (a bus kind belongs to one family)."""
    return _families().get(kind) if isinstance(kind, str) else None


def default_family() -> str:
    """What a device naming a missing bus is checked as (so its other keys are still checked)."""
    chosen = [p.name for p in plugins().values() if p.default] or list(plugins())
    return chosen[0]


def family_of(kind: object) -> str:
    plugin = plugin_for_bus(kind)
    return plugin.name if plugin else default_family()


def driver_class(kind: str) -> type[Driver]:
    plugin = plugin_for_bus(kind)
    if plugin is None:
        raise KeyError(kind)
    return plugin.driver_class()


def bus_union() -> Any:
    members = tuple(bus for plugin in plugins().values() for bus in plugin.buses)
    return Annotated[Union[members], Field(discriminator="driver")]  # noqa: UP007 (a runtime tuple)


@functools.cache
def device_models(mixin: Any = None) -> tuple[type[Any], ...]:
    """Each family's device model, with the core's own per-device fields (``mixin``) added when given.

    Report policies are the uplink's business, not the driver's: the core adds them here, so a
    driver's device schema stays about its wire.
    """
    models = []
    for plugin in plugins().values():
        model = plugin.device
        if mixin is not None:
            model = create_model(model.__name__, __base__=(model, mixin), __module__=model.__module__)
            model.__doc__ = plugin.device.__doc__
        models.append(model)
    return tuple(models)


def device_union(mixin: Any = None) -> Any:
    return Annotated[Union[device_models(mixin)], Field(discriminator="driver")]  # noqa: UP007
