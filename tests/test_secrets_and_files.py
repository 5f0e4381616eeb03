"""Inputs that are files, and secrets that never reach a log line or an error message."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, check_file, load_config
from models.config import redact_url

BASE = '[site]\nid = "s"\n[store]\ndata_dir = "{data}"\n[mqtt]\n{mqtt}\n'

password = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=4, max_size=24).filter(
    lambda p: p.strip() == p and "\n" not in p and "@" not in p[:1])


@settings(max_examples=300, deadline=None)
@given(user=st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,11}", fullmatch=True), secret=password,
       host=st.sampled_from(["10.0.0.5", "cam.lobby.local", "[fe80::1]"]),
       port=st.sampled_from(["", ":554", ":99999", ":x"]), path=st.sampled_from(["", "/ch1", "/a?b=c#d"]))
def test_a_camera_url_is_redacted_whatever_its_password_holds(user: str, secret: str, host: str, port: str,
                                                              path: str) -> None:
    url = f"rtsp://{user}:{secret}@{host}{port}{path}"
    shown = redact_url(url)
    assert shown == f"rtsp://{user}:***@{host}{port}{path}"
    if len(secret) >= 4 and secret not in f"rtsp://{user}:***@{host}{port}{path}":
        assert secret not in shown


@settings(max_examples=100, deadline=None)
@given(secret=password.filter(lambda p: '"' not in p and "\\" not in p))
def test_check_never_echoes_a_password(tmp_path_factory: pytest.TempPathFactory, secret: str) -> None:
    tmp = tmp_path_factory.mktemp("cfg")
    config = tmp / "site.toml"

    def report(password: str) -> str:
        config.write_text(BASE.format(data=tmp, mqtt=f'password = ["{password}"]\nport = 99999'), encoding="utf-8")
        out = io.StringIO()
        assert check_file(config, out) == 2  # a password of the wrong shape is an error
        return out.getvalue()

    # a secret such as "mqtt" or "site" is in every message anyway: only text that came from the password counts
    assert secret not in report(secret) or secret in report("placeholder-0")


def _config(tmp: Path, mqtt: str) -> Path:
    path = tmp / "site.toml"
    path.write_text(BASE.format(data=tmp / "data", mqtt=mqtt), encoding="utf-8")
    return path


def test_an_include_that_is_a_fifo_or_a_device_is_a_clean_error(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "rules.fifo")
    for target in (tmp_path / "rules.fifo", Path("/dev/zero")):
        config = _config(tmp_path, 'enabled = false\n')
        config.write_text(f'include = ["{target}"]\n' + config.read_text())
        with pytest.raises(ConfigError) as caught:  # at once: neither a hang nor a MemoryError
            load_config(config)
        assert "is not a regular file" in str(caught.value), caught.value


def test_secrets_readable_by_others_are_refused_and_their_contents_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cr3t-do-not-print\n")
    secret.chmod(0o644)
    config = _config(tmp_path, f'password_file = "{secret}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (problem,) = caught.value.problems
    assert problem.path == "mqtt.password_file" and "chmod 600" in problem.message
    assert "s3cr3t" not in str(caught.value)
    secret.chmod(0o600)
    assert load_config(config).mqtt.password_file == secret


@settings(max_examples=50, deadline=None)
@given(secret=st.integers(10**6, 10**12))
def test_check_never_echoes_a_numeric_password(tmp_path_factory: pytest.TempPathFactory, secret: int) -> None:
    tmp = tmp_path_factory.mktemp("cfg")
    config = tmp / "site.toml"
    config.write_text(BASE.format(data=tmp, mqtt=f"password = {secret}"), encoding="utf-8")
    out = io.StringIO()
    assert check_file(config, out) == 2
    assert "mqtt.password" in out.getvalue() and str(secret) not in out.getvalue()
