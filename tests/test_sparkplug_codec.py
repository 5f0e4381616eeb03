"""The Sparkplug encoder and command decoder without a broker: what each fact becomes (decoded with the Tahu proto),
and hostile NCMD/DCMD/STATE bytes (hypothesis) that must never raise and never make a bad command envelope."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import facts
from gateway.config.uplink import MqttConfig
from gateway.core.data import DeviceState, Event, Priority, Quality, Reading
from gateway.facts import StoredFact
from gateway.northbound.dialects import make_encoder
from gateway.northbound.encoder import Encoded, Inbound, Session
from gateway.northbound.sparkplug import SparkplugEncoder
from gateway.northbound.sparkplug_proto import payload_class
from gateway.remote.envelope import decode

pytestmark = pytest.mark.timeout(120)
SITE = "site-a"
DEVICES = {"m1": {"driver": "modbus", "points": {
    "power": {"type": "float", "writable": False, "unit": "kW"},
    "relay": {"type": "bool", "writable": True, "remote": True},
    "mode": {"type": "int", "writable": True, "remote": True, "min": -5, "max": 5}}}}
DCMD = f"spBv1.0/community/DCMD/{SITE}/m1"
NCMD = f"spBv1.0/community/NCMD/{SITE}"
STATE = "spBv1.0/STATE/scada"


def encoder(**sparkplug: Any) -> SparkplugEncoder:
    config = MqttConfig(encoding="sparkplug_b", live_window=60, sparkplug=sparkplug)
    return SparkplugEncoder(SITE, config, lambda: DEVICES)


def born(enc: SparkplugEncoder, now: float) -> list[Any]:
    session = Session(3, now, "cfg")
    return [enc.birth(session, now), *enc.describe(session, DEVICES, now)]


def decoded(out: list[Encoded]) -> list[tuple[str, Any, tuple[int, ...]]]:
    return [(e.message.topic.split("/")[2] if e.message else "-",
             payload_class().FromString(e.message.payload) if e.message else None, e.seqs) for e in out]


def reading(now: float, value: Any = 1.5, quality: Quality = Quality.GOOD) -> facts.Fact:
    return facts.readings("m1", now, [Reading("m1", "power", value, "kW", quality, now),
                                      Reading("m1", "relay", True, None, quality, now)])


def test_events_alarms_results_and_replay() -> None:
    now = time.time()
    enc = encoder()
    born(enc, now)
    alarm = facts.event(Event("fire.alarm", "panel", Priority.ALARM, {"zone": 3}, now - 600))
    events = [facts.event(Event("door.open", "door-1", Priority.EVENT, {"n": i}, now - 600)) for i in range(3)]
    result = facts.Fact(Priority.EVENT, "result", "req-1", "id-r", now, b'{"status":"ok"}')
    rows = [StoredFact(1, now - 600, alarm), *(StoredFact(2 + i, now - 600, e) for i, e in enumerate(events)),
            StoredFact(9, now, result)]
    out = decoded(enc.encode(rows, now))
    (_, alarm_msg, seqs), (_, batch, seqs2) = [x for x in out if x[0] == "NDATA"]
    ((_, _, seqs3),) = [x for x in out if x[0] == "-"]  # the result: the native uplink's, no message here
    assert seqs == (1,)
    (metric,) = alarm_msg.metrics
    assert metric.alias == 5 and not metric.is_historical  # a replayed alarm still reaches the real-time tag
    assert orjson.loads(metric.string_value) == {"id": alarm.id, **alarm.data()}
    assert seqs2 == (2, 3, 4) and [m.alias for m in batch.metrics] == [6, 6, 6]
    assert all(m.is_historical for m in batch.metrics)
    assert seqs3 == (9,) and enc.unsent["result"] == 1
    assert [alarm_msg.seq, batch.seq] == [2, 3]  # after NBIRTH 0 and the one DBIRTH


def test_summaries_dead_devices_unknown_points_and_seq_wrap() -> None:
    now = time.time()
    enc = encoder()
    born(enc, now)
    summary = facts.summary("m1", now - 60, now, {"power": {"last": 2.0, "min": 1.0, "max": 3.0, "mean": 2.1,
                                                            "count": 12, "q": "good", "u": "kW"},
                                                  "gone": {"last": 1, "q": "good"}})
    ((kind, data, _),) = decoded(enc.encode([StoredFact(1, now, summary)], now))
    (metric,) = data.metrics
    assert kind == "DDATA" and metric.double_value == 2.0 and enc.unsent["unknown point"] == 1
    props = dict(zip(metric.properties.keys, metric.properties.values, strict=True))
    assert props["min"].double_value == 1.0 and props["count"].long_value == 12

    offline = facts.device_state(DeviceState("m1", "offline", now), now)
    bad = facts.readings("m1", now, [Reading("m1", "power", None, None, Quality.BAD, now)])
    out = decoded(enc.encode([StoredFact(2, now, offline), StoredFact(3, now, bad),
                              StoredFact(4, now, reading(now - 5))], now))
    assert [k for k, _, _ in out] == ["DDEATH", "-", "DBIRTH", "DDATA", "DDEATH"]  # bad: what DDEATH said
    assert enc.unsent["dead device"] == 1
    calls = []

    def catalog() -> dict[str, Any]:
        calls.append(1)
        return DEVICES

    enc._catalog = catalog
    ghost = facts.readings("ghost", now, [Reading("ghost", "x", 1, None, Quality.GOOD, now)])
    ghosts = enc.encode([StoredFact(20 + i, now, ghost) for i in range(50)], now)
    assert [e.message for e in ghosts] == [None] * 50 and enc.unsent["unknown device"] == 50 and len(calls) == 1
    seqs = [p.seq for _, p, _ in out if p is not None]
    seqs += [p.seq for _, p, _ in decoded(enc.encode(
        [StoredFact(10 + i, now, facts.event(Event("e", "s", Priority.EVENT, {}, now))) for i in range(600)], now))]
    assert seqs == [(seqs[0] + i) % 256 for i in range(len(seqs))]


def test_a_bad_point_is_null_with_bad_quality_and_a_stale_one_keeps_its_value() -> None:
    now = time.time()
    enc = encoder()
    born(enc, now)
    ((_, bad, _),) = decoded(enc.encode([StoredFact(1, now, reading(now, math.nan, Quality.BAD))], now))
    ((_, stale, _),) = decoded(enc.encode([StoredFact(2, now, reading(now, 4.0, Quality.STALE))], now))
    assert bad.metrics[0].is_null and bad.metrics[0].properties.values[0].int_value == 0
    assert stale.metrics[0].double_value == 4.0 and stale.metrics[0].properties.values[0].int_value == 500


def test_commands_and_state() -> None:
    now = time.time()
    enc = encoder(commands=True, primary_host="scada")
    assert enc.listens("root", True) == [NCMD, f"{DCMD[:-3]}/+", STATE] and not enc.ready()
    online = orjson.dumps({"online": True, "timestamp": 5})
    assert enc.inbound(STATE, online, "root") == Inbound(rebirth=True, wake=True) and enc.ready()
    assert enc.inbound(STATE, orjson.dumps({"online": False, "timestamp": 4}), "root") is None and enc.ready()
    born(enc, now)
    aliases = {name: alias for name, (alias, _) in enc._born["m1"].items()}
    payload = payload_class()()
    payload.metrics.add(alias=aliases["mode"], int_value=(-3) & 0xFFFFFFFF)  # no datatype: the birth's Int64
    payload.metrics.add(name="relay", boolean_value=True)
    got = enc.inbound(DCMD, payload.SerializeToString(), "root")
    assert got is not None and got.request is not None and len(got.requests) == 1
    first, second = (decode(r, SITE, {}).envelope for r in (got.request, *got.requests))
    assert (first.cmd, first.model_extra) == ("write", {"device": "m1", "point": "mode", "value": -3})
    assert second.model_extra == {"device": "m1", "point": "relay", "value": True}
    assert first.actor == "sparkplug:scada" and 0 < first.expires_at - time.time() <= 30.01
    rebirth = payload_class()()
    rebirth.metrics.add(name="Node Control/Rebirth", boolean_value=True)
    assert enc.inbound(NCMD, rebirth.SerializeToString(), "root") == Inbound(rebirth=True)


values = st.one_of(st.booleans(), st.integers(0, 2**32 - 1).map(lambda v: ("int_value", v)),
                   st.integers(0, 2**64 - 1).map(lambda v: ("long_value", v)),
                   st.floats().map(lambda v: ("double_value", v)),
                   st.text(max_size=50).map(lambda v: ("string_value", v)),
                   st.binary(max_size=20).map(lambda v: ("bytes_value", v)), st.none())
metrics = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=40), "alias": st.integers(0, 2**64 - 1), "datatype": st.integers(0, 40),
    "is_null": st.booleans(), "value": values})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from([NCMD, DCMD, STATE, f"{DCMD}/x"]), raw=st.binary(max_size=600),
       structured=st.lists(metrics, max_size=6), use_raw=st.booleans())
def test_hostile_commands_never_raise_and_only_make_valid_envelopes(
        topic: str, raw: bytes, structured: list[dict[str, Any]], use_raw: bool) -> None:
    enc = encoder(commands=True, primary_host="scada")
    born(enc, time.time())
    if use_raw:
        data = raw
    else:
        payload = payload_class()()
        for fields in structured:
            metric = payload.metrics.add(**{k: v for k, v in fields.items() if k != "value"})
            value = fields.get("value")
            if isinstance(value, bool):
                metric.boolean_value = value
            elif isinstance(value, tuple):
                setattr(metric, value[0], value[1])
        data = payload.SerializeToString()
    got = enc.inbound(topic, data, "root")
    assert got is None or isinstance(got, Inbound)
    for request in (got.request, *got.requests) if got else ():
        assert request is not None
        body = orjson.loads(request)
        assert body["cmd"] == "write" and body["device"] == "m1" and body["actor"] == "sparkplug:scada"
        if body["value"] is None:  # null only when the host said is_null, never a NaN turned null
            assert any(m.is_null for m in payload_class().FromString(data).metrics)
        try:
            decode(request, SITE, {})
        except Exception as exc:  # a bad point name is the service's to refuse (answered, audited), never a crash
            assert type(exc).__name__ == "Rejected", exc


def test_the_guide_examples_are_what_the_gateway_and_the_proto_take(tmp_path: Any) -> None:
    """docs/sparkplug.md: its config loads, and every JSON payload is a Tahu payload (protobuf's JSON mapping)."""
    import re
    from pathlib import Path

    from google.protobuf.json_format import Parse

    from gateway.config import load_config

    text = (Path(__file__).resolve().parent.parent / "docs" / "sparkplug.md").read_text(encoding="utf-8")
    (toml,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    (tmp_path / "gateway.toml").write_text(toml + f'\n[store]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    cfg = load_config(tmp_path / "gateway.toml")
    assert cfg.mqtt.encoding == "sparkplug_b" and cfg.mqtt.sparkplug.primary_host == "scada"
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) == 7
    for block in blocks:
        Parse(block, payload_class()())


def test_a_dcmd_write_never_outlives_the_sites_max_ttl() -> None:
    """Sparkplug commands carry no expiry: theirs is the site's max_ttl when that is under 30 s, so a site with a
    short one still takes them (not refused as expiring too far ahead)."""
    config = MqttConfig(encoding="sparkplug_b", sparkplug={"commands": True})
    enc = make_encoder(config, SITE, lambda: DEVICES, command_ttl=5.0)
    assert isinstance(enc, SparkplugEncoder)
    born(enc, time.time())
    payload = payload_class()()
    payload.metrics.add(name="relay", boolean_value=True)
    got = enc.inbound(DCMD, payload.SerializeToString(), "root")
    assert got is not None and got.request is not None
    assert 0 < decode(got.request, SITE, {}).envelope.expires_at - time.time() <= 5.0
