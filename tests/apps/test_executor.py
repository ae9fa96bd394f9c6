"""Simulation model jobs through submitit: local processes, its debug executor, and SLURM's sbatch script.

No cluster in CI: the SLURM path is checked by the script submitit would hand to ``sbatch`` (a stand-in
``sbatch`` on PATH records it), and run end to end through submitit's local and debug executors.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import sys
import zlib
from pathlib import Path

import cloudpickle
import pytest
from typer.testing import CliRunner

from apps.simulation.backend import Scores, TrainOutcome
from apps.simulation.config import SimulationConfig
from apps.simulation.data import SimulationError
from apps.simulation.executor import (
    ExecutorSettings,
    JobsFailed,
    ModelExecutor,
    ModelTask,
    job_gpu,
    parent_gpus,
)
from apps.simulation.run import run_simulation
from training.data import labels as L

KILL_MARKER = "NEOLABEL_TEST_KILL_MARKER"


def fake_train(job):
    """Writes a small 'checkpoint'; kills its own process (like the OOM killer) while the marker file exists."""
    marker = os.environ.get(KILL_MARKER)
    if marker and Path(marker).exists() and job.name != "full":
        os.kill(os.getpid(), signal.SIGKILL)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = job.out_dir / "best.pt"
    ckpt.write_text(json.dumps({"name": job.name, "seed": job.seed, "n": len(job.partial_labels)}))
    return TrainOutcome(checkpoint=ckpt, seconds=0.01, info={"pid": os.getpid()})


def fake_evaluate(checkpoint, subjects):
    info = json.loads(Path(checkpoint).read_text())
    base = 0.5 + 0.01 * (zlib.crc32(info["name"].encode()) % 20) + 0.001 * info["seed"] + 0.0001 * info["n"]
    return Scores(dice={c: base for c in range(L.NUM_CLASSES)}, hd95={c: 3.0 for c in range(L.NUM_CLASSES)},
                  tissue_dice=base, tissue_hd95=3.0, mean_dice=base, n_subjects=len(subjects))


@pytest.fixture
def by_value():
    """Job processes cannot import this test module: pickle its fakes by value."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def _cfg(out: Path, root: Path, **kw) -> SimulationConfig:
    base = dict(out=out, data=root, epochs=1, iterations=1, seeds=1, test_scans=2, full_volumes=1, progress=False,
                axes=("axial", "coronal"))
    return SimulationConfig(**{**base, **kw})


def _run(cfg: SimulationConfig):
    return run_simulation(cfg, train_fn=fake_train, evaluate_fn=fake_evaluate, log=lambda m: None)


def _dice(path: Path) -> dict:
    with open(path) as fh:
        return {(r["condition"], r["seed"], r["class"]): (r["dice"], r["hd95"]) for r in csv.DictReader(fh)}


def test_local_jobs_give_the_same_results_csv_as_in_process(synth_root, tmp_path):
    """Real tiny training: ``--executor local --jobs 2`` and the in-process run score every model the same."""
    import typer

    from apps.commands.simulate import simulate

    app = typer.Typer()
    app.command()(simulate)
    common = [str(synth_root), "--epochs", "1", "--iterations", "2", "--seeds", "1", "--axis", "axial",
              "--test-scans", "2", "--full-volumes", "1", "--preset", "tiny", "--threads", "1", "--quiet"]
    res = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "here")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "jobs"), "--executor", "local", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    here, jobs = _dice(tmp_path / "here" / "results.csv"), _dice(tmp_path / "jobs" / "results.csv")
    assert len(here) == 2 * (L.NUM_CLASSES + 1) and jobs == here
    records = json.loads((tmp_path / "jobs" / "jobs" / "jobs.json").read_text())
    assert sorted(r["label"] for r in records) == ["d33-axial seed 0", "full seed 0"]
    assert all(r["state"] == "done" and Path(r["stdout"]).is_file() for r in records)


def test_a_killed_job_is_reported_with_its_log_and_resubmitted_on_rerun(synth_root, tmp_path, by_value, monkeypatch):
    marker = tmp_path / "kill"
    marker.write_text("1")
    monkeypatch.setenv(KILL_MARKER, str(marker))
    cfg = _cfg(tmp_path / "out", synth_root, executor="local", jobs=2)
    with pytest.raises(JobsFailed) as err:
        _run(cfg)
    failed = err.value.failures
    assert sorted(f.label for f in failed) == ["d33-axial seed 0", "d33-coronal seed 0"]
    assert all(f.stderr.is_file() and str(f.stderr) in str(err.value) for f in failed)
    out = tmp_path / "out"
    assert (out / "runs" / "full" / "seed0" / "result.json").is_file()  # the job that ran kept its result
    assert not (out / "runs" / "d33-axial" / "seed0" / "result.json").exists()
    states = {r["label"]: r["state"] for r in json.loads((out / "jobs" / "jobs.json").read_text())}
    assert states == {"full seed 0": "done", "d33-axial seed 0": "failed", "d33-coronal seed 0": "failed"}

    marker.unlink()
    summary = _run(cfg)
    assert summary.skipped == ["full seed 0"] and len(summary.results) == 3
    resubmitted = json.loads((out / "jobs" / "jobs.json").read_text())[-2:]
    assert sorted(r["label"] for r in resubmitted) == ["d33-axial seed 0", "d33-coronal seed 0"]
    pids = {r["train_info"]["pid"] for r in summary.results}
    assert os.getpid() not in pids and len(pids) == 3  # every model trained in a job process of its own


def test_debug_executor_runs_the_job_path_with_the_in_process_results(synth_root, tmp_path):
    here = _run(_cfg(tmp_path / "here", synth_root))
    debug = _run(_cfg(tmp_path / "debug", synth_root, executor="debug"))
    assert [r["scores"] for r in debug.results] == [r["scores"] for r in here.results]
    assert [r["condition"]["name"] for r in debug.results] == [r["condition"]["name"] for r in here.results]
    assert len(json.loads((tmp_path / "debug" / "jobs" / "jobs.json").read_text())) == 3
    # the loop routes each round through the executor as one job
    loop = dict(rounds=1, strategies=("equidistant",), seed_slices=4, round_slices=2, round_epochs=1)
    here = _run(_cfg(tmp_path / "lhere", synth_root, **loop))
    debug = _run(_cfg(tmp_path / "ldebug", synth_root, executor="debug", **loop))
    assert [(r["round"], r["scores"]) for r in debug.results] == [(r["round"], r["scores"]) for r in here.results]
    assert len(json.loads((tmp_path / "ldebug" / "jobs" / "jobs.json").read_text())) == 2
    with pytest.raises(SimulationError, match="--executor"):
        _cfg(tmp_path / "bad", synth_root, executor="kubernetes").check()


def job_cuda_devices() -> dict:
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_local_jobs_get_the_parents_gpu_ids_not_ordinals(tmp_path, by_value, monkeypatch):
    """A parent limited to GPUs 2 and 5 must hand its jobs GPU 2 and GPU 5 (the ids are physical)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    ex = ModelExecutor(ExecutorSettings(kind="local", jobs=2, threads=1).check(), tmp_path / "jobs", log=lambda m: None)
    got: dict[int, dict] = {}
    ex.run([ModelTask(f"m{i}", tmp_path / f"r{i}.json", job_cuda_devices) for i in range(2)], got.__setitem__)
    assert sorted(r["cuda"] for r in got.values()) == ["2", "5"]


def test_parent_gpus_reads_cuda_visible_devices_as_ids():
    assert parent_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == (2, 5)
    assert parent_gpus({"CUDA_VISIBLE_DEVICES": " 3 , 1,"}) == (3, 1)
    assert parent_gpus({"CUDA_VISIBLE_DEVICES": ""}) == ()  # hidden GPUs: jobs run on the CPU
    assert parent_gpus({"CUDA_VISIBLE_DEVICES": "4,-1,6"}) == (4,)  # CUDA stops at an invalid id
    assert [job_gpu((2, 5), slot) for slot in range(5)] == [2, 5, 2, 5, 2]
    with pytest.raises(SimulationError, match="GPU indices"):
        parent_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f6e1c2a-0000-1111-2222-333344445555"})


def _fake_slurm(bin_dir: Path, capture: Path) -> None:
    """``srun`` (so submitit sees a cluster) and an ``sbatch`` that records the script it is given."""
    bin_dir.mkdir()
    scripts = {"srun": "#!/bin/sh\nexit 1\n",
               "sbatch": f'#!/bin/sh\ncp "$1" "{capture}"\necho "Submitted batch job 4242"\n'}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)


def test_slurm_sbatch_script_has_partition_gpus_time_and_array_parallelism(tmp_path, monkeypatch):
    capture = tmp_path / "submitted.sh"
    _fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    settings = ExecutorSettings(kind="slurm", slurm_partition="gpu-a100", slurm_gpus_per_job=2, slurm_cpus_per_job=6,
                                slurm_time_min=90, slurm_array_parallelism=3).check()
    ex = ModelExecutor(settings, tmp_path / "jobs", log=lambda m: None)
    tasks = [ModelTask(f"m{i}", tmp_path / f"r{i}.json", dict) for i in range(4)]
    jobs = ex.submit(tasks)  # submitted, not waited for: there is no cluster behind this sbatch
    assert [j.job_id for j in jobs] == [f"4242_{i}" for i in range(4)]
    script = capture.read_text()
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --time=90", "#SBATCH --array=0-3%3", "#SBATCH --job-name=neolabel-sim"):
        assert line in script, (line, script)
    assert "-m submitit.core._submit" in script and str(tmp_path / "jobs") in script
