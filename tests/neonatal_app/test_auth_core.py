"""Users, password hashes, tokens and the start-up rules, without a server (fast)."""

from __future__ import annotations

import base64
import json
import stat
import time

import jwt
import pytest
from typer.testing import CliRunner

from strategies.annotate.state import open_state
from strategies.annotate.users import (
    ADMIN,
    ANNOTATOR,
    AuthError,
    LocalAuthority,
    UserError,
    UserStore,
    auth_dir,
    identity_from_claims,
)


@pytest.fixture()
def authority(tmp_path) -> LocalAuthority:
    return LocalAuthority.for_studies(open_state(tmp_path), tmp_path, minutes=5)


def _tamper(token: str, **claims) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(claims)
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


def test_users_are_stored_as_argon2_and_changes_are_audited(authority, tmp_path):
    users = authority.users
    users.add("alice", "annotator", "correct horse")
    with pytest.raises(UserError, match="exists already"):
        users.add("alice", "admin", "another password")
    with pytest.raises(UserError, match="unknown role"):
        users.add("bob", "superuser", "correct horse")
    with pytest.raises(UserError, match="at least 8"):
        users.add("bob", "user", "short")
    with pytest.raises(UserError, match="invalid user name"):
        users.add("../bob", "user", "correct horse")
    row = users.db.read().execute("SELECT * FROM users WHERE name = 'alice'").fetchone()
    assert row["password_hash"].startswith("$argon2id$") and "correct horse" not in row["password_hash"]
    assert users.list_users() == [{"name": "alice", "role": "annotator", "created_at": row["created_at"],
                                   "updated_at": row["updated_at"]}]
    assert users.authenticate("alice", "correct horse") == ("annotator", 0)
    for name, pw in [("alice", "wrong password"), ("nobody", "correct horse"), ("", "")]:
        with pytest.raises(AuthError, match="invalid user name or password"):
            users.authenticate(name, pw)
    actions = [r["action"] for r in users.db.read().execute("SELECT action FROM audit")]
    assert actions == ["user.add"]
    secret = auth_dir(tmp_path) / "jwt-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(secret.parent.stat().st_mode) == 0o700


def test_tokens_expire_are_bound_to_audience_issuer_key_and_version(authority):
    authority.users.add("alice", ANNOTATOR, "correct horse")
    authority.users.add("root", ADMIN, "correct horse")
    token = authority.login("alice", "correct horse")
    assert token["token_type"] == "bearer" and token["expires_in"] == 300
    ident = authority.identify(token["access_token"])
    assert ident.name == "alice" and ident.roles == {ANNOTATOR} and ident.can("annotate") and not ident.can("configure")

    expired = authority.tokens.issue("alice", 0, now=time.time() - 600)["access_token"]
    with pytest.raises(AuthError, match="expired"):
        authority.identify(expired)
    with pytest.raises(AuthError, match="invalid token"):  # alice's token claiming to be the admin
        authority.identify(_tamper(token["access_token"], sub="root"))
    foreign = jwt.encode({"sub": "root", "ver": 0, "iat": int(time.time()), "exp": int(time.time()) + 60,
                          "aud": "neolabel", "iss": "neolabel"}, "x" * 64, algorithm="HS256")
    with pytest.raises(AuthError, match="invalid token"):  # another secret
        authority.identify(foreign)
    unsigned = jwt.encode({"sub": "root", "ver": 0, "exp": int(time.time()) + 60, "aud": "neolabel",
                           "iss": "neolabel"}, None, algorithm="none")
    with pytest.raises(AuthError, match="invalid token"):
        authority.identify(unsigned)
    for claims in ({"aud": "other"}, {"iss": "other"}):
        forged = jwt.encode({**jwt.decode(token["access_token"], options={"verify_signature": False}), **claims},
                            authority.tokens._secret, algorithm="HS256")
        with pytest.raises(AuthError, match="invalid token"):
            authority.identify(forged)

    authority.users.set_password("alice", "battery staple")  # old tokens stop at once
    with pytest.raises(AuthError, match="revoked"):
        authority.identify(token["access_token"])
    fresh = authority.login("alice", "battery staple")["access_token"]
    authority.users.remove("alice")
    with pytest.raises(AuthError, match="no longer exists"):
        authority.identify(fresh)


def test_a_removed_users_tokens_stay_dead_when_the_name_is_added_again(authority):
    authority.users.add("alice", ANNOTATOR, "correct horse")
    before = authority.login("alice", "correct horse")["access_token"]
    authority.users.remove("alice")
    authority.users.add("alice", ADMIN, "battery staple")  # same name, another person perhaps, now an admin
    with pytest.raises(AuthError, match="revoked"):
        authority.identify(before)
    after = authority.login("alice", "battery staple")["access_token"]
    assert authority.identify(after).roles == {ADMIN}
    authority.users.set_password("alice", "third password")
    authority.users.remove("alice")
    authority.users.add("alice", ANNOTATOR, "correct horse")
    for old in (before, after):
        with pytest.raises(AuthError, match="revoked"):
            authority.identify(old)


def test_failed_logins_are_limited_per_name_and_per_address():
    from neonatal_app.lib.auth import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(per_name=3, per_peer=5, window_s=60, clock=lambda: now[0], per_name_all=4)
    for _ in range(3):
        at, wait = throttle.admit("Alice", "10.0.0.1")
        assert wait == 0
        throttle.settle("Alice", "10.0.0.1", at, 401)
        now[0] += 1
    assert throttle.admit("alice", "10.0.0.1") == (0.0, 57)  # the name (any case) waits at that address
    at, wait = throttle.admit("alice", "10.0.0.2")  # not at Alice's own machine: guessing does not lock her out
    assert wait == 0
    throttle.settle("alice", "10.0.0.2", at, 401)
    assert throttle.admit("alice", "10.0.0.4") == (0.0, 57)  # 4 failures from all addresses: the name waits
    at, wait = throttle.admit("bob", "10.0.0.1")
    assert wait == 0
    throttle.settle("bob", "10.0.0.1", at, 200)  # a success is not a failure of the address
    at, _ = throttle.admit("carol", "10.0.0.1")
    throttle.settle("carol", "10.0.0.1", at, 503)  # the realm down: not the caller's failure
    for name in ("dave", "erin"):
        at, wait = throttle.admit(name, "10.0.0.1")
        assert wait == 0
        throttle.settle(name, "10.0.0.1", at, 401)
    assert throttle.admit("frank", "10.0.0.1")[1] > 0  # five failures from this address
    assert throttle.admit("frank", "10.0.0.3")[1] == 0
    now[0] += 60
    assert throttle.admit("alice", "10.0.0.1")[1] == 0  # the window has passed

    parallel = LoginThrottle(per_name=2, clock=lambda: now[0])  # attempts count before their password is checked
    assert [parallel.admit("gina", None)[1] == 0 for _ in range(4)] == [True, True, False, False]
    ok = LoginThrottle(per_name=2, clock=lambda: now[0])
    ok.settle("hank", None, ok.admit("hank", None)[0], 401)
    ok.settle("hank", None, ok.admit("hank", None)[0], 200)  # the right password clears the name's failures
    assert [ok.admit("hank", None)[1] == 0 for _ in range(3)] == [True, True, False]


def test_realm_roles_map_to_ours():
    claims = {"preferred_username": "kc", "realm_access": {"roles": ["monailabel-reviewer", "offline_access",
                                                                      "monailabel-annotator"]}}
    ident = identity_from_claims(claims)
    assert ident.name == "kc" and ident.roles == {"reviewer", "annotator"} and ident.source == "oidc"
    assert identity_from_claims({"sub": "x"}).roles == frozenset()
    with pytest.raises(AuthError):
        identity_from_claims({"realm_access": {"roles": ["monailabel-admin"]}})


def test_users_command(tmp_path):
    from apps.cli import app

    run = CliRunner().invoke
    r = run(app, ["users", "add", "--studies", str(tmp_path), "ann", "annotator", "--password-stdin"],
            input="correct horse\n")
    assert r.exit_code == 0, r.output
    r = run(app, ["users", "add", "--studies", str(tmp_path), "ann", "admin", "--password-stdin"], input="x" * 9)
    assert r.exit_code == 1 and "exists already" in r.output
    r = run(app, ["users", "list", "--studies", str(tmp_path)])
    assert r.exit_code == 0 and "ann\tannotator" in r.output
    store = UserStore(open_state(tmp_path))
    r = run(app, ["users", "passwd", "--studies", str(tmp_path), "ann", "--password-stdin"], input="new secret 1\n")
    assert r.exit_code == 0 and store.authenticate("ann", "new secret 1") == ("annotator", 1)
    r = run(app, ["users", "remove", "--studies", str(tmp_path), "ann"])
    assert r.exit_code == 0 and store.count() == 0
    audit = [r["actor"] for r in store.db.read().execute("SELECT actor FROM audit")]
    assert audit and all(a.startswith("cli") for a in audit)


def test_serve_refuses_no_logins_beyond_loopback(tmp_path):
    from apps.cli import app

    run = CliRunner().invoke
    base = ["serve", "--studies", str(tmp_path), "--prepare-only"]
    r = run(app, [*base, "--host", "0.0.0.0", "--auth", "none"])
    assert r.exit_code != 0 and "--insecure" in r.output and "delete" in r.output
    r = run(app, [*base, "--host", "0.0.0.0"])  # default beyond loopback: local, and there are no users yet
    assert r.exit_code != 0 and "neolabel users add" in r.output
    r = run(app, [*base, "--host", "0.0.0.0", "--auth", "none", "--insecure"])
    assert r.exit_code == 0, r.output
    r = run(app, base)  # loopback: no logins, and it says how to turn them on
    assert r.exit_code == 0 and "auth: none" in r.output and "--auth local" in r.output
    UserStore(open_state(tmp_path)).add("root", "admin", "correct horse")
    r = run(app, [*base, "--host", "0.0.0.0"])
    assert r.exit_code == 0 and "auth: local (1 user(s)" in r.output


def test_every_monai_label_route_has_a_deliberate_policy():
    """A MONAI Label route missing from POLICY needs the admin role; this lists what lands there by default."""
    from fastapi.routing import iter_route_contexts
    from monailabel.app import app

    from neonatal_app.lib.auth import POLICY

    defaulted = set()
    for rc in iter_route_contexts(app.router.routes):
        route = getattr(rc, "original_route", rc)
        if getattr(getattr(route, "endpoint", None), "__module__", "").startswith("neonatal_app"):
            continue  # ours (installed once a server test ran): they name what they need themselves
        for method in getattr(route, "methods", None) or []:
            if (method, route.path) not in POLICY and method != "HEAD":
                defaulted.add((method, route.path))
    public = {("GET", "/"), ("GET", "/favicon.ico"), ("GET", "/openapi.json"), ("GET", "/docs")}  # no dependency
    admin_only = {
        ("PUT", "/model/{model}"), ("DELETE", "/model/{model}"), ("GET", "/model/{model}"),
        ("GET", "/model/info/{model}"), ("POST", "/train/"), ("POST", "/train/{model}"), ("DELETE", "/train/"),
        ("PUT", "/datastore/image"), ("PUT", "/datastore/"), ("DELETE", "/datastore/image"), ("DELETE", "/datastore/"),
        ("DELETE", "/datastore/label"), ("PUT", "/datastore/image/info"), ("PUT", "/datastore/label/info"),
        ("PUT", "/datastore/updatelabelinfo"), ("GET", "/logs/"), ("GET", "/logs/gpu"), ("POST", "/reload"),
        ("POST", "/batch/infer/{model}"), ("DELETE", "/batch/infer"), ("POST", "/scoring/"),
        ("POST", "/scoring/{method}"), ("DELETE", "/scoring/"), ("GET", "/proxy/dicom/stow/{path:path}"),
        ("POST", "/proxy/dicom/stow/{path:path}"),
    }
    assert defaulted == public | admin_only
