"""neolabel's own endpoints, and MONAI Label endpoints replaced because they could lose work.

Included ahead of MONAI Label's routes (``auth.prepend_router``), so where both define a path ours
answers; every one depends on ``get_current_user`` and so passes the same guard (``auth.GATE``):

* ``PUT /model/{model}``: MONAI Label copies any upload over the served model (garbage → a broken
  server). Here only a readable neolabel checkpoint with this server's class table is taken (else
  400, served model unchanged); the previous model is kept under ``model/previous/`` and the new one
  published with ``os.replace``.
* ``DELETE /model/{model}``: the model file is kept under ``model/previous/`` (not served any more).
* ``POST /reload``: MONAI Label's, admin only (it has no role check at all).
* ``POST /train/{model}``, ``POST /train/`` and ``DELETE /train/``: MONAI Label's, audited
  (``train.start``, ``train.stop``: who, which model, which task); an unknown model is a 404 (MONAI
  Label: 500, or a task that fails in the background).
* ``GET /neolabel/users`` (admin), ``/neolabel/assignments`` (annotators their own open ones,
  reviewers everyone's), ``/neolabel/submissions`` and ``.../{id}/file`` (reviewers: every raw
  submission), ``/neolabel/trash`` (admin: what deletions moved away) and
  ``POST /neolabel/trash/{entry}/restore`` (admin: a deleted label back, its slices spent again).
Model changes and training starts and stops are audited with the user who made them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, UploadFile
from fastapi.responses import FileResponse
from monailabel.endpoints import train as monai_train
from monailabel.endpoints.user.auth import User, get_current_user
from monailabel.interfaces.utils.app import app_instance, clear_cache

from neonatal_app.lib.auth import GATE, acting_client, current_identity, prepend_router
from neonatal_app.lib.trainers.segmentation import ModelRefused, replace_model, retire_model
from neonatal_app.lib.trash import list_trash
from strategies.annotate.db import audit
from strategies.annotate.intake import sha256_file
from strategies.annotate.users import REVIEW

router = APIRouter(tags=["neolabel"])


def _model_path(model: str) -> Path:
    path = app_instance().model_file(model, validate=False)
    if not path:
        raise HTTPException(404, f"unknown model {model!r}")
    return Path(path)


def _audit(action: str, target: str | None, detail: dict[str, Any], client_id: Any = None) -> None:
    """Under the logged-in user; without logins under the plugin's client id where the request names one."""
    with app_instance().db.transaction() as con:
        audit(con, acting_client(client_id) or "anonymous", action, target, detail)


def _studies_rel(path: Path | None) -> str | None:
    return None if path is None else os.path.relpath(path, app_instance().studies)


@router.put("/model/{model}", summary="Upload a model (admin): a neolabel checkpoint with this class table")
async def upload_model(model: str, file: UploadFile, user: User = Depends(get_current_user)) -> dict[str, Any]:
    path = _model_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file.file, out)
        try:
            kept = replace_model(tmp, path)
        except ModelRefused as exc:
            raise HTTPException(400, f"model not replaced: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    checksum = sha256_file(path)
    _audit("model.upload", model, {"sha256": checksum, "previous": _studies_rel(kept)})
    return {"model": model, "checksum": f"SHA256:{checksum}", "modified_time": int(path.stat().st_mtime),
            "previous": _studies_rel(kept)}


@router.delete("/model/{model}", summary="Stop serving a model (admin); its file is kept under model/previous/")
async def delete_model(model: str, user: User = Depends(get_current_user)) -> dict[str, Any]:
    kept = retire_model(_model_path(model))
    if kept is None:
        raise HTTPException(404, f"model {model!r} has no weights to delete")
    _audit("model.delete", model, {"kept": _studies_rel(kept)})
    return {"model": model, "kept": _studies_rel(kept)}


@router.post("/reload", include_in_schema=False)
def reload(user: User = Depends(get_current_user)) -> dict[str, Any]:
    clear_cache()
    return {}


def _trainer(model: str) -> str:
    trainers = app_instance().info()["trainers"]
    if model not in trainers:
        raise HTTPException(404, f"unknown model {model!r}; models that train: {', '.join(sorted(trainers))}")
    return model


def _audit_start(model: str, task: Any, params: dict | None, run_sync: bool, enqueue: bool) -> None:
    task_id = task.get("id") if isinstance(task, dict) else None
    _audit("train.start", model, {"task": task_id, "params": params or {}, "run_sync": run_sync, "enqueue": enqueue},
           (params or {}).get("client_id"))


@router.post("/train/{model}", summary="Train a model (admin); the start is audited")
async def train_model(model: str, params: dict | None = None, run_sync: bool = False, enqueue: bool = False,
                      user: User = Depends(get_current_user)) -> Any:
    _trainer(model)
    if not run_sync:
        task = monai_train.run_model(model, params, run_sync, enqueue)  # 429 when one runs already
        _audit_start(model, task, params, run_sync, enqueue)
        return task
    # a synchronous training answers when it is done: its start is audited before, a refusal after
    _audit_start(model, None, params, run_sync, enqueue)
    try:
        return monai_train.run_model(model, params, run_sync, enqueue)
    except HTTPException as exc:
        _audit("train.refused", model, {"status": exc.status_code, "detail": exc.detail},
               (params or {}).get("client_id"))
        raise


@router.post("/train/", include_in_schema=False)
async def train_all(params: dict | None = None, run_sync: bool = False,
                    user: User = Depends(get_current_user)) -> dict[str, Any]:
    result = monai_train.run(params, run_sync)
    for model, answer in result.items():
        if answer["result"] is not None:
            _audit_start(model, answer["result"], params, run_sync, True)
    return result


@router.delete("/train/", summary="Stop the running training (admin); the stop is audited")
async def train_stop(user: User = Depends(get_current_user)) -> Any:
    task = monai_train.stop()
    if task is not None:  # None: nothing ran, nothing changed
        _audit("train.stop", task.get("request", {}).get("model"), {"task": task.get("id")})
    return task


@router.get("/neolabel/users", summary="Built-in users and their roles (admin)")
async def users(user: User = Depends(get_current_user)) -> dict[str, Any]:
    return {"auth": GATE.mode, "users": app_instance().users.list_users()}


@router.get("/neolabel/assignments", summary="Open assignments (annotators: their own; reviewers: everyone's)")
async def assignments(user: str | None = None, me: User = Depends(get_current_user)) -> dict[str, Any]:
    ident = current_identity()
    who = user or (ident.name if ident is not None and not ident.can(REVIEW) else None)
    leases = app_instance().ledger.budget_status()["open_leases"]
    return {"assignments": [x for x in leases if who is None or x["client_id"] == who]}


@router.get("/neolabel/submissions", summary="Every accepted submission, or one scan's (reviewer)")
async def submissions(image: str | None = None, user: User = Depends(get_current_user)) -> dict[str, Any]:
    sql = "SELECT id, image, client_id, saved_at, mode, raw_path, sha256, slices_accepted FROM submissions"
    rows = app_instance().db.read().execute(sql + (" WHERE image = ?" if image else "") + " ORDER BY id",
                                            (image,) if image else ())
    return {"submissions": [dict(r) for r in rows]}


@router.get("/neolabel/submissions/{submission_id}/file", summary="One raw submission as uploaded (reviewer)")
async def submission_file(submission_id: int, user: User = Depends(get_current_user)) -> FileResponse:
    instance = app_instance()
    row = instance.db.read().execute("SELECT raw_path FROM submissions WHERE id = ?", (submission_id,)).fetchone()
    path = Path(instance.studies) / row["raw_path"] if row is not None and row["raw_path"] else None
    if path is None or not path.is_file():
        raise HTTPException(404, f"no kept file for submission {submission_id} (deleted labels: see the trash)")
    return FileResponse(path, filename=path.name)


@router.get("/neolabel/trash", summary="What deletions moved to the trash, newest first (admin)")
async def trash(user: User = Depends(get_current_user)) -> dict[str, Any]:
    return {"trash": list_trash(app_instance().studies)}


@router.post("/neolabel/trash/{entry}/restore", summary="Put a deleted label back, its slices counted again (admin)")
def restore(entry: str, user: User = Depends(get_current_user)) -> dict[str, Any]:
    return app_instance().datastore().restore_label(entry)


def install(app: FastAPI) -> None:
    """Include these routes ahead of MONAI Label's (once per FastAPI app)."""
    if not getattr(app.state, "neolabel_endpoints", False):
        prepend_router(app, router)
        app.state.neolabel_endpoints = True
