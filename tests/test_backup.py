"""`gateway backup` while the daemon runs, `gateway restore` only while it does not, and a file that is not a backup."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import free_port, until, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli.backup import ALLOWED, BackupError, read_backup
from gateway.cli.ownership import hand_over
from gateway.store import Store
from simulators.meter import METER_POINTS, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]


def gateway(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


async def agateway(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, without blocking the loop the simulated meter answers from."""
    return await asyncio.to_thread(gateway, *args)


def outbox_ids(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT id FROM outbox ORDER BY seq")]


def rows_kept(path: Path) -> int:
    try:
        return len(outbox_ids(path)) if path.exists() else 0
    except sqlite3.Error:  # the daemon is creating it
        return 0


async def test_backup_while_running_restore_refused_then_restored_keeping_what_it_replaced(tmp_path: Path) -> None:
    meters = await serve_meters("127.0.0.1", 0, count=1)
    data = tmp_path / "data"
    db = data / "gateway.db"
    config = write_config(tmp_path / "etc" / "config.toml", data_dir=data, mqtt_port=free_port(), extra=(
        "\n[web]\nenabled = false\n"), buses=[{"id": "bus", "driver": "modbus_tcp", "host": "127.0.0.1",
                                                 "port": meters.ports[0]}],
        devices=[{"id": "meter", "bus": "bus", "interval": "100ms", "points": POINTS}])
    backup = tmp_path / "site.tar.gz"
    daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(config),
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # no broker listens: every row stays in the outbox
        await until(lambda: daemon.returncode is not None or rows_kept(db) >= 5, within=30)
        assert daemon.returncode is None, "the daemon exited"
        made = await agateway("backup", backup, "-c", config, "--json")  # the daemon keeps writing meanwhile
        assert made.returncode == 0, made.stderr
        manifest = json.loads(made.stdout)
        assert manifest["site"] == "test-site" and set(manifest["files"]) == {"config.toml", "gateway.db"}
        assert oct(backup.stat().st_mode & 0o777) == "0o600"  # residents' data
        again = await agateway("backup", backup, "-c", config)
        assert again.returncode == 1 and "exists" in again.stderr

        refused = await agateway("restore", backup, "-c", config)
        assert refused.returncode == 1 and "is running" in refused.stderr and "stop it first" in refused.stderr
        assert not list(data.glob("before-restore-*"))  # nothing touched
        more = rows_kept(db) + 3
        await until(lambda: rows_kept(db) >= more, within=30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await daemon.wait() == 0
        await meters.close()

    with tarfile.open(backup) as tar:  # what the snapshot holds, read straight from the file
        tar.extract("gateway.db", tmp_path / "peek", filter="data")
    backed_up = outbox_ids(tmp_path / "peek" / "gateway.db")
    at_stop = outbox_ids(db)
    assert len(backed_up) >= 5 and at_stop[:len(backed_up)] == backed_up and len(at_stop) > len(backed_up)
    config.write_text(config.read_text() + "\n# changed after the backup\n")
    edited = config.read_text()

    done = await agateway("restore", backup, "-c", config, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert outbox_ids(db) == backed_up  # the store as it was when the backup was taken
    assert "changed after the backup" not in config.read_text()
    kept = {Path(p).name: Path(p) for p in report["kept"]}
    assert kept["gateway.db"].parent.name.startswith("before-restore-")
    assert outbox_ids(kept["gateway.db"]) == at_stop  # what it replaced, every row
    assert next(p for n, p in kept.items() if n.startswith("config.toml.before-restore-")).read_text() == edited
    store = Store(db)  # the daemon's own opening: current layout, every backed-up row still to deliver
    assert {r.fact.id for r in store.next_batch(1000)} == set(backed_up)
    store.close()


def test_restore_as_root_leaves_the_service_its_files(tmp_path: Path) -> None:
    """`sudo gateway restore` in a data dir that is the service's: every file it creates ends up the service's."""
    assert os.geteuid() == 0, "this proof needs root, as the CLI under sudo has it (CI runs as root)"
    service = (61001, 61003)
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.toml", data_dir=data, mqtt_port=None, buses=[], devices=[])
    Store(data / "gateway.db").close()
    made = gateway("backup", tmp_path / "b.tar.gz", "-c", config)
    assert made.returncode == 0, made.stderr
    os.chown(data, *service)
    for entry in data.iterdir():
        os.chown(entry, *service)
    outside = tmp_path / "root-only"
    outside.write_text("root's")
    os.link(outside, data / "planted-hardlink")  # the service account planting a link to a root file
    os.symlink(outside, data / "planted-symlink")

    done = gateway("restore", tmp_path / "b.tar.gz", "-c", config)
    assert done.returncode == 0, done.stderr
    entries = [p for p in data.rglob("*") if not p.name.startswith("planted-")]
    assert {p.name for p in entries} >= {"gateway.db", "gateway.lock"}
    assert all((p.lstat().st_uid, p.lstat().st_gid) == service for p in entries), [
        (p, p.lstat().st_uid) for p in entries]
    assert outside.stat().st_uid == 0 and (data / "planted-symlink").lstat().st_uid == 0  # never followed
    assert hand_over(data) == []  # nothing left that is root's


def test_hand_over_never_follows_a_directory_swapped_for_a_link_while_it_walks(tmp_path: Path) -> None:
    """The service account swaps a subdirectory of its data dir for a link to a root directory, over and over,
    while a root command hands the data dir over: the root files outside stay root's."""
    assert os.geteuid() == 0, "this proof needs root, as the CLI under sudo has it (CI runs as root)"
    service = (61001, 61003)
    data, outside = tmp_path / "data", tmp_path / "etc"
    (data / "sub").mkdir(parents=True)
    outside.mkdir()
    os.chown(data, *service)
    os.chown(data / "sub", *service)
    names = [f"f{i:03}" for i in range(64)]
    for name in names:
        (outside / name).write_text("root's")
        (data / "sub" / name).write_text("made under sudo")
    swap = ("import os, sys\n"  # what a compromised service account can do to its own directory, in a process
            "sub, real, outside = sys.argv[1:]\n"
            "while True:\n"
            "    os.rename(sub, real); os.symlink(outside, sub); os.unlink(sub); os.rename(real, sub)\n")
    swapper = subprocess.Popen([sys.executable, "-c", swap, data / "sub", data / "sub.real", outside])
    try:
        for _ in range(100):
            hand_over(data)
            for name in names:  # root's again, for the next round
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.chown(data / "sub.real" / name, 0, 0)
            assert [n for n in names if (outside / n).stat().st_uid != 0] == []
    finally:
        swapper.kill()
        swapper.wait()
    if not (data / "sub").is_dir() or (data / "sub").is_symlink():
        with contextlib.suppress(FileNotFoundError):
            (data / "sub").unlink()
        os.rename(data / "sub.real", data / "sub")
    for name in names:
        os.chown(data / "sub" / name, 0, 0)
    assert {p.name for p in hand_over(data)} == set(names)  # the walk does hand over what is really inside


def test_hand_over_leaves_a_data_dir_below_a_directory_the_service_could_change(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this proof needs root, as the CLI under sudo has it (CI runs as root)"
    service = (61001, 61003)
    parent = tmp_path / "service-owned"
    data = parent / "data"
    data.mkdir(parents=True)
    (data / "gateway.lock").write_text("")
    os.chown(parent, *service)  # whoever owns this may swap data/ for a link between our checks
    os.chown(data, *service)
    assert hand_over(data) == [] and (data / "gateway.lock").stat().st_uid == 0
    os.chown(parent, 0, 0)
    assert hand_over(data) == [data / "gateway.lock"] and (data / "gateway.lock").stat().st_uid == service[0]
    link = tmp_path / "link"
    link.symlink_to(data)  # a link configured by root is resolved: its target is still checked
    (data / "faces.db").write_text("")
    assert hand_over(link) == [link / "faces.db"]


RULE = """
[[rules]]
id = "{id}"
when = {{ point = "meter.voltage_a", above = 240 }}
alarm = {{ class = "equipment", message = "Voltage {{value}} V" }}
"""


def test_a_site_with_included_rule_files_is_restored_with_them(tmp_path: Path) -> None:
    """include = ["rules.d/*.toml"]: the rule files travel in the backup and come back beside the config; a rule
    file added since is moved aside (the restored config would pick it up), and the config loads where it is."""
    site = tmp_path / "etc"
    data = tmp_path / "data"
    config = write_config(site / "config.toml", data_dir=data, mqtt_port=None,
                          buses=[{"id": "bus", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 1502}],
                          devices=[{"id": "meter", "bus": "bus", "interval": "1s", "points": POINTS}])
    config.write_text('include = ["rules.d/*.toml"]\n' + config.read_text())
    (site / "rules.d").mkdir()
    lifts = site / "rules.d" / "lifts.toml"
    lifts.write_text(RULE.format(id="overvoltage"))
    assert gateway("check", "-c", config).returncode == 0
    Store(data / "gateway.db").close()
    made = gateway("backup", tmp_path / "b.tar.gz", "-c", config, "--json")
    assert made.returncode == 0, made.stderr
    assert "include/rules.d/lifts.toml" in json.loads(made.stdout)["files"]

    lifts.write_text(RULE.format(id="edited"))
    added = site / "rules.d" / "added.toml"
    added.write_text(RULE.format(id="overvoltage"))  # the same id: with it, the restored config would not load
    done = gateway("restore", tmp_path / "b.tar.gz", "-c", config, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert str(lifts) in report["restored"] and lifts.read_text() == RULE.format(id="overvoltage")
    assert not added.exists()
    kept = [Path(p) for p in report["kept"] if Path(p).name in ("lifts.toml", "added.toml")]
    assert {p.name: p.read_text() for p in kept} == {"lifts.toml": RULE.format(id="edited"),
                                                      "added.toml": RULE.format(id="overvoltage")}
    checked = gateway("check", "-c", config)
    assert checked.returncode == 0, checked.stderr


MEMBER = st.sampled_from([*sorted(ALLOWED), "../../etc/passwd", "/etc/shadow", "gateway.db/../x", "",
                          "include/rules.d/a.toml", "include/../x", "include//x", "include/a/../../x", "include/"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=2048))
def test_any_bytes_are_refused_with_a_reason(tmp_path: Path, junk: bytes) -> None:
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(junk)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(BackupError):
        read_backup(archive, out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(MEMBER, st.binary(max_size=256), st.sampled_from("0123")), max_size=6),
       manifest=st.one_of(st.none(), st.binary(max_size=64), st.recursive(
           st.none() | st.booleans() | st.integers() | st.text(max_size=8),
           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
           max_leaves=8)))
def test_a_hostile_archive_is_refused_and_nothing_lands_outside(tmp_path: Path, members: list[tuple[str, bytes, str]],
                                                                manifest: object) -> None:
    """Any mix of names (traversal included), kinds (files, links, directories) and manifests: a BackupError, and
    nothing written anywhere but the directory it was asked to unpack into."""
    archive = tmp_path / "hostile.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if manifest is not None:
            body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, body, kind in members:
            info = tarfile.TarInfo(name or "x")
            info.type = {"0": tarfile.REGTYPE, "1": tarfile.SYMTYPE, "2": tarfile.DIRTYPE, "3": tarfile.LNKTYPE}[kind]
            info.linkname = "/etc/passwd" if kind in "13" else ""
            info.size = len(body) if kind == "0" else 0
            tar.addfile(info, io.BytesIO(body) if kind == "0" else None)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(BackupError):
        read_backup(archive, out)
    assert {p for p in set(tmp_path.rglob("*")) - before if out not in p.parents} == set()
