"""Hostile input on cmd/req: arbitrary bytes, arbitrary JSON, wrong types, huge values, unknown devices and points,
numbers JSON cannot carry, other sites' requests. Every one is answered `rejected` (or `expired`) or dropped with a
counted reason; nothing crashes; nothing reaches a device.

The requests go into a running daemon's ``PlatformCommands.received``, as its uplink hands them over, with two
simulated meters on Modbus TCP whose every write on the wire is recorded. The daemon's uplink points at a port
where no broker listens, so every answer stays in the outbox, where the test reads it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import free_port, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import MQTTMessage
from test_platform_commands import SITE, Signer, WireWrites, config

from gateway.config import load_config
from gateway.core.data import Priority
from gateway.daemon import Daemon, data_path
from gateway.northbound.json_v2 import JsonEncoder
from gateway.remote.envelope import MAX_REQUEST, Delivery, Dropped, Rejected, decode, public_keys
from gateway.remote.service import PlatformCommands
from gateway.store import MAIN_UPLINK, Store
from gateway.uplink import INCOMING
from simulators.meter import MeterServer, serve_meters

pytestmark = pytest.mark.timeout(300)
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Decoding only: cheap."""
LIVE = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Through a running daemon: each example waits for its answer."""
UNANSWERED = {"not JSON", "not a JSON object", "no id", "other site", "too large"}
"""The reasons a request is dropped without an answer (a flood's are counted as "flood": not reached here)."""

# -- strategies ----------------------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["", "meter-0", "status", "write", "1", "true", "null", "relinquish", "\u0000", "💥"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=10)
FIELDS = st.sampled_from(["v", "id", "expires_at", "actor", "site", "cmd", "device", "point", "value", "action",
                          "key", "note", "until", "verify", "all", "signed", "sig", "key", "extra"])


def _dump(data: Any) -> bytes:
    """JSON as any platform may write it: integers of any size, text escaped (lone surrogates included)."""
    return json.dumps(data, allow_nan=False).encode()


def _unique() -> Callable[[], str]:
    counter = iter(range(10**9))
    return lambda: f"h-{time.monotonic_ns()}-{next(counter)}"


new_id = _unique()


@st.composite
def broken_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """A request that looks like one and has at least one thing wrong with it; also what kind of wrong."""
    now = time.time()
    base: dict[str, Any] = {"v": 1, "id": new_id(), "expires_at": now + 60, "actor": "guard.wang"}
    base |= draw(st.sampled_from([
        {"cmd": "write", "device": "meter-0", "point": "status", "value": 5},
        {"cmd": "write", "device": "meter-0", "point": "relay_closed", "value": False},
        {"cmd": "read", "device": "meter-0", "point": "status"},
        {"cmd": "alarm", "action": "acknowledge", "key": "fire/04", "note": "on the way"},
        {"cmd": "status"},
    ]))
    defect = draw(st.sampled_from(["envelope", "expiry", "cmd", "target", "value", "field", "site", "type"]))
    if defect == "envelope":
        key = draw(st.sampled_from(["v", "expires_at", "actor"]))
        wrong: dict[str, list[Any]] = {
            "v": [None, "", [], {}, "1", 2, 0, -1, 2**70, 1.5],
            "expires_at": [None, "soon", [], {}, "1e999", "-inf", {"at": 1}],
            "actor": [None, "", [], {}, 2, "x" * 65, "a/b", "tab\there", "nul\x00", "del\x7f"],
        }
        base[key] = draw(st.sampled_from(wrong[key]))
    elif defect == "expiry":  # in the past, or further ahead than max_ttl, or absurd
        base["expires_at"] = draw(st.sampled_from([now - 1, -1e308, 0, now + 301, now + 1e6, 1e308, 2**64]))
    elif defect == "cmd":
        base["cmd"] = draw(st.sampled_from(["relearn", "enrol", "erase", "faces", "shell", "", "WRITE", "reload"])
                           | st.text(max_size=10).filter(lambda c: c not in {"read", "write", "alarm", "alarms",
                                                                            "values", "birth", "status"}))
    elif defect == "target":
        if base["cmd"] in ("write", "read"):
            base.update(draw(st.sampled_from([
                {"device": "meter-9"}, {"device": "nobody", "point": "status"}, {"point": "no_such_point"},
                {"point": "current_a"}, {"point": "voltage_a"}, {"device": "meter-1", "point": "relay_closed"},
                {"device": "../meter-0"}, {"device": "meter-0/+"}, {"device": 7}, {"point": ["status"]},
            ])) if base["cmd"] == "write" else draw(st.sampled_from([
                {"device": "meter-9"}, {"point": "no_such_point"}, {"device": None}, {"device": "x" * 200},
            ])))
        else:
            base.update(cmd="alarm", action="acknowledge", key=draw(st.sampled_from(["", "x" * 400, 5, None])))
    elif defect == "value":
        base.update(cmd="write", device="meter-0", point=draw(st.sampled_from(["status", "relay_closed"])))
        bad = (st.floats(min_value=10.5, allow_infinity=False) | st.floats(max_value=-0.5, allow_infinity=False)
               | st.integers(min_value=11) | st.integers(max_value=-1) | st.just(1e308) | st.just(-1e308)
               | st.lists(st.integers(0, 5), max_size=3) | st.dictionaries(st.text(max_size=3), st.integers(0, 5))
               | st.just(None) | st.just("five") | st.just("x" * 5000) | st.just(True))
        if base["point"] == "relay_closed":
            bad = (st.integers().filter(lambda n: n not in (0, 1)) | st.floats(allow_infinity=False)
                   | st.just(None) | st.text(max_size=8).filter(lambda t: t.strip().lower() not in TRUTHY)
                   | st.lists(st.booleans(), min_size=1, max_size=2))
        base["value"] = draw(bad)
    elif defect == "field":  # a field the command does not have, or one of its own with a wrong type
        base.update(draw(st.sampled_from([
            {"unknown": 1}, {"verify": "maybe"}, {"verify": [True]}, {"device": {"id": "meter-0"}},
        ]))) if base["cmd"] != "alarm" else base.update(draw(st.sampled_from([
            {"action": ["acknowledge"]}, {"action": {"do": "acknowledge"}}, {"action": "explode"},
            {"note": "n" * 600}, {"until": "tomorrow"}, {"action": None},
        ])))
        if base["cmd"] == "status":
            base["unknown"] = draw(JSON)
    elif defect == "site":
        base["site"] = draw(st.text(min_size=1, max_size=20).filter(lambda s: s != SITE) | st.integers())
    else:  # the whole request is of the wrong shape around a valid id
        base = {"v": 1, "id": base["id"], **draw(st.dictionaries(FIELDS, JSON, max_size=4).filter(
            lambda d: "id" not in d and d.get("cmd") not in ("status", "birth", "alarms", "values")))}
    return _dump(base), defect


TRUTHY = {"1", "true", "on", "yes", "closed", "close", "0", "false", "off", "no", "open", "null", "relinquish"}


# -- decoding on its own -------------------------------------------------------------------------------------------

SIGNER = Signer("ops")
KEYS = public_keys({"ops": SIGNER.public})


def _decoded(payload: bytes, keys: Any) -> str:
    """What decoding made of it: "request", "rejected" or "dropped: reason"; anything else raised fails the test."""
    try:
        decode(payload, SITE, keys)
    except Dropped as exc:
        assert exc.reason in UNANSWERED, exc.reason
        return f"dropped: {exc.reason}"
    except Rejected as exc:
        assert exc.reason and exc.request_id
        return "rejected"
    return "request"


@QUICK
@given(st.binary(max_size=300) | st.binary(max_size=20).map(lambda b: b"{" + b" " * MAX_REQUEST + b),
       st.booleans())
def test_arbitrary_bytes_decode_to_a_drop_or_a_rejection(payload: bytes, signed: bool) -> None:
    assert _decoded(payload, KEYS if signed else {}) != "request" or payload.lstrip().startswith(b"{")


@QUICK
@given(JSON | st.dictionaries(FIELDS, JSON, max_size=8), st.booleans())
def test_arbitrary_json_decodes_to_a_drop_a_rejection_or_a_well_formed_request(data: Any, signed: bool) -> None:
    outcome = _decoded(_dump(data), KEYS if signed else {})
    if outcome == "request":  # only a complete envelope gets through, and never unsigned where keys are set
        assert not signed and isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("id"), str)


@QUICK
@given(broken_requests(), st.sampled_from(["plain", "signed", "forged"]))
def test_signed_or_not_a_broken_request_never_decodes_to_an_unsigned_one(case: tuple[bytes, str], how: str) -> None:
    payload, _ = case
    if how == "plain":
        _decoded(payload, {})
        assert _decoded(payload, KEYS) in ("rejected", "dropped: other site", "dropped: no id")
        return
    signer = SIGNER if how == "signed" else Signer("ops")
    outcome = _decoded(signer.sign(payload.decode()), KEYS)
    if how == "forged":
        assert outcome in ("rejected", "dropped: other site", "dropped: no id")


@pytest.mark.parametrize("text", [
    b'{"v":1,"id":"n-1","expires_at":NaN,"actor":"a","cmd":"status"}',
    b'{"v":1,"id":"n-2","expires_at":1e999,"actor":"a","cmd":"status"}',
    b'{"v":1,"id":"n-3","expires_at":-Infinity,"actor":"a","cmd":"status"}',
    b'{"v":1,"id":"n-4","expires_at":1.7e9,"actor":"a","cmd":"write","device":"meter-0","point":"status",'
    b'"value":1e999}',
    b'{"v":1,"id":"n-5","expires_at":1.7e9,"actor":"a","cmd":"write","device":"meter-0","point":"status",'
    b'"value":NaN}',
])
def test_numbers_json_cannot_carry_are_dropped_as_not_json(text: bytes) -> None:
    assert _decoded(text, {}) == "dropped: not JSON"


def test_a_number_too_big_for_a_double_is_refused_as_an_expiry() -> None:
    text = b'{"v":1,"id":"big-1","expires_at":' + b"9" * 400 + b',"actor":"a","cmd":"status"}'
    assert _decoded(text, {}) in ("dropped: not JSON", "rejected")


# -- through a running daemon --------------------------------------------------------------------------------------

class Site:
    """A daemon with commands on, two meters (one of them life-safety), and what reached the meters' registers."""

    def __init__(self, tmp: Path, commands: str) -> None:
        self.tmp = tmp
        self.commands = commands
        self.loop = asyncio.new_event_loop()
        self.server: MeterServer | None = None
        self.daemon: Daemon | None = None
        self.task: asyncio.Task[None] | None = None
        self.wires: list[WireWrites] = []

    @property
    def platform(self) -> PlatformCommands:
        assert self.daemon is not None and self.daemon.platform is not None
        return self.daemon.platform

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        self.server = await serve_meters("127.0.0.1", 0, count=2, tick_interval=3600)
        self.wires = [WireWrites(m.context) for m in self.server.meters]
        path = config(self.tmp, self.server.ports, free_port(), self.commands, life_safety={1}, interval="1s")
        self.daemon = Daemon(load_config(path))
        self.task = asyncio.create_task(self.daemon.run())
        daemon = self.daemon
        await until(lambda: all(p.state.polls >= 1 for p in daemon.pollers.values()))

    async def _stop(self) -> None:
        if self.daemon is not None and self.task is not None:
            self.daemon.stop()
            async with asyncio.timeout(15):
                await self.task
        if self.server is not None:
            await self.server.close()

    def total(self) -> int:
        return sum(self.platform.answered.values()) + sum(self.platform.dropped.values())

    def feed(self, payload: bytes, delivery: Delivery | None = None) -> tuple[str, str]:
        """Hand one request over as the uplink does; ("answered", status) or ("dropped", reason)."""
        return self.run(self._feed(payload, delivery or Delivery()))  # type: ignore[no-any-return]

    async def _feed(self, payload: bytes, delivery: Delivery) -> tuple[str, str]:
        platform = self.platform
        answered, dropped, before = Counter(platform.answered), Counter(platform.dropped), self.total()
        platform.received(payload, delivery)
        await until(lambda: self.total() > before, within=10)
        await asyncio.sleep(0)
        assert self.total() == before + 1, "one request, one outcome"
        if platform.dropped != dropped:
            (reason,) = (platform.dropped - dropped).keys()
            return "dropped", reason
        (status,) = (platform.answered - answered).keys()
        return "answered", status

    async def settled(self) -> list[dict[str, Any]]:
        """Once every answer is committed: the result messages waiting in the outbox, as the platform will get them."""
        assert self.daemon is not None
        store = self.daemon.store
        audited = sum(self.platform.answered.values())

        async def committed() -> int:
            entries = await store.run(store.store.audit_entries, 100_000)
            return sum(1 for e in entries if e["action"] == "command")

        async with asyncio.timeout(15):
            while await committed() < audited:  # noqa: ASYNC110 (the store's own thread writes them)
                await asyncio.sleep(0.05)
        rows = await store.run(store.store.next_batch, 100_000, MAIN_UPLINK, [])
        encoder = JsonEncoder(SITE)
        out = []
        for row in rows:
            if row.fact.kind == "result":
                message = encoder.message(row.fact)
                assert message.topic in ("cmd/res", "cmd/res/x")  # the MQTT 5 reply topics the test gives
                body = orjson.loads(message.payload)
                body["_priority"] = row.fact.priority.name
                out.append(body)
        return out


@contextlib.contextmanager
def site(tmp: Path, commands: str) -> Iterator[Site]:
    s = Site(tmp, commands)
    try:
        s.run(s._start())
        yield s
    finally:
        try:
            s.run(s._stop())
        finally:
            s.loop.close()


OPEN = """[commands]
enabled = true
allow = ["read", "write", "alarm", "alarms", "values", "status", "birth"]
actor_rate = 10000
rate = 100000
"""
"""Everything allowed and no rate limit worth the name: each hostile request meets the checks themselves."""


def _no_writes(s: Site) -> None:
    assert [w.seen for w in s.wires] == [[], []], "a hostile request reached a device"


def test_hostile_requests_are_rejected_or_dropped_and_nothing_is_written(tmp_path: Path) -> None:
    outcomes: Counter[tuple[str, str]] = Counter()
    with site(tmp_path, OPEN) as s:

        @LIVE
        @given(st.one_of(  # mostly requests that nearly pass: they go furthest into the checks
            st.binary(max_size=200).map(lambda b: (b, "bytes")),
            st.dictionaries(FIELDS, JSON, max_size=8).map(lambda d: (_dump(d), "json")),
            broken_requests(), broken_requests(), broken_requests(), broken_requests(),
        ), st.none() | st.builds(Delivery, reply_to=st.none() | st.sampled_from(["cmd/res/x", "cmd/res"]),
                                 correlation=st.none() | st.binary(max_size=64),
                                 expiry=st.none() | st.floats(0, 2**32)))
        def hostile(case: tuple[bytes, str], delivery: Delivery | None) -> None:
            payload, kind = case
            outcome = s.feed(payload, delivery)
            outcomes[outcome] += 1
            if delivery is not None and delivery.expiry is not None and outcome == ("answered", "expired"):
                return  # the broker's expiry may run out first: expired is an answer for any of them
            what, detail = outcome
            if what == "dropped":
                assert detail in UNANSWERED, detail
            elif kind == "expiry":
                assert detail == "expired", (payload, detail)
            elif kind in ("bytes", "json", "type"):  # what these say of their expiry is anyone's guess
                assert detail in ("rejected", "expired"), (payload, detail)
            else:
                assert detail == "rejected", (payload, detail)

        hostile()
        results = s.run(s.settled())
        _no_writes(s)
        assert s.task is not None and not s.task.done(), "the daemon stopped"
        assert not s.platform.answered.get("failed") and not s.platform.answered.get("ok")
        # and the detector is alive: a well-formed write the site allows does reach the register
        valid = _dump({"v": 1, "id": new_id(), "expires_at": time.time() + 60, "actor": "guard.wang",
                       "cmd": "write", "device": "meter-0", "point": "status", "value": 5})
        assert s.feed(valid) == ("answered", "ok")
        assert [w.seen for w in s.wires] == [[(16, 22, [5])], []]
    # every answer is in the outbox for cmd/res with a reason a person can read
    assert len(results) == sum(n for (what, _), n in outcomes.items() if what == "answered")
    assert all(r["status"] in ("rejected", "expired") and r["error"] for r in results)
    assert outcomes[("answered", "rejected")] > 0 and sum(n for (w, _), n in outcomes.items() if w == "dropped") > 0


def test_requests_for_other_sites_are_dropped_and_counted_signed_or_not(tmp_path: Path) -> None:
    keys = f'public_keys = {{ ops = "{SIGNER.public}" }}\n'
    stranger = Signer("theirs")
    with site(tmp_path, OPEN + keys) as s:
        for other in ("other-site", "TEST-SITE", "test-site ", 7, ["test-site"]):
            text = orjson.dumps({"v": 1, "id": new_id(), "expires_at": time.time() + 60, "actor": "guard",
                                 "site": other, "cmd": "write", "device": "meter-0", "point": "status", "value": 5})
            for payload in (text, SIGNER.sign(text.decode()), stranger.sign(text.decode())):
                assert s.feed(payload) == ("dropped", "other site")
        assert s.platform.dropped["other site"] == 15
        _no_writes(s)


def test_numbers_out_of_range_for_any_register_are_refused_before_a_device(tmp_path: Path) -> None:
    """The values a register cannot take, and the ones a float cannot even be: refused, none on the wire."""
    with site(tmp_path, OPEN) as s:
        values: list[Any] = [1e308, -1e308, 2**64, 10**30, -(2**63) - 1, 11, -1, 10.6, -0.6, "1e999", "nan", "inf",
                             "-inf", "NaN", "Infinity", True, None, [5], {"v": 5}]
        for value in values:
            payload = _dump({"v": 1, "id": new_id(), "expires_at": time.time() + 60, "actor": "a",
                             "cmd": "write", "device": "meter-0", "point": "status", "value": value})
            assert s.feed(payload) == ("answered", "rejected"), value
        for raw in (b"1e999", b"NaN", b"-Infinity", b"1" + b"0" * 400):
            payload = (b'{"v":1,"id":"' + new_id().encode() + b'","expires_at":' + str(time.time() + 60).encode()
                       + b',"actor":"a","cmd":"write","device":"meter-0","point":"status","value":' + raw + b"}")
            assert s.feed(payload) in (("dropped", "not JSON"), ("answered", "rejected")), raw
        results = s.run(s.settled())
        _no_writes(s)
    assert all(r["status"] == "rejected" and r["error"] for r in results)
    assert any("maximum" in r["error"] for r in results) and any("minimum" in r["error"] for r in results)
    assert any("finite number" in r["error"] for r in results)


def test_results_of_alarm_commands_wait_in_the_outbox_at_alarm_priority(tmp_path: Path) -> None:
    """The outbox delivers alarms first: an acknowledgement's answer must not queue behind telemetry."""
    with site(tmp_path, OPEN) as s:
        ids = {"alarm": new_id(), "alarms": new_id(), "status": new_id(), "read": new_id()}
        for cmd, rid in ids.items():
            fields = {"action": "acknowledge", "key": "fire/04"} if cmd == "alarm" else {}
            fields |= {"device": "meter-0", "point": "status"} if cmd == "read" else {}
            s.feed(orjson.dumps({"v": 1, "id": rid, "expires_at": time.time() + 60, "actor": "a", "cmd": cmd,
                                 **fields}))
        results = {r["req"]: r for r in s.run(s.settled())}
    assert {cmd: results[rid]["_priority"] for cmd, rid in ids.items()} == {
        "alarm": Priority.ALARM.name, "alarms": Priority.ALARM.name, "status": Priority.EVENT.name,
        "read": Priority.EVENT.name}
    # no rules here, so there is no alarm to acknowledge: said, not crashed
    assert results[ids["alarm"]]["status"] == "rejected" and "no rules" in results[ids["alarm"]]["error"]
    assert results[ids["read"]]["status"] == "ok"


def test_a_flood_of_made_up_actors_is_answered_within_the_limits_and_memory_stays_bounded(tmp_path: Path) -> None:
    """Per-actor limits are kept per actor; a flood of invented ones must not grow them without bound."""
    with site(tmp_path, "[commands]\nenabled = true\n") as s:  # the default limits: 30 a minute each, 120 in all
        platform = s.platform

        async def flood(count: int) -> None:
            before = s.total()
            for n in range(count):
                platform.received(_dump({"v": 1, "id": new_id(), "expires_at": time.time() + 60,
                                         "actor": f"made-up-{before + n}", "cmd": "status"}))
            await until(lambda: s.total() == before + count, within=60)
            await until(lambda: not platform._spared, within=30)

        s.run(flood(11_000))  # past the cap once
        tracemalloc.start()
        try:
            gc.collect()
            start = tracemalloc.get_traced_memory()[0]
            s.run(flood(30_000))
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        answered, dropped = dict(platform.answered), dict(platform.dropped)
        actors = len(platform._actors)
    assert actors <= 10_001
    assert grown < 12 * 2**20, f"{grown / 2**20:.1f} MiB more after 30,000 requests from new actors"
    assert sum(answered.values()) <= 2 * 120 and answered["ok"] <= 120  # a minute's worth, whoever asks
    assert dropped == {"flood": 41_000 - sum(answered.values())}


def test_answers_in_flight_when_the_daemon_stops_are_still_stored(tmp_path: Path) -> None:
    """A refusal is answered by a task of its own: stopping the daemon waits for it, so none goes unanswered."""
    s = Site(tmp_path, OPEN)
    try:
        s.run(s._start())
        ids = [new_id() for _ in range(200)]

        async def refuse_and_stop() -> None:
            for rid in ids:
                s.platform.received(_dump({"v": 1, "id": rid, "expires_at": "soon", "actor": "a", "cmd": "status"}))
            await s._stop()

        s.run(refuse_and_stop())
    finally:
        s.loop.close()
    assert s.daemon is not None
    with contextlib.closing(Store(data_path(s.daemon.cfg), read_only=True)) as store:
        audited = {e["req"]: e["result"] for e in store.audit_entries(10_000) if e["action"] == "command"}
        waiting = [r.fact.subject for r in store.next_batch(10_000) if r.fact.kind == "result"]
    assert audited == dict.fromkeys(ids, "rejected") and sorted(waiting) == sorted(ids)


def test_a_burst_read_off_the_socket_in_one_go_is_taken_whole(tmp_path: Path) -> None:
    """paho reads as many packets per socket wake-up as there are publishes in flight (up to 128), so a command
    flood arriving while the uplink is busy lands faster than a queue consumer turns: every command must still be
    taken (answered or dropped with a count), none discarded by aiomqtt's full queue. The burst is handed to the
    uplink's real aiomqtt client exactly as paho hands each packet it read (``_on_message``), with no turn of the
    loop in between."""
    with site(tmp_path, "[commands]\nenabled = true\n") as s:
        assert s.daemon is not None and s.daemon.uplink is not None
        uplink, burst = s.daemon.uplink, 5 * INCOMING

        async def read_in_one_go() -> None:
            client = uplink._client()  # not connected: only its message path is used
            before = s.total()
            for n in range(burst):
                packet = MQTTMessage(mid=n + 1, topic=f"community/{SITE}/cmd/req".encode())
                packet.payload = b"not json" if n % 2 else _dump({"v": 1, "id": new_id(), "actor": "a", "cmd": "x"})
                packet.qos = 1
                client._on_message(client._client, None, packet)
            assert client._queue.qsize() == 0  # nothing left waiting in a bounded queue
            await until(lambda: s.total() == before + burst, within=30)

        s.run(read_in_one_go())
        dropped = dict(s.platform.dropped)
    assert dropped["not JSON"] == burst // 2
