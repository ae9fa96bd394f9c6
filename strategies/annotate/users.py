"""Who may use a study set's server: built-in users, roles, password hashes and the server's own tokens.

MONAI Label 0.8.5's auth cannot be used as shipped (its ``jwt.decode`` has no ``algorithms=``, which
PyJWT 2.x refuses, and it checks no audience), and it knows only Keycloak. neolabel has two ways in
and one idea of *who* is asking, an :class:`Identity`:

* built-in users (:class:`UserStore`, the ``users`` table of the annotation database): passwords are
  stored only as argon2 hashes; ``POST /auth/token`` gets a short-lived HS256 JWT from
  :class:`LocalTokens`, signed with a secret generated once per study set
  (``.neolabel/auth/jwt-secret``, mode 0600). The role is read from the table at every check, and a
  token names the ``token_version`` it was issued for, so a removed user or a changed password stops
  old tokens at once. A removed user's next version is kept (``counters``), so adding the name again
  does not bring its old tokens back.
* an OIDC/Keycloak realm: its tokens are verified in ``neonatal_app/lib/oidc.py`` (keys over HTTP);
  :func:`identity_from_claims` turns their claims into the same :class:`Identity`.

Roles grant capabilities (:data:`CAPABILITIES`); the HTTP side maps each endpoint to one capability.
Nothing here speaks HTTP.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from strategies.annotate.db import AnnotationDB, add_counter, audit, counter
from strategies.annotate.state import STATE_DIR, now_iso

ADMIN, REVIEWER, ANNOTATOR, USER = "admin", "reviewer", "annotator", "user"
ROLES = (ADMIN, REVIEWER, ANNOTATOR, USER)

# capabilities: what an endpoint needs (neonatal_app/lib/auth.py maps every endpoint to one)
READ = "read"  # /info, the datastore listing, images, training status
ANNOTATE = "annotate"  # next sample, save label, infer, one's own assignments and their labels
REVIEW = "review"  # every label and every raw submission
CONFIGURE = "configure"  # budget/strategy settings, training, models, deletions, logs, users
CAPABILITIES: dict[str, frozenset[str]] = {
    USER: frozenset({READ}),
    ANNOTATOR: frozenset({READ, ANNOTATE}),
    REVIEWER: frozenset({READ, REVIEW}),
    ADMIN: frozenset({READ, ANNOTATE, REVIEW, CONFIGURE}),
}
# the realm roles MONAI Label defines (exact names, from realm_access.roles) → ours
OIDC_ROLES = {
    "monailabel-admin": ADMIN,
    "monailabel-reviewer": REVIEWER,
    "monailabel-annotator": ANNOTATOR,
    "monailabel-user": USER,
}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
TOKEN_ALGORITHM = "HS256"
TOKEN_AUDIENCE = "neolabel"
TOKEN_ISSUER = "neolabel"
SECRET_BYTES = 64
NEXT_VERSION = "users.next_token_version:"  # + name: the counter a removal leaves (tokens never revive)


def auth_dir(studies: str | Path) -> Path:
    """Where a study set keeps its login secrets (``<studies>/.neolabel/auth``, mode 0700)."""
    return Path(studies) / STATE_DIR / "auth"


class AuthError(Exception):
    """A request that may not proceed: 401 (no, expired or invalid credentials) or 403 (role)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class UserError(ValueError):
    """A user-management request that cannot be done (bad name, role or password; unknown or duplicate user)."""


@dataclass(frozen=True)
class Identity:
    """Who is asking. ``name`` None = auth is off: the plugin's client id is then the identity."""

    name: str | None
    roles: frozenset[str]
    source: str  # "none", "local" or "oidc"

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset().union(*(CAPABILITIES.get(r, frozenset()) for r in self.roles))

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def to_json(self) -> dict[str, Any]:
        return {"username": self.name, "roles": sorted(self.roles), "source": self.source}


ANYONE = Identity(None, frozenset(ROLES), "none")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UserError(f"invalid user name {name!r}: 1–64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_role(role: str) -> str:
    r = str(role).strip().lower()
    if r not in ROLES:
        raise UserError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return r


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


class UserStore:
    """The study set's built-in users (argon2 hashes; every change audited, never a password)."""

    def __init__(self, db: AnnotationDB, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None  # verified against for unknown names: same time as a wrong password

    def add(self, name: str, role: str, password: str, actor: str = "cli") -> None:
        name, role = check_name(name), check_role(role)
        digest = self.hasher.hash(check_password(password))
        now = now_iso()
        with self.db.transaction() as con:
            if con.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserError(f"user {name!r} exists already (`neolabel users passwd` changes a password)")
            con.execute(
                "INSERT INTO users (name, role, password_hash, token_version, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, digest, counter(con, NEXT_VERSION + name), now, now),
            )
            audit(con, actor, "user.add", name, {"role": role})

    def remove(self, name: str, actor: str = "cli") -> None:
        """Delete the user; the next token version stays behind, so a re-added name starts past every old token."""
        with self.db.transaction() as con:
            row = con.execute("SELECT token_version FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UserError(f"no user {name!r}")
            con.execute("DELETE FROM users WHERE name = ?", (name,))
            add_counter(con, NEXT_VERSION + name, int(row["token_version"]) + 1, reset=True)
            audit(con, actor, "user.remove", name)

    def set_password(self, name: str, password: str, actor: str = "cli") -> None:
        digest = self.hasher.hash(check_password(password))
        with self.db.transaction() as con:
            cur = con.execute(
                "UPDATE users SET password_hash = ?, token_version = token_version + 1, updated_at = ? WHERE name = ?",
                (digest, now_iso(), name),
            )
            if cur.rowcount == 0:
                raise UserError(f"no user {name!r}")
            audit(con, actor, "user.passwd", name)

    def list_users(self) -> list[dict[str, Any]]:
        rows = self.db.read().execute("SELECT name, role, created_at, updated_at FROM users ORDER BY name")
        return [dict(r) for r in rows]

    def count(self) -> int:
        return int(self.db.read().execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def lookup(self, name: str) -> tuple[str, int] | None:
        """(role, token_version) of a user, None if there is no such user."""
        row = self.db.read().execute("SELECT role, token_version FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else (str(row["role"]), int(row["token_version"]))

    def authenticate(self, name: str, password: str) -> tuple[str, int]:
        """(role, token_version) for the right password; :class:`AuthError` (401) otherwise, in the same time
        for an unknown name as for a wrong password."""
        row = None
        if isinstance(name, str) and NAME_RE.match(name):
            row = self.db.read().execute(
                "SELECT role, token_version, password_hash FROM users WHERE name = ?", (name,)
            ).fetchone()
        digest = row["password_hash"] if row is not None else self._dummy_hash()
        try:
            self.hasher.verify(digest, password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            raise AuthError("invalid user name or password", 401) from None
        if row is None:  # the dummy hash matched: impossible in practice, refused anyway
            raise AuthError("invalid user name or password", 401)
        if self.hasher.check_needs_rehash(digest):  # argon2 parameters were raised since: upgrade quietly
            with self.db.transaction() as con:
                con.execute("UPDATE users SET password_hash = ? WHERE name = ?", (self.hasher.hash(password), name))
        return str(row["role"]), int(row["token_version"])

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy


def load_or_create_secret(path: Path) -> bytes:
    """The study set's token signing secret, generated once (``os.link`` of a finished 0600 file: two processes
    starting together agree on one secret, and nobody reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(SECRET_BYTES).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it: the secret is as good as a password
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise AuthError(f"{path}: token secret is too short; delete it to generate a new one", 500)
    return secret


class LocalTokens:
    """Short-lived HS256 tokens for built-in users: ``exp``, ``aud``, ``iss`` always set and always checked."""

    def __init__(self, secret: bytes, minutes: float = 30.0) -> None:
        self._secret = secret
        self.lifetime_s = int(round(minutes * 60))

    def issue(self, name: str, token_version: int, now: float | None = None,
              lifetime_s: int | None = None) -> dict[str, Any]:
        t = int(now if now is not None else time.time())
        life = self.lifetime_s if lifetime_s is None else int(lifetime_s)
        claims = {"sub": name, "ver": token_version, "iat": t, "exp": t + life, "aud": TOKEN_AUDIENCE,
                  "iss": TOKEN_ISSUER, "jti": secrets.token_hex(8)}
        token = jwt.encode(claims, self._secret, algorithm=TOKEN_ALGORITHM)
        return {"access_token": token, "token_type": "bearer", "expires_in": life}

    def verify(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, self._secret, algorithms=[TOKEN_ALGORITHM], audience=TOKEN_AUDIENCE, issuer=TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired: log in again", 401) from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})", 401) from None


class LocalAuthority:
    """Built-in users: logins issue tokens, tokens give identities (role and version read at every check)."""

    source = "local"

    def __init__(self, users: UserStore, tokens: LocalTokens) -> None:
        self.users = users
        self.tokens = tokens

    @classmethod
    def for_studies(cls, db: AnnotationDB, studies: str | Path, minutes: float = 30.0) -> LocalAuthority:
        secret = load_or_create_secret(auth_dir(studies) / "jwt-secret")
        return cls(UserStore(db), LocalTokens(secret, minutes))

    def login(self, name: str, password: str) -> dict[str, Any]:
        _role, version = self.users.authenticate(name, password)
        return self.tokens.issue(name, version)

    def identify(self, token: str) -> Identity:
        claims = self.tokens.verify(token)
        name = str(claims["sub"])
        found = self.users.lookup(name)
        if found is None:
            raise AuthError(f"user {name!r} no longer exists", 401)
        role, version = found
        if claims.get("ver") != version:
            raise AuthError("token revoked (password changed or user removed): log in again", 401)
        return Identity(name, frozenset({role}), self.source)


def identity_from_claims(claims: dict[str, Any], username_claim: str = "preferred_username",
                         roles_claim: str = "realm_access#roles") -> Identity:
    """An OIDC token's claims (already verified) → :class:`Identity`; only the MONAI Label role names count."""
    name = claims.get(username_claim) or claims.get("sub")
    if not name:
        raise AuthError(f"token names no user ({username_claim!r} and 'sub' missing)", 401)
    value: Any = claims
    for part in roles_claim.split("#"):
        value = value.get(part) if isinstance(value, dict) else None
    roles = frozenset(OIDC_ROLES[r] for r in (value or []) if isinstance(r, str) and r in OIDC_ROLES)
    return Identity(str(name), roles, "oidc")
