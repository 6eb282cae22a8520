"""User names and uids cross trust boundaries: check them before use."""

from __future__ import annotations

import pwd
import re
from dataclasses import dataclass

from .errors import InvalidUser

# POSIX portable user names, as useradd accepts them by default.
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def validate_user_name(name: str) -> str:
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise InvalidUser(f"user name {name!r} is not a valid account name")
    return name


def lookup_user(name_or_uid: str | int) -> User:
    """Resolve a validated name or a uid to an existing account."""
    try:
        if isinstance(name_or_uid, int) or (isinstance(name_or_uid, str) and name_or_uid.isdigit()):
            entry = pwd.getpwuid(int(name_or_uid))
        else:
            entry = pwd.getpwnam(validate_user_name(name_or_uid))
    except KeyError:
        raise InvalidUser(f"user {name_or_uid!r} does not exist on this host") from None
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
