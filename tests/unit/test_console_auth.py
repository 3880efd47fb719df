"""The console's access rules (neuroflow/console/auth.py): roles and their permissions, the signed session
cookie (tampering, expiry), the CSRF check, local users and their bcrypt hashes."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest

from neuroflow.console import auth, oidc
from neuroflow.console.auth import Permission, Role, SessionCodec
from neuroflow.core.config import ConsoleOidcSettings
from neuroflow.core.errors import NeuroflowError

KEY = b"k" * 32


def test_each_role_has_exactly_its_permissions() -> None:
    assert auth.allowed(Role.VIEWER, Permission.VIEW)
    assert not auth.allowed(Role.VIEWER, Permission.REVIEW) and not auth.allowed(Role.VIEWER, Permission.OPERATE)
    assert auth.allowed(Role.RADIOLOGIST, Permission.REVIEW) and not auth.allowed(Role.RADIOLOGIST, Permission.OPERATE)
    assert auth.allowed(Role.OPERATOR, Permission.OPERATE) and not auth.allowed(Role.OPERATOR, Permission.REVIEW)
    assert all(auth.allowed(Role.ADMIN, p) for p in Permission)
    assert not any(auth.allowed(None, p) for p in Permission)


def test_the_strongest_role_of_a_claim_wins() -> None:
    assert auth.strongest_role(["viewer", "operator", "offline_access"]) == Role.OPERATOR
    assert auth.strongest_role("radiologist") == Role.RADIOLOGIST
    assert auth.strongest_role(["uma_authorization"]) is None
    assert auth.strongest_role(None) is None


def test_a_session_round_trips_and_a_changed_one_is_refused() -> None:
    codec = SessionCodec(KEY, 3600)
    session = codec.new(user="rad", role=Role.RADIOLOGIST, now=1000.0)
    value = codec.encode(session)
    assert codec.decode(value, now=1001.0) == session
    body, mac = value.split(".")
    forged = json.loads(auth._unb64(body))
    forged["r"] = "admin"  # a user who makes themselves admin
    forged_value = f"{auth._b64(json.dumps(forged, separators=(',', ':')).encode())}.{mac}"
    assert codec.decode(forged_value, now=1001.0) is None
    assert SessionCodec(b"other key 123456", 3600).decode(value, now=1001.0) is None  # another site's key
    assert codec.decode(value, now=1000.0 + 3601) is None  # expired
    for junk in ("", "abc", "a.b.c", "!!.??", None):
        assert codec.decode(junk, now=1001.0) is None


def test_csrf_token_must_be_the_sessions() -> None:
    codec = SessionCodec(KEY, 3600)
    session = codec.new(user="rad", role=Role.RADIOLOGIST)
    assert auth.csrf_ok(session, session.csrf)
    assert not auth.csrf_ok(session, None) and not auth.csrf_ok(session, "")
    assert not auth.csrf_ok(session, codec.new().csrf)
    assert not auth.csrf_ok(None, session.csrf)
    assert codec.new(user="rad").csrf != session.csrf  # a new session (log-in) makes a new token


def _users_file(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(json.dumps({"users": entries}))
    return path


def test_local_users_are_checked_against_their_hashes(tmp_path: Path) -> None:
    digest = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    users = auth.load_users(_users_file(tmp_path, [{"name": "op", "role": "operator", "password_hash": digest}]))
    assert auth.check_password(users, "op", "s3cret") == users["op"]
    assert users["op"].role == Role.OPERATOR
    assert auth.check_password(users, "op", "wrong") is None
    assert auth.check_password(users, "nobody", "s3cret") is None


@pytest.mark.parametrize(("entries", "message"), [
    ([{"name": "a", "role": "superuser", "password_hash": "$2b$04$x"}], "role 'superuser'"),
    ([{"name": "a", "role": "viewer", "password_hash": "plain"}], "not a bcrypt hash"),
    ([{"name": "a", "role": "viewer"}], "entry 0 needs name, role and password_hash"),
    ("nope", "expected a 'users' list"),
])
def test_a_bad_users_file_is_refused_naming_the_entry(tmp_path: Path, entries: object, message: str) -> None:
    with pytest.raises(auth.UsersFileError, match=message):
        auth.load_users(_users_file(tmp_path, entries))


def test_a_short_session_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("short")
    with pytest.raises(Exception, match="at least 16"):
        auth.session_key(tmp_path / "key")
    assert len(auth.session_key(None)) == 32


CLAIMS = {"iss": "https://kc.example/realms/h", "aud": ["neuroflow-console", "account"], "exp": 2000.0,
          "nonce": "n-1", "preferred_username": "dr.who", "realm_access": {"roles": ["viewer", "radiologist"]}}


def _user(claims: dict[str, object], nonce: str = "n-1") -> oidc.OidcUser:
    return oidc.user_from_claims(claims, issuer="https://kc.example/realms/h/", client_id="neuroflow-console",
                                 nonce=nonce, role_claim="realm_access.roles", now=1000.0)


def test_an_id_token_logs_in_its_user_with_the_strongest_role() -> None:
    assert _user(CLAIMS) == oidc.OidcUser("dr.who", Role.RADIOLOGIST)


@pytest.mark.parametrize(("change", "message"), [
    ({"iss": "https://evil.example/realms/h"}, "another provider"),
    ({"aud": "another-client"}, "not meant for this console"),
    ({"exp": 999.0}, "expired"),
    ({"nonce": "n-2"}, "nonce"),
    ({"realm_access": {"roles": ["offline_access"]}}, "no console role"),
    ({"preferred_username": None}, "names no user"),
])
def test_an_id_token_that_does_not_fit_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(oidc.OidcRefused, match=message):
        _user({**CLAIMS, **change})


def test_an_oidc_provider_must_be_reached_over_tls() -> None:
    settings = ConsoleOidcSettings(issuer="http://kc.example/realms/h", client_id="c",
                                   redirect_url="https://console.example/oidc/callback")
    with pytest.raises(NeuroflowError, match="must be https"):
        oidc.OidcClient(settings)
