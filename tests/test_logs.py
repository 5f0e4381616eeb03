"""Logs: journald's priority on every line, stdlib loggers in our format, and no secret in any line.

The end-to-end test runs the real `gateway run` with credentials everywhere the config takes them (a wrong MQTT
password refused by a real Mosquitto, then the right one from a password file applied by a reload; a camera URL
with user:password; a webhook with a token) and greps every line it wrote for each secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import MOSQUITTO, free_port, until, write_config
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.core import logs
from gateway.core.logs import MASK, redact_text
from simulators.broker import Mosquitto
from simulators.meter import METER_POINTS, serve_meters

SITE = "logs-site"
WRONG, RIGHT = "Wrong-Mqtt-Pw-77a", "Right-Mqtt-Pw-9f3"
CAMERA_PW, HOOK_TOKEN = "Cam-Pw-8d4", "Hook-Token-5e6"
PREFIX = re.compile(r"^<([0-7])>")


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A file standing for the journal's stream: JOURNAL_STREAM names its device and inode, as systemd does."""
    path = tmp_path / "journal"
    path.touch()
    info = path.stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    yield path
    logs.reset()


def configured(path: Path, level: str = "debug", fmt: str = "auto") -> Any:
    stream = path.open("a", encoding="utf-8")
    logs.configure(level, fmt, stream=stream)
    return stream


def lines(path: Path) -> list[tuple[int | None, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PREFIX.match(line)
        out.append((int(match.group(1)) if match else None, line[match.end() if match else 0:]))
    return out


# -- journald priorities -------------------------------------------------------------------------------------------

def test_every_line_on_the_journal_stream_carries_its_syslog_priority(journal: Path) -> None:
    stream = configured(journal)
    log = structlog.get_logger("gateway.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("x")
    stream.close()
    got = [(prio, json.loads(body)) for prio, body in lines(journal)]
    assert [(prio, e["event"], e["level"]) for prio, e in got] == [
        (7, "d", "debug"), (6, "i", "info"), (4, "w", "warning"), (3, "e", "error"), (2, "c", "critical"),
        (3, "x", "error")]
    # what `journalctl -p warning` shows: warning (4) and more severe, never info
    assert [e["event"] for prio, e in got if prio is not None and prio <= 4] == ["w", "e", "c", "x"]
    assert all(e["logger"] == "gateway.test" for _, e in got)


def test_a_stdlib_loggers_lines_come_out_in_the_same_format_with_their_priority(journal: Path) -> None:
    stream = configured(journal, level="info")
    structlog.get_logger("gateway.test").warning("ours", device="m1")
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.info("asyncio chatter")  # a library at INFO: below what is shown of libraries
    asyncio_log.warning("Executing %s took %.3f seconds", "<Task poll>", 0.25)
    logging.getLogger("some.library").error("gone")
    logging.getLogger("some.library").log(25, "between info and warning")
    # our own stdlib loggers take the configured level (not gateway.mqtt: the uplink quiets paho there, once imported)
    logging.getLogger("gateway.core.test").info("ours through stdlib")
    stream.close()
    got = [(prio, json.loads(body)) for prio, body in lines(journal)]
    assert [(prio, e["logger"], e["event"], e["level"]) for prio, e in got] == [
        (4, "gateway.test", "ours", "warning"),
        (4, "asyncio", "Executing <Task poll> took 0.250 seconds", "warning"),
        (3, "some.library", "gone", "error"),
        (6, "gateway.core.test", "ours through stdlib", "info"),
    ]
    keys = {k for k in got[0][1] if k != "device"}
    assert all(set(e) == keys for _, e in got[1:])  # timestamp, level, event, logger: one shape for every line


def test_a_logger_that_opted_out_of_propagation_still_speaks_our_format(journal: Path) -> None:
    stream = configured(journal)
    quiet = logging.getLogger("test.opted-out")
    quiet.propagate = False
    try:
        quiet.warning("no handler of its own, token=%s", "abc123")
    finally:
        quiet.propagate = True
    stream.close()
    ((prio, body),) = lines(journal)
    assert prio == 4 and json.loads(body)["event"] == f"no handler of its own, token={MASK}"


def test_an_exception_is_rendered_once_on_one_line(journal: Path) -> None:
    stream = configured(journal)
    try:
        raise ConnectionError("mqtt://site:Hunter2-pw@broker.example:8883 refused")
    except ConnectionError:
        logging.getLogger("paho").exception("connect failed")
        structlog.get_logger("gateway.test").exception("connect failed")
    stream.close()
    text = journal.read_text(encoding="utf-8")
    got = lines(journal)
    assert len(got) == 2 and text.count("Traceback") == 2 and "Hunter2" not in text
    for prio, body in got:
        event = json.loads(body)
        assert prio == 3 and event["exception"].startswith("Traceback") and "exc_info" not in event
        assert "ConnectionError: mqtt://site:***@broker.example:8883 refused" in event["exception"]


def test_a_terminal_or_a_pipe_without_the_journal_gets_no_prefix(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.touch()
    monkeypatch.setenv("JOURNAL_STREAM", f"{other.stat().st_dev}:{other.stat().st_ino}")  # someone else's stream
    path = tmp_path / "out"
    try:
        stream = configured(path, fmt="console")
        structlog.get_logger("gateway.test").warning("kv line", password="s3cret-kv")
        logging.getLogger("asyncio").warning("stdlib kv line")
        stream.close()
    finally:
        logs.reset()
    assert path.read_text(encoding="utf-8").splitlines() == [
        line for line in path.read_text(encoding="utf-8").splitlines() if not PREFIX.match(line)]
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert "level='warning' event='kv line' logger='gateway.test' password='***'" in first
    assert "level='warning' event='stdlib kv line' logger='asyncio'" in second


@pytest.mark.parametrize("value", ["", "12", "1:x", "garbage", ":"])
def test_a_garbled_journal_stream_variable_means_not_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 value: str) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with (tmp_path / "f").open("w") as f:
        assert not logs.journal_stream(f)


# -- redaction -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "masked"), [
    ("rtsp://viewer:Cam-Pw@192.168.1.64:554/Streaming", "rtsp://viewer:***@192.168.1.64:554/Streaming"),
    ("open 'rtsp://admin:p@ss#w/rd@10.0.0.9/live' failed", "open 'rtsp://admin:***@10.0.0.9/live' failed"),
    ("mqtt://site:pw@broker:1883 and https://h/x", "mqtt://site:***@broker:1883 and https://h/x"),
    ("http://h/alarm?token=abc&x=1", "http://h/alarm?token=***"),
    ("password=hunter2 user=bob", "password=*** user=bob"),
    ("{'mqtt_password': 'a\\'b', 'port': 1883}", "{'mqtt_password': *** 'port': 1883}"),
    ('{"api_key": "k y", "n": 1}', '{"api_key": *** "n": 1}'),
    ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer ***"),
    ("sent bearer abc!def", "sent bearer ***"),
    ("password_file=/etc/gateway/mqtt-password", "password_file=/etc/gateway/mqtt-password"),
    ("alarm key=fire/zone-3 level=2", "alarm key=fire/zone-3 level=2"),
    ("connected to mqtt://127.0.0.1:1883", "connected to mqtt://127.0.0.1:1883"),
    ("POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx failed",
     "POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=*** failed"),
    ("https://oapi.dingtalk.com/robot/send?timestamp=1&sign=abc%2Bd&x=1", "https://oapi.dingtalk.com/robot/send?"
     "timestamp=1&sign=***&x=1"),
    ("clone https://ghp_Secret123@github.com/o/r.git", "clone https://***@github.com/o/r.git"),
    ("mqtt://admin%3Asecret@broker:1883", "mqtt://admin%3A***@broker:1883"),
    ("login with password hunter2 now", "login with password *** now"),
    ("passwd hunter2", "passwd ***"),
    ("password file not readable; password is too short", "password file not readable; password is too short"),
    ("mail https://h/x?to=a@b.example", "mail https://h/x?to=a@b.example"),
])
def test_redact_text(text: str, masked: str) -> None:
    assert redact_text(text) == masked


def test_secret_named_keys_are_masked_whole_at_any_depth_and_others_left_alone() -> None:
    event = logs.redact(None, "info", {
        "event": "x", "password": "a", "X-Api-Key": 123, "access_token": b"raw", "client_secret": None,
        "password_file": "/etc/p", "key": "fire/zone-3", "nested": {"token": "t", "hosts": ["mqtt://u:p@h"]},
        "error": ConnectionError("Authorization: Bearer abcdefgh"),
    })
    assert event == {
        "event": "x", "password": MASK, "X-Api-Key": MASK, "access_token": MASK, "client_secret": None,
        "password_file": "/etc/p", "key": "fire/zone-3", "nested": {"token": MASK, "hosts": ["mqtt://u:***@h"]},
        "error": "ConnectionError('Authorization: Bearer ***",  # to the blank: a token's end is not known
    }


SAFE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1)
"""Non-blank text: a secret or a name in a URL (blanks end a URL in a line of text)."""
WORDS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]))


@settings(max_examples=400, deadline=None)
@given(WORDS)
def test_redact_text_takes_any_text(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@settings(max_examples=400, deadline=None)
@given(before=WORDS, after=WORDS, scheme=st.sampled_from(["rtsp", "rtsps", "mqtt", "mqtts", "http", "https", "ws"]),
       user=st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=12), password=SAFE,
       host=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
       path=st.from_regex(r"(/[A-Za-z0-9._-]*){0,3}", fullmatch=True))
def test_a_password_in_a_url_never_survives(before: str, after: str, scheme: str, user: str, password: str,
                                            host: str, path: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}{path}"
    shown = f"{scheme}://{user}:{MASK}@{host}{path}"
    assume(all(password not in redact_text(part) for part in (before, after, shown)))
    text = f"{before} {url} {after}"
    assert password not in redact_text(text)


@settings(max_examples=300, deadline=None)
@given(before=WORDS, after=WORDS, user=st.from_regex(r"[a-z0-9]{0,8}", fullmatch=True),
       password=st.text(st.characters(codec="ascii", categories=("L", "N", "P", "S"), exclude_characters="'\"\\"),
                        min_size=1))
def test_a_password_in_a_url_inside_a_repr_never_survives(before: str, after: str, user: str, password: str) -> None:
    """An exception or an object is printed by its repr, which escapes around the URL but not within it."""
    text = repr(ConnectionError(f"{before} rtsp://{user}:{password}@cam.local/live {after}"))
    ideal = repr(ConnectionError(f"{before} rtsp://{user}:{MASK}@cam.local/live {after}"))
    assume(password not in redact_text(ideal))  # the password is not also somewhere else in the line
    assert password not in redact_text(text)


@settings(max_examples=400, deadline=None)
@given(before=WORDS, after=WORDS, name=st.sampled_from(
           ["password", "PASSWORD", "passwd", "mqtt_password", "token", "access_token", "api_key", "X-Api-Key",
            "secret", "client_secret", "Authorization", "passphrase"]),
       sep=st.sampled_from(["=", ": ", " = ", '": "', "':'"]), value=SAFE)
def test_a_secret_after_its_name_never_survives(before: str, after: str, name: str, sep: str, value: str) -> None:
    assume(all(value not in redact_text(part) for part in (before, after, f"{name}{sep}{MASK}")))
    assert value not in redact_text(f"{before} {name}{sep}{value} {after}")


QUERY_SAFE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                                    exclude_characters="&#;"), min_size=1)
"""A query parameter's value: up to the next ``&``, ``#`` or ``;``."""


@settings(max_examples=300, deadline=None)
@given(before=WORDS, after=WORDS, name=st.sampled_from(["key", "KEY", "access_token", "sign", "signature", "secret"]),
       value=QUERY_SAFE, other=st.booleans())
def test_a_secret_in_a_urls_query_never_survives(before: str, after: str, name: str, value: str, other: bool) -> None:
    """A WeCom robot's ``?key=``, a DingTalk robot's ``access_token`` and ``sign``."""
    url = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?{'x=1&' if other else ''}{name}="
    assume(all(value not in redact_text(part) for part in (before, after, url + MASK)))
    assert value not in redact_text(f"{before} {url}{value} {after}")


USERINFO = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                                 exclude_characters=":/?#@"), min_size=1)


@settings(max_examples=300, deadline=None)
@given(before=WORDS, after=WORDS, token=USERINFO, host=st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True))
def test_a_token_as_a_urls_user_never_survives(before: str, after: str, token: str, host: str) -> None:
    assume(all(token not in redact_text(part) for part in (before, after, f"https://{MASK}@{host}/x")))
    assert token not in redact_text(f"{before} https://{token}@{host}/x {after}")


@settings(max_examples=300, deadline=None)
@given(before=WORDS, after=WORDS, user=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), password=SAFE,
       colon=st.sampled_from(["%3A", "%3a"]))
def test_a_password_behind_a_percent_encoded_colon_never_survives(before: str, after: str, user: str, password: str,
                                                                   colon: str) -> None:
    shown = f"mqtt://{user}{colon}{MASK}@broker:1883"
    assume(all(password not in redact_text(part) for part in (before, after, shown)))
    assert password not in redact_text(f"{before} mqtt://{user}{colon}{password}@broker:1883 {after}")


@settings(max_examples=300, deadline=None)
@given(before=WORDS, after=WORDS, name=st.sampled_from(["password", "Password", "passwd", "PASSPHRASE"]),
       value=SAFE)
def test_a_password_after_a_blank_never_survives(before: str, after: str, name: str, value: str) -> None:
    """``password hunter2`` as a shell line or a device's console prints it; prose ("password file ...") stays."""
    assume(value.rstrip(".,;:!?'\")]").lower() not in logs.WORDS_AFTER_PASSWORD)
    assume(all(value not in redact_text(part) for part in (before, after, f"{name} {MASK}")))
    assert value not in redact_text(f"{before} {name} {value} {after}")


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["password", "mqtt_password", "token", "api-key", "Authorization", "gallery_key"]),
       value=st.one_of(SAFE, st.integers(), st.binary(min_size=1)))
def test_a_secret_named_field_is_masked_whatever_its_value(name: str, value: object) -> None:
    assert logs.redact(None, "info", {"event": "e", name: value})[name] == MASK


# -- the real daemon, credentials everywhere -----------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run scripts/setup.sh (it installs it)")
    (tmp_path / "broker").mkdir()
    with Mosquitto(tmp_path / "broker", binary=MOSQUITTO, users={SITE: RIGHT}) as b:
        yield b


def credentialed(tmp_path: Path, mqtt_port: int, meter_port: int) -> Path:
    """A site with secrets in every place the config takes them, and the failures that would print them."""
    path = write_config(
        tmp_path / "gateway.toml", site=SITE, data_dir=tmp_path / "data", mqtt_port=mqtt_port,
        buses=[{"id": "meters", "driver": "modbus_tcp", "host": "127.0.0.1", "port": meter_port},
               {"id": "dead", "driver": "modbus_tcp", "host": "127.0.0.1", "port": free_port(), "timeout": "300ms"}],
        devices=[{"id": "meter-1", "bus": "meters", "unit": 1, "interval": "1s", "points": METER_POINTS},
                 {"id": "gone", "bus": "dead", "unit": 1, "interval": "1s", "offline_after": 1,
                  "points": METER_POINTS[:1]}], extra="\n[web]\nenabled = false\n")
    text = path.read_text(encoding="utf-8").replace(
        "[mqtt]\n", f'[mqtt]\nusername = "{SITE}"\npassword = "{WRONG}"\n')
    path.write_text(text + f"""
[log]
level = "debug"

[[notifiers]]
id = "guard-room"
url = "http://127.0.0.1:{free_port()}/alarm?token={HOOK_TOKEN}"
retries = 0

[[rules]]
id = "meter-gone"
when = {{ device = "gone", state = "offline" }}
actions = [ {{ notify = "guard-room" }} ]

[[cameras]]
id = "lobby"
url = "rtsp://viewer:{CAMERA_PW}@127.0.0.1:{free_port()}/Streaming/Channels/102"
detect = []
stall_timeout = "1s"
reconnect_max = "1s"
""", encoding="utf-8")
    return path


def events(path: Path) -> list[tuple[int | None, dict[str, Any]]]:
    return [(prio, json.loads(body)) for prio, body in lines(path)]


def said(path: Path, event: str, **fields: Any) -> bool:
    return any(e["event"] == event and all(e.get(k) == v for k, v in fields.items()) for _, e in events(path))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_no_secret_in_any_line_of_a_run_with_credentials_everywhere(tmp_path: Path, broker: Mosquitto) -> None:
    out_path = tmp_path / "journal"
    server = await serve_meters("127.0.0.1", free_port(), count=1)
    config = credentialed(tmp_path, broker.port, server.ports[0])
    with out_path.open("ab") as out:
        info = os.fstat(out.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        child = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(config),
                                                     stdout=out, stderr=out, env=env)
        try:
            await until(lambda: said(out_path, "uplink down", error="[code:135] Not authorized")
                        and said(out_path, "rule action failed", rule="meter-gone")
                        and said(out_path, "camera worker", camera="lobby"), within=60)
            secret_file = tmp_path / "mqtt-password"
            secret_file.write_text(RIGHT + "\n")
            secret_file.chmod(0o600)
            config.write_text(config.read_text().replace(f'password = "{WRONG}"', f'password_file = "{secret_file}"'))
            child.send_signal(signal.SIGHUP)
            await until(lambda: said(out_path, "config applied") and said(out_path, "uplink connected"), within=30)
            child.send_signal(signal.SIGTERM)
            await asyncio.wait_for(child.wait(), 30)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await server.close()

    text = out_path.read_text(encoding="utf-8")
    for name, secret in [("wrong MQTT password", WRONG), ("MQTT password from the file", RIGHT),
                         ("camera password", CAMERA_PW), ("webhook token", HOOK_TOKEN)]:
        assert secret not in text, f"the {name} is in the log: {[ln for ln in text.splitlines() if secret in ln]}"
    got = events(out_path)  # every line is one JSON object behind its priority: nothing else got through
    assert child.returncode == 0 and said(out_path, "gateway stopped")
    levels = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
    assert all(prio == levels[e["level"]] for prio, e in got), [e for prio, e in got if prio != levels[e["level"]]]
    assert {e["level"] for _, e in got} >= {"debug", "info", "warning", "error"}


def test_a_crash_is_one_critical_line_on_the_journal(tmp_path: Path) -> None:
    """An uncaught exception in a process logging JSON: one line at crit, its traceback inside, masked."""
    import subprocess

    path = tmp_path / "journal"
    code = ("from gateway.core import logs; logs.configure('info', 'auto')\n"
            "def connect(): raise RuntimeError('mqtt://site:Crash-Pw-31@broker:1883 refused')\nconnect()\n")
    with path.open("ab") as out:
        info = os.fstat(out.fileno())
        done = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=out, timeout=60,
                              env={**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    ((prio, body),) = lines(path)
    event = json.loads(body)
    assert done.returncode == 1 and prio == 2 and event["event"] == "uncaught exception"
    assert event["exception"].endswith("RuntimeError: mqtt://site:***@broker:1883 refused")
    assert "Crash-Pw-31" not in path.read_text(encoding="utf-8")
