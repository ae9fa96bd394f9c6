"""Logins and roles against a real uvicorn server, driven like the stock Slicer plugin (MONAILabelClient).

One server with built-in users (``--conf auth local``): the plugin's login flow, a role × endpoint
matrix (every refusal is 401/403 with a message and leaves every file of the study set as it was),
expired and tampered tokens, two annotators with the plugin's default client id, deletions into
the trash, model upload/delete that keep the previous model, limited failed logins, audited training
starts and stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient

from neonatal_app.lib.auth import GATE, LOGIN_FAILURES_PER_NAME
from neonatal_app.lib.configs.segmentation import model_path
from strategies.annotate.state import open_state
from strategies.annotate.users import UserStore
from training.data.nifti import save_volume

PASSWORD = "correct horse battery"
USERS = {"root": "admin", "rita": "reviewer", "ann": "annotator", "ann2": "annotator", "uma": "user"}
ROLE_USER = {"admin": "root", "reviewer": "rita", "annotator": "ann", "user": "uma"}
ORDER = ("none", "user", "reviewer", "annotator", "admin")  # refusals are tried before the allowed calls


@pytest.fixture()
def local_server(inprocess_server, served_copy, synth_root, tmp_path):
    """No model at the start (infer answers 409 past the guard): predictions would cost seconds per request."""
    studies = served_copy(synth_root, tmp_path)
    users = UserStore(open_state(studies))
    for name, role in USERS.items():
        users.add(name, role, PASSWORD)
    conf = {"auth": "local", "preset": "tiny", "budget_total_slices": "200", "budget_dispersion": "0.2"}
    with inprocess_server(studies, conf) as (url, app):
        yield url, studies, app


def _login(url: str, tmp: Path, name: str, client_id: str = "user-xyz") -> dict:
    """The plugin's flow: GET /auth/ → POST /auth/token → Authorization header → GET /auth/token/valid."""
    c = MONAILabelClient(url, tmpdir=str(tmp), client_id=client_id)
    assert c.auth_enabled()
    token = c.auth_token(name, PASSWORD)
    c.update_auth(token)
    assert c.auth_valid_token()
    return token


def _client(url: str, tmp: Path, token: dict | None, client_id: str = "user-xyz") -> MONAILabelClient:
    """A fresh client per call, like the plugin (MONAILabelClient keeps a body's headers for later calls)."""
    c = MONAILabelClient(url, tmpdir=str(tmp), client_id=client_id)
    c.update_auth(token)
    return c


def _headers(token: dict | None) -> dict[str, str]:
    return {"Authorization": f"{token['token_type']} {token['access_token']}"} if token else {}


def _upload_label(path: Path) -> dict:
    return {"files": {"label": ("label.nii.gz", path.read_bytes())},
            "data": {"params": json.dumps({"client_id": "user-xyz", "label_info": []})}}


class Matrix:
    """Runs one request per role, refusals first, and records status and what changed on disk."""

    def __init__(self, url: str, studies: Path, tokens: dict, snapshot: Callable) -> None:
        self.url, self.studies, self.tokens = url, studies, tokens
        # SQLite's -shm is a shared-memory index that readers update (read marks), never state: a token check
        # reads the users table. The database and its WAL are compared, so any write shows.
        self.snapshot = lambda root: {k: v for k, v in snapshot(root).items() if not k.endswith("-shm")}
        self.rows: list[tuple[str, dict, dict]] = []
        self.problems: list[str] = []

    def check(self, name: str, method: str, path: str, expect: dict[str, int], **kw) -> dict[str, requests.Response]:
        got, out = {}, {}
        roles = sorted(ORDER, key=lambda r: (expect[r] not in (401, 403), ORDER.index(r)))
        for role in roles:
            before = self.snapshot(self.studies) if expect[role] in (401, 403) else None
            kwargs = {k: (v() if callable(v) else v) for k, v in kw.items()}
            r = requests.request(method, self.url + path, headers=_headers(self.tokens.get(role)), timeout=120,
                                 **kwargs)
            got[role], out[role] = r.status_code, r
            if r.status_code != expect[role]:
                self.problems.append(f"{name} as {role}: {r.status_code} (expected {expect[role]}): {r.text[:200]}")
            if r.status_code in (401, 403):
                detail = r.json().get("detail", "")
                if not detail:
                    self.problems.append(f"{name} as {role}: refusal without a message")
                after = self.snapshot(self.studies) if before is not None else None
                if after != before:
                    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                    self.problems.append(f"{name} as {role}: refused, but files changed: {changed}")
        self.rows.append((name, expect, got))
        return out

    def report(self) -> str:
        head = f"{'endpoint':58s}" + "".join(f"{r:>10s}" for r in ORDER)
        lines = [head] + [f"{n:58s}" + "".join(f"{g[r]:>10d}" for r in ORDER) for n, _e, g in self.rows]
        return "\n".join(lines)


def _expect(none=401, user=403, reviewer=403, annotator=403, admin=200) -> dict[str, int]:
    return {"none": none, "user": user, "reviewer": reviewer, "annotator": annotator, "admin": admin}


def _reads(m: Matrix, a: str, b: str) -> None:
    """What every role may read, and what only reviewers (or the annotator of an open assignment) may."""
    m.check("GET /info/", "GET", "/info/", _expect(user=200, reviewer=200, annotator=200))
    m.check("GET /datastore/?output=all", "GET", "/datastore/?output=all",
            _expect(user=200, reviewer=200, annotator=200))
    m.check("GET /datastore/image (not handed out)", "GET", f"/datastore/image?image={b}",
            _expect(user=200, reviewer=200, annotator=200))
    m.check("GET /datastore/label original", "GET", f"/datastore/label?label={a}&tag=original",
            _expect(user=200, reviewer=200, annotator=200))
    m.check("GET /datastore/label final, own open scan (none yet)", "GET", f"/datastore/label?label={a}&tag=final",
            _expect(reviewer=404, annotator=404, admin=404))
    # (404: MONAI Label's answer while no training has run yet)
    m.check("GET /train/", "GET", "/train/", _expect(user=404, reviewer=404, annotator=404, admin=404))


def _annotation(m: Matrix, a: str, budget: dict, painting: Path) -> None:
    """Next Sample (with and without a budget edit), infer, Submit Label, and who may read the result."""
    m.check("POST /activelearning/budget (table unchanged)", "POST", "/activelearning/budget",
            _expect(annotator=200), json={"client_id": "user-xyz", **budget})
    m.check("POST /activelearning/budget budget_total_slices=999", "POST", "/activelearning/budget",
            _expect(annotator=403), json={"client_id": "user-xyz", "budget_total_slices": 999})
    m.check("POST /infer/segmentation (no model yet: 409)", "POST", f"/infer/segmentation?image={a}&output=json",
            _expect(annotator=409, admin=409))
    m.check("PUT /datastore/label (own assignment)", "PUT", f"/datastore/label?image={a}",
            _expect(annotator=200, admin=409), **_upload_label(painting))
    m.check("GET /datastore/label final, after submitting", "GET", f"/datastore/label?label={a}&tag=final",
            _expect(reviewer=200))
    m.check("GET /neolabel/submissions", "GET", "/neolabel/submissions", _expect(reviewer=200))
    m.check("GET /neolabel/assignments (own)", "GET", "/neolabel/assignments",
            _expect(reviewer=200, annotator=200))
    m.check("GET /neolabel/assignments?user=root", "GET", "/neolabel/assignments?user=root", _expect(reviewer=200))


def _administration(m: Matrix, a: str, b: str, served_model: Path, garbage: Path, models: list[Path]) -> None:
    """Admin-only endpoints; the model and deletion answers are checked on disk too."""
    # the admin passes the guard; an unknown model keeps this test from training for real
    m.check("POST /train/{model} (admin: unknown model)", "POST", "/train/unknown?run_sync=true",
            _expect(admin=404))
    m.check("DELETE /train/", "DELETE", "/train/", _expect())
    m.check("GET /logs/ (admin: 404, no log file in tests)", "GET", "/logs/?lines=5&text=true", _expect(admin=404))
    m.check("GET /neolabel/users", "GET", "/neolabel/users", _expect())
    m.check("PUT /datastore/image", "PUT", "/datastore/image?image=new", _expect(admin=400),
            files={"file": ("new.nii.gz", b"not nifti")})
    first, second = (p.read_bytes() for p in models)
    m.check("PUT /model/segmentation checkpoint", "PUT", "/model/segmentation", _expect(),
            files={"file": ("one.pt", first)})
    assert served_model.read_bytes() == first
    m.check("PUT /model/segmentation garbage", "PUT", "/model/segmentation", _expect(admin=400),
            files={"file": ("garbage.pt", garbage.read_bytes())})
    assert served_model.read_bytes() == first, "a refused model upload changed the served model"
    m.check("PUT /model/segmentation another checkpoint", "PUT", "/model/segmentation", _expect(),
            files={"file": ("two.pt", second)})
    m.check("DELETE /model/segmentation", "DELETE", "/model/segmentation", _expect())
    assert not served_model.exists()
    kept = sorted((served_model.parent / "previous").glob("segmentation-*.pt"))
    assert [p.read_bytes() for p in kept] == [first, second], "replaced and deleted models are not kept"
    m.check("DELETE /datastore/label final", "DELETE", f"/datastore/label?id={a}&tag=final", _expect())
    m.check("DELETE /datastore/image", "DELETE", f"/datastore/image?id={b}", _expect())
    m.check("GET /neolabel/trash", "GET", "/neolabel/trash", _expect())
    m.check("POST /neolabel/trash/{entry}/restore (admin: unknown entry)", "POST", "/neolabel/trash/none/restore",
            _expect(admin=404))
    m.check("POST /reload", "POST", "/reload", _expect())  # the app is rebuilt: the same guard comes back


def _deleted_work_is_in_the_trash(url: str, studies: Path, admin: dict, a: str, b: str) -> None:
    trash = requests.get(url + "/neolabel/trash", headers=_headers(admin), timeout=60).json()["trash"]
    by_tag = {e["tag"]: e for e in trash}
    assert by_tag["final"]["deleted_by"] == "root" and by_tag["final"]["image"] == a
    entry = studies / ".neolabel" / "trash" / by_tag["final"]["entry"] / "files"
    assert (entry / "labels" / "final" / f"{a}.nii.gz").is_file()
    assert len(list((entry / ".neolabel" / "submissions" / a).glob("*-final.nii.gz"))) == 1
    assert not (studies / "labels" / "final" / f"{a}.nii.gz").exists()
    image_entry = studies / ".neolabel" / "trash" / by_tag[None]["entry"] / "files"
    assert (image_entry / f"{b}.nii.gz").is_symlink()  # the dHCP view's link moved, the tree's file untouched
    assert (image_entry / f"{b}.nii.gz").resolve().is_file()


def test_roles_on_every_endpoint(local_server, make_model, oracle, painted, snapshot, synth_root, tmp_path):
    url, studies, app = local_server
    tokens = {role: _login(url, tmp_path, name) for role, name in ROLE_USER.items()}
    m = Matrix(url, studies, tokens, snapshot)
    # the annotator's scan A (open assignment) and a scan B nobody was handed
    first = _client(url, tmp_path, tokens["annotator"]).next_sample("budget", {})
    a = first["id"]
    b = next(i for i in _client(url, tmp_path, tokens["reviewer"]).datastore()["objects"] if i != a)
    painting, garbage = tmp_path / "painted.nii.gz", tmp_path / "garbage.pt"
    ref = oracle(synth_root, a)
    save_volume(painting, painted(ref, first["slices"]), ref.affine, np.uint8)
    garbage.write_bytes(b"not a checkpoint")
    models = [tmp_path / "one.pt", tmp_path / "two.pt"]
    for i, path in enumerate(models):
        make_model(path)
        if i:  # another checkpoint: same weights from the same seed, so make the bytes differ
            raw = torch.load(path, weights_only=True)
            raw["epoch"] = 7
            torch.save(raw, path)

    _reads(m, a, b)
    _annotation(m, a, app.ledger.settings(), painting)
    partial = tmp_path / "partial.nii.gz"  # 255 = not annotated: a bulk import, taken as is, newer winning
    ref_b = oracle(synth_root, b)
    save_volume(partial, np.where(np.arange(ref_b.shape[2]) == 3, ref_b.data, 255).astype(np.uint8), ref_b.affine,
                np.uint8)
    m.check("PUT /datastore/label partial import (255)", "PUT", f"/datastore/label?image={b}",
            _expect(admin=200), **_upload_label(partial))
    _administration(m, a, b, model_path(studies), garbage, models)
    print("\n" + m.report())
    assert not m.problems, "\n".join(m.problems) + "\n" + m.report()

    assert app.ledger.settings()["budget_total_slices"] == 999  # the admin's edit; the annotator's 403 changed nothing
    _deleted_work_is_in_the_trash(url, studies, tokens["admin"], a, b)
    actions = {(r["actor"], r["action"]) for r in app.db.read().execute("SELECT actor, action FROM audit")}
    assert {("ann", "assign"), ("ann", "label.accepted"), ("root", "settings.update"), ("root", "label.delete"),
            ("root", "image.delete"), ("root", "model.upload"), ("root", "model.delete")} <= actions


def test_tokens_and_identity(local_server, tmp_path):
    url, studies, app = local_server
    assert requests.get(url + "/auth/", timeout=30).json()["enabled"] is True
    bad = requests.post(url + "/auth/token", data={"username": "ann", "password": "wrong"}, timeout=30)
    assert bad.status_code == 401 and "invalid user name or password" in bad.json()["detail"]

    token = _login(url, tmp_path, "ann")
    assert "config" not in _client(url, tmp_path, token).info()  # the plugin refuses a server with /info config
    authority = GATE.authority
    expired = authority.tokens.issue("ann", 0, lifetime_s=-60)
    r = requests.get(url + "/info/", headers=_headers(expired), timeout=30)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert not _client(url, tmp_path, expired).auth_valid_token()  # the plugin then logs in again
    head, body, sig = token["access_token"].split(".")
    tampered = {**token, "access_token": f"{head}.{body}.{sig[:-3]}{'AAA' if sig[-3:] != 'AAA' else 'BBB'}"}
    r = requests.get(url + "/info/", headers=_headers(tampered), timeout=30)
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]
    r = requests.get(url + "/info/", headers={"Authorization": "Basic YW5uOng="}, timeout=30)
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]

    # two annotators, both with the plugin's default client id: separate leases, recorded by user name
    token2 = _login(url, tmp_path, "ann2")
    s1 = _client(url, tmp_path, token).next_sample("budget", {})
    s2 = _client(url, tmp_path, token2).next_sample("budget", {})
    assert s1["id"] and s2["id"] and s1["id"] != s2["id"]
    again = _client(url, tmp_path, token).next_sample("budget", {})
    assert again["id"] == s1["id"]  # ann keeps her own lease; ann2's is not hers
    leases = {x["image"]: x["client_id"] for x in _client(url, tmp_path, token).info()["budget"]["open_leases"]}
    assert leases == {s1["id"]: "ann", s2["id"]: "ann2"}
    mine = requests.get(url + "/neolabel/assignments", headers=_headers(token), timeout=30).json()["assignments"]
    assert [x["image"] for x in mine] == [s1["id"]]

    # the plugin downloads the handed-out image without its token: that image only, from that address
    assert requests.get(url + f"/datastore/image?image={s1['id']}", timeout=30).status_code == 200
    other = next(i for i in _client(url, tmp_path, token).datastore()["objects"] if i not in (s1["id"], s2["id"]))
    assert requests.get(url + f"/datastore/image?image={other}", timeout=30).status_code == 401

    # a removed user's token stops working at once
    app.users.remove("ann2")
    assert requests.get(url + "/info/", headers=_headers(token2), timeout=30).status_code == 401


def test_failed_logins_are_limited(local_server):
    url, _studies, _app = local_server

    def login(name: str, password: str) -> requests.Response:
        return requests.post(url + "/auth/token", data={"username": name, "password": password}, timeout=60)

    assert [login("ann", "wrong password").status_code for _ in range(LOGIN_FAILURES_PER_NAME - 1)] == [401] * 4
    assert login("ann", PASSWORD).status_code == 200  # under the limit the right password works, and clears it
    assert [login("ann", "wrong password").status_code for _ in range(LOGIN_FAILURES_PER_NAME)] == [401] * 5
    r = login("ann", PASSWORD)  # past the limit even the right password waits: guessing stops here
    assert r.status_code == 429 and "too many failed logins" in r.json()["detail"]
    assert 0 < int(r.headers["Retry-After"]) <= 300
    assert login("rita", PASSWORD).status_code == 200  # other names from the same address are not locked out
    with ThreadPoolExecutor(8) as pool:  # parallel guesses are counted before argon2 has answered any of them
        codes = sorted(pool.map(lambda _: login("uma", "wrong password").status_code, range(8)))
    assert codes == [401] * LOGIN_FAILURES_PER_NAME + [429] * 3


def test_training_starts_and_stops_are_audited(local_server, tmp_path, monkeypatch):
    from monailabel.utils.async_tasks import task as async_task
    from monailabel.utils.async_tasks import utils as async_utils

    url, _studies, app = local_server
    tokens = {name: _login(url, tmp_path, name) for name in ("root", "ann")}
    monkeypatch.setattr(async_utils, "background_tasks", {})
    monkeypatch.setattr(async_utils, "background_processes", {})
    started: list[subprocess.Popen] = []

    def background(request: dict, method: str, callback=None, debug: bool = False) -> dict:
        """MONAI Label's task runner with a sleeping process in place of its training subprocess."""
        task = {"id": f"task-{len(started)}", "status": "RUNNING", "request": request}
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        async_utils.background_tasks.setdefault(method, []).append(task)
        async_utils.background_processes.setdefault(method, {})[task["id"]] = started[-1]
        return task

    monkeypatch.setattr(async_task, "run_background_task", background)

    def call(method: str, path: str, name: str, **kw) -> requests.Response:
        return requests.request(method, url + path, headers=_headers(tokens[name]), timeout=60, **kw)

    def audited() -> list[tuple]:
        rows = app.db.read().execute("SELECT actor, action, target, detail FROM audit WHERE action LIKE 'train.%'")
        return [(r["actor"], r["action"], r["target"], json.loads(r["detail"])) for r in rows]

    assert call("POST", "/train/segmentation", "ann", json={}).status_code == 403
    r = call("POST", "/train/nosuchmodel", "root", json={})
    assert r.status_code == 404 and "segmentation" in r.json()["detail"]
    assert call("DELETE", "/train/", "root").json() is None  # nothing runs: nothing stopped, nothing audited
    assert audited() == [] and not started

    params = {"segmentation": {"max_epochs": 1}}
    r = call("POST", "/train/segmentation", "root", json=params)
    assert r.status_code == 200 and r.json()["id"] == "task-0"
    assert call("POST", "/train/segmentation", "root", json={}).status_code == 429  # one runs already
    assert call("DELETE", "/train/", "ann").status_code == 403 and started[0].poll() is None
    r = call("DELETE", "/train/", "root")
    assert r.status_code == 200 and r.json()["status"] == "STOPPED"
    assert started[0].wait(timeout=30) is not None and len(started) == 1
    r = call("POST", "/train/", "root", json={})  # MONAI Label's deprecated "train every model"
    assert r.status_code == 200 and r.json()["segmentation"]["result"]["id"] == "task-1"
    assert call("DELETE", "/train/", "root").json()["id"] == "task-1"
    assert audited() == [
        ("root", "train.start", "segmentation", {"task": "task-0", "params": params, "run_sync": False,
                                                 "enqueue": False}),
        ("root", "train.stop", "segmentation", {"task": "task-0"}),
        ("root", "train.start", "segmentation", {"task": "task-1", "params": {}, "run_sync": False, "enqueue": True}),
        ("root", "train.stop", "segmentation", {"task": "task-1"}),
    ]
    # run_sync: the request returns when the training is done, so its start is in the log before it runs
    seen = []
    monkeypatch.setattr(app, "train", lambda request: seen.append(audited()[-1]) or {"status": "done"})
    r = call("POST", "/train/segmentation?run_sync=true", "root", json={})
    assert r.status_code == 200 and r.json() == {"status": "done"}
    assert seen == [("root", "train.start", "segmentation", {"task": None, "params": {}, "run_sync": True,
                                                             "enqueue": False})]
    assert call("POST", "/train/segmentation", "root", json={}).json()["id"] == "task-2"
    assert call("POST", "/train/segmentation?run_sync=true", "root", json={}).status_code == 429
    assert [row[1] for row in audited()[-2:]] == ["train.start", "train.refused"] and len(seen) == 1
    assert audited()[-1][3]["status"] == 429
    call("DELETE", "/train/", "root")


def test_without_auth_only_loopback_is_answered(inprocess_app, served_copy, synth_root, tmp_path):
    from fastapi.testclient import TestClient
    from monailabel.app import app as fastapi_app

    studies = served_copy(synth_root, tmp_path)
    with inprocess_app(studies) as (client, _app):
        assert client.get("/auth/").status_code == 404  # the plugin's "auth is off"
        r = client.post("/activelearning/budget", json={"client_id": "alice"})
        assert r.status_code == 200 and r.json()["id"]
        leases = client.get("/info/").json()["budget"]["open_leases"]
        assert [x["client_id"] for x in leases] == ["alice"]  # auth off: the client id is the identity
        remote = TestClient(fastapi_app, client=("192.0.2.7", 50000))
        r = remote.get("/info/")
        assert r.status_code == 403 and "loopback" in r.json()["detail"]
