"""Residents' identities stay on the box unless the site says otherwise; they are recorded locally either way."""

from __future__ import annotations

from pathlib import Path

import pytest
from wiring import outbox

from gateway.bus import LocalBus
from gateway.core.data import Event, Priority
from gateway.recorder import AsyncStore, Recorder
from gateway.reporting import Privacy, UplinkFeed
from gateway.store import Store


async def _run(tmp_path: Path, privacy: Privacy | None) -> tuple[list[str], list[str]]:
    store = Store(tmp_path / "g.db")
    bus = LocalBus()
    recorder = Recorder(AsyncStore(store), bus)
    UplinkFeed(bus, recorder, privacy=privacy)
    for kind, source in (("face.recognized", "lobby"), ("plate.read", "gate"), ("fall.detected", "lobby"),
                         ("camera.lost", "garage"), ("fire.alarm", "panel")):
        bus.event(Event(kind, source, Priority.ALARM if kind.startswith(("fall", "fire")) else Priority.EVENT,
                        {"person": "r-0101"} if kind.startswith("face") else {}))
    await recorder.flush()
    upstream = [m["kind"] for _, m in outbox(store)]
    local = [e["kind"] for _, e in store.events_after(0)]
    store.close()
    return upstream, local


async def test_faces_and_plates_stay_local_by_default_but_are_recorded(tmp_path: Path) -> None:
    upstream, local = await _run(tmp_path, None)
    assert sorted(upstream) == ["camera.lost", "fall.detected", "fire.alarm"]
    assert sorted(local) == ["camera.lost", "face.recognized", "fall.detected", "fire.alarm", "plate.read"]


async def test_a_site_can_send_identities_and_keep_one_camera_local(tmp_path: Path) -> None:
    upstream, local = await _run(tmp_path, Privacy(keep_local=[], local_sources=["lobby"]))
    assert sorted(upstream) == ["camera.lost", "fall.detected", "fire.alarm", "plate.read"]  # the lobby's fall goes
    assert len(local) == 5


async def test_one_camera_may_send_what_the_site_keeps(tmp_path: Path) -> None:
    upstream, _ = await _run(tmp_path, Privacy(shared_sources=["gate"]))  # the car park's barrier platform
    assert sorted(upstream) == ["camera.lost", "fall.detected", "fire.alarm", "plate.read"]


def test_no_privacy_pattern_may_keep_an_alarm_from_the_platform(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config

    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "s"\n[store]\ndata_dir = "{tmp_path}"\n[mqtt]\nkeep_local = ["face.*", "f*"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert "site.toml:6: mqtt.keep_local" in str(caught.value) and "fire.alarm" in str(caught.value)
