"""The JSON v2 encoder and the v1-row reader, on any input: every row carried once, in order; nothing raises."""

from __future__ import annotations

import json

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import facts, migrations
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.facts import StoredFact
from gateway.northbound.contract import upstream_schema
from gateway.northbound.encoder import Session
from gateway.northbound.json_v2 import JsonEncoder

NOW = 1_790_000_000.0
VALIDATOR = jsonschema.Draft202012Validator(upstream_schema())

_kinds = st.sampled_from(["poll", "summary", "event", "alarm", "transition", "state"])


def _fact(kind: str, n: int) -> facts.Fact:
    ts = NOW - 10_000 + n
    if kind == "poll":
        return facts.readings("m1", ts, [Reading("m1", "p", float(n), "V", Quality.GOOD, ts)])
    if kind == "summary":
        return facts.summary("m1", ts - 60, ts, {"p": {"min": 1.0, "max": 2.0, "q": "good"}})
    if kind == "state":
        from gateway.core.data import DeviceState
        return facts.device_state(DeviceState("m1", "online", ts), ts)
    if kind == "transition":  # an equipment-class alarm's transition: priority event, but on alarm/
        return facts.event(Event("alarm.test_step", "door/gate-n", Priority.EVENT, {"key": "door/gate-n"}, ts=ts))
    priority = Priority.ALARM if kind == "alarm" else Priority.EVENT
    return facts.event(Event("bench.event" if kind == "event" else "bench.alarm", "x", priority, {"n": n}, ts=ts))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_kinds, st.booleans()), max_size=60), batch=st.integers(1, 7))
def test_every_row_is_carried_once_in_order_and_alarms_never_travel_in_batches(
        rows: list[tuple[str, bool]], batch: int) -> None:
    encoder = JsonEncoder("s", live_window=60.0, replay_batch=batch)
    stored = [StoredFact(i + 1, NOW - (3600 if old else 1), _fact(kind, i)) for i, (kind, old) in enumerate(rows)]
    encoded = encoder.encode(stored, NOW)
    assert [seq for e in encoded for seq in e.seqs] == [r.seq for r in stored]  # once each, in order
    for e in encoded:
        assert e.message is not None
        message = json.loads(e.message.payload)
        VALIDATOR.validate(message)
        if message["type"] == "batch":
            assert 2 <= len(message["items"]) <= batch and e.message.topic == f"batch/{message['class']}"
            assert all(item["hist"] is True and not item["topic"].startswith("alarm/") for item in message["items"])
        elif message["type"] in ("telemetry", "summary", "event", "alarm"):
            row = next(r for r in stored if r.seq == e.seqs[0])
            assert message.get("hist", False) is (row.created == NOW - 3600)
            assert message["id"] == row.fact.id
        if message["type"] == "alarm" or e.message.topic.startswith("alarm/"):
            assert len(e.seqs) == 1


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "id", "device", "ts", "points", "kind", "priority", "source", "data", "start", "end"]),
        inner, max_size=8), max_leaves=20).map(lambda d: json.dumps(d).encode())))
def test_any_v1_outbox_row_becomes_a_fact_or_stays_as_it_was(payload: bytes) -> None:
    row = migrations._fact_row(7, 2, "telemetry/m1", payload, NOW)
    seq, prio, kind, subject, id_, ts, body, created = row
    assert (seq, prio, created) == (7, 2, NOW) and kind in ("readings", "event", "summary", "wire")
    assert isinstance(subject, str) and isinstance(id_, str) and isinstance(ts, float)
    if kind == "wire":
        assert body == payload and subject == "telemetry/m1"
    else:
        json.loads(body)


@given(status=st.binary(max_size=200))
def test_any_status_payload_is_judged_without_raising(status: bytes) -> None:
    assert JsonEncoder("s").superseded(status, Session(3, 0.0, "")) in (True, False)


def test_a_stale_will_is_told_from_a_current_one() -> None:
    encoder, session = JsonEncoder("s"), Session(3, 0.0, "")
    assert encoder.superseded(b'{"state":"offline","bdseq":2}', session)
    assert not encoder.superseded(b'{"state":"offline","bdseq":3}', session)
    assert not encoder.superseded(b'{"state":"online","bdseq":1}', session)
    assert not encoder.superseded(b'{"state":"offline","bdseq":"1"}', session)
