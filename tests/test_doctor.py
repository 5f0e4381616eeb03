"""`gateway doctor` against real parts: simulated meters and a black hole, real Mosquitto brokers (plain, with
passwords, with TLS), a closed port, a missing serial port and a pty, certificates made here, a real store, a
running and a stopped daemon, an MJPEG camera. Run as a technician runs it (a child process) where the exit code
and the output are the point; in-process where the machine's facts (service user, clock) must be set.
"""

from __future__ import annotations

import datetime as dt
import grp
import ipaddress
import os
import re
import time
from pathlib import Path
from typing import Any

from conftest import MOSQUITTO, Broker, free_port, free_ports, running, until, write_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from test_cli import gateway

from gateway import facts
from gateway.config import load_config
from gateway.core.data import Event, Priority
from gateway.daemon import Daemon, open_store
from gateway.doctor import Host, ServiceUser, diagnose
from gateway.doctor.result import Result
from gateway.doctor.vision import stream_endpoint
from gateway.store import Batch
from simulators.broker import Mosquitto
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
CHECK_KEYS = {"name", "status", "summary", "advice", "details"}
NO_WEB = "\n[web]\nenabled = false\n"


def by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks}


def results(report: Any) -> dict[str, Result]:
    return {r.name: r for r in report.results}


def synced_host(tmp: Path, user: ServiceUser | None = None) -> Host:
    """This machine, with timesyncd's flag file present (the clock of the box running the tests is its own)."""
    flag = tmp / "synchronized"
    flag.touch()
    return Host(service_user=user or ServiceUser.current(), systemd=False, timesync_flag=flag)


def certificate(tmp: Path, name: str, *, days: float, past: float = 1.0) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid from ``past`` days ago to ``days`` from now, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=past)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


# -- the field and the uplinks, daemon stopped ---------------------------------------------------------


async def test_a_live_meter_a_black_hole_a_missing_port_and_a_dead_broker(tmp_path: Path, broker: Broker) -> None:
    meters = await serve_meters("127.0.0.1", free_ports(1), count=1)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    dead = free_port()
    buses = [dict(id="live", driver="modbus_tcp", host="127.0.0.1", port=meters.ports[0], timeout="300ms"),
             dict(id="hole", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[0], timeout="300ms"),
             dict(id="closed", driver="modbus_tcp", host="127.0.0.1", port=dead, timeout="300ms"),
             dict(id="rs485", driver="modbus_rtu", port=str(tmp_path / "ttyUSB9"))]
    devices = [dict(id="meter", bus="live", points=POINTS), dict(id="hung", bus="hole", unit=7, points=POINTS),
               dict(id="gone", bus="closed", points=POINTS), dict(id="lift", bus="rs485", points=POINTS)]
    extra = NO_WEB + f'\n[[uplinks]]\nname = "backup"\nhost = "127.0.0.1"\nport = {dead}\nclient_id = "b"\n'
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                          devices=devices, extra=extra)
    try:
        text = await gateway("doctor", "-c", config)
        assert text.code == 2, text.out + text.err
        lines = {line.split()[1]: line for line in text.out.splitlines() if line[:4] in ("ok  ", "WARN", "FAIL")}
        assert lines["bus:live"].startswith("ok") and "meter (unit 1) answered voltage_a" in lines["bus:live"]
        hung = lines["bus:hole"]
        assert hung.startswith("FAIL") and "accepts connections, but hung (unit 7) did not answer" in hung, hung
        assert "-> check the unit id" in hung
        assert lines["bus:closed"].startswith("FAIL") and "refuses connections" in lines["bus:closed"]
        assert lines["serial:rs485"].startswith("FAIL") and "ttyUSB9 does not exist" in lines["serial:rs485"]
        assert lines["bus:rs485"].startswith("FAIL")
        assert lines["broker:mqtt"].startswith("ok") and "as 'test-site-doctor'" in lines["broker:mqtt"]
        assert lines["broker:backup"].startswith("FAIL") and "refuses connections" in lines["broker:backup"]
        assert "-> the broker is off" in lines["broker:backup"]
        assert lines["service"].startswith("FAIL") and "never run" in lines["service"]
        assert lines["config"].startswith("ok")
        assert re.fullmatch(r"\d+ ok, \d+ warn, \d+ fail in [\d.]+ s", text.out.splitlines()[-1])

        report = await gateway("doctor", "--json", "-c", config)
        assert report.code == 2
        shape = report.json()
        assert {"version", "config", "site", "status", "exit_code", "elapsed_s", "skipped", "checks"} <= set(shape)
        assert shape["status"] == "fail" and shape["exit_code"] == 2 and shape["site"] == "test-site"
        assert all(set(c) == CHECK_KEYS for c in shape["checks"])
        checks = by_name(shape["checks"])
        assert checks["bus:live"]["status"] == "ok" and checks["bus:live"]["details"]["quality"] == "good"
        assert checks["bus:hole"]["status"] == "fail" and "DeviceTimeout" in checks["bus:hole"]["details"]["error"]
        assert checks["bus:closed"]["details"]["reached"] == "refused"
        assert checks["broker:backup"]["details"]["brokers"][0]["step"] == "connect"
        assert checks["broker:mqtt"]["details"]["client_id"] == "test-site-doctor"
        assert all(c["advice"] for c in shape["checks"] if c["status"] != "ok")  # every problem says what to do

        skipped = await gateway("doctor", "--json", "-c", config, "--skip", "bus:*", "--skip", "serial:*",
                                "--skip", "broker:backup", "--skip", "service", "--skip", "clock")
        names = {c["name"] for c in skipped.json()["checks"]}
        assert not any(n.startswith(("bus:", "serial:")) for n in names) and "broker:backup" not in names
        assert "broker:mqtt" in names and "bus:live" in skipped.json()["skipped"]
        assert skipped.code == 1, skipped.out  # the store's "not run yet" and the outbox's "cannot tell" remain
    finally:
        await meters.close()
        await hole.close()


async def test_a_broken_config_is_every_problem_with_its_line_and_the_box_is_still_checked(tmp_path: Path) -> None:
    buses = [dict(id="m", driver="modbus_tcp", host="127.0.0.1", port=70000)]
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=buses,
                          devices=[dict(id="meter", bus="nowhere", intervall="5s", points=POINTS)], extra=NO_WEB)
    run = await gateway("doctor", "-c", config)
    assert run.code == 2
    first, *rest = run.out.splitlines()
    assert first.startswith("FAIL  config") and "2 problems" in first and "-> fix each line below" in first
    problems = [line.strip() for line in rest if line.startswith("      ")]
    assert any(re.fullmatch(rf"{re.escape(str(config))}:\d+: devices\.0\.intervall: unknown key .*", p)
               for p in problems), problems
    assert any(": buses.0.port: " in p for p in problems)
    check = await gateway("check", "-c", config)
    assert problems == check.out.splitlines()  # the very lines `gateway check` gives
    names = [line.split()[1] for line in rest if line[:4] in ("ok  ", "WARN", "FAIL")]
    assert names == ["service", "clock"]  # what needs no config still runs; nothing else pretends to
    assert "WARN  service  cannot tell" in run.out  # its store is named by the config it could not read


async def test_systemd_state_is_systemctl_s_word_checked_against_the_heartbeat(tmp_path: Path,
                                                                               monkeypatch: Any) -> None:
    """A stand-in for systemctl on PATH (this box is not booted with systemd): what it answers, doctor judges."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "systemctl").write_text('#!/bin/sh\ncase "$1" in is-active) cat "$0.active";; '
                                    'is-enabled) echo disabled;; esac\n')
    (stub / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=[],
                          devices=[], extra=NO_WEB)
    host = Host(service_user=ServiceUser.current(), systemd=True, timesync_flag=synced_host(tmp_path).timesync_flag)
    verdicts = {}
    for said in ("failed", "active", "activating", "inactive"):
        (stub / "systemctl.active").write_text(said + "\n")
        verdicts[said] = results(await diagnose(config, host=host))["service"]
    assert verdicts["failed"].status == "fail" and "journalctl -u gateway" in verdicts["failed"].advice
    assert verdicts["active"].status == "warn" and "writes no heartbeat" in verdicts["active"].summary
    assert verdicts["activating"].status == "warn" and verdicts["inactive"].status == "fail"
    assert verdicts["inactive"].advice == "sudo systemctl enable --now gateway"


# -- a running daemon, then a stopped one ---------------------------------------------------------------


async def test_a_running_daemon_is_all_ok_and_a_stopped_one_fails(tmp_path: Path, broker: Broker) -> None:
    meters = await serve_meters("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="live", driver="modbus_tcp", host="127.0.0.1", port=meters.ports[0], timeout="300ms")]
    devices = [dict(id="meter", bus="live", interval="200ms", points=POINTS)]
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                          devices=devices, extra=NO_WEB)
    try:
        daemon = Daemon(load_config(config))
        async with running(daemon):
            assert daemon.uplink is not None
            uplink = daemon.uplink
            await until(lambda: daemon.pollers["meter"].state.polls >= 2 and uplink.status.state == "connected")
            await daemon.recorder.flush()
            connects = uplink.status.connects

            run = await gateway("doctor", "--json", "-c", config, "--skip", "clock")
            checks = by_name(run.json()["checks"])
            assert run.code == 0, [c for c in checks.values() if c["status"] != "ok"]
            assert checks["service"]["details"]["running"] is True and "running (pid" in checks["service"]["summary"]
            assert checks["bus:live"]["details"]["via"] == "daemon" and checks["bus:live"]["details"]["quality"]
            assert checks["broker:mqtt"]["status"] == "ok" and checks["outbox"]["status"] == "ok"
            assert checks["store"]["status"] == "ok" and checks["disk"]["status"] == "ok"
            # doctor's own session did not drop the daemon's: same connection, nothing reconnected
            assert uplink.status.state == "connected" and uplink.status.connects == connects

        stopped = await gateway("doctor", "-c", config, "--skip", "clock")
        assert stopped.code == 2, stopped.out
        service = next(line for line in stopped.out.splitlines() if " service " in line)
        assert service.startswith("FAIL") and "not running (last state 'stopped')" in service
        assert f"gateway run -c {config}" in service
        assert "ok    bus:live" in stopped.out  # with the daemon gone, doctor reads the meter itself
    finally:
        await meters.close()


async def test_many_buses_through_a_running_daemon_are_each_read_a_few_at_a_time(tmp_path: Path,
                                                                                  monkeypatch: Any) -> None:
    """More buses than the control socket serves at once (32): every read gets its answer, none is turned away."""
    from gateway.doctor import context

    count = 48
    meters = await serve_meters("127.0.0.1", 0, count=count)
    buses = [dict(id=f"b{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
             for i, p in enumerate(meters.ports)]
    devices = [dict(id=f"m{i}", bus=f"b{i}", interval="1s", points=POINTS) for i in range(count)]
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=buses,
                          devices=devices, extra=NO_WEB)
    try:
        daemon = Daemon(load_config(config))
        async with running(daemon):
            await until(lambda: all(p.state.state == "online" for p in daemon.pollers.values()))
            found = results(await diagnose(config, host=synced_host(tmp_path), budget=60))
            read = [r for name, r in found.items() if name.startswith("bus:")]
            assert len(read) == count and all(r.status == "ok" for r in read), [r for r in read if r.status != "ok"]
            assert all(r.details.get("quality") == "good" and r.summary.endswith("answered voltage_a; 1 online of 1")
                       for r in read), read[0]

            monkeypatch.setattr(context, "ASK_DAEMON", 0.0)  # no time for the daemon's picture of its devices
            found = results(await diagnose(config, host=synced_host(tmp_path), budget=60, skip=["bus:b[1-9]*"]))
            blind = found["bus:b0"]
            assert blind.status == "warn" and "answered voltage_a; the daemon gave no picture" in blind.summary, blind
            assert blind.details["online"] == 0 and blind.details["snapshot"] is False
    finally:
        await meters.close()


async def test_buses_left_when_the_time_is_up_say_so_and_are_judged_on_the_daemon_s_picture(tmp_path: Path) -> None:
    """Each read of a silent unit takes its timeout at least, and the daemon is asked a few at a time: with
    40 of them and 3 s, some are not read, and say so, rather than time out or be turned away."""
    count = 40
    holes = await serve_black_holes("127.0.0.1", 0, count=count)
    buses = [dict(id=f"b{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="500ms")
             for i, p in enumerate(holes.ports)]
    devices = [dict(id=f"m{i}", bus=f"b{i}", interval="250ms", points=POINTS) for i in range(count)]
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=buses,
                          devices=devices, extra=NO_WEB)
    try:
        daemon = Daemon(load_config(config))
        async with running(daemon):
            await until(lambda: all(p.state.state == "offline" for p in daemon.pollers.values()), within=60)
            found = results(await diagnose(config, host=synced_host(tmp_path), budget=3))
        read = [r for name, r in found.items() if name.startswith("bus:")]
        assert len(read) == count and all(r.status == "fail" for r in read)
        assert not [r for r in read if "no verdict" in r.summary or "did not answer a read (" in r.summary]
        assert not [r for r in read if "the check itself failed" in r.summary], read  # a read that failed is said
        late = [r for r in read if "not_probed" in r.details]
        assert late and all("every device on it is offline (m" in r.summary for r in late), late[:1]
    finally:
        await holes.close()


def test_many_skipped_checks_are_summed_up_by_kind() -> None:
    from gateway.cli.doctor import render
    from gateway.doctor.result import ok
    from gateway.doctor.run import Report

    skipped = [f"bus:b{i}" for i in range(300)] + ["clock", "camera:gate", "serial:x", "serial:y"]
    text = render(Report("gateway.toml", "site", [ok("config", "fine")], skipped=skipped))
    assert text.splitlines()[-1] == "skipped 304: bus:* (300), clock, camera:gate, serial:* (2)"
    long = [f"camera:{'c' * 30}{i}" for i in range(2)] + [f"x{'y' * 40}{i}" for i in range(8)]
    lines = render(Report("gateway.toml", "site", [], skipped=long)).splitlines()
    assert len(lines) > 3 and all(len(line) <= 100 for line in lines)


# -- certificates and TLS --------------------------------------------------------------------------------


async def test_certificates_expiring_soon_warn_and_expired_ones_fail(tmp_path: Path) -> None:
    soon_cert, soon_key = certificate(tmp_path, "broker", days=10)
    old_cert, old_key = certificate(tmp_path, "web", days=-2, past=400)
    (tmp_path / "tls").mkdir()
    tls = Mosquitto(tmp_path / "tls", binary=MOSQUITTO)
    conf = tls.conf.read_text().replace(f"listener {tls.port} 127.0.0.1\n", f"listener {tls.port} 127.0.0.1\n"
                                        f"certfile {soon_cert}\nkeyfile {soon_key}\n")
    tls.conf.write_text(conf + ("user root\n" if os.geteuid() == 0 else ""))
    tls.start()
    try:
        extra = (f'\n[mqtt.tls]\nca_file = "{soon_cert}"\n\n[web]\nenabled = true\nport = {free_port()}\n'
                 f'tls_cert = "{old_cert}"\ntls_key = "{old_key}"\n')
        config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=tls.port, buses=[],
                              devices=[], extra=extra)
        report = await diagnose(config, host=synced_host(tmp_path))
        found = results(report)
        assert found["broker:mqtt"].status == "ok" and "with TLS" in found["broker:mqtt"].summary
        for name in ("cert:mqtt.tls.ca_file", "cert:mqtt.broker"):
            assert found[name].status == "warn", found[name]
            assert 9 <= found[name].details["days_left"] <= 10 and "expires in" in found[name].summary
            assert "before" in found[name].advice
        assert found["cert:mqtt.broker"].details["subject"] == "broker"
        assert found["cert:web.tls_cert"].status == "fail" and "expired on" in found["cert:web.tls_cert"].summary
        assert report.exit_code == 2

        # A client that does not trust the broker's CA: refused at the handshake, and the certificate still dated.
        other, _ = certificate(tmp_path, "other-ca", days=300)
        config.write_text(config.read_text().replace(str(soon_cert), str(other)))
        found = results(await diagnose(config, host=synced_host(tmp_path)))
        assert found["broker:mqtt"].status == "fail" and "TLS refused" in found["broker:mqtt"].summary
        assert "ca_file" in found["broker:mqtt"].advice
        assert found["cert:mqtt.broker"].status == "warn"
    finally:
        tls.stop()


async def test_wrong_credentials_fail_and_no_secret_is_ever_printed(tmp_path: Path) -> None:
    (tmp_path / "auth").mkdir()
    auth = Mosquitto(tmp_path / "auth", binary=MOSQUITTO, users={"gw": "the-right-one"})
    auth.start()
    secret, camera_secret = "wrong-s3cret-Zq9", "cam-s3cret-Xy7"
    closed = free_port()
    extra = (NO_WEB + f'\n[[cameras]]\nid = "gate"\nurl = "rtsp://admin:{camera_secret}@127.0.0.1:{closed}/live"\n'
             'detect = []\n')
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=auth.port, buses=[],
                          devices=[], extra=extra)
    config.write_text(config.read_text().replace("[mqtt]\n", f'[mqtt]\nusername = "gw"\npassword = "{secret}"\n'))
    try:
        text, as_json = await gateway("doctor", "-c", config), await gateway("doctor", "--json", "-c", config)
        for run in (text, as_json):
            assert secret not in run.out + run.err and camera_secret not in run.out + run.err
        checks = by_name(as_json.json()["checks"])
        assert checks["broker:mqtt"]["status"] == "fail" and "refuses these credentials" in checks["broker:mqtt"][
            "advice"]
        assert checks["camera:gate"]["status"] == "fail" and "refuses connections" in checks["camera:gate"]["summary"]
        assert "rtsp://admin:***@127.0.0.1" in checks["camera:gate"]["summary"]

        config.write_text(config.read_text().replace(secret, "the-right-one"))
        found = results(await diagnose(config, host=synced_host(tmp_path)))
        assert found["broker:mqtt"].status == "ok" and "user 'gw'" in found["broker:mqtt"].summary
    finally:
        auth.stop()


# -- serial ports and the service user -------------------------------------------------------------------


async def test_a_serial_port_the_service_user_cannot_open_says_which_group(tmp_path: Path) -> None:
    leader, follower = os.openpty()
    try:
        port = os.ttyname(follower)
        os.chmod(port, 0o660)
        buses = [dict(id="rs485", driver="modbus_rtu", port=port, timeout="200ms")]
        config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=buses,
                              devices=[dict(id="lift", bus="rs485", points=POINTS)], extra=NO_WEB)
        me = ServiceUser.current()
        stranger = ServiceUser("stranger", 64999, 64999, frozenset({64999}))
        outsider = results(await diagnose(config, host=synced_host(tmp_path, stranger)))["serial:rs485"]
        assert outsider.status == "fail" and "'stranger' cannot open" in outsider.summary
        group = grp.getgrgid(os.stat(port).st_gid).gr_name
        assert outsider.advice == f"sudo usermod -aG {group} stranger, then restart the service"
        assert outsider.details["group"] == group
        found = results(await diagnose(config, host=synced_host(tmp_path, me)))
        assert found["serial:rs485"].status == "ok", found["serial:rs485"]
        # the port opens, but nothing answers on the line: the probe read says so, with what to check
        assert found["bus:rs485"].status == "fail" and f"{port} opens, but lift (unit 1)" in found["bus:rs485"].summary
    finally:
        os.close(leader)
        os.close(follower)


# -- the outbox -------------------------------------------------------------------------------------------


async def test_an_alarm_waiting_fails_and_where_no_uplink_carries_it_warns(tmp_path: Path, broker: Broker) -> None:
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=[],
                          devices=[], extra=NO_WEB)
    cfg = load_config(config)
    store = open_store(cfg)
    store.commit(Batch(facts=[facts.event(Event("fire.alarm", "zone-3", Priority.ALARM))]), now=time.time() - 120)
    store.close()
    found = results(await diagnose(config, host=synced_host(tmp_path)))["outbox"]
    assert found.status == "fail" and "alarm 1 (oldest 2.0 min)" in found.summary
    assert "the daemon is not running" in found.advice and found.details["depth"]["alarm"] == 1

    config = write_config(tmp_path / "kept.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=[], devices=[],
                          extra=NO_WEB)
    found = results(await diagnose(config, host=synced_host(tmp_path)))["outbox"]
    assert found.status == "warn" and "no enabled uplink carries alarms" in found.advice


# -- cameras and models -------------------------------------------------------------------------------------


async def test_models_and_camera_streams(tmp_path: Path, vision_dir: Path) -> None:
    import numpy as np

    from simulators.camera import MjpegCamera, scene

    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    key = tmp_path / "faces.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    async with MjpegCamera([scene(np.full((480, 640, 3), 90, np.uint8))], fps=10) as live, \
            MjpegCamera([np.zeros((120, 160, 3), np.uint8)], fps=10) as hung:
        hung.freeze()  # accepts the connection, never sends a frame
        extra = (NO_WEB + f'\n[vision.faces]\nkey_file = "{key}"\n\n[[cameras]]\nid = "lobby"\nurl = "{live.url}"\n'
                 f'\n[[cameras]]\nid = "frozen"\nurl = "{hung.url}"\ndetect = []\nstall_timeout = "2s"\n')
        config = write_config(tmp_path / "gateway.toml", data_dir=data, mqtt_port=None, buses=[], devices=[],
                              extra=extra)
        report = await diagnose(config, host=synced_host(tmp_path), budget=10)
        found = results(report)
        assert found["models"].status == "fail" and "yunet (missing)" in found["models"].summary
        assert found["models"].advice.startswith("gateway models fetch")
        assert found["camera:lobby"].status == "ok" and "opens, 640x480" in found["camera:lobby"].summary
        assert found["camera:frozen"].status == "fail", found["camera:frozen"]
        assert report.elapsed < 10 + 2  # the frozen camera cost its own timeout, inside the budget

        (data / "models").rmdir()
        (data / "models").symlink_to(vision_dir / "models")
        found = results(await diagnose(config, host=synced_host(tmp_path), skip=["camera:*"]))
        assert found["models"].status == "ok" and found["models"].details["models"] == {"sface": "ok", "yunet": "ok"}
        assert "camera:lobby" not in found


# -- the parser of camera URLs --------------------------------------------------------------------------------


@given(st.text(max_size=40), st.sampled_from(["rtsp", "http", "https"]), st.integers(1, 65535),
       st.text(alphabet=st.characters(blacklist_characters="/?#@[]: \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"),
               min_size=1, max_size=20))
def test_a_camera_url_gives_its_host_and_port_never_its_password(password: str, scheme: str, port: int,
                                                                 host: str) -> None:
    if any(c.isspace() for c in host):
        return
    url = f"{scheme}://admin:{password}@{host}:{port}/stream"
    assert stream_endpoint(url) == (host, port)


@given(st.text(max_size=80))
def test_any_text_as_a_camera_url_never_breaks_the_parser(url: str) -> None:
    found = stream_endpoint(url)
    assert found is None or (found[0] and 0 < found[1] < 65536 and "@" not in found[0])


def test_the_exit_code_is_the_worst_status() -> None:
    from gateway.doctor.result import exit_code, fail, ok, warn

    assert exit_code([]) == 0 and exit_code([ok("a", "fine")]) == 0
    assert exit_code([ok("a", "fine"), warn("b", "hm", "look")]) == 1
    assert exit_code([warn("b", "hm", "look"), fail("c", "bad", "fix"), ok("a", "fine")]) == 2

