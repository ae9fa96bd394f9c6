"""Fixtures of the app tests: a tiny served study set, oracle painting, in-process app clients and servers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
_SERVER_ENV = {
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    "MONAI_LABEL_TASKS_SCORING": "false",
    "MONAI_LABEL_SESSIONS": "false",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served_copy(synth_root: Path, dest: Path) -> Path:
    """Copy the session's read-only tiny dHCP tree and return its MONAI Label view."""
    from apps.studies import servable_studies

    tree = dest / "dhcp"
    shutil.copytree(synth_root, tree)
    return servable_studies(tree)


def _oracle(synth_root: Path, image_id: str):
    from training.data.dataset import open_dataset
    from training.data.nifti import load_volume

    return load_volume(open_dataset(synth_root).get(image_id).label)


def _painted(ref, slices: list[dict], stray: bool = True) -> np.ndarray:
    """What Slicer submits: the oracle on the assigned slices, 0 elsewhere, plus some stray paint."""
    full = np.zeros(ref.shape, np.uint8)
    for s in slices:
        take: list = [slice(None)] * 3
        take[s["voxel_axis"]] = s["indices"]
        full[tuple(take)] = ref.data[tuple(take)]
    if stray:
        ax = slices[0]["voxel_axis"]
        free = [i for i in range(ref.shape[ax]) if i not in set(slices[0]["indices"])]
        st: list = [slice(None)] * 3
        st[ax] = free[0]
        plane = full[tuple(st)]
        plane[2:6, 2:6] = 3
    return full


def _assigned_mask(shape, slices: list[dict]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for s in slices:
        take: list = [slice(None)] * 3
        take[s["voxel_axis"]] = s["indices"]
        m[tuple(take)] = True
    return m


@contextlib.contextmanager
def _inprocess_app(studies: Path, conf: dict[str, str] | None = None):
    """A TestClient on MONAI Label's FastAPI app with the neonatal app on ``studies``."""
    from fastapi.testclient import TestClient

    saved = dict(os.environ)
    env = dict(_SERVER_ENV)
    env.update({
        "MONAI_LABEL_APP_DIR": str(REPO / "neonatal_app"),
        "MONAI_LABEL_STUDIES": str(studies),
        "MONAI_LABEL_APP_CONF": json.dumps(conf or {}),
    })
    from apps.commands.serve import apply_settings

    apply_settings(env)
    from monailabel.app import app
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    clear_cache()
    try:
        with TestClient(app) as client:
            yield client, app_instance()
    finally:
        clear_cache()
        os.environ.clear()
        os.environ.update(saved)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (contents), to prove that a refused request changed nothing."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@contextlib.contextmanager
def _inprocess_server(studies: Path, conf: dict[str, str] | None = None):
    """A real uvicorn server (thread, loopback, free port) with the neonatal app; yields its URL."""
    import threading
    import time

    import uvicorn

    with _inprocess_app(studies, conf) as (_client, app):
        from monailabel.app import app as fastapi_app

        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(fastapi_app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        t0 = time.time()
        while not server.started:
            if time.time() - t0 > 30:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", app
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"server did not answer {url} within {timeout} s")


@contextlib.contextmanager
def _serve_process(studies: Path, conf: dict[str, str], workdir: Path, port: int | None = None):
    """``neolabel serve`` as a real subprocess on loopback (yields url, process); stopped afterwards."""
    port = port or _free_port()
    # no PYTHONPATH: the installed `neolabel serve` must start MONAI Label's train subprocess without one
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **_SERVER_ENV, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "apps.commands.serve", "--studies", str(studies), "--port", str(port)]
    for k, v in conf.items():
        cmd += ["--conf", k, str(v)]
    log = workdir / f"server-{port}-{time.monotonic_ns()}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/info/", proc, log)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        text = log.read_text()
        if "Traceback" in text:
            print(text[-5000:])


def _make_model(path) -> None:
    """A random-weight tiny checkpoint: enough to exercise the model plumbing (not its quality)."""
    import torch

    from training.data.preprocess import PreprocessConfig
    from training.model.checkpoint import save_checkpoint
    from training.model.network import build_network, network_config

    torch.manual_seed(0)
    cfg = network_config("tiny")
    save_checkpoint(path, build_network(cfg), network=cfg, preprocess=PreprocessConfig(), train_config={},
                    epoch=0, metrics={})


@pytest.fixture()
def server_env() -> dict[str, str]:
    """Environment that keeps a MONAI Label server from phoning home or scoring in the background."""
    return dict(_SERVER_ENV)


@pytest.fixture()
def free_port():
    return _free_port


@pytest.fixture()
def served_copy():
    return _served_copy


@pytest.fixture()
def oracle():
    return _oracle


@pytest.fixture()
def painted():
    return _painted


@pytest.fixture()
def assigned_mask():
    return _assigned_mask


@pytest.fixture()
def inprocess_app():
    return _inprocess_app


@pytest.fixture()
def snapshot():
    return _snapshot


@pytest.fixture()
def inprocess_server():
    return _inprocess_server


@pytest.fixture()
def make_model():
    return _make_model


@pytest.fixture()
def serve_process():
    return _serve_process
