"""``--conf auth oidc`` against a Keycloak-like issuer that the test runs on loopback.

The issuer has RS256 keys generated here (``cryptography``), a realm document, the
``.well-known/openid-configuration``, a JWKS and a password-grant token endpoint. The stock plugin's
flow logs in through neolabel (which forwards the password grant); tokens are then verified by
neolabel against the JWKS: signature, algorithm, ``exp``, ``aud``, ``iss``; realm roles map to ours;
a key rotation is picked up by refreshing the JWKS on an unknown key id, and the realm is asked for
keys or discovery at most once per ``min_refresh_s`` whatever the last answer was.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from monailabel.client import MONAILabelClient

from neonatal_app.lib.auth import GATE
from neonatal_app.lib.oidc import OidcRealm
from strategies.annotate.users import AuthError

CLIENT = "monailabel-app"
USERS = {"kc-admin": ["monailabel-admin"], "kc-ann": ["monailabel-annotator", "offline_access"],
         "kc-nobody": ["offline_access"]}
PASSWORD = "realm password"


class Issuer:
    """Just enough of a Keycloak realm: discovery, JWKS (the published keys), password grant."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.current = self.rotate(keep_old=False)
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.down: set[str] = set()  # paths answered 503
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/realms/test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rotate(self, keep_old: bool = True) -> str:
        kid = secrets.token_hex(4)
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published = [*self.published, kid] if keep_old else [kid]
        self.current = kid
        return kid

    def jwks(self) -> dict:
        out = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def token(self, user: str, kid: str | None = None, key=None, alg: str = "RS256", **claims) -> str:
        now = int(time.time())
        body = {"iss": self.base, "aud": CLIENT, "azp": CLIENT, "sub": f"id-{user}", "preferred_username": user,
                "iat": now, "exp": now + 300, "realm_access": {"roles": USERS.get(user, [])}, **claims}
        kid = kid or self.current
        return jwt.encode(body, key if key is not None else self.keys[kid], algorithm=alg, headers={"kid": kid})

    def _handler(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                issuer.discovery_fetches += self.path.endswith("/.well-known/openid-configuration")
                issuer.jwks_fetches += self.path.endswith("/protocol/openid-connect/certs")
                if self.path in issuer.down:
                    return self._json(503, {"error": "temporarily unavailable"})
                if self.path == "/realms/test":
                    der = issuer.keys[issuer.current].public_key().public_bytes(
                        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                    return self._json(200, {"realm": "test", "public_key": base64.b64encode(der).decode()})
                if self.path == "/realms/test/.well-known/openid-configuration":
                    return self._json(200, {"issuer": issuer.base,
                                            "token_endpoint": f"{issuer.base}/protocol/openid-connect/token",
                                            "jwks_uri": f"{issuer.base}/protocol/openid-connect/certs"})
                if self.path == "/realms/test/protocol/openid-connect/certs":
                    return self._json(200, issuer.jwks())
                return self._json(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                field = {k: v[0] for k, v in form.items()}
                if self.path != "/realms/test/protocol/openid-connect/token":
                    return self._json(404, {"error": "not found"})
                if field.get("grant_type") != "password" or field.get("client_id") != CLIENT:
                    return self._json(400, {"error": "unauthorized_client"})
                if field.get("username") not in USERS or field.get("password") != PASSWORD:
                    return self._json(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                return self._json(200, {"access_token": issuer.token(field["username"]), "token_type": "Bearer",
                                        "expires_in": 300, "refresh_token": "r"})

        return Handler


@pytest.fixture()
def realm():
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


def _b64(obj: dict | bytes) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hs256(secret: bytes, header: dict, claims: dict) -> str:
    """The classic key-confusion token: HMAC-signed with the realm's *public* key (PyJWT refuses to make one)."""
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _status(url: str, path: str, token: str | None, method: str = "GET", **kw) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.request(method, url + path, headers=headers, timeout=60, **kw)
    return r.status_code, r.json().get("detail", "") if r.headers.get("content-type", "").startswith(
        "application/json") and isinstance(r.json(), dict) else ""


def test_oidc_realm_logins_roles_claims_and_key_rotation(inprocess_server, realm, served_copy, synth_root,
                                                         tmp_path):
    studies = served_copy(synth_root, tmp_path)
    conf = {"auth": "oidc", "auth_realm_url": realm.base, "preset": "tiny"}
    with inprocess_server(studies, conf) as (url, app):
        # the stock plugin's flow, through neolabel's /auth (password grant forwarded to the realm)
        plugin = MONAILabelClient(url, tmpdir=str(tmp_path), client_id="user-xyz")
        assert plugin.auth_enabled()
        with pytest.raises(Exception, match="401"):
            plugin.auth_token("kc-ann", "wrong")
        token = plugin.auth_token("kc-ann", PASSWORD)
        plugin.update_auth(token)
        assert plugin.auth_valid_token()
        ann = token["access_token"]
        sample = MONAILabelClient(url, tmpdir=str(tmp_path), client_id="user-xyz")
        sample.update_auth(token)
        answer = sample.next_sample("budget", {})
        assert answer["id"]
        assert [x["client_id"] for x in app.ledger.budget_status()["open_leases"]] == ["kc-ann"]
        assert _status(url, "/train/", ann, "DELETE")[0] == 403
        admin = realm.token("kc-admin")
        assert _status(url, "/train/", admin, "DELETE")[0] == 200
        code, detail = _status(url, "/info/", realm.token("kc-nobody"))
        assert code == 403 and "no neolabel role" in detail
        assert realm.jwks_fetches == 1  # cached

        # every claim is checked, and only the realm's published keys with an accepted algorithm sign
        rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = realm.keys[realm.current].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        bad = {
            "expired": realm.token("kc-admin", exp=int(time.time()) - 120, iat=int(time.time()) - 600),
            "other audience": realm.token("kc-admin", aud="account"),
            "other issuer": realm.token("kc-admin", iss="http://127.0.0.1:1/realms/evil"),
            "forged signature": realm.token("kc-admin", key=rogue),
            "HS256 with the public key": _hs256(public_pem, {"alg": "HS256", "typ": "JWT", "kid": realm.current},
                                                {"preferred_username": "kc-admin", "aud": CLIENT, "iss": realm.base,
                                                 "iat": int(time.time()), "exp": int(time.time()) + 60,
                                                 "realm_access": {"roles": ["monailabel-admin"]}}),
            "no kid": jwt.encode({"aud": CLIENT, "iss": realm.base, "exp": int(time.time()) + 60},
                                 realm.keys[realm.current], algorithm="RS256"),
            "garbage": "not.a.token",
        }
        for what, tok in bad.items():
            code, detail = _status(url, "/train/", tok, "DELETE")
            assert code == 401 and detail, (what, code, detail)

        # key rotation: the realm signs with a new key; neolabel fetches the JWKS again for the unknown kid
        GATE.authority.min_refresh_s = 0  # the rotation comes seconds after the first fetch: no waiting here
        old_kid = realm.current
        realm.rotate(keep_old=False)
        fresh = MONAILabelClient(url, tmpdir=str(tmp_path)).auth_token("kc-admin", PASSWORD)["access_token"]
        assert jwt.get_unverified_header(fresh)["kid"] != old_kid
        assert _status(url, "/train/", fresh, "DELETE")[0] == 200
        assert realm.jwks_fetches == 2
        GATE.authority.min_refresh_s = 60
        # the retired key is gone from the refreshed set; made-up kids do not make neolabel hammer the realm
        assert _status(url, "/info/", realm.token("kc-admin", kid=old_kid))[0] == 401
        for _ in range(3):
            assert _status(url, "/info/", realm.token("kc-admin", kid=secrets.token_hex(4),
                                                      key=realm.keys[realm.current]))[0] == 401
        assert realm.jwks_fetches == 2


def _refusal(oidc: OidcRealm, token: str) -> int:
    with pytest.raises(AuthError) as err:
        oidc.identify(token)
    return err.value.status


def test_the_realm_is_asked_at_most_once_per_window_whatever_it_answered(realm):
    oidc = OidcRealm(realm.base, CLIENT, min_refresh_s=60)
    token = realm.token("kc-admin")
    realm.down = {"/realms/test/.well-known/openid-configuration"}
    assert [_refusal(oidc, token) for _ in range(4)] == [503] * 4
    assert realm.discovery_fetches == 1
    with pytest.raises(AuthError, match="next try in"):
        oidc.login("kc-admin", PASSWORD)
    assert realm.discovery_fetches == 1

    realm.down = {"/realms/test/protocol/openid-connect/certs"}  # discovery back, the JWKS failing
    oidc.min_refresh_s = 0
    assert _refusal(oidc, token) == 503
    oidc.min_refresh_s = 60
    assert [_refusal(oidc, token) for _ in range(4)] == [503] * 4
    assert (realm.discovery_fetches, realm.jwks_fetches) == (2, 1)

    realm.down, published = set(), realm.published  # the JWKS answers, but without a signing key
    realm.published = []
    oidc.min_refresh_s = 0
    assert _refusal(oidc, token) == 503
    oidc.min_refresh_s = 60
    assert [_refusal(oidc, token) for _ in range(4)] == [503] * 4
    assert realm.jwks_fetches == 2

    realm.published = published  # keys again: after the window they are fetched and tokens pass
    oidc.min_refresh_s = 0
    assert oidc.identify(token).name == "kc-admin"
    oidc.min_refresh_s = 60
    made_up = [realm.token("kc-admin", kid=secrets.token_hex(4), key=realm.keys[realm.current]) for _ in range(4)]
    assert [_refusal(oidc, t) for t in made_up] == [401] * 4
    realm.rotate(keep_old=True)
    rotated = realm.token("kc-admin")
    assert _refusal(oidc, rotated) == 401  # within the window the new key waits
    realm.down = {"/realms/test/protocol/openid-connect/certs"}
    oidc.min_refresh_s = 0
    assert _refusal(oidc, rotated) == 503 and oidc.identify(token).name == "kc-admin"  # keys in hand kept
    realm.down = set()
    assert oidc.identify(rotated).name == "kc-admin"
    assert (realm.discovery_fetches, realm.jwks_fetches) == (2, 5)
