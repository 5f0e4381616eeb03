"""`gateway web user add|remove|list`: who may log in to the status page ([web] users_file).

The file holds scrypt hashes only (a per-user salt), is written whole and atomically, mode 0600. Under sudo it
goes to the owner of the config's data directory, the service's account (``--file`` or not), so the daemon can
read it; without a data directory to go by, it keeps the owner it had. The temporary file beside it is created
exclusively and never through a link. The running daemon sees a change at the next request.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import stat
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import load, print_json, table

MIN_PASSWORD = 8


def add_commands(sub: Any, default_config: str) -> None:
    web = sub.add_parser("web", help="the status page's users")
    nouns = web.add_subparsers(dest="noun", required=True)
    user = nouns.add_parser("user", help="add, remove or list who may log in to the status page")
    verbs = user.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("add", help="add a user (or set a user's password and roles)")
    p.add_argument("name", help="login name (letters, digits, . _ @ -)")
    p.add_argument("--role", action="append", choices=("viewer", "operator", "faces"),
                   help="viewer: read the page; operator: also acknowledge/shelve/reset alarms; faces: see camera "
                        "frames unblurred (repeat for several; default viewer)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead of asking")
    p = verbs.add_parser("remove", help="remove a user")
    p.add_argument("name")
    verbs.add_parser("list", help="the users and their roles")
    for p in verbs.choices.values():
        p.add_argument("-c", "--config", type=Path, default=Path(default_config), help="config file (TOML)")
        p.add_argument("--file", type=Path, help="the users file (default: [web] users_file of the config)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    web.set_defaults(fn=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    from gateway.web.auth import NAME, User, parse_users

    path = _users_file(args)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 1
    users, problems = parse_users(text)
    for problem in problems:
        print(f"warning: {path}: {problem} (the line will be dropped when the file is written)", file=sys.stderr)
    if args.verb == "list":
        listing = [{"name": u.name, "roles": sorted(u.roles)} for u in users.values()]
        if args.json:
            print_json(listing)
        else:
            print(table([(u["name"], ", ".join(u["roles"])) for u in listing], ["user", "roles"]))
        return 0
    if not NAME.fullmatch(args.name):
        print(f"bad user name {args.name!r}: letters, digits, '.', '_', '@', '-'; at most 64", file=sys.stderr)
        return 2
    if args.verb == "remove":
        if users.pop(args.name, None) is None:
            print(f"no user {args.name!r} in {path}", file=sys.stderr)
            return 1
        verb = "removed"
    else:
        password = _password(args.password_stdin)
        if password is None:
            return 2
        from gateway.web.auth import hash_password

        roles = frozenset(args.role or ["viewer"])
        verb = "updated" if args.name in users else "added"
        users[args.name] = User(args.name, roles, hash_password(password))
    try:
        write_users(path, list(users.values()), owner_of=_data_dir(args))
    except OSError as exc:
        print(f"cannot write {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"user": args.name, "result": verb, "file": str(path)})
    else:
        print(f"{args.name}: {verb} ({path})")
    return 0


def _users_file(args: argparse.Namespace) -> Path:
    """[web] users_file of the config; read from the TOML itself when the config is refused only because the
    file does not exist yet (the first `user add` creates it)."""
    if args.file is not None:
        return Path(args.file)
    path = _configured(args, "web", "users_file")
    if path is None:
        load(args)  # refused for another reason: print why and exit 2
        print(f"{args.config} has no [web] users_file: set one (e.g. /etc/gateway/web-users), or pass --file",
              file=sys.stderr)
        raise SystemExit(2)
    return path


def _configured(args: argparse.Namespace, section: str, key: str) -> Path | None:
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
        value = getattr(getattr(cfg, section), key)
        return None if value is None else Path(value)
    except ConfigError:
        pass
    import tomllib

    try:
        with open(args.config, "rb") as f:
            raw = tomllib.load(f).get(section, {}).get(key)
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return Path(raw) if isinstance(raw, str) and raw else None


def _data_dir(args: argparse.Namespace) -> Path | None:
    """The service's data directory, whose owner the file goes to (``--file`` only says where the file is)."""
    return _configured(args, "store", "data_dir")


def _password(from_stdin: bool) -> str | None:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except EOFError:  # no terminal and nothing on stdin: a script that forgot --password-stdin
            print("\nno terminal to ask for the password on: pipe it in with --password-stdin; nothing changed",
                  file=sys.stderr)
            return None
        if again != password:
            print("the two passwords differ; nothing changed", file=sys.stderr)
            return None
    if len(password) < MIN_PASSWORD:
        print(f"a password has at least {MIN_PASSWORD} characters; nothing changed", file=sys.stderr)
        return None
    return password


def write_users(path: Path, users: list[Any], *, owner_of: Path | None = None) -> None:
    """The whole file, atomically, 0600; as root, owned by ``owner_of``'s owner (the data directory: the service),
    else by the file's previous owner. The temporary file is made with O_EXCL|O_NOFOLLOW (a stale one, or a link
    planted in its place, is removed first, never written through) and its mode and owner set on the descriptor."""
    from gateway.web.auth import format_users

    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner(owner_of, path)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a previous run's leftover, or a link someone put there: gone, not followed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            if owner is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), *owner)
            f.write(format_users(users))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _owner(data_dir: Path | None, path: Path) -> tuple[int, int] | None:
    """Whose the file is to be: the data directory's owner, else the file's own (a link is nobody's)."""
    with contextlib.suppress(OSError):
        if data_dir is not None and stat.S_ISDIR((st := os.stat(data_dir)).st_mode):
            return st.st_uid, st.st_gid
    with contextlib.suppress(OSError):
        if stat.S_ISREG((st := os.lstat(path)).st_mode):
            return st.st_uid, st.st_gid
    return None
