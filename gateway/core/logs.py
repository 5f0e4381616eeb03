"""One format, one priority and no secrets for every line the daemon writes, whoever wrote it.

- A terminal gets key=value, anything else JSON lines (journald, a pipe, a file).
- When the stream is the journal's (systemd sets ``JOURNAL_STREAM=DEV:INO`` for it), each line starts with the
  syslog prefix ``<N>`` that journald turns into the entry's PRIORITY (``SyslogLevelPrefix=``, on by default):
  without it every line is filed as info and ``journalctl -p warning`` finds nothing.
- stdlib loggers (asyncio, paho under aiomqtt, pymodbus, bacpypes3, Python warnings) go through the same
  processors (``structlog.stdlib.ProcessorFormatter`` on the root logger), so their lines look like ours.
- :func:`redact` masks secret-named keys, credentials in URLs (userinfo, secret query parameters),
  ``password=...`` pairs (and ``password hunter2``) and bearer tokens in every value, including exception text,
  of structlog events and stdlib records alike.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

MASK = "***"
LEVELS = {"critical": 50, "fatal": 50, "exception": 40, "error": 40, "err": 40, "warning": 30, "warn": 30,
          "info": 20, "msg": 20, "debug": 10}
LIBRARY_LEVEL = logging.WARNING
"""The least severe stdlib record of other people's libraries shown: pymodbus and paho say a lot at INFO."""
OWN = ("gateway", "drivers", "rules", "models")
"""Our own stdlib loggers take the configured level, like our structlog ones."""

_SECRET = (r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|private[_-]?key|secret[_-]?key"
           r"|access[_-]?key|signing[_-]?key|encryption[_-]?key|gallery[_-]?key|key[_-]?material"
           r"|auth(?:orization)?|credentials?|cookie|psk)")
_SECRET_KEY = re.compile(rf"(?:^|[\W_]){_SECRET}$", re.IGNORECASE)
"""An event key whose value is a secret: password, mqtt_password, X-Api-Key, access_token (not password_file)."""
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(\S+)")
_PAIR = re.compile(
    rf"(?<![\w.-])([\w.-]*?{_SECRET}[\"']?\s*[:=]\s*)((?:bearer|basic|digest)\s+)?"
    r"(\"(?:[^\"\\]|\\.)*\"?\S*|'(?:[^'\\]|\\.)*'?\S*|\S+)",
    re.IGNORECASE,
)
"""``password=...``, ``"token": "..."``, ``Authorization: Bearer ...``: the value runs to the next blank (or to its
closing quote and on to the next blank), so a secret holding ``&``, ``,`` or a quote is masked whole."""
_BEARER = re.compile(r"(?<![\w-])(bearer\s+)(\S+)", re.IGNORECASE)
_QUERY = re.compile(rf"([?&;](?:[\w.-]*?{_SECRET}|key|sig|signature|sign|code)=)([^&#;\s]+)", re.IGNORECASE)
"""A secret in a URL's query: ``?key=`` (WeCom robot webhooks), ``access_token=`` (DingTalk), ``sign=``; a bare
``key=`` outside a URL is left alone (an alarm's key is not a secret)."""
_USERINFO_COLON = re.compile(r":|%3a", re.IGNORECASE)
WORDS_AFTER_PASSWORD = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "cannot", "changed", "could", "does", "empty",
    "entry", "expired", "file", "files", "for", "from", "has", "have", "hash", "in", "incorrect", "invalid", "is",
    "length", "may", "missing", "must", "not", "of", "on", "or", "policy", "prompt", "redacted", "refused",
    "rejected", "replaced", "required", "reset", "set", "should", "the", "to", "too", "was", "were", "will",
    "with", "without", "wrong"
})
"""Words that follow "password" in prose ("password file not readable"): not the password itself."""
_SPACED = re.compile(r"(?<![\w.-])(pass(?:word|wd|phrase)\s+)(?=\S)(?!(?:"
                     + "|".join(sorted(WORDS_AFTER_PASSWORD, key=len, reverse=True))
                     + r")[.,;:!?'\")\]]*(?:\s|$))(\S+)", re.IGNORECASE)
"""``password hunter2``, ``passwd hunter2``: a secret after its name and a blank (a shell line, a device's
console), unless the word is prose."""
_HINT = re.compile(r"pass|pwd|secret|token|key|auth|credential|cookie|psk|bearer", re.IGNORECASE)
"""Cheap to look for, and in every text either of the patterns above can match: most lines have none."""
_META = frozenset({"_record", "_from_structlog"})
_OURS = _META | {"timestamp", "level"}
"""Set by the processors before redaction (each overwrites whatever a caller passed): nothing to clean."""
_DEPTH = 8

_handler: logging.Handler | None = None
_last_resort = logging.lastResort


def _url(match: re.Match[str]) -> str:
    """Everything between ``://`` and the last ``@`` of the run is credentials; the user name stays (before ``:``
    or its percent-encoded ``%3A``); userinfo with neither is a token used as the user name (``https://TOKEN@h``)
    and is masked whole. On the text, not through a URL parser: a password may hold ``/``, ``?``, ``#``, ``@`` or
    ``://``. Secrets in the query are masked too (``_QUERY``)."""
    scheme, rest = match.group(1), match.group(2)
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return scheme + _QUERY.sub(_named, rest)
    split = _USERINFO_COLON.search(userinfo)
    if split is not None:
        return f"{scheme}{userinfo[:split.end()]}{MASK}@{_QUERY.sub(_named, host)}"
    if any(c in userinfo for c in "/?#"):  # an "@" in the path or query (an e-mail address), no userinfo
        return scheme + _QUERY.sub(_named, rest)
    return f"{scheme}{MASK}@{_QUERY.sub(_named, host)}"


def _named(match: re.Match[str]) -> str:
    """The name (and its ``=`` or blank) kept, the value masked."""
    return f"{match.group(1)}{MASK}"


def _pair(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2) or ''}{MASK}"


def redact_text(text: str) -> str:
    """``text`` with credentials in URLs, ``secret=value`` pairs and bearer tokens masked (more is masked than
    strictly needed rather than less)."""
    if "://" in text:
        text = _URL.sub(_url, text)
    if not _HINT.search(text):
        return text
    text = _PAIR.sub(_pair, text)
    text = _SPACED.sub(_named, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def _clean(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if depth < _DEPTH and isinstance(value, dict):
        return {k: (_masked(v) if isinstance(k, str) and secret_key(k) else _clean(v, depth + 1))
                for k, v in value.items()}
    if depth < _DEPTH and isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    return redact_text(repr(value))  # what the renderers would print for it, cleaned first


@functools.lru_cache(maxsize=4096)
def secret_key(key: str) -> bool:
    """Whether a field called ``key`` holds a secret (the same few names come by again and again)."""
    return _SECRET_KEY.search(key) is not None


def _masked(value: Any) -> Any:
    return None if value is None else MASK


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: every value cleaned, secret-named keys' values masked whole."""
    for key, value in event_dict.items():
        if key in _OURS:
            continue
        event_dict[key] = _masked(value) if secret_key(key) else _clean(value)
    return event_dict


def _logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if isinstance(record, logging.LogRecord) else getattr(logger, "name", None)
    if name:
        event_dict["logger"] = name
    return event_dict


def priority(method: str, event_dict: EventDict) -> int:
    """The syslog priority (crit 2, err 3, warning 4, info 6, debug 7) of an event: a stdlib record's own number
    (a library's custom level 25 is info), else structlog's method name."""
    record = event_dict.get("_record")
    number = record.levelno if isinstance(record, logging.LogRecord) else LEVELS.get(method, logging.INFO)
    return 2 if number >= 50 else 3 if number >= 40 else 4 if number >= 30 else 6 if number >= 20 else 7


class _Render:
    """The last processor: the line, with the journal's ``<N>`` prefix when the stream is the journal."""

    def __init__(self, inner: Callable[[WrappedLogger, str, EventDict], Any], journal: bool) -> None:
        self.inner, self.journal = inner, journal

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        prefix = f"<{priority(method, event_dict)}>" if self.journal else ""
        for key in _META:
            event_dict.pop(key, None)
        return prefix + str(self.inner(logger, method, event_dict))


class _Named(structlog.WriteLogger):
    """A WriteLogger that knows the name ``structlog.get_logger(name)`` gave it, for the ``logger`` key."""

    def __init__(self, file: TextIO, name: str = "") -> None:
        super().__init__(file)
        self.name = name


class _Handler(logging.Handler):
    """stdlib records, formatted by structlog, written under the same per-stream lock as structlog's lines."""

    def __init__(self, out: structlog.WriteLogger, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.out.msg(self.format(record))
        except Exception:
            self.handleError(record)


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger("gateway").critical("uncaught exception", exc_info=(kind, exc, tb))


def journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal's: ``JOURNAL_STREAM`` names its device and inode (systemd.exec(5))."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(stream.fileno())
        return bool(sep) and (info.st_dev, info.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):  # no fileno (a StringIO), a closed stream, a garbled variable
        return False


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to ``stream`` (stdout), in one format; callable again on a reload."""
    global _handler
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    inner: Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event", "logger"],
                                                   drop_missing=True)
    )
    render = _Render(inner, journal_stream(stream))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,  # one string, so one line: JSON and key=value escape its newlines
        redact,
    ]
    threshold = LEVELS.get(level.lower(), logging.INFO)
    structlog.configure(
        processors=[*shared, render],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: _Named(stream, str(args[0]) if args else ""),
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(processors=[render], foreign_pre_chain=shared)
    out = structlog.WriteLogger(stream)
    handler = _Handler(out)
    handler.setFormatter(formatter)
    last_resort = _Handler(out, logging.WARNING)  # loggers that opted out of propagation and have no handler
    last_resort.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(threshold, LIBRARY_LEVEL))
    for name in OWN:
        logging.getLogger(name).setLevel(threshold)
    logging.lastResort = last_resort
    logging.captureWarnings(True)
    # A crash's traceback as one critical line, not thirty lines at info priority; a person at a terminal
    # keeps Python's own (easier to read there).
    sys.excepthook = _uncaught if as_json else sys.__excepthook__
    _handler = handler


def reset() -> None:
    """Undo :func:`configure` (tests): structlog's defaults, the root logger without our handler."""
    global _handler
    structlog.reset_defaults()
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
    _handler = None
    logging.lastResort = _last_resort
    logging.captureWarnings(False)
    sys.excepthook = sys.__excepthook__
    logging.getLogger().setLevel(logging.WARNING)
    for name in OWN:
        logging.getLogger(name).setLevel(logging.NOTSET)
