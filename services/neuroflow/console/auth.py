"""Who may use the console and what each may do: local users (bcrypt hashes in a file), roles and their
permissions, the signed session cookie and the CSRF token it carries.

A session is a signed (HMAC-SHA256), expiring cookie, not a server-side table: every replica with the same
key accepts it. It carries a CSRF token, which every POST must echo in its form (``csrf``); a session
exists before log-in too (no user), so the log-in form is protected the same way. Log-in makes a new
session (new token): a token seen before log-in is worthless after it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import bcrypt
import yaml

from neuroflow.core.errors import NeuroflowError

SESSION_COOKIE = "neuroflow_console"
CSRF_FIELD = "csrf"


class Role(StrEnum):
    VIEWER = "viewer"  # reads the worklist and the studies
    RADIOLOGIST = "radiologist"  # ... and reviews results
    OPERATOR = "operator"  # ... and replays, re-runs
    ADMIN = "admin"  # everything


class Permission(StrEnum):
    VIEW = "view"
    REVIEW = "review"
    OPERATE = "operate"


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW}),
    Role.RADIOLOGIST: frozenset({Permission.VIEW, Permission.REVIEW}),
    Role.OPERATOR: frozenset({Permission.VIEW, Permission.OPERATE}),
    Role.ADMIN: frozenset(Permission),
}
# Which role a user with several (an OIDC token's list) acts as: the one with the most rights.
_RANK = (Role.ADMIN, Role.OPERATOR, Role.RADIOLOGIST, Role.VIEWER)


def allowed(role: Role | None, permission: Permission) -> bool:
    return role is not None and permission in PERMISSIONS[role]


def strongest_role(names: object) -> Role | None:
    """The role a user acts as from an identity provider's claim (a string or a list of strings); None
    when none of them is a console role."""
    given = {names} if isinstance(names, str) else set(names) if isinstance(names, list | tuple) else set()
    return next((role for role in _RANK if role.value in given), None)


class UsersFileError(NeuroflowError):
    """The local users file cannot be used (names the file and the entry, never a hash)."""


@dataclass(frozen=True)
class LocalUser:
    name: str
    role: Role
    password_hash: bytes


def load_users(path: Path) -> dict[str, LocalUser]:
    """The users of ``path``: YAML or JSON ``{"users": [{"name", "role", "password_hash"}]}``."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsersFileError(f"console users file {path} cannot be read: {exc}") from None
    entries = document.get("users") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise UsersFileError(f"console users file {path}: expected a 'users' list")
    users: dict[str, LocalUser] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "role",
                                                                                         "password_hash")):
            raise UsersFileError(f"console users file {path}: entry {index} needs name, role and password_hash")
        try:
            role = Role(entry["role"])
        except ValueError:
            raise UsersFileError(f"console users file {path}: user {entry['name']!r} has role {entry['role']!r}, "
                                 f"not one of {', '.join(r.value for r in Role)}") from None
        if not entry["password_hash"].startswith("$2"):
            raise UsersFileError(f"console users file {path}: user {entry['name']!r}: password_hash is not a "
                                 "bcrypt hash")
        users[entry["name"]] = LocalUser(entry["name"], role, entry["password_hash"].encode("ascii"))
    return users


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")


# Compared against when the user does not exist, so an unknown name takes as long as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt())


def check_password(users: dict[str, LocalUser], name: str, password: str) -> LocalUser | None:
    user = users.get(name)
    matches = bcrypt.checkpw(password.encode("utf-8")[:72], user.password_hash if user else _DUMMY_HASH)
    return user if user is not None and matches else None


@dataclass(frozen=True)
class Session:
    csrf: str
    expires_at: float
    user: str | None = None
    role: Role | None = None
    # OIDC: the state and nonce of a log-in under way (the provider sends the state back).
    oidc_state: str | None = None
    oidc_nonce: str | None = None


class SessionCodec:
    """Sessions to and from their cookie value: base64url(JSON) "." base64url(HMAC-SHA256)."""

    def __init__(self, key: bytes, lifetime_s: float) -> None:
        if len(key) < 16:
            raise ValueError("the console's session key must be at least 16 bytes")
        self._key = key
        self.lifetime_s = lifetime_s

    def new(self, *, user: str | None = None, role: Role | None = None, now: float | None = None,
            oidc_state: str | None = None, oidc_nonce: str | None = None) -> Session:
        now = time.time() if now is None else now
        return Session(csrf=secrets.token_urlsafe(24), expires_at=now + self.lifetime_s, user=user, role=role,
                       oidc_state=oidc_state, oidc_nonce=oidc_nonce)

    def encode(self, session: Session) -> str:
        body = json.dumps({"c": session.csrf, "e": session.expires_at, "u": session.user,
                           "r": session.role.value if session.role else None, "s": session.oidc_state,
                           "n": session.oidc_nonce}, separators=(",", ":")).encode("utf-8")
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def decode(self, value: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie value; None when it is absent, altered, malformed or expired."""
        if not value or value.count(".") != 1:
            return None
        body_text, mac_text = value.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            fields = json.loads(body)
            session = Session(csrf=str(fields["c"]), expires_at=float(fields["e"]), user=fields["u"],
                              role=Role(fields["r"]) if fields["r"] else None, oidc_state=fields.get("s"),
                              oidc_nonce=fields.get("n"))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > (time.time() if now is None else now) else None

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()


def csrf_ok(session: Session | None, submitted: str | None) -> bool:
    """Whether a POST's token is its session's (constant-time)."""
    return session is not None and bool(submitted) and hmac.compare_digest(session.csrf, str(submitted))


def session_key(path: Path | None) -> bytes:
    """The signing key: the content of ``path`` (every replica the same), else a random one."""
    if path is None:
        return secrets.token_bytes(32)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise NeuroflowError(f"console session secret file {path} cannot be read: {exc.strerror}") from None
    if len(key) < 16:
        raise NeuroflowError(f"console session secret file {path} holds {len(key)} bytes; at least 16 are needed")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
