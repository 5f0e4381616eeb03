"""Several uplinks on one outbox, without brokers: each uplink's cursor, what it carries, and how a reload changes
the set. The store is real SQLite; a round's cost is counted in SQLite's own VM steps (deterministic, unlike time)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import orjson
import pytest

from gateway import facts
from gateway.config import load_config
from gateway.config.loader import ConfigError
from gateway.config.schema import GatewayConfig, MqttConfig, UplinkConfig
from gateway.core.data import Event, Priority, Quality, Reading
from gateway.facts import Fact
from gateway.northbound.routes import VIA, Route, store_uplinks, via
from gateway.recorder import Broadcast
from gateway.reload import diff, uplink_files
from gateway.store import Batch, Store

pytestmark = pytest.mark.timeout(60)


def reading(i: int, device: str = "m1") -> Fact:
    return facts.readings(device, 1000.0 + i, [Reading(device, "p", float(i), "V", Quality.GOOD, 1000.0 + i)])


def fill(store: Store, count: int) -> None:
    for start in range(0, count, 1000):
        store.commit(Batch(facts=[reading(i) for i in range(start, min(count, start + 1000))]))


def drain(store: Store, uplink: str) -> int:
    done = 0
    while rows := store.next_batch(500, uplink):
        store.acknowledge([r.seq for r in rows], uplink)
        done += len(rows)
    return done


def vm_steps(store: Store, uplink: str) -> int:
    """SQLite VM instructions (in hundreds) of one round: 200 rows read and acknowledged."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.db.set_progress_handler(count, 100)
    rows = store.next_batch(200, uplink)
    store.acknowledge([r.seq for r in rows], uplink)
    store.db.set_progress_handler(None, 0)
    assert len(rows) == 200
    return steps[0]


def test_each_uplink_gets_every_row_alarms_first_and_a_row_goes_when_all_have_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", uplinks=("mqtt", "scada"))
    store.commit(Batch(facts=[reading(0), facts.event(Event("fire.alarm", "z1", Priority.ALARM)), reading(1)]))
    for name in ("mqtt", "scada"):
        assert [r.fact.kind for r in store.next_batch(10, name)] == ["event", "readings", "readings"]
    first = store.next_batch(10, "mqtt")
    store.acknowledge([first[0].seq, first[1].seq], "mqtt")
    assert [r.fact.kind for r in store.next_batch(10, "mqtt")] == ["readings"]
    assert store.backlog("mqtt") == 1 and store.backlog("scada") == 3
    assert sum(store.outbox_depth().values()) == 3  # scada has acknowledged nothing: everything stays
    store.acknowledge([first[0].seq], "scada")
    assert store.outbox_depth() == {"alarm": 0, "event": 0, "telemetry": 2}
    assert store.counters()["uplink.scada.delivered"] == 1
    store.acknowledge([r.seq for r in store.next_batch(10, "mqtt")], "mqtt")
    store.acknowledge([r.seq for r in store.next_batch(10, "scada")], "scada")
    assert sum(store.outbox_depth().values()) == 0
    assert store.db.execute("SELECT COUNT(*) FROM outbox_acks").fetchone()[0] == 0


def test_a_dead_uplinks_backlog_costs_the_live_one_nothing(tmp_path: Path) -> None:
    small = Store(tmp_path / "small.db", uplinks=("mqtt", "dead"))
    fill(small, 200)
    baseline = vm_steps(small, "mqtt")
    big = Store(tmp_path / "big.db", uplinks=("mqtt", "dead"))
    fill(big, 50_000)
    assert drain(big, "mqtt") == 50_000  # the live one delivered all; the dead one holds every row back
    fill(big, 200)
    assert big.next_batch(1, "mqtt")[0].seq > 50_000
    steps = vm_steps(big, "mqtt")
    # before the cursors: a round scanned every row the dead one held (62 million VM steps at 100,000 rows)
    assert steps < 3 * baseline, (steps, baseline)
    assert big.backlog("dead") == 50_200 and drain(big, "dead") == 50_200
    assert sum(big.outbox_depth().values()) == 0


def test_a_removed_uplink_holds_nothing_back_and_an_added_one_starts_from_what_is_left(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", uplinks=("mqtt", "gone"))
    fill(store, 10)
    drain(store, "mqtt")
    store.acknowledge([store.next_batch(1, "gone")[0].seq], "gone")
    assert store.outbox_depth()["telemetry"] == 9
    store.set_uplinks(("mqtt",))  # a reload removed it
    assert store.outbox_depth()["telemetry"] == 0
    store.acknowledge([1, 2, 3], "gone")  # its last acknowledgements, arriving late, are ignored
    fill(store, 3)
    store.set_uplinks(("mqtt", "new"))
    assert len(store.next_batch(10, "new")) == 3 and len(store.next_batch(10, "mqtt")) == 3
    store.close()
    reopened = Store(tmp_path / "g.db", uplinks=("new",))  # at open too: what "new" has not is kept for it
    assert reopened.backlog("new") == 3


def test_telemetry_dropped_for_the_cap_takes_the_live_uplinks_acknowledgements_with_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", uplinks=("mqtt", "dead"), max_bytes=2**20)
    big = [Reading("m1", f"p{j}", 1.0 * j, "kWh", Quality.GOOD, 0.0) for j in range(40)]
    for _ in range(40):
        store.commit(Batch(facts=[facts.readings("m1", 0.0, big) for _ in range(20)]))
        drain(store, "mqtt")
        store.enforce_cap()
    assert store.counters()["store.telemetry_dropped"] > 0
    orphans = store.db.execute("SELECT COUNT(*) FROM outbox_acks WHERE seq NOT IN (SELECT seq FROM outbox)")
    assert orphans.fetchone()[0] == 0
    assert store.used_bytes() <= 2**20


def result(name: str | None) -> Fact:
    body = {"v": 1, "type": "cmd_result", "req": "r-1", "status": "ok"}
    if name is not None:
        body[VIA] = name
    return Fact(Priority.EVENT, "result", "r-1", "f-1", 1.0, orjson.dumps(body))


def test_a_route_carries_its_classes_and_kinds_and_the_results_of_what_it_heard() -> None:
    brigade = Route(UplinkConfig(name="fire", carries=["alarm"], kinds=["fire.*"]), "fire")
    fire = facts.event(Event("fire.alarm", "z1", Priority.ALARM))
    lift = facts.event(Event("elevator.entrapment", "l1", Priority.ALARM))
    drill = facts.event(Event("fire.drill", "z1", Priority.EVENT))
    face = facts.event(Event("face.recognised", "cam", Priority.EVENT))
    assert [brigade.carries(f) for f in (fire, lift, drill, reading(0), face)] == [True, False, False, False, False]
    assert brigade.carries(result("fire")) and not brigade.carries(result(None))
    main = Route(MqttConfig())
    assert main.everything and all(main.carries(f) for f in (fire, lift, drill, reading(0), face))
    assert main.carries(result(None)) and not main.carries(result("fire"))
    # an [[uplinks]] entry keeps its keep_local kinds from itself (faces and plates unless it says otherwise)
    assert not Route(UplinkConfig(name="ha"), "ha").carries(face)
    assert Route(UplinkConfig(name="ha", keep_local=[]), "ha").carries(face)
    rows = [_stored(i, f) for i, f in enumerate((fire, reading(1), result("fire")))]
    sent, passed = brigade.split(rows)
    assert [r.seq for r in sent] == [0, 2] and [e.seqs for e in passed] == [(1,)] and passed[0].message is None
    assert VIA not in sent[1].fact.data() and via(rows[2].fact) == "fire"  # taken out before any encoder sees it


def _stored(seq: int, fact: Fact) -> facts.StoredFact:
    return facts.StoredFact(seq, 1.0, fact)


def test_the_outbox_waits_for_every_enabled_uplink(tmp_path: Path) -> None:
    def config(text: str) -> GatewayConfig:
        path = tmp_path / "gateway.toml"
        path.write_text(f'[site]\nid = "s"\n[store]\ndata_dir = "{tmp_path}"\n{text}')
        return load_config(path)

    assert store_uplinks(config("")) == ("mqtt",)
    both = config('[[uplinks]]\nname = "scada"\nhost = "10.0.0.2"\n')
    assert store_uplinks(both) == ("mqtt", "scada")
    assert store_uplinks(config('[mqtt]\nenabled = false\n[[uplinks]]\nname = "scada"\n')) == ("scada",)
    assert store_uplinks(config('[[uplinks]]\nname = "ha"\nenabled = false\n')) == ("mqtt",)
    assert store_uplinks(config('[mqtt]\nenabled = false\n')) == ("mqtt",)  # alone and off: everything kept
    # a reload sees which entry changed, by name, and a rotated certificate or password file
    secret = tmp_path / "ha.pass"
    secret.write_text("one\n")
    secret.chmod(0o600)
    entry = '[[uplinks]]\nname = "ha"\nhost = "ha.local"\npassword_file = "ha.pass"\n'
    ha = config(entry)
    assert ha.uplinks[0].password_file == secret  # relative to the config file, like [mqtt]'s
    more = config(entry + '[[uplinks]]\nname = "scada"\nhost = "10.0.0.2"\n')
    assert diff(ha, more).summary() == {"uplinks_added": ["scada"]}
    assert diff(more, ha).summary() == {"uplinks_removed": ["scada"]}
    before = uplink_files(ha)
    secret.write_text("two\n")
    assert diff(ha, ha, old_files=before, new_files=uplink_files(ha)).summary() == {"uplinks_changed": ["ha"]}
    with pytest.raises(ConfigError) as refused:
        config(entry + 'password = "x"\n')
    assert [p.format().split(": ", 1)[1] for p in refused.value.problems] == [
        "uplinks.0.password: set password or password_file, not both"]


async def test_every_uplink_is_woken_by_a_commit_whoever_clears_first() -> None:
    committed = Broadcast()
    first, second = committed.subscribe(), committed.subscribe()
    first.clear()
    second.clear()
    waiting = asyncio.ensure_future(second.wait())
    committed.set()
    first.clear()  # one uplink starts its round and clears its own: the other's wake-up stands
    await asyncio.wait_for(waiting, 1.0)
    assert second.is_set() and not first.is_set()


def test_two_uplinks_on_one_broker_need_two_client_ids(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = f'[site]\nid = "s"\n[store]\ndata_dir = "{tmp_path}"\n[mqtt]\nhost = "b1"\n' \
           '[[uplinks]]\nname = "ha"\nhosts = ["b2", "b1:1883"]\n{client}'
    path.write_text(text.format(client=""))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert [p.format().split(": ", 1)[1] for p in refused.value.problems] == [
        "uplinks.0.client_id: uplink 'mqtt' connects to b1:1883 as the same client id: the broker would drop one "
        "for the other; set client_id"]
    path.write_text(text.format(client='client_id = "s-ha"\n'))
    assert load_config(path).uplinks[0].brokers() == [("b2", 1883), ("b1", 1883)]


def test_the_guides_examples_are_configs_the_gateway_takes(tmp_path: Path) -> None:
    """Every TOML block of docs/uplinks.md, and config.example.toml's commented [[uplinks]] once uncommented, load
    (only the certificate and password files they name are missing here)."""
    repo = Path(__file__).resolve().parent.parent
    blocks = re.findall(r"```toml\n(.*?)```", (repo / "docs" / "uplinks.md").read_text(), re.S)
    example = (repo / "config.example.toml").read_text()
    start = example.index("# [[uplinks]]")
    commented = example[start:example.index("\n\n", start)]
    blocks.append("\n".join(line.removeprefix("#").removeprefix(" ") for line in commented.splitlines()))
    assert len(blocks) >= 3
    for block in blocks:
        path = tmp_path / "gateway.toml"
        path.write_text(f'[site]\nid = "sunshine-b3"\n[store]\ndata_dir = "{tmp_path}"\n{block}')
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            assert all("cannot read" in p.message for p in exc.problems), [p.format() for p in exc.problems]
        else:
            assert cfg.mqtt.brokers()
