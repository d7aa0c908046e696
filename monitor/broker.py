"""Who may speak on the broker: Mosquitto password and ACL entries for each device and monitor.

    python -m monitor.broker device --passwd FILE --acl FILE --prefix PREFIX --credentials OUT ID
    python -m monitor.broker monitor --passwd FILE --acl FILE --prefix PREFIX --credentials OUT NAME
    python -m monitor.broker config --passwd FILE --acl FILE [--port 1883]

``device`` gives ID a new random password and the right to publish under ``PREFIX/ID/`` only
(its hello, predictions, status, last will and thumbnails); ``monitor`` gives NAME the right to
read ``PREFIX/#`` and to publish nothing. Both write OUT (mode 600: the user name, then the
password), which the device takes as ``--mqtt-credentials OUT`` in deploy.sh or ``credentials=OUT``
in its URL, and the monitor as ``credentials=OUT``. ``config`` prints the mosquitto.conf lines that
use the two files and bound a packet's size. Entries for other users are kept; the same user again is replaced (a new
password). Hashes are Mosquitto 2's own (PBKDF2-SHA512, ``$7$``), so ``mosquitto_passwd`` is not needed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
from pathlib import Path

from contract.atomic import write_bytes
from contract.cli import run_cli
from contract.errors import UsageError
from contract.protocol import MAX_MESSAGE, THUMBNAIL_MAX_BYTES

ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
MAX_PACKET = max(MAX_MESSAGE, THUMBNAIL_MAX_BYTES) + 4096  # bytes: a message at its bound, with topic and header
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a user name that is also one MQTT topic level
PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def password_hash(password: str, salt: bytes | None = None) -> str:
    """Mosquitto 2's ``$7$`` entry: PBKDF2-HMAC-SHA512 over a 12-byte salt, base64 as mosquitto_passwd writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return f"$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_rules(name: str, prefix: str, role: str) -> list[str]:
    """A device publishes under its own PREFIX/ID/ only; a monitor reads PREFIX/# and publishes nothing."""
    topic = f"topic write {prefix}/{name}/#" if role == "device" else f"topic read {prefix}/#"
    return [f"user {name}", topic]


def _replace_user(lines: list[str], name: str, entry: list[str], passwd: bool) -> list[str]:
    """``lines`` of a password file (``user:hash``) or an ACL (blocks that start ``user NAME``) with NAME's
    entry replaced by ``entry`` (added when it had none)."""
    if passwd:
        return [ln for ln in lines if ln.split(":", 1)[0] != name] + entry
    out, skipping = [], False
    for ln in lines:
        words = ln.split()
        if words[:1] == ["user"] or words[:1] == ["pattern"]:
            skipping = words == ["user", name]
        if not skipping:
            out.append(ln)
    while out and not out[-1].strip():
        out.pop()
    return out + ([""] if out else []) + entry


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}): give a Mosquitto file or a "
                         "new path") from None


def add_user(passwd: Path, acl: Path, prefix: str, name: str, role: str, credentials: Path) -> None:
    """NAME with a new random password in PASSWD, its ACL block in ACL, its login in CREDENTIALS (mode 600)."""
    if not NAME.fullmatch(name):
        raise UsageError(f"{role} name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-' (it is a topic level)")
    if not PREFIX.fullmatch(prefix):
        raise UsageError(f"--prefix {prefix!r}: use topic levels of letters, digits, '.', '_' or '-' joined by '/', "
                         "no wildcards")
    password = secrets.token_urlsafe(24)
    pw_lines = _replace_user(_read_lines(passwd), name, [f"{name}:{password_hash(password)}"], passwd=True)
    acl_lines = _replace_user(_read_lines(acl), name, acl_rules(name, prefix, role), passwd=False)
    write_bytes(credentials, f"{name}\n{password}\n".encode(), mode=0o600)
    for path, data, mode in ((passwd, pw_lines, 0o640), (acl, acl_lines, 0o644)):
        before = path.stat() if path.exists() else None
        write_bytes(path, ("\n".join(data) + "\n").encode(), mode=before.st_mode & 0o777 if before else mode)
        if before is not None:  # the group Mosquitto reads it as (chgrp mosquitto) stays
            try:
                os.chown(path, before.st_uid, before.st_gid)
            except PermissionError:
                pass


def config_lines(passwd: Path, acl: Path, port: int) -> list[str]:
    return [f"listener {port}", "allow_anonymous false", f"password_file {passwd.resolve()}",
            f"acl_file {acl.resolve()}",
            f"max_packet_size {MAX_PACKET}"]  # larger than any message of ours: refused at the broker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitor.broker",
                                description="Mosquitto password and ACL entries: each device publishes under its own "
                                            "PREFIX/ID/ only, a monitor only reads.")
    sub = p.add_subparsers(dest="command", required=True)
    for role, what in (("device", "a device: publish under PREFIX/ID/ only"),
                       ("monitor", "a monitor or dashboard: read PREFIX/#, publish nothing")):
        s = sub.add_parser(role, help=what)
        s.add_argument("name", metavar="ID" if role == "device" else "NAME")
        s.add_argument("--prefix", required=True, help="the topic prefix of the fleet (the PREFIX in mqtt://HOST/PREFIX)")
        s.add_argument("--credentials", required=True, type=Path, help="write the login here (mode 600)")
    for s in sub.choices.values():
        s.add_argument("--passwd", required=True, type=Path, help="Mosquitto's password_file")
        s.add_argument("--acl", required=True, type=Path, help="Mosquitto's acl_file")
    c = sub.add_parser("config", help="print the mosquitto.conf lines that use the two files")
    c.add_argument("--passwd", required=True, type=Path)
    c.add_argument("--acl", required=True, type=Path)
    c.add_argument("--port", type=int, default=1883)
    return run_cli("broker", p, _run, argv)


def _run(args) -> int:
    if args.command == "config":
        print("\n".join(config_lines(args.passwd, args.acl, args.port)))
        return 0
    add_user(args.passwd, args.acl, args.prefix, args.name, args.command, args.credentials)
    print(f"broker: {args.command} {args.name}: login in {args.credentials}; reload Mosquitto to apply "
          "(systemctl reload mosquitto, or SIGHUP)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
