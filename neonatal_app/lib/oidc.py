"""An OIDC/Keycloak realm as neolabel's second way in: password logins forwarded, tokens verified locally.

The realm is named by its URL (``--conf auth_realm_url https://HOST/realms/NAME``). Its
``.well-known/openid-configuration`` gives the issuer, the token endpoint and the JWKS address. Every
token is checked here against the realm's published keys, with the accepted ``algorithms`` (public-key
ones only), ``exp``, ``aud`` and ``iss`` — what MONAI Label 0.8.5's own check skips. Keys are cached
and fetched again when a token names a key id (``kid``) the cache lacks (the realm rotated its keys).
The realm is asked for its keys at most once per ``min_refresh_s``, however the last fetch ended, and a
failed discovery is retried no more often: neither tokens with made-up key ids nor a realm that is down
or publishes no signing keys turn every request into a request to the realm (a rotation is seen at most
``min_refresh_s`` late). PyJWT's ``PyJWKClient`` is not used: its cooldown starts only at a successful
fetch, so an unreachable or keyless realm is asked again at every request, and its key set expires
after a lifespan, so a short realm outage would refuse tokens signed with keys already in hand. Roles
come from ``realm_access.roles`` (``strategies.annotate.users.identity_from_claims``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt

from strategies.annotate.users import AuthError, Identity, identity_from_claims

log = logging.getLogger(__name__)

LEEWAY_S = 30  # clock difference tolerated between the realm and this server


class OidcRealm:
    """One realm: discovery, JWKS cache, password grant, token → :class:`Identity`."""

    source = "oidc"

    def __init__(self, realm_url: str, client_id: str, audience: str = "", algorithms: str = "RS256",
                 timeout_s: float = 10.0, min_refresh_s: float = 10.0) -> None:
        self.realm_url = realm_url.rstrip("/")
        self.client_id = client_id
        self.audience = audience or client_id
        self.algorithms = [a.strip() for a in algorithms.split(",") if a.strip()]
        self.timeout_s = timeout_s
        self.min_refresh_s = min_refresh_s
        self._lock = threading.RLock()  # discovery is fetched from inside the key refresh
        self._config: dict[str, Any] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = {"discovery": float("-inf"), "keys": float("-inf")}  # time.monotonic() of the last try
        self._failed = {"discovery": "", "keys": ""}  # why the last try failed

    # ------------------------------------------------------------------ HTTP to the realm
    def _get_json(self, url: str, data: dict[str, str] | None = None) -> dict[str, Any]:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        req = urllib.request.Request(url, data=body, headers={"Accept": "application/json"})
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310 - the admin's realm URL
            return json.loads(r.read().decode())

    def configuration(self) -> dict[str, Any]:
        """The realm's discovery document (fetched once; its issuer must be the configured realm)."""
        with self._lock:
            if self._config is None:
                if not self._may_fetch("discovery"):
                    raise AuthError(f"OIDC realm {self.realm_url} unavailable ({self._failed['discovery']}); "
                                    f"{self._next_try('discovery')}", 503)
                try:
                    self._config = self._discover()
                except AuthError as exc:
                    self._failed["discovery"] = str(exc)
                    raise
            return self._config

    def _discover(self) -> dict[str, Any]:
        try:
            cfg = self._get_json(f"{self.realm_url}/.well-known/openid-configuration")
        except (OSError, ValueError) as exc:
            raise AuthError(f"OIDC realm {self.realm_url} unreachable: {exc}", 503) from None
        if str(cfg.get("issuer", "")).rstrip("/") != self.realm_url:
            raise AuthError(f"OIDC realm {self.realm_url} names another issuer ({cfg.get('issuer')!r})", 503)
        if not cfg.get("token_endpoint") or not cfg.get("jwks_uri"):
            raise AuthError(f"OIDC realm {self.realm_url}: discovery lacks token_endpoint or jwks_uri", 503)
        return cfg

    def _may_fetch(self, what: str) -> bool:
        """Whether the realm may be asked for ``what`` now; if so, the next ``min_refresh_s`` are taken."""
        now = time.monotonic()
        if now - self._last_fetch[what] < self.min_refresh_s:
            return False
        self._last_fetch[what] = now
        return True

    def _next_try(self, what: str) -> str:
        return f"next try in {max(0.0, self._last_fetch[what] + self.min_refresh_s - time.monotonic()):.0f} s"

    def _refresh_keys(self) -> None:
        """Replace the cached keys by the realm's; a failed fetch keeps those in hand (valid tokens still pass)."""
        try:
            jwks = self._get_json(self.configuration()["jwks_uri"])
            keys = jwt.PyJWKSet.from_dict(jwks).keys
        except AuthError as exc:  # the discovery document could not be had
            self._failed["keys"] = str(exc)
            raise
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            self._failed["keys"] = str(exc)
            raise AuthError(f"OIDC realm keys unavailable: {exc}", 503) from None
        self._keys = {k.key_id: k for k in keys if k.key_id and getattr(k, "public_key_use", None) in (None, "sig")}
        self._failed["keys"] = "" if self._keys else "the realm publishes no signing keys"
        log.info("OIDC realm %s: %d signing key(s)", self.realm_url, len(self._keys))

    def _key(self, kid: str | None) -> jwt.PyJWK:
        if not kid:
            raise AuthError("token names no signing key (kid)", 401)
        known = self._keys.get(kid)  # the dict is replaced whole, never changed: no lock for a cache hit
        if known is None:
            with self._lock:
                known = self._keys.get(kid)
                if known is None and self._may_fetch("keys"):
                    self._refresh_keys()
                    known = self._keys.get(kid)
        if known is not None:
            return known
        if not self._keys:
            raise AuthError(f"OIDC realm keys unavailable ({self._failed['keys']}); {self._next_try('keys')}", 503)
        raise AuthError(f"token signed with a key the realm does not publish (its keys are fetched again at most "
                        f"every {self.min_refresh_s:g} s)", 401)

    # ------------------------------------------------------------------ the two operations
    def login(self, username: str, password: str) -> dict[str, Any]:
        """The Slicer plugin's login (password grant at the realm); the realm's access token is returned."""
        form = {"grant_type": "password", "client_id": self.client_id, "username": username,
                "password": password, "scope": "openid"}
        try:
            answer = self._get_json(self.configuration()["token_endpoint"], form)
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401):
                raise AuthError("invalid user name or password (OIDC realm refused the login)", 401) from None
            raise AuthError(f"OIDC realm token endpoint answered {exc.code}", 503) from None
        except (OSError, ValueError) as exc:
            raise AuthError(f"OIDC realm token endpoint unreachable: {exc}", 503) from None
        if "access_token" not in answer:
            raise AuthError("OIDC realm answered without an access token", 503)
        return {"access_token": answer["access_token"], "token_type": "bearer",
                "expires_in": answer.get("expires_in")}

    def identify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})", 401) from None
        if header.get("alg") not in self.algorithms:
            raise AuthError(f"token algorithm {header.get('alg')!r} not accepted ({', '.join(self.algorithms)})", 401)
        key = self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=self.audience,
                issuer=self.configuration()["issuer"], leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired: log in again", 401) from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})", 401) from None
        return identity_from_claims(claims)
