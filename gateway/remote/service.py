"""Platform commands inside the daemon: hostile bytes in, checked layer by layer, results out through the outbox.

The uplink hands every ``cmd/req`` message to ``received`` from its message loop; that call never
awaits: it decodes, verifies, rate-limits and queues. Each command then waits in its lane (one per
device, one for alarms, one for the rest), so a dead device's slow reads never hold up an alarm
acknowledgement, and two writes to one device run in the order they came. A result is committed in
one transaction with its ledger row and audit line, so an answer survives an uplink drop and a
redelivered request is answered ``duplicate``, never executed twice, even across a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog

from gateway.commands import CommandError, CommandHandler, ReloadCommand, WriteCommand, parse_command
from gateway.config.schema import GatewayConfig
from gateway.core.data import Event, Priority
from gateway.core.errors import DriverError
from gateway.core.ids import new_id
from gateway.core.timing import SYSTEM_CLOCK, Clock, RateLimiter
from gateway.facts import Fact
from gateway.northbound.routes import VIA
from gateway.recorder import AsyncStore
from gateway.remote.envelope import (
    Delivery,
    Dropped,
    Envelope,
    Rejected,
    Request,
    Status,
    decode,
    public_keys,
    result_body,
    target_of,
)
from gateway.store import MAIN_UPLINK, Batch

log = structlog.get_logger("gateway.remote")
LANE_DEPTH = 32
"""Commands waiting in one lane; more are answered `rejected` (busy)."""
ALARM_ALIASES = {"disable": "out_of_service", "enable": "in_service"}
PRUNE_EVERY = 3600.0
PLAIN = Delivery()
"""An MQTT 3.1.1 request: answered on ``cmd/res``."""


class PlatformCommands:
    def __init__(self, cfg: GatewayConfig, handler: CommandHandler, store: AsyncStore, committed: asyncio.Event,
                 *, clock: Clock = SYSTEM_CLOCK, birth: Callable[[], None] | None = None,
                 status: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.handler = handler
        self.store = store
        self.committed = committed
        self.clock = clock
        self.birth = birth
        self.status = status
        self.dropped: Counter[str] = Counter()
        """Requests not answered, by reason (not JSON, no id, another site's, a flood beyond the rate)."""
        self.answered: Counter[str] = Counter()
        self._lanes: dict[str, asyncio.Queue[tuple[Request, Delivery, float]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._said = RateLimiter(1, 60.0)
        self._spared: set[asyncio.Task[None]] = set()
        self.configure(cfg)

    def configure(self, cfg: GatewayConfig) -> None:
        """Take a (re)loaded config: limits restart from zero, lanes and the ledger stay."""
        self.cfg = cfg
        self.site = cfg.site.id
        self.rules = cfg.commands
        self.keys = public_keys(cfg.commands.public_keys)
        self._actors: dict[str, RateLimiter] = {}
        self._everyone = RateLimiter(cfg.commands.rate, 60.0)
        self._flood = RateLimiter(cfg.commands.rate, 60.0)  # rate-limit refusals answered; beyond: dropped

    # -- in, from the uplink's message loop ----------------------------------------------------------------------

    def received(self, payload: bytes, delivery: Delivery = PLAIN) -> None:
        now = self.clock.time()
        try:
            request = decode(payload, self.site, self.keys)
        except Dropped as exc:
            self._drop(exc.reason, now)
            return
        except Rejected as exc:
            self._refuse(exc, delivery, now)
            return
        actor = request.envelope.actor
        limiter = self._actors.setdefault(actor, RateLimiter(self.rules.actor_rate, 60.0))
        if len(self._actors) > 10_000:  # a flood of made-up actors must not grow memory without bound
            self._actors = {actor: limiter}
        who = _who(request)
        if not (limiter.allow(now) and self._everyone.allow(now)):
            self._refuse(Rejected(request.id, "rate limited: too many commands, try again in a minute", actor,
                                  request.envelope.cmd), delivery, now, who)
            return
        lane = self._lane(request)
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = asyncio.Queue(LANE_DEPTH)
            self._workers[lane] = asyncio.get_running_loop().create_task(self._work(queue), name=f"cmd:{lane}")
        try:
            queue.put_nowait((request, delivery, now))
        except asyncio.QueueFull:
            self._refuse(Rejected(request.id, f"busy: {LANE_DEPTH} commands already wait for {lane}", actor,
                                  request.envelope.cmd), delivery, now, who)

    def _lane(self, request: Request) -> str:
        cmd = request.envelope.cmd
        device = (request.envelope.model_extra or {}).get("device")
        if cmd in ("read", "write") and isinstance(device, str) and device in self.handler.drivers:
            return f"device:{device}"
        return "alarms" if cmd in ("alarm", "alarms") else "gateway"

    def _drop(self, reason: str, now: float) -> None:
        self.dropped[reason] += 1
        if self._said.allow(now):
            log.warning("platform command dropped", reason=reason, dropped=dict(self.dropped))
            self.handler.sink.event(Event("command.dropped", self.site, Priority.EVENT,
                                          {"reason": reason, "dropped": dict(self.dropped)}, now))

    def _refuse(self, exc: Rejected, delivery: Delivery, now: float, who: str | None = None) -> None:
        """Answer ``rejected`` (a bad signature's actor is only what the request claims: "unverified")."""
        if not self._flood.allow(now):
            self._drop("flood", now)
            return
        who = who or f"mqtt:unverified/{exc.actor or '?'}"
        task = asyncio.get_running_loop().create_task(
            self._answer(exc.request_id, exc.cmd, who, "rejected", delivery, now, error=exc.reason,
                         check_ledger=True, target=exc.target))
        self._spare(task)

    # -- the lanes -----------------------------------------------------------------------------------------------

    async def _work(self, queue: asyncio.Queue[tuple[Request, Delivery, float]]) -> None:
        while True:
            request, delivery, received = await queue.get()
            try:
                await self._execute(request, delivery, received)
            except Exception:  # a bug must not kill the lane: the next command still runs
                log.exception("platform command failed", request=request.id)

    async def _execute(self, request: Request, delivery: Delivery, received: float) -> None:
        env = request.envelope
        who = _who(request)
        now = self.clock.time()
        answer = functools.partial(self._answer, request.id, env.cmd, who, delivery=delivery, received=received,
                                   target=target_of(env.command()), value=_written(env))
        refusal = self._check(request, delivery, received, now)
        if refusal is not None:
            status, reason = refusal
            await answer(status, error=reason, check_ledger=True)
            return
        before = await self.store.run(self.store.store.claim_command, request.id, received, who, env.cmd)
        if before is not None:
            await self._duplicate(request.id, env.cmd, who, delivery, received, before, target_of(env.command()))
            return
        try:
            status, result, error = await self._run(request, who)
        except Exception as exc:  # recorded, so a redelivery says what happened instead of running it again
            status, result, error = "failed", None, f"internal error: {type(exc).__name__}"
            log.exception("platform command crashed", request=request.id)
        await answer(status, result=result, error=error, ledger=True)

    def _check(self, request: Request, delivery: Delivery, received: float, now: float) -> tuple[Status, str] | None:
        env = request.envelope
        deadline = env.expires_at if delivery.expiry is None else min(env.expires_at, received + delivery.expiry)
        if deadline < now:
            return "expired", f"expired {now - deadline:.1f} s ago; not executed"
        if env.expires_at > received + self.rules.max_ttl:
            return "expired", f"expires_at is more than commands.max_ttl ({self.rules.max_ttl:g} s) ahead; not executed"
        if env.cmd not in self.rules.allow:
            return "rejected", f"{env.cmd!r} is not allowed here ([commands] allow = {list(self.rules.allow)})"
        return None

    async def _run(self, request: Request, who: str) -> tuple[Status, dict[str, Any] | None, str | None]:
        cmd = request.envelope.cmd
        unknown = sorted(set(request.envelope.command()) - {"cmd"}) if cmd in ("birth", "status") else []
        if unknown:  # as the contract says (gateway schema commands) and as parse_command does for the others
            return "rejected", None, f"bad command: {unknown[0][:64]}: Extra inputs are not permitted"
        if cmd == "birth":
            if self.birth is None:
                return "failed", None, "no uplink to republish on"
            self.birth()
            return "ok", {"birth": "republished"}, None
        if cmd == "status":
            return "ok", (await self.status()) if self.status else {}, None
        fields = request.envelope.command()
        action = fields.get("action")
        if cmd == "alarm" and isinstance(action, str) and action in ALARM_ALIASES:  # any JSON may stand there
            fields["action"] = ALARM_ALIASES[action]
        try:
            if cmd in ("write", "alarm", "reload"):
                fields["actor"] = who[:128]  # the handler's limit; a 64-character key id and actor reach 134
            command = parse_command(fields)
            if isinstance(command, WriteCommand):
                self._authorise(command)
            result = await self.handler.execute(command)
        except CommandError as exc:
            return "rejected", None, str(exc)
        except DriverError as exc:
            return "failed", None, f"{type(exc).__name__}: {exc}"
        if isinstance(command, ReloadCommand) and result.get("applied") is False:
            problems = "; ".join(result.get("problems") or [])
            return "rejected", result, f"{result.get('reason')}{': ' + problems if problems else ''}"
        if isinstance(command, WriteCommand) and result.get("result") == "mismatch":
            return "failed", result, f"read back {result.get('read_back')!r} after writing {command.value!r}"
        return "ok", result, None

    def _authorise(self, command: WriteCommand) -> None:
        """The layers a remote write passes beyond the local ones: the point says `remote`, and on a
        life-safety device it says so in as many words."""
        try:
            device = self.cfg.device(command.device)
        except KeyError:
            raise CommandError(f"no device {command.device!r}") from None
        where = f"{command.device}.{command.point}"
        if command.point not in device.point_ids():
            raise CommandError(f"device {command.device!r} has no point {command.point!r}")
        spec = device.write_spec(command.point)
        if spec is None:
            raise CommandError(f"{where} is not writable")
        if not spec.remote:
            raise CommandError(f"{where} is not open to remote writes (remote = true in its point config)")
        if device.life_safety and spec.remote != "life_safety":
            raise CommandError(f"{where} is on a life-safety device: remote writes need remote = \"life_safety\" "
                               "on the point")

    # -- out, through the outbox ---------------------------------------------------------------------------------

    async def _answer(self, request_id: str, cmd: str, who: str, status: Status, delivery: Delivery,
                      received: float, *, result: dict[str, Any] | None = None, error: str | None = None,
                      original: str | None = None, ledger: bool = False, check_ledger: bool = False,
                      target: str = "", value: Any = None) -> None:
        if check_ledger:  # a refused redelivery of a command that ran: say what it came to, not why it is refused
            before = await self.store.run(self.store.store.command_outcome, request_id)
            if before is not None:
                await self._duplicate(request_id, cmd, who, delivery, received, before, target)
                return
        now = self.clock.time()
        body = result_body(request_id, self.site, cmd, status, now, result=result, error=error, original=original)
        wire = dict(body)
        if delivery.reply_to is not None or delivery.correlation is not None:
            wire["_mqtt5"] = {"reply_to": delivery.reply_to,
                              "correlation": delivery.correlation.hex() if delivery.correlation else None}
        if delivery.uplink not in (None, MAIN_UPLINK):  # answered on the uplink it came in on (routes.VIA)
            wire[VIA] = delivery.uplink
        priority = Priority.ALARM if cmd in ("alarm", "alarms") else Priority.EVENT
        fact = Fact(priority, "result", request_id, new_id(), now, orjson.dumps(wire, default=str))
        audit: dict[str, Any] = {"actor": who, "req": request_id, "cmd": cmd, "result": status}
        if target:
            audit["target"] = target
        if value is not None:
            audit["value"] = value
        if error:
            audit["error"] = error
        batch = Batch(facts=[fact], audit=[(now, "command", audit)])
        if ledger:
            batch.results.append((request_id, status, orjson.dumps(body, default=str)))
        self.answered[status] += 1
        try:
            await self.store.run(self.store.store.commit, batch)
        except Exception as exc:
            log.error("command result not stored", request=request_id, status=status, error=str(exc))
            return
        self.committed.set()
        (log.info if status in ("ok", "duplicate") else log.warning)(
            "platform command", request=request_id, cmd=cmd, actor=who, status=status, error=error)

    async def _duplicate(self, request_id: str, cmd: str, who: str, delivery: Delivery, received: float,
                         before: tuple[str | None, bytes | None], target: str = "") -> None:
        status, body = before
        first = orjson.loads(body) if body else {}
        error = first.get("error") if status else "it was being executed when the gateway stopped; not executed again"
        await self._answer(request_id, cmd, who, "duplicate", delivery, received, result=first.get("result"),
                           error=error, original=status or "unknown", target=target)

    # -- housekeeping ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Forget command ids older than ``remember``, hourly."""
        while True:
            before = self.clock.time() - self.rules.remember
            with contextlib.suppress(Exception):
                await self.store.run(self.store.store.forget_commands, before)
            await self.clock.sleep(PRUNE_EVERY)

    async def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # refusals being answered: stored before the store closes
            async with asyncio.timeout(5.0):
                await asyncio.gather(*self._spared, return_exceptions=True)

    def _spare(self, task: asyncio.Task[None]) -> None:
        self._spared.add(task)
        task.add_done_callback(self._spared.discard)


def counters(commands: PlatformCommands | None) -> Mapping[str, Any]:
    if commands is None:
        return {}
    return {"answered": dict(commands.answered), "dropped": dict(commands.dropped)}


def _written(envelope: Envelope) -> Any:
    """A write's value as the audit keeps it (a long text cut short); None for other commands."""
    value = (envelope.model_extra or {}).get("value") if envelope.cmd == "write" else None
    return value if value is None or isinstance(value, bool | int | float) else str(value)[:100]


def _who(request: Request) -> str:
    """The audit's actor: the key that signed (or "unsigned": only the broker's ACL vouches) and the platform's
    own name for the person."""
    return f"mqtt:{request.signer or 'unsigned'}/{request.envelope.actor}"
