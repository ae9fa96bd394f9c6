"""Logins and roles on every endpoint of MONAI Label's FastAPI app, without touching MONAI Label itself.

How it hooks in: every MONAI Label endpoint depends on ``RBAC(role)``, which depends on
``monailabel.endpoints.user.auth.get_current_user``. :func:`install` sets
``app.dependency_overrides[get_current_user] = GATE.guard``, so FastAPI calls :meth:`Gate.guard`
for every endpoint, before the endpoint's body runs: a refusal (401 without or with a bad/expired
token, 403 for a role) therefore changes nothing. MONAI Label's own auth
(``MONAI_LABEL_AUTH_ENABLE``) stays off, so ``RBAC`` passes on what the guard returned; the guard
decides from the matched route (``scope["route"]``) and :data:`POLICY` (a route missing from it
needs the admin's capability). MONAI Label's ``/auth`` router (Keycloak only, broken with PyJWT 2)
is replaced by ours: ``GET /auth/`` (404 when auth is off: what the Slicer plugin expects),
``POST /auth/token`` (form fields username/password) and ``GET /auth/token/valid``. Failed logins are
limited per user name and per client address (:class:`LoginThrottle`: past the limit, 429 with
``Retry-After``, the password not even checked), so passwords cannot be guessed at argon2's speed.

The guard leaves the caller's :class:`Identity` in a context variable; the adapters read it
(:func:`acting_client`): with auth on, leases, submissions and the audit trail are keyed by the user
name, the plugin's ``client_id`` is only a device note; with auth off the client id stays the identity.

The stock plugin downloads a Next Sample image with Slicer's ``downloadFromURL``, without its token:
``GET /datastore/image`` without credentials is let through only for the image that an annotator at
the same address has just been handed (:class:`DownloadGrants`, for the lease's duration).
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings
from monailabel.endpoints.user.auth import User, get_current_user
from monailabel.interfaces.utils.app import app_instance

from neonatal_app.lib.oidc import OidcRealm
from strategies.annotate.db import AnnotationDB
from strategies.annotate.settings import AppConfig, ConfError
from strategies.annotate.tags import BRAIN_MASK, ORIGINAL
from strategies.annotate.users import (
    ADMIN,
    ANNOTATE,
    ANNOTATOR,
    ANYONE,
    CONFIGURE,
    READ,
    REVIEW,
    REVIEWER,
    USER,
    AuthError,
    Identity,
    LocalAuthority,
)

log = logging.getLogger(__name__)

LABEL = "label"  # GET a label: reviewers any; annotators server labels and their open assignments; users server labels
OWN = "own"  # a list of assignments: annotators their own, reviewers and admins everyone's
SERVER_LABELS = (ORIGINAL, BRAIN_MASK)  # written by the server, shown in Slicer: no annotator's work
# What each endpoint (method, route path as FastAPI matched it) needs. A route not listed needs CONFIGURE.
POLICY: dict[tuple[str, str], str] = {
    ("GET", "/info/"): READ,
    ("POST", "/activelearning/{strategy}"): ANNOTATE,  # a budget edit in the body also needs CONFIGURE (strategy)
    ("GET", "/datastore/"): READ,
    ("HEAD", "/datastore/image"): READ,
    ("GET", "/datastore/image"): READ,
    ("GET", "/datastore/image/info"): READ,
    ("HEAD", "/datastore/label"): READ,
    ("GET", "/datastore/label"): LABEL,
    ("GET", "/datastore/label/info"): LABEL,
    ("PUT", "/datastore/label"): ANNOTATE,
    ("GET", "/datastore/dataset"): REVIEW,
    ("POST", "/infer/{model}"): ANNOTATE,
    ("POST", "/infer/wsi/{model}"): ANNOTATE,
    ("POST", "/infer/wsi_v2/{model}"): ANNOTATE,
    ("GET", "/session/{session_id}"): ANNOTATE,
    ("PUT", "/session/"): ANNOTATE,
    ("DELETE", "/session/{session_id}"): ANNOTATE,
    ("GET", "/train/"): READ,
    ("GET", "/batch/infer"): READ,
    ("GET", "/scoring/"): READ,
    ("GET", "/ohif/{path:path}"): READ,
    **{(m, f"/proxy/dicom/{p}{{path:path}}"): READ for m in ("GET", "POST") for p in ("wado/", "qido/", "")},
    ("GET", "/auth/token/valid"): READ,
    ("GET", "/neolabel/assignments"): OWN,
    ("GET", "/neolabel/submissions"): REVIEW,
    ("GET", "/neolabel/submissions/{submission_id}/file"): REVIEW,
    # everything else — budget edits, /train start/stop, /model, deletions, image uploads, info edits,
    # /logs, /neolabel/users, /neolabel/trash, /reload, /batch/infer runs, /scoring runs — is CONFIGURE
}
MONAI_ROLE = {  # ours → MONAI Label's role names (what endpoints receive in ``user.roles``)
    ADMIN: settings.MONAI_LABEL_AUTH_ROLE_ADMIN,
    REVIEWER: settings.MONAI_LABEL_AUTH_ROLE_REVIEWER,
    ANNOTATOR: settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
    USER: settings.MONAI_LABEL_AUTH_ROLE_USER,
}

LOGIN_WINDOW_S = 300.0
LOGIN_FAILURES_PER_NAME = 5  # in LOGIN_WINDOW_S from one address, then that name waits there
LOGIN_FAILURES_PER_NAME_ALL = 100  # for one name from all addresses together: slows distributed guessing
LOGIN_FAILURES_PER_PEER = 20  # from one address, whatever the names (a proxy in front: everyone behind it)

_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("neolabel_identity", default=None)
_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("neolabel_peer", default=None)


class Authority(Protocol):
    """A way in: built-in users (``strategies.annotate.users.LocalAuthority``) or a realm (``oidc.OidcRealm``)."""

    source: str

    def login(self, name: str, password: str) -> dict[str, Any]: ...

    def identify(self, token: str) -> Identity: ...


# ---------------------------------------------------------------------- what the adapters use
def current_identity() -> Identity | None:
    """The caller of the request being served (None outside a request, e.g. in a training subprocess)."""
    return _identity.get()


def acting_client(client_id: Any) -> str | None:
    """Who the annotation core records for this request: the user name when logged in, else the client id."""
    ident = _identity.get()
    if ident is not None and ident.name:
        return ident.name
    return None if client_id in (None, "") else str(client_id)


def require(capability: str, what: str) -> None:
    """Refuse (403) a part of a request that needs more than its endpoint (e.g. a budget edit)."""
    ident = _identity.get()
    if ident is not None and not ident.can(capability):
        raise HTTPException(403, f"{what} needs the admin role; {_who(ident)} may not")


def note_download(image_id: str, minutes: float) -> None:
    """Let this request's address fetch ``image_id`` without a token for a while (see module doc)."""
    ident, peer = _identity.get(), _peer.get()
    if ident is not None and ident.name and peer:
        GATE.grants.allow(image_id, peer, ident.name, minutes * 60)


def _who(ident: Identity) -> str:
    roles = ", ".join(sorted(ident.roles)) or "no neolabel role"
    return f"user {ident.name!r} ({roles})" if ident.name else "this client"


def _is_loopback(host: str | None) -> bool:
    if host in (None, "testclient"):  # a unix socket, or Starlette's in-process test client
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DownloadGrants:
    """(image, address) pairs allowed to fetch the image without a token, until a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[tuple[str, str], tuple[float, str]] = {}

    def allow(self, image_id: str, peer: str, name: str, seconds: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._until = {k: v for k, v in self._until.items() if v[0] > now}
            self._until[(image_id, peer)] = (now + seconds, name)

    def holder(self, image_id: str, peer: str) -> str | None:
        with self._lock:
            until, name = self._until.get((image_id, peer), (0.0, ""))
        return name if until > time.monotonic() else None


class LoginThrottle:
    """Failed logins in a sliding window, kept in memory: per user name from one address, per address, and per
    name from all addresses together (a much higher limit).

    A name is held back per address, so someone guessing at a colleague's name from their own machine does not
    lock the colleague out of theirs; only guessing from many addresses at once reaches the all-address limit.
    An attempt counts as failed from the moment it is admitted until it turns out otherwise, so parallel guesses
    cannot all slip in while argon2 runs; a successful login also clears its name's failures from that address.
    """

    def __init__(self, per_name: int = LOGIN_FAILURES_PER_NAME, per_peer: int = LOGIN_FAILURES_PER_PEER,
                 window_s: float = LOGIN_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 per_name_all: int = LOGIN_FAILURES_PER_NAME_ALL) -> None:
        self.per_name, self.per_peer, self.window_s, self.clock = per_name, per_peer, window_s, clock
        self.per_name_all = per_name_all
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}
        self._pruned_at = -math.inf

    @staticmethod
    def _name_key(name: str, peer: str | None) -> str:
        return f"name:{name.lower()[:128]}@{peer or ''}"

    def _limits(self, name: str, peer: str | None) -> dict[str, int]:
        keys = {self._name_key(name, peer): self.per_name}
        if peer:
            keys[f"peer:{peer}"] = self.per_peer
            keys[f"name:{name.lower()[:128]}"] = self.per_name_all
        return keys

    def admit(self, name: str, peer: str | None) -> tuple[float, int]:
        """(when the attempt was counted, 0) if it may go ahead; (0, seconds to wait) past a limit."""
        with self._lock:
            now = self.clock()
            if len(self._failures) > 10_000 and now - self._pruned_at > self.window_s:  # made-up names, many addresses
                self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - self.window_s}
                self._pruned_at = now
            wait = 0.0
            for key, limit in self._limits(name, peer).items():
                seen = self._failures.get(key, deque())
                while seen and seen[0] <= now - self.window_s:
                    seen.popleft()
                if len(seen) >= limit:
                    wait = max(wait, seen[len(seen) - limit] + self.window_s - now)
            if wait > 0:
                return 0.0, max(1, math.ceil(wait))
            for key in self._limits(name, peer):
                self._failures.setdefault(key, deque()).append(now)
            return now, 0

    def settle(self, name: str, peer: str | None, at: float, status: int) -> None:
        """The attempt admitted ``at`` was answered ``status``: 401 (wrong password) stays counted, anything else
        (200, the realm down) is taken back, and a success clears the name's failures."""
        if status == 401:
            return
        with self._lock:
            for key in self._limits(name, peer):
                seen = self._failures.get(key)
                if seen is not None and at in seen:
                    seen.remove(at)
            if status == 200:
                self._failures.pop(self._name_key(name, peer), None)


class Gate:
    """The server's current way in (swapped by :func:`install` whenever MONAI Label builds the app)."""

    def __init__(self) -> None:
        self.configured = False  # set by the app; until then the guard builds it first (see guard)
        self.authority: Authority | None = None  # None: auth is off
        self.insecure = False
        self.open_assignment: Any = None  # (image, user) -> bool, from the ledger
        self.realm = ""
        self.client_id = ""
        self.grants = DownloadGrants()
        self.logins = LoginThrottle()

    @property
    def mode(self) -> str:
        return "none" if self.authority is None else self.authority.source

    def configure(self, authority: Authority | None, config: AppConfig, open_assignment: Any = None) -> None:
        """Serve with ``authority`` (None = no logins); ``open_assignment(image, user)`` says whether the user
        holds an open assignment of the image (annotators may read its labels)."""
        self.authority, self.insecure = authority, config.auth_insecure
        self.configured = True
        self.open_assignment = open_assignment
        self.realm = config.auth_realm_url if config.auth == "oidc" else config.auth
        self.client_id = config.auth_client_id
        self.grants = DownloadGrants()
        self.logins = LoginThrottle()

    # ------------------------------------------------------------------ the dependency every endpoint gets
    async def guard(self, request: Request) -> User:
        """Authenticate and authorise one request (MONAI Label's ``get_current_user``, overridden)."""
        if not self.configured:  # a server started without lifespan: MONAI Label builds the app at first use
            app_instance()
            if not self.configured:
                raise HTTPException(503, "the neolabel app is not configured on this server")
        peer = request.client.host if request.client else None
        _peer.set(peer)
        _identity.set(None)
        capability = required(request)
        try:  # off the event loop: a token check may read the database or fetch a realm's keys
            ident = await run_in_threadpool(self._authenticate, request, peer)
            self._authorise(ident, capability, request)
        except AuthError as exc:
            log.info("refused %s %s from %s: %d %s", request.method, request.url.path, peer, exc.status, exc)
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise HTTPException(exc.status, str(exc), headers=headers) from None
        _identity.set(ident)  # what a request changes is audited where it happens, under this name
        return User(username=ident.name or "anonymous", roles=[MONAI_ROLE[r] for r in sorted(ident.roles)])

    def _authenticate(self, request: Request, peer: str | None) -> Identity:
        if self.authority is None:
            if not self.insecure and not _is_loopback(peer):
                raise AuthError("this server runs without logins and answers loopback clients only; "
                                "ask its admin to start it with --auth local or --auth oidc", 403)
            return ANYONE
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            granted = self._granted_download(request, peer)
            if granted is not None:
                return granted
            raise AuthError("log in first: POST /auth/token with username and password, then send "
                            "'Authorization: Bearer <token>'", 401)
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("expected 'Authorization: Bearer <token>'", 401)
        return self.authority.identify(token.strip())

    def _granted_download(self, request: Request, peer: str | None) -> Identity | None:
        route = request.scope.get("route")
        if request.method not in ("GET", "HEAD") or getattr(route, "path", None) != "/datastore/image" or not peer:
            return None
        holder = self.grants.holder(request.query_params.get("image", ""), peer)
        return None if holder is None else Identity(holder, frozenset({USER}), self.mode)

    def _authorise(self, ident: Identity, capability: str, request: Request) -> None:
        if capability == LABEL:
            if not self._may_read_label(ident, request):
                raise AuthError(f"reading this label needs the reviewer role (annotators: labels of their open "
                                f"assignments); {_who(ident)} may not", 403)
        elif capability == OWN:
            own = ident.can(ANNOTATE) and request.query_params.get("user") in (None, ident.name)
            if not (own or ident.can(REVIEW)):
                raise AuthError(f"other users' assignments need the reviewer role; {_who(ident)} may not", 403)
        elif not ident.can(capability):
            need = {READ: "a neolabel role", ANNOTATE: "the annotator role", REVIEW: "the reviewer role",
                    CONFIGURE: "the admin role"}[capability]
            raise AuthError(f"{request.method} {request.url.path} needs {need}; {_who(ident)} may not", 403)

    def _may_read_label(self, ident: Identity, request: Request) -> bool:
        if ident.can(REVIEW):
            return True
        q = request.query_params
        if q.get("tag") in SERVER_LABELS:
            return ident.can(READ)
        image = q.get("label") or q.get("image") or ""
        return bool(ident.can(ANNOTATE) and ident.name and self.open_assignment
                    and self.open_assignment(image, ident.name))


GATE = Gate()


def required(request: Request) -> str:
    """The capability the matched route needs (HEAD falls back to GET; unknown routes need CONFIGURE)."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    method = request.method
    cap = POLICY.get((method, path))
    if cap is None and method == "HEAD":
        cap = POLICY.get(("GET", path))
    return cap or CONFIGURE


# ---------------------------------------------------------------------- /auth (what the Slicer plugin calls)
router = APIRouter(prefix="/auth", tags=["Auth"])


def _auth_on() -> Authority:
    if GATE.authority is None:
        raise HTTPException(404, "authentication is off on this server")  # the plugin reads 404 as "no login"
    return GATE.authority


@router.get("/", summary="Is authentication on (404 = off)")
async def auth_enabled() -> dict[str, Any]:
    _auth_on()
    return {"enabled": True, "mode": GATE.mode, "client_id": GATE.client_id, "realm": GATE.realm}


@router.post("/token", summary="Log in (form fields username, password): a short-lived bearer token")
async def access_token(request: Request, form: OAuth2PasswordRequestForm = Depends()) -> dict[str, Any]:
    authority = _auth_on()
    peer = request.client.host if request.client else None
    at, wait = GATE.logins.admit(form.username, peer)
    if wait:
        log.info("login of %r from %s refused: too many failed logins", form.username, peer)
        raise HTTPException(429, f"too many failed logins for this user name or from this address: try again in "
                                 f"{wait} s", headers={"Retry-After": str(wait)})
    status = 500
    try:  # argon2 and the realm's token endpoint are slow: not on the event loop
        token = await run_in_threadpool(authority.login, form.username, form.password)
        status = 200
        return token
    except AuthError as exc:
        status = exc.status
        log.info("login refused for %r: %s", form.username, exc)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, str(exc), headers=headers) from None
    finally:
        GATE.logins.settle(form.username, peer, at, status)


@router.get("/token/valid", summary="Is the bearer token valid (200 with the user, else 401)")
async def valid_token(user: User = Depends(get_current_user)) -> dict[str, Any]:
    _auth_on()
    ident = current_identity()
    return ident.to_json() if ident is not None else user.model_dump()


def build_authority(config: AppConfig, db: AnnotationDB, studies: str) -> Authority | None:
    """The way in that ``--conf auth`` names (None for ``none``); a realm without its URL stops the start."""
    if config.auth == "local":
        return LocalAuthority.for_studies(db, studies, config.auth_token_minutes)
    if config.auth == "oidc":
        if not config.auth_realm_url.startswith(("https://", "http://")):
            raise ConfError("--conf auth oidc needs --conf auth_realm_url https://HOST/realms/NAME")
        return OidcRealm(config.auth_realm_url, config.auth_client_id, config.auth_audience, config.auth_algorithms)
    return None


def install(app: FastAPI) -> None:
    """Put :data:`GATE` in front of every endpoint and our ``/auth`` router first (idempotent)."""
    settings.MONAI_LABEL_AUTH_ENABLE = False  # MONAI Label's RBAC must pass on what our guard decided
    app.dependency_overrides[get_current_user] = GATE.guard
    if getattr(app.state, "neolabel_auth", False):
        return
    prepend_router(app, router)
    app.state.neolabel_auth = True


def prepend_router(app: FastAPI, new: APIRouter) -> None:
    """Include ``new`` ahead of MONAI Label's routes, so that its paths win where both define one."""
    app.include_router(new)
    routes = app.router.routes
    routes.insert(0, routes.pop())
