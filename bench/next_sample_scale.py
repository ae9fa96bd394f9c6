"""Next Sample and Save Label latency against a real server on a study set of many scans.

A template of a few generated 36×48×48 scans (3 mm, with brain masks) is hard-linked under
``--scans`` ids into a MONAI Label studies folder, ``neolabel serve`` starts on it (no model), and
``--clients`` annotators take turns (round robin, one request at a time, so the numbers are the
server's time, not queueing behind each other): next sample → paint the assigned slices from the
template's dense label → save. Prints p50/p95/max per request type; last line
``next_sample_p95_ms=<x> save_p95_ms=<y> scans=<n>``. Raw numbers go to ``--out`` as JSON.

    python -m bench.next_sample_scale --scans 10000 --requests 240 --out bench/results/scale/next_sample_10000.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from monailabel.client import MONAILabelClient

from apps.studies import servable_studies
from strategies.annotate.submission import paint_like_slicer
from strategies.plan.assignment import SliceAssignment
from training.data.dataset import open_dataset
from training.data.nifti import load_volume, save_volume
from training.data.synthetic.write import write_study_set

TEMPLATES = 8
ENV = {
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    "MONAI_LABEL_TASKS_SCORING": "false",
    "MONAI_LABEL_SESSIONS": "false",
    "OMP_NUM_THREADS": "2",
}


def build_study_set(work: Path, n: int) -> tuple[Path, dict[str, Path]]:
    """``n`` scans hard-linked from ``TEMPLATES`` generated ones; (studies folder, id → dense label file)."""
    tree = work / "template"
    write_study_set(tree, subjects=TEMPLATES, shape=(36, 48, 48), spacing=3.0, seed=7)
    template = servable_studies(tree)
    subjects = sorted(open_dataset(tree).subjects, key=lambda s: s.id)
    studies = work / "studies"
    (studies / "labels" / "brain_mask").mkdir(parents=True)
    labels = {}
    for i in range(n):
        s = subjects[i % TEMPLATES]
        sid = f"scan-{i:05d}"
        os.link(template / f"{s.id}.nii.gz", studies / f"{sid}.nii.gz")
        os.link(
            template / "labels" / "brain_mask" / f"{s.id}.nii.gz", studies / "labels" / "brain_mask" / f"{sid}.nii.gz"
        )
        labels[sid] = Path(s.label)
    return studies, labels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def run(studies: Path, labels: dict[str, Path], requests: int, clients: int, work: Path) -> dict:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "apps.commands.serve",
        "--studies",
        str(studies),
        "--port",
        str(port),
        "--conf",
        "budget_total_slices",
        "10000000",
        "--conf",
        "budget_dispersion",
        "0.2",
    ]
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/info/", proc, timeout=3600)
        startup = time.perf_counter() - t0
        dense = {}
        times: dict[str, list[float]] = {"next_sample": [], "save": []}
        ann = [MONAILabelClient(url, client_id=f"annotator-{k}") for k in range(clients)]
        for r in range(requests):
            c = ann[r % clients]
            t = time.perf_counter()
            a = c.next_sample("budget", {})
            times["next_sample"].append(time.perf_counter() - t)
            sid = a["id"]
            if sid not in dense:
                dense[sid] = load_volume(labels[sid])
            asg = [SliceAssignment.from_json(x) for x in a["assignment"]]
            p = work / "upload.nii.gz"
            save_volume(p, paint_like_slicer(dense[sid].data, asg), dense[sid].affine, np.uint8)
            t = time.perf_counter()
            c.save_label(sid, str(p), params={"client_id": c._client_id})
            times["save"].append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    out = {"scans": len(labels), "requests": requests, "clients": clients, "startup_s": round(startup, 1)}
    for k, v in times.items():
        ms = np.asarray(v) * 1000
        out[k] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1),
            "raw_ms": [round(float(x), 2) for x in ms],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="neolabel-scale-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        studies, labels = build_study_set(work, args.scans)
        print(f"study set of {args.scans} scans built in {time.perf_counter() - t0:.0f} s", flush=True)
        res = run(studies, labels, args.requests, args.clients, work)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    print(f"server start (planner data of every scan): {res['startup_s']} s")
    for k in ("next_sample", "save"):
        print(f"{k}: p50 {res[k]['p50_ms']} ms, p95 {res[k]['p95_ms']} ms, max {res[k]['max_ms']} ms")
    print(f"next_sample_p95_ms={res['next_sample']['p95_ms']} save_p95_ms={res['save']['p95_ms']} scans={res['scans']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
