"""Log-in through the site's OpenID Connect provider (Keycloak or another): the authorization-code flow.

The browser is sent to the provider with a fresh ``state`` and ``nonce`` (kept in the signed session cookie);
the provider sends it back with a code, which the console exchanges at the provider's token endpoint,
authenticating with its client secret. The ID token comes straight from that endpoint over TLS, so its claims
are taken as the provider's without checking its signature (OpenID Connect Core 1.0, 3.1.3.7, item 6); they
are still checked: issuer, audience, expiry, nonce. The console role is read from ``role_claim``.
"""

from __future__ import annotations

import base64
import hmac
import json
import ssl
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from neuroflow.console.auth import Role, strongest_role
from neuroflow.core.config import ConsoleOidcSettings
from neuroflow.core.errors import NeuroflowError

_TIMEOUT_S = 10.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class OidcRefused(NeuroflowError):
    """The provider's answer does not log anyone in (names what is wrong, never a token)."""


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str


@dataclass(frozen=True)
class OidcUser:
    name: str
    role: Role


class OidcClient:
    def __init__(self, settings: ConsoleOidcSettings) -> None:
        if not settings.issuer or not settings.client_id or not settings.redirect_url:
            raise NeuroflowError("console OIDC needs issuer, client_id and redirect_url (NEUROFLOW_CONSOLE__OIDC__*)")
        _require_tls(settings.issuer, "issuer")
        self.settings = settings
        self._context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        self._provider: Provider | None = None

    def provider(self) -> Provider:
        """The provider's endpoints, from its discovery document (read once)."""
        if self._provider is None:
            document = self._get_json(self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration")
            try:
                provider = Provider(str(document["issuer"]), str(document["authorization_endpoint"]),
                                    str(document["token_endpoint"]))
            except KeyError as missing:
                raise OidcRefused(f"the OIDC provider's discovery document lacks {missing}") from None
            if provider.issuer.rstrip("/") != self.settings.issuer.rstrip("/"):
                raise OidcRefused(f"the OIDC provider names itself {provider.issuer!r}, not the configured issuer")
            _require_tls(provider.token_endpoint, "token endpoint")
            self._provider = provider
        return self._provider

    def authorization_url(self, state: str, nonce: str) -> str:
        query = urllib.parse.urlencode({"response_type": "code", "client_id": self.settings.client_id,
                                        "redirect_uri": self.settings.redirect_url, "scope": "openid profile",
                                        "state": state, "nonce": nonce})
        endpoint = self.provider().authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def log_in(self, code: str, nonce: str, now: float | None = None) -> OidcUser:
        """Exchange the code for the ID token and read the user and role from its claims."""
        form = urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.redirect_url,
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret.get_secret_value()}).encode("ascii")
        answer = self._post_json(self.provider().token_endpoint, form)
        token = answer.get("id_token")
        if not isinstance(token, str):
            raise OidcRefused("the OIDC provider's token answer has no ID token")
        return user_from_claims(id_token_claims(token), issuer=self.provider().issuer,
                                client_id=self.settings.client_id, nonce=nonce, role_claim=self.settings.role_claim,
                                now=time.time() if now is None else now)

    def _get_json(self, url: str) -> dict[str, Any]:
        return self._json(urllib.request.Request(url, headers={"Accept": "application/json"}))

    def _post_json(self, url: str, body: bytes) -> dict[str, Any]:
        return self._json(urllib.request.Request(url, data=body, method="POST", headers={
            "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}))

    def _json(self, request: urllib.request.Request) -> dict[str, Any]:
        context = self._context if request.full_url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=context) as response:
                document = json.loads(response.read())
        except (OSError, ValueError) as exc:  # HTTPError and URLError are OSErrors
            raise OidcRefused(f"the OIDC provider at {urllib.parse.urlsplit(request.full_url).netloc} did not "
                              f"answer usably: {exc}") from None
        if not isinstance(document, dict):
            raise OidcRefused("the OIDC provider's answer is not a JSON object")
        return document


def id_token_claims(token: str) -> dict[str, Any]:
    """The claims (payload) of a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise OidcRefused("the ID token is not a compact JWT")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        raise OidcRefused("the ID token's claims are not JSON") from None
    if not isinstance(claims, dict):
        raise OidcRefused("the ID token's claims are not a JSON object")
    return claims


def user_from_claims(claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str, role_claim: str,
                     now: float) -> OidcUser:
    """Check the ID token's claims (OpenID Connect Core 3.1.3.7) and read the user and their console role."""
    if str(claims.get("iss", "")).rstrip("/") != issuer.rstrip("/"):
        raise OidcRefused("the ID token was issued by another provider")
    audience = claims.get("aud")
    if client_id not in (audience if isinstance(audience, list) else [audience]):
        raise OidcRefused("the ID token is not meant for this console (aud)")
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now:
        raise OidcRefused("the ID token has expired")
    if not nonce or not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        raise OidcRefused("the ID token's nonce is not this log-in's (a replayed token?)")
    value: Any = claims
    for part in role_claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    role = strongest_role(value)
    name = claims.get("preferred_username") or claims.get("sub")
    if not isinstance(name, str) or not name:
        raise OidcRefused("the ID token names no user (preferred_username, sub)")
    if role is None:
        raise OidcRefused(f"user {name} has no console role in claim {role_claim} "
                          "(viewer, radiologist, operator or admin)")
    return OidcUser(name, role)


def _require_tls(url: str, what: str) -> None:
    parts = urllib.parse.urlsplit(url)
    # Plain HTTP only to a provider on this host (a test's); anywhere else the client secret would travel bare.
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise NeuroflowError(f"console OIDC {what} {url!r} must be https")
