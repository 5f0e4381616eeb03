"""Load the TOML config and turn every failure into `file:line: key.path: message` lines.

People edit this file by hand on a gateway in a basement cabinet, so one run must show every
problem at once, each pointing at the line to fix, and nothing but ConfigError may escape: the
daemon and `gateway check` both rely on that.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TextIO, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.config.files import MAX_CONFIG_BYTES, Reader, file_problem
from gateway.config.locate import SourceMap
from gateway.config.renames import ANY, RENAMED, Deprecation, apply_renames
from gateway.config.schema import GatewayConfig, cross_check, resolve_paths
from gateway.core.config import IDENTIFIER_PATTERN

KeyPath = tuple[str | int, ...]

_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")
_PARSE_TAIL = re.compile(r", unable to (?:parse|interpret) .*$")
_NO_VALUE = frozenset({"missing", "extra_forbidden", "union_tag_invalid", "union_tag_not_found"})
_PREFIXES = ("Value error, ", "Assertion failed, ")
_SHOWN_CHARS = 40


class ConfigProblem(NamedTuple):
    file: str
    line: int | None
    path: str
    """Dotted key path such as ``devices.1.points.0.type``; empty when the whole file is at fault."""
    message: str
    value: object = None

    def format(self) -> str:
        """One terminal-safe line: control characters from the file are shown escaped."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        line = ": ".join(part for part in (where, self.path, self.message) if part)
        return "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)


class ConfigError(Exception):
    """Every problem found in one config file; str() is the report `gateway check` prints."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(problem.format() for problem in problems))


INCLUDABLE = ("rules", "alarm_classes", "notifiers")
"""Sections a file named by `include` may hold: rule packs live apart from the site's wiring."""


class Sources:
    """Which file, and which entry of it, each merged list entry came from (for error lines)."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.main = SourceMap(text)
        self.origins: dict[str, list[tuple[str, SourceMap, int]]] = {}
        self.renamed: dict[KeyPath, KeyPath] = {}
        """New key path -> the old one the file wrote, so a problem with a renamed key lands on its line."""

    def add(self, section: str, name: str, source: SourceMap, count: int, main_count: int) -> None:
        entries = self.origins.setdefault(section, [(self.name, self.main, i) for i in range(main_count)])
        entries += [(name, source, i) for i in range(count)]

    def place(self, loc: KeyPath) -> tuple[str, int | None, str]:
        loc = self._as_written(loc)
        entries = self.origins.get(str(loc[0])) if loc else None
        if entries and len(loc) > 1 and isinstance(loc[1], int) and loc[1] < len(entries):
            name, source, index = entries[loc[1]]
            local = (loc[0], index, *loc[2:])
            return name, source.line(local), _dotted(local)
        return self.name, self.main.line(loc), _dotted(loc)

    def _as_written(self, loc: KeyPath) -> KeyPath:
        for end in range(len(loc), 0, -1):
            old = self.renamed.get(loc[:end])
            if old is not None:
                return (*old, *loc[end:])
        return loc


def _renamed_keys(deprecated: list[Deprecation]) -> dict[KeyPath, KeyPath]:
    """Where each renamed key now is -> where the file wrote it under its old name."""
    found: dict[KeyPath, KeyPath] = {}
    for deprecation in deprecated:
        parent, old = deprecation.loc[:-1], deprecation.loc[-1]
        for rename in RENAMED:
            if rename.old == old and len(rename.where) == len(parent) and all(
                    step in (ANY, part) for step, part in zip(rename.where, parent, strict=True)):
                found[(*parent, rename.new)] = deprecation.loc
    return found


def _read(path: Path) -> tuple[str, str, dict[str, Any]]:
    name = str(path)
    problem = file_problem(path, MAX_CONFIG_BYTES) if _exists(path) else None  # else: read_bytes says why
    if problem is not None:
        raise _error(name, None, problem)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise _error(name, None, f"cannot read the file: {_reason(exc)}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 1].hex()
        raise _error(name, line, f"not UTF-8 text (byte 0x{bad})") from None
    return name, text, _parse(name, text)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _include(path: Path, data: dict[str, Any], sources: Sources) -> None:
    """Merge the rule files named by `include = ["rules.d/*.toml"]` (relative to this file)."""
    patterns = data.pop("include", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise _error(sources.name, sources.main.line(("include",)), "include: a list of file patterns")
    problems: list[ConfigProblem] = []
    for pattern in patterns:
        matches = sorted(path.parent.glob(pattern)) if not Path(pattern).is_absolute() else sorted(
            Path(pattern).parent.glob(Path(pattern).name))
        if not matches:
            problems.append(ConfigProblem(sources.name, sources.main.line(("include",)), "include",
                                          f"no file matches {pattern!r}"))
        for file in matches:
            try:
                name, text, extra = _read(file)
            except ConfigError as exc:
                problems += exc.problems
                continue
            source = SourceMap(text)
            for key, value in extra.items():
                if key not in INCLUDABLE or not isinstance(value, list):
                    problems.append(ConfigProblem(name, source.line((key,)), key,
                                                  f"an included file may only hold {', '.join(INCLUDABLE)} lists"))
                    continue
                here = data.setdefault(key, [])
                if not isinstance(here, list):
                    continue  # the schema reports the main file's wrong type
                sources.add(key, name, source, len(value), len(here))
                here += value
    if problems:
        raise ConfigError(_sorted(problems))


def load_config(path: str | Path, *, warnings: list[ConfigProblem] | None = None,
                reader: Reader | None = None) -> GatewayConfig:
    """Read, parse, validate and cross-check; raise ConfigError listing every problem, sorted by line.

    Old key names still load; each is added to ``warnings`` (when given) with its line and the new name.
    The files the config names (password, keys, certificates) are judged readable by ``reader`` when given
    (doctor: the service user), else by this process.
    """
    path = Path(path)
    name, text, data = _read(path)
    sources = Sources(name, text)
    _include(path, data, sources)
    deprecated = apply_renames(data)
    sources.renamed = _renamed_keys(deprecated)
    if warnings is not None:
        warnings += _sorted([ConfigProblem(*sources.place(d.loc), d.message) for d in deprecated])
    try:
        resolve_paths(data, path.parent)
    except ValueError as exc:  # os.path.expanduser on a name it cannot look up
        raise _error(name, None, f"cannot resolve a file path: {exc}") from None
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_from_pydantic(sources, error) for error in exc.errors(include_url=False)]
        raise ConfigError(_sorted(problems)) from None
    problems = [ConfigProblem(*sources.place(p.loc), p.message, p.value) for p in cross_check(cfg, reader=reader)]
    if problems:
        raise ConfigError(_sorted(problems))
    return cfg


def check_file(path: str | Path, out: TextIO) -> int:
    """`gateway check -c FILE`: 0 and a one-line summary when valid, 2 and every problem otherwise."""
    warnings: list[ConfigProblem] = []
    try:
        cfg = load_config(path, warnings=warnings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(), file=out)
        return 2
    for warning in warnings:
        print(f"warning: {warning.format()}", file=out)
    points = sum(len(device.point_ids()) for device in cfg.devices)
    counts = ", ".join(
        _plural(count, noun)
        for count, noun in ((len(cfg.buses), "bus"), (len(cfg.devices), "device"), (points, "point"))
    )
    print(f"{path}: OK ({counts})", file=out)
    return 0


def config_hash(path: str | Path) -> str:
    """sha256 of the file bytes; the daemon reports it so a fleet view can spot stale configs."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise _error(str(path), None, f"cannot read the file: {_reason(exc)}") from None


# -- parsing ----------------------------------------------------------------------------------------


def _parse(name: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        if match is None:
            raise _error(name, None, _lower(message)) from None
        message = _lower(message[:match.start()])
        if match.group(1) is None:  # "at end of document": the last line that has text
            line = text.rstrip("\n").count("\n") + 1
        else:
            line = int(match.group(1))
            message += f" (column {match.group(2)})"
        raise _error(name, line, message) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        raise _error(name, None, f"invalid TOML: {exc}") from None
    except RecursionError:
        raise _error(name, None, "invalid TOML: arrays or tables nested too deeply") from None


# -- pydantic errors --------------------------------------------------------------------------------


def _from_pydantic(sources: Sources, error: ErrorDetails) -> ConfigProblem:
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden" and loc:
        path, owner = _walk(loc[:-1])
        key = str(loc[-1])
        path = (*path, key)
        message = f"unknown key {_quote(key)}"
        fields = list(owner.model_fields) if _is_model(owner) else []
        close = difflib.get_close_matches(key, fields, n=1)
        if close:
            message += f"; did you mean {_quote(close[0])}?"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        path, _ = _walk(loc)
        key = str(ctx.get("discriminator", "")).strip("'\"")
        path = (*path, key)
        if kind == "union_tag_not_found":
            message = "required key missing (it says which kind of entry this is)"
        else:
            expected = str(ctx.get("expected_tags", "")).replace("'", '"')
            message = f"unknown {key} {_quote(str(ctx.get('tag', '')))} (expected one of: {expected})"
    else:
        path, _ = _walk(loc)
        message = _human(kind, error["msg"], ctx)
        if _worth_showing(kind, message, value):
            message += f" (got {_show(_masked(path, value))})"
    shown = None if kind == "missing" else _masked(path, value)
    return ConfigProblem(*sources.place(path), message, shown)


SECRET_KEYS = frozenset({"password", "key", "token", "secret"})
"""Keys whose values are never echoed back in a problem line (a password with a typo is still a password)."""


def _masked(path: KeyPath, value: object) -> object:
    key = str(path[-1]) if path else ""
    if key in SECRET_KEYS:
        return "***"
    if key == "url" and isinstance(value, str):
        from models.config import redact_url

        return redact_url(value)
    return value


def _human(kind: str, message: str, ctx: dict[str, Any]) -> str:
    if kind == "missing":
        return "required key missing"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "should be a table"
    if kind == "list_type":
        return "should be an array"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == IDENTIFIER_PATTERN:
        return "should be an id: 1-64 letters, digits, \"_\" or \"-\", starting with a letter or digit"
    if kind in ("literal_error", "enum"):
        message = message.replace("'", '"')  # list the choices the way TOML spells strings
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    if kind.endswith("_parsing"):
        message = _PARSE_TAIL.sub("", message)
    return _lower(message)


def _worth_showing(kind: str, message: str, value: object) -> bool:
    if kind in _NO_VALUE:
        return False
    if kind in ("value_error", "assertion_error"):
        return not isinstance(value, dict | list) and str(value) not in message
    return True


def _walk(loc: KeyPath, root: Any = GatewayConfig) -> tuple[KeyPath, Any]:
    """Follow `loc` through the model tree: drop union tags from it and return the type reached.

    The type is None once the path leaves the schema (inside an unknown key, say).
    """
    path: list[str | int] = []
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        members = _union_members(current)
        if members and isinstance(part, str):
            # pydantic names the union member it tried (a tag or a class name); people never wrote it
            current = _pick_member(members, part)
            continue
        path.append(part)
        origin = get_origin(current)
        if _is_model(current) and isinstance(part, str) and part in current.model_fields:
            current = current.model_fields[part].annotation
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int) and get_args(current):
            current = get_args(current)[0]
        elif origin is dict and len(get_args(current)) == 2:
            current = get_args(current)[1]
        else:
            current = None
    return tuple(path), _unwrap(current)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional, which never add a step to an error location."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        members = _union_members(tp, keep_single=True)
        if len(members) == 1:
            tp = members[0]
            continue
        return tp


def _union_members(tp: Any, keep_single: bool = False) -> list[Any]:
    if get_origin(tp) not in (Union, types.UnionType):
        return []
    members = [arg for arg in get_args(tp) if arg is not type(None)]
    return members if keep_single or len(members) > 1 else []


def _pick_member(members: list[Any], label: str | int) -> Any:
    for member in members:
        member = _unwrap(member)
        if not _is_model(member):
            continue
        if label == member.__name__:
            return member
        for info in member.model_fields.values():
            if get_origin(info.annotation) is Literal and label in get_args(info.annotation):
                return member
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


# -- formatting -------------------------------------------------------------------------------------


def _show(value: object) -> str:
    """A value the way it looks in TOML, shortened; containers by kind, since they can be huge."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "an integer too large for 64 bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _quote(text: str) -> str:
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS - 1] + "…"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in escaped) + '"'


def _dotted(loc: KeyPath) -> str:
    return ".".join(str(part) for part in loc)


def _lower(message: str) -> str:
    message = message.strip()
    return message[:1].lower() + message[1:]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{'es' if noun.endswith('s') else 's'}"


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _error(name: str, line: int | None, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(name, line, "", message)])


def _sorted(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """By line; problems about the whole file (no line) come first."""
    return sorted(problems, key=lambda problem: (problem.file, problem.line or 0))
