"""The daemon's one picture of itself (gateway.observe), as `gateway top`, /metrics and health read it."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from conftest import Broker, free_ports, running, until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.control import request
from gateway.core.data import Priority
from gateway.daemon import Daemon, control_path
from gateway.facts import Fact
from gateway.observe import RATE_WINDOW, Observer
from gateway.store import Batch, Store
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]


async def test_a_snapshot_shows_devices_buses_outbox_and_the_process(tmp_path: Path, broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms"),
             dict(id="bus-1", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS),
               dict(id="dead-1", bus="bus-1", interval="200ms", points=POINTS)]
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra="")
    cfg = load_config(path)
    try:
        async with running(Daemon(cfg)) as daemon:
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 3
                        and daemon.pollers["dead-1"].state.failures >= 1)
            first = await daemon.observer.snapshot()
            await until(lambda: daemon.pollers["meter-0"].state.polls >= 12, within=20)
            answer = await request(control_path(cfg), {"cmd": "observe"})
            assert answer["ok"], answer
            seen = answer["observed"]
            devices_seen = {d["id"]: d for d in seen["devices"]}
            assert devices_seen["meter-0"]["state"] == "online" and devices_seen["meter-0"]["interval_s"] == 0.2
            assert devices_seen["dead-1"]["state"] == "offline" and devices_seen["dead-1"]["failures"] >= 1
            assert devices_seen["dead-1"]["errors"]  # failures by kind
            buses_seen = {b["id"]: b for b in seen["buses"]}
            assert buses_seen["bus-0"]["transactions"] > 0 and 0 <= buses_seen["bus-0"]["utilisation"] <= 1
            assert set(seen["outbox"]) == {"alarm", "event", "telemetry"}
            assert seen["uplinks"][0]["name"] == "mqtt" and seen["uplinks"][0]["delivered_per_s"] is not None
            assert seen["process"]["rss_bytes"] > 10 * 2**20 and seen["process"]["open_fds"] > 3
            assert seen["process"]["disk_free_bytes"] > 0 and seen["process"]["store_bytes"] > 0
            assert first["uptime_s"] <= seen["uptime_s"]
    finally:
        await server.close()
        await hole.close()


def test_rates_survive_snapshots_further_apart_than_the_window() -> None:
    """A Prometheus scraping every 60 s (RATE_WINDOW is 30 s) still gets delivered/s, bus utilisation, fps."""
    observer = Observer(None)  # type: ignore[arg-type]  # rates need only the history
    assert observer._rates(1000.0, {"uplink:mqtt": 0.0}) == {"uplink:mqtt": None}
    assert observer._rates(1060.0, {"uplink:mqtt": 120.0}) == {"uplink:mqtt": 2.0}
    assert observer._rates(1120.0, {"uplink:mqtt": 300.0}) == {"uplink:mqtt": 3.0}  # over the last 60 s
    for t in range(1121, 1160):  # then a watcher every second: over the window again, never an older base
        observer._rates(float(t), {"uplink:mqtt": 300.0 + 10 * (t - 1120)})
    assert observer._rates(1160.0, {"uplink:mqtt": 700.0}) == {"uplink:mqtt": 10.0}
    assert 1160.0 - observer._history[0][0] <= RATE_WINDOW + 1


OPS = st.lists(st.one_of(
    st.tuples(st.just("commit"), st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=30)),
    st.tuples(st.just("ack"), st.sampled_from(["mqtt", "scada", "backup"]), st.integers(0, 2**32)),
    st.tuples(st.just("cap"), st.integers(1, 40), st.integers(0, 60_000)),
    st.tuples(st.just("remove"), st.sampled_from(["scada", "backup"]), st.booleans()),
), max_size=25)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_the_cheap_backlog_is_the_exact_count_of_unacknowledged_rows(ops: list[tuple[Any, ...]]) -> None:
    """depth - acknowledgements (one count) equals the anti-join it replaced, through acknowledgements, rows every
    uplink has, telemetry dropped for the disk cap, an uplink removed and added back."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "g.db", synchronous="normal", uplinks=("mqtt", "scada", "backup"))
        try:
            for op in ops:
                if op[0] == "commit":
                    store.commit(Batch(facts=[Fact(p, "readings", "m", uuid.uuid4().hex, 1.0, b"x" * 200)
                                              for p in op[1]]))
                elif op[0] == "ack":
                    if op[1] in store.uplinks:
                        seqs = [r[0] for r in store.db.execute("SELECT seq FROM outbox ORDER BY seq")]
                        chosen = [s for i, s in enumerate(seqs) if op[2] >> (i % 32) & 1]
                        store.acknowledge(chosen, op[1])
                elif op[0] == "cap":
                    store.enforce_cap(op[1], low_disk=True, room=op[2])
                else:
                    kept = [u for u in store.uplinks if u != op[1]]
                    store.set_uplinks([*kept, op[1]] if op[2] else kept)
                depth = store.outbox_depth()
                assert depth == {Priority(p).label: n for p, n in store.db.execute(
                    "SELECT prio, COUNT(*) FROM outbox GROUP BY prio")} | {k: 0 for k in depth if not depth[k]}
                slow = {u: store.db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE NOT EXISTS (SELECT 1 FROM outbox_acks a WHERE a.uplink = ?"
                    " AND a.seq = outbox.seq)", (u,)).fetchone()[0] for u in store.uplinks}
                assert store.backlogs(store.uplinks, sum(depth.values())) == slow
                assert {u: store.backlog(u) for u in store.uplinks} == slow
                oldest = dict(store.db.execute("SELECT prio, created FROM outbox WHERE seq IN"
                                               " (SELECT MIN(seq) FROM outbox GROUP BY prio)"))
                assert store.outbox_oldest() == {Priority(p).label: c for p, c in oldest.items()}
        finally:
            store.close()


async def test_a_reload_adds_an_uplink_the_figures_show_at_once_and_health_and_metrics_apply(
        tmp_path: Path, broker: Broker) -> None:
    """An uplink added by a reload has its backlog in the very next snapshot; one that carries only alarms passes
    the readings over and counts none of them delivered; [health] and [metrics] apply live, [web] is refused."""
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS)]
    textfile = tmp_path / "node-exporter" / "gateway.prom"
    textfile.parent.mkdir()
    alarms = (f'\n[[uplinks]]\nname = "alarms"\nhost = "127.0.0.1"\nport = {broker.port}\ncarries = ["alarm"]\n'
              'client_id = "test-site-alarms"\nreplay_delay = "0s"\n')
    metrics = f'\n[metrics]\ntextfile = "{textfile}"\nevery = "1s"\n\n[health]\ninterval = "30s"\n'

    def write(extra: str, web: str = "enabled = false") -> Path:
        return write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port,
                            buses=buses, devices=devices, extra=f"\n[web]\n{web}\n" + extra)

    path = write("")
    try:
        async with running(Daemon(load_config(path), config_path=path)) as daemon:
            main = daemon.uplinks["mqtt"]
            await until(lambda: main.status.delivered > 0)
            await daemon.observer.snapshot()  # the store's figures are now cached for 2 s
            write(alarms + metrics)
            answer = await daemon.reload("test")
            assert answer["applied"], answer
            assert answer["changed"]["uplinks_added"] == ["alarms"]
            assert answer["changed"]["observe"] == ["health.interval", "metrics.every", "metrics.textfile"]
            seen = await daemon.observer.snapshot()
            backlogs = {u["name"]: u["backlog"] for u in seen["uplinks"]}
            assert set(backlogs) == {"mqtt", "alarms"} and all(isinstance(b, int) and b >= 0
                                                                for b in backlogs.values()), backlogs
            assert daemon.cfg.health.interval == 30.0
            await until(lambda: textfile.exists())  # the writer started by the reload

            side = daemon.uplinks["alarms"]
            await until(lambda: side.status.state == "connected")
            before = main.status.delivered
            await until(lambda: main.status.delivered > before + 5)
            snap = await daemon.observer.snapshot()
            up = {u["name"]: u for u in snap["uplinks"]}
            assert up["alarms"]["delivered"] == 0 and up["alarms"]["rows_delivered"] == 0  # passed over, not sent
            assert 0 < up["mqtt"]["delivered"] <= up["mqtt"]["rows_delivered"]

            write(alarms, web="enabled = false\nport = 1")  # [web] needs a restart: refused whole
            refused = await daemon.reload("test")
            assert refused["applied"] is False and "web" in refused["reason"]
            write(alarms)  # the textfile off: its writer stops and the file goes, so no stale figures are exported
            answer = await daemon.reload("test")
            assert answer["applied"] and "metrics.textfile" in answer["changed"]["observe"], answer
            assert "metrics" not in daemon.supervisor.tasks and not textfile.exists()
    finally:
        await server.close()
