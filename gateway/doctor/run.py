"""Plan the checks a config calls for and run them at once, each with its own deadline inside one budget.

A dead device, a broker behind a silent firewall or a camera that never sends a frame costs its own check its
timeout and nothing more: every check runs concurrently, none may outlast ``BUDGET``, and one that does (or
that breaks) is reported as a failure of its own line, never as a hung or crashed doctor.
"""

from __future__ import annotations

import asyncio
import fnmatch
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from gateway import __version__
from gateway.doctor import basics, brokers, buses, certs, outbox, serial, vision
from gateway.doctor.context import Context, Host
from gateway.doctor.result import Result, exit_code, fail, worst

log = structlog.get_logger("gateway.doctor")

BUDGET = 15.0
"""Seconds the whole run may take; each check's own timeout is cut to what is left of it."""
CONFIG_TIMEOUT = 5.0


@dataclass(frozen=True)
class Planned:
    name: str
    run: Callable[[], Awaitable[Result | list[Result]]]
    timeout: float
    stuck: str
    """What to do when it found nothing in time."""


@dataclass
class Report:
    config: str
    site: str | None
    results: list[Result]
    skipped: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)

    def as_dict(self) -> dict[str, Any]:
        return {"version": __version__, "config": self.config, "site": self.site,
                "status": worst(self.results).value, "exit_code": self.exit_code,
                "elapsed_s": round(self.elapsed, 2), "skipped": self.skipped,
                "checks": [r.as_dict() for r in self.results]}


def plan(ctx: Context) -> list[Planned]:
    """Every check this config calls for, in the order they are shown."""
    quick = "run doctor again; if it stays, look at the box's load (top) and the journal"
    out = [Planned("service", partial(basics.service, ctx), 6.0, quick),
           Planned("clock", partial(basics.clock, ctx), 3.0, quick)]
    if ctx.cfg is None:
        return out
    cfg = ctx.cfg
    out += [Planned("disk", partial(basics.disk, ctx), 5.0, f"the disk under {cfg.store.data_dir} may be hung"),
            Planned("store", partial(basics.store, ctx), 8.0, "the store may be locked by a long write; run again")]
    for bus in serial.serial_buses(ctx):
        out.append(Planned(f"serial:{bus.id}", partial(serial.serial_port, ctx, bus), 3.0, quick))
    for bus in cfg.buses:  # each keeps to its own bus_budget, or through the daemon waits its turn till the end
        out.append(Planned(f"bus:{bus.id}", partial(buses.bus_reachable, ctx, bus), math.inf, buses.STUCK))
    from gateway.northbound.routes import uplink_configs

    for name, uplink in uplink_configs(cfg).items():
        out.append(Planned(f"broker:{name}", partial(brokers.broker, ctx, name, uplink), brokers.BROKER_BUDGET,
                           "no answer in time: a firewall dropping packets, or a wrong host"))
    for key, path, renew in certs.cert_files(ctx):
        out.append(Planned(f"cert:{key}", partial(certs.cert_file, ctx, key, path, renew), 3.0, quick))
    out.append(Planned("models", partial(vision.models, ctx), 12.0, quick))
    for camera in vision.enabled_cameras(ctx):
        out.append(Planned(f"camera:{camera.id}", partial(vision.camera_stream, ctx, camera, vision.STREAM_TIMEOUT),
                           vision.STREAM_TIMEOUT + 4,
                           "the stream did not open in time: check the camera's address and the network"))
    out.append(Planned("outbox", partial(outbox.outbox, ctx), 8.0, quick))
    return out


def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


async def _load(ctx: Context) -> None:
    from gateway.config import ConfigError, ConfigProblem, load_config

    try:
        async with asyncio.timeout(CONFIG_TIMEOUT):
            # secret files are judged readable by the service, which reads them: not by whoever runs doctor
            ctx.cfg = await asyncio.to_thread(load_config, ctx.config_path, warnings=ctx.warnings,
                                              reader=ctx.host.service_user)
    except ConfigError as exc:
        ctx.problems = list(exc.problems)
    except TimeoutError:
        ctx.problems = [ConfigProblem(str(ctx.config_path), None, "", f"not read within {CONFIG_TIMEOUT:g} s")]


async def diagnose(config_path: Path, *, host: Host | None = None, budget: float = BUDGET,
                   skip: Sequence[str] = ()) -> Report:
    """Every check, at once; the report lists them in plan order."""
    started = time.monotonic()
    deadline = started + budget
    ctx = Context(config_path=config_path, host=host or Host.detect(), deadline=deadline)
    await _load(ctx)
    planned = plan(ctx)

    async def one(check: Planned) -> list[Result]:
        limit = max(0.1, min(check.timeout, deadline - time.monotonic()))
        try:
            async with asyncio.timeout(limit):
                found = await check.run()
        except TimeoutError:
            return [fail(check.name, f"no verdict within {limit:.1f} s", check.stuck)]
        except Exception as exc:  # a broken check is one failed line, never a crashed doctor
            # the type only: an exception's message may hold a secret
            log.warning("doctor check failed", check=check.name, error=type(exc).__name__)
            return [fail(check.name, f"the check itself failed: {type(exc).__name__}",
                         "run it again; if it stays, report it with `gateway doctor --json`")]
        return found if isinstance(found, list) else [found]

    chosen = [p for p in planned if not _skipped(p.name, skip)]
    try:
        found = await asyncio.gather(*(one(p) for p in chosen))
    finally:
        ctx.close()
    results = [r for group in found for r in group if not _skipped(r.name, skip)]
    if not _skipped("config", skip):
        results.insert(0, basics.config_result(ctx))
    skipped = [p.name for p in planned if _skipped(p.name, skip)] + (["config"] if _skipped("config", skip) else [])
    return Report(config=str(config_path), site=ctx.cfg.site.id if ctx.cfg else None, results=results,
                  skipped=skipped, elapsed=time.monotonic() - started)
