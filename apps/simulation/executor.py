"""Where a simulation's model jobs run: in this process (default), as local processes, or on SLURM.

One job = one model (a condition and seed, or one loop round): it trains, scores and writes its
``result.json`` atomically (:func:`apps.simulation.static.run_job`), exactly as the in-process run
does. The parent submits the models whose result is missing or stale, waits, gathers, and reports
every failed job with its log files; a re-run reuses the stored results and so submits only what is
missing (an interrupted model also continues from its ``last.pt``).

Scheduling is submitit's (``local`` processes, ``slurm`` array jobs with ``%array_parallelism``,
``debug`` = in this process through the same job path, for tests); the only logic here is the
``--jobs`` cap on concurrent local processes, which submitit's local executor does not have, and which
of the parent's GPUs each local job gets (:func:`parent_gpus`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from apps.simulation.data import SimulationError
from apps.simulation.store import write_json

EXECUTORS: tuple[str, ...] = ("inprocess", "local", "slurm", "debug")
_LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local executor kills a job after 2 min unless told otherwise
_POLL_S = {"local": 0.5, "debug": 0.0, "slurm": 30.0}


@dataclass(frozen=True)
class ExecutorSettings:
    """How model jobs are run (none of it changes what is simulated, so none of it is in a result's key)."""

    kind: str = "inprocess"
    jobs: int = 1  # local: processes at once
    slurm_partition: str | None = None
    slurm_gpus_per_job: int = 1
    slurm_cpus_per_job: int = 8
    slurm_time_min: int = 120
    slurm_array_parallelism: int = 16
    threads: int | None = None  # torch threads per job; None → local: cores / jobs, SLURM: torch's default

    def check(self) -> ExecutorSettings:
        if self.kind not in EXECUTORS:
            raise SimulationError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.jobs < 1 or self.slurm_array_parallelism < 1 or self.slurm_time_min < 1:
            raise SimulationError("--jobs, --slurm-array-parallelism and --slurm-time must be ≥ 1")
        if self.slurm_gpus_per_job < 0 or self.slurm_cpus_per_job < 1:
            raise SimulationError("--slurm-gpus-per-job must be ≥ 0 and --slurm-cpus-per-job ≥ 1")
        return self


@dataclass
class ModelTask:
    """One model job: ``fn()`` (picklable) trains, scores, writes ``result_path`` and returns the result."""

    label: str
    result_path: Path
    fn: Callable[[], dict]


@dataclass
class JobFailure:
    label: str
    job_id: str
    error: str
    stdout: Path
    stderr: Path

    def __str__(self) -> str:
        return f"{self.label} (job {self.job_id}): {self.error}; log: {self.stderr}"


class JobsFailed(SimulationError):
    """Some model jobs failed; the others' results are stored, so a re-run submits only the failed ones."""

    def __init__(self, failures: Sequence[JobFailure]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  {f}" for f in self.failures)
        super().__init__(f"{len(self.failures)} model job(s) failed; re-run the same command to submit only "
                         f"the missing ones:\n{lines}")


@dataclass
class _JobCall:
    """What a job process runs: the task, with torch's threads capped when local jobs share the cores."""

    fn: Callable[[], dict]
    threads: int | None = None

    def __call__(self) -> dict:
        if self.threads:
            import torch  # deferred: only the job process needs torch here

            torch.set_num_threads(self.threads)
        return self.fn()


@dataclass
class _Slot:
    task_index: int
    job: Any


@dataclass
class ModelExecutor:
    """Runs :class:`ModelTask` s through submitit (see the module doc); ``folder`` holds the jobs' logs."""

    settings: ExecutorSettings
    folder: Path
    log: Callable[[str], None] = print
    records: list[dict] = field(default_factory=list)

    def executor(self) -> submitit.Executor:
        """The submitit executor with this run's parameters (SLURM: partition, GPUs, time, array parallelism).

        Local jobs get submitit's ``LocalExecutor`` itself: its per-job ``visible_gpus`` is not one of the
        parameters ``AutoExecutor`` passes on."""
        s = self.settings
        folder = str(self.folder / "%j")
        if s.kind == "local":
            local = submitit.LocalExecutor(folder=folder)
            local.update_parameters(timeout_min=_LOCAL_TIMEOUT_MIN)
            return local
        ex = submitit.AutoExecutor(folder=folder, cluster=s.kind)
        params: dict[str, Any] = {"name": "neolabel-sim"}
        if s.kind == "slurm":
            params.update(timeout_min=s.slurm_time_min, gpus_per_node=s.slurm_gpus_per_job,
                          cpus_per_task=s.slurm_cpus_per_job, slurm_array_parallelism=s.slurm_array_parallelism)
            if s.slurm_partition:
                params["slurm_partition"] = s.slurm_partition
        ex.update_parameters(**params)
        return ex

    def _threads(self) -> int | None:
        if self.settings.threads:
            return self.settings.threads
        return max(1, (os.cpu_count() or 1) // self.settings.jobs) if self.settings.kind == "local" else None

    def submit(self, tasks: Sequence[ModelTask]) -> list[Any]:
        """Submit every task at once (SLURM: one array job; its ``%N`` caps how many run together)."""
        ex = self.executor()
        with ex.batch():
            jobs = [ex.submit(_JobCall(t.fn, self._threads())) for t in tasks]
        return jobs

    def run(self, tasks: Sequence[ModelTask], on_done: Callable[[int, dict], None]) -> None:
        """Run the tasks, calling ``on_done(index, result)`` as each finishes; :class:`JobsFailed` at the end."""
        if not tasks:
            return
        failures: list[JobFailure] = []
        if self.settings.kind == "local":
            self._run_capped(tasks, on_done, failures)
        else:
            jobs = self.submit(tasks)
            self.log(f"submitted {len(jobs)} model job(s) to {self.settings.kind}; logs in {self.folder}")
            self._wait([_Slot(i, j) for i, j in enumerate(jobs)], tasks, on_done, failures)
        write_json(self.folder / "jobs.json", self.records)
        stray = self.folder / "%j"  # submitit leaves its unexpanded folder pattern behind, empty
        if stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()
        if failures:
            raise JobsFailed(failures)

    def _run_capped(self, tasks: Sequence[ModelTask], on_done: Callable[[int, dict], None],
                    failures: list[JobFailure]) -> None:
        """Local processes, at most ``jobs`` at once, each on one of the parent's GPUs (:func:`job_gpu`)."""
        ex, queue = self.executor(), list(range(len(tasks)))
        running: dict[int, _Slot] = {}
        gpus = parent_gpus()
        try:
            while queue or running:
                for slot in range(self.settings.jobs):
                    if slot not in running and queue:
                        i = queue.pop(0)
                        if gpus:
                            ex.update_parameters(gpus_per_node=1, visible_gpus=(job_gpu(gpus, slot),))
                        job = ex.submit(_JobCall(tasks[i].fn, self._threads()))
                        job._results_timeout_s = 1  # submitit waits 15 s for a missing result (NFS); local disk
                        running[slot] = _Slot(i, job)
                done = [slot for slot, r in running.items() if r.job.done()]
                for slot in done:
                    self._collect(running.pop(slot), tasks, on_done, failures)
                if not done:
                    time.sleep(_POLL_S["local"])
        except BaseException:
            for r in running.values():  # local jobs are this machine's processes: do not leave them behind
                r.job.cancel(check=False)
            raise

    def _wait(self, slots: list[_Slot], tasks: Sequence[ModelTask], on_done: Callable[[int, dict], None],
              failures: list[JobFailure]) -> None:
        pending = list(slots)
        while pending:
            done = [r for r in pending if r.job.done()]
            for r in done:
                pending.remove(r)
                self._collect(r, tasks, on_done, failures)
            if not done:
                time.sleep(_POLL_S.get(self.settings.kind, 1.0))

    def _collect(self, slot: _Slot, tasks: Sequence[ModelTask], on_done: Callable[[int, dict], None],
                 failures: list[JobFailure]) -> None:
        task, job = tasks[slot.task_index], slot.job
        record = {"label": task.label, "job_id": str(job.job_id), "stdout": str(job.paths.stdout),
                  "stderr": str(job.paths.stderr), "result": str(task.result_path)}
        try:
            result = job.result()
        except Exception as exc:  # a failed, killed or timed-out job: report it, keep the others
            failure = JobFailure(task.label, str(job.job_id), _reason(exc, job), job.paths.stdout, job.paths.stderr)
            failures.append(failure)
            self.records.append({**record, "state": "failed", "error": failure.error})
            self.log(f"FAILED {failure}")
            return
        self.records.append({**record, "state": "done"})
        on_done(slot.task_index, result)

    def run_one(self, task: ModelTask) -> dict:
        """One job, waited for (loop rounds depend on the previous round's model)."""
        out: dict[int, dict] = {}
        self.run([task], lambda i, r: out.__setitem__(i, r))
        return out[0]


def _reason(exc: BaseException, job: Any) -> str:
    """One line: the job's own exception, or that it ended without a result (killed, out of memory, timed out)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("---")]
    if isinstance(exc, submitit.core.utils.FailedJobError) and lines:
        return lines[-1]  # the last line of the job's traceback
    if isinstance(exc, submitit.core.utils.UncompletedJobError):
        return f"ended without a result (killed, out of memory or timed out?), state {job.state}"
    return lines[-1] if lines else type(exc).__name__


def parent_gpus(environ: Mapping[str, str] | None = None) -> tuple[int, ...]:
    """The GPU ids local jobs may use, as the ids the parent itself addresses them by.

    submitit sets each job's ``CUDA_VISIBLE_DEVICES`` to the ids it is given, which the driver reads as
    physical ids: with the parent restricted to ``2,5`` a job must get ``2`` or ``5``, not ``0`` or ``1``
    (those would be GPUs outside the parent's share). Without the variable: torch's count, ``0..n-1``.
    """
    env = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return tuple(range(_torch_gpu_count()))
    ids: list[int] = []
    for entry in (e.strip() for e in env.split(",")):
        if not entry:
            continue
        try:
            gpu = int(entry)
        except ValueError:
            raise SimulationError(f"CUDA_VISIBLE_DEVICES={env!r}: local jobs need GPU indices (submitit passes "
                                  "integers on to the jobs), not UUIDs or MIG names") from None
        if gpu < 0:  # CUDA ignores an invalid id and everything after it
            break
        ids.append(gpu)
    return tuple(ids)


def job_gpu(gpus: Sequence[int], slot: int) -> int:
    """The GPU of local job slot ``slot``: the slots take the parent's GPUs in turn."""
    return gpus[slot % len(gpus)]


def _torch_gpu_count() -> int:
    try:
        import torch  # deferred: the parent needs torch only to count GPUs

        return torch.cuda.device_count()
    except Exception:
        return 0


def make_executor(settings: ExecutorSettings, out: Path, log: Callable[[str], None] = print) -> ModelExecutor | None:
    """``None`` for the in-process default (today's behaviour), else a :class:`ModelExecutor` logging to out/jobs."""
    settings.check()
    if settings.kind == "inprocess":
        return None
    return ModelExecutor(settings, Path(out) / "jobs", log)


def run_one(executor: ModelExecutor | None, label: str, result_path: Path, fn: Callable[[], dict]) -> dict:
    """``fn()`` here (no executor) or as one job."""
    if executor is None:
        return fn()
    return executor.run_one(ModelTask(label, result_path, fn))
