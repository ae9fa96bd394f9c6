"""``/train/segmentation``: ``training.fit.train.train`` on the study set's partial labels, then publish.

One training implementation: this task only gathers the inputs (every image with a ``final``
label, that label as the partial label, the optional fully labelled validation set, the served
model as the starting point), calls ``training.fit.train.train`` (masked Dice+CE, annotated-voxel
patch sampling) and publishes ``best.pt`` with ``os.replace`` into the model path, where the infer
task picks it up by mtime. With a validation set the new model is published only if it is not
worse than the served one on it. A file lock makes sure two trainings never run at once, whoever
started them (``/train``, the label-count trigger, the schedule). On a machine with two or more
visible GPUs (and ``--conf gpus`` allowing it) the run is one DDP process per GPU, launched by
torchrun (``training.fit.train.train_distributed``), as MONAI Label's own trainers spawn one
process per GPU; otherwise one process on one device (CUDA when present, else CPU; mixed
precision only on CUDA). On CPU it is always one process: more would only split the same cores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from monailabel.interfaces.tasks.train import TrainTask

from strategies.annotate.ledger import AnnotationLedger
from strategies.annotate.settings import AppConfig
from strategies.annotate.state import STATE_DIR
from training.data.labels import class_table
from training.data.nifti import atomic_write, atomic_write_text
from training.model.checkpoint import CheckpointError, checkpoint_generation, copy_with_generation, load_checkpoint

log = logging.getLogger(__name__)


def gpu_processes(gpus: str, device: str, visible_gpus: int) -> int:
    """Training processes for one retraining: one per GPU with ≥ 2 usable (``gpus`` = ``all`` or a cap), else 1."""
    if device != "cuda" or visible_gpus < 2:
        return 1
    n = visible_gpus if gpus == "all" else min(int(gpus), visible_gpus)
    return n if n >= 2 else 1


class TrainingBusy(RuntimeError):
    """Another training holds the study set's training lock."""


class SegmentationTrainer(TrainTask):
    """Masked-loss retraining on the annotated slices (see module doc)."""

    def __init__(self, studies: str | Path, model_path: str | Path, config: AppConfig,
                 ledger: AnnotationLedger) -> None:
        super().__init__("Retrain the segmentation model on the annotated slices (masked Dice+CE)")
        self.studies = Path(studies)
        self.model_path = Path(model_path)
        self.cfg = config
        self.ledger = ledger
        self.dir = self.studies / STATE_DIR
        self.lock_path = self.dir / "train.lock"
        self.stats_path = self.dir / "train_stats.json"

    def config(self) -> dict[str, Any]:
        return {"epochs": self.cfg.epochs, "preset": self.cfg.preset, "train_from": self.cfg.train_from,
                "freeze": self.cfg.freeze}

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def is_running(self) -> bool:
        """True while some process holds the training lock."""
        probe = FileLock(str(self.lock_path))
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        probe.release()
        return False

    # ------------------------------------------------------------------ inputs
    def training_inputs(self, datastore) -> tuple[list, dict[str, Path]]:
        from training.data.dataset import Subject

        subjects, partial = [], {}
        for image_id in sorted(datastore.list_images()):
            label = datastore.get_label_uri(image_id, "final")
            if label and os.path.isfile(label):
                subjects.append(Subject(id=image_id, image=Path(datastore.get_image_uri(image_id))))
                partial[image_id] = Path(label)
        return subjects, partial

    def validation_subjects(self) -> list:
        if not self.cfg.validation_dir:
            return []
        from training.data.dataset import open_dataset

        return open_dataset(self.cfg.validation_dir).with_labels()

    # ------------------------------------------------------------------ run
    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        lock = FileLock(str(self.lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("training skipped: another training is running")
            return {"status": "skipped", "reason": "another training is running"}
        try:
            return self._train(request, datastore)
        finally:
            lock.release()

    def _train(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        import torch

        from training.evaluate.segmentation import evaluate_checkpoint
        from training.fit.train import TrainConfig, train, train_distributed

        t0 = time.time()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        subjects, partial = self.training_inputs(datastore)
        if not subjects:
            stats = {"status": "skipped", "reason": "no annotated image yet", "started": started}
            atomic_write_text(self.stats_path, json.dumps(stats, indent=1))
            return stats
        self.ledger.reset_labels_since_train()
        device = self.cfg.device if self.cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        epochs = int(request.get("epochs", request.get("max_epochs", self.cfg.epochs)))
        init = None
        if self.cfg.train_from == "served" and self.model_path.is_file():
            init = self.model_path
        preset = self.cfg.preset
        if init is not None:
            from training.model.checkpoint import load_checkpoint

            preset = load_checkpoint(init).network.preset  # fine-tune the served architecture
        iters = request.get("iterations_per_epoch")
        tcfg = TrainConfig(preset=preset, epochs=epochs, device=device, amp=(device == "cuda"),
                           seed=self.cfg.seed, tensorboard=False,
                           freeze=self.cfg.freeze if init is not None else "full",
                           iterations_per_epoch=int(iters) if iters else None)
        run_dir = self.dir / "train" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        val = self.validation_subjects()
        log.info("training on %d annotated images (%d validation) from %s", len(subjects), len(val), init or "scratch")
        nproc = gpu_processes(self.cfg.gpus, device, torch.cuda.device_count() if device == "cuda" else 0)
        if nproc > 1:
            log.info("training with %d DDP processes, one per GPU", nproc)
            result = train_distributed(nproc, tcfg, subjects, run_dir, partial_labels=partial,
                                       val_subjects=val or None, init=init)
        else:
            result = train(tcfg, subjects, run_dir, partial_labels=partial, val_subjects=val or None,
                           init=init, progress=False)
        stats: dict[str, Any] = {
            "status": "done",
            "started": started,
            "seconds": round(time.time() - t0, 1),
            "epochs": result.epochs_completed,
            "train_images": result.n_train,
            "device": device,
            "processes": nproc,
            "init": "served" if init is not None else "scratch",
            "freeze": tcfg.freeze,
            "run_dir": str(run_dir),
        }
        published, reason = True, "no validation set: published"
        if val:
            new = evaluate_checkpoint(result.best_path, val, hd95=False).tissue_dice
            stats["val_tissue_dice_new"] = round(float(new), 4)
            if self.model_path.is_file():
                old = evaluate_checkpoint(self.model_path, val, hd95=False).tissue_dice
                stats["val_tissue_dice_served"] = round(float(old), 4)
                if not math.isnan(old) and (math.isnan(new) or new < old):
                    published = False
                    reason = f"new model is worse on the validation set ({new:.4f} < {old:.4f}): kept the served model"
                else:
                    reason = f"validation tissue Dice {new:.4f} ≥ served {old:.4f}: published"
            else:
                reason = f"validation tissue Dice {new:.4f}: published (first model)"
        if published:
            publish(result.best_path, self.model_path, generation=next_generation(self.model_path))
        stats["published"] = published
        stats["message"] = reason
        log.info("training finished: %s", reason)
        atomic_write_text(self.stats_path, json.dumps(stats, indent=1))
        self.ledger.record_training(stats)
        return stats


def publish(src: str | Path, model_path: str | Path, generation: int | None = None) -> Path:
    """Copy a checkpoint beside the model path, then ``os.replace`` it in: readers never see half a file.
    With ``generation`` the copy is stamped as that model generation (a retraining's result)."""
    if generation is not None:
        return copy_with_generation(src, model_path, generation)
    return atomic_write(model_path, lambda tmp: shutil.copyfile(src, tmp))


def next_generation(model_path: str | Path) -> int:
    """The generation of a retrained model: one past the served model's (0 when none is served), so the
    active-selection schedule follows the models, whatever was uploaded or lost between trainings."""
    served = Path(model_path)
    if not served.is_file():
        return 0
    try:
        return checkpoint_generation(served) + 1
    except CheckpointError:  # an unreadable served file is replaced; its place in the schedule is unknown
        return 0


class ModelRefused(ValueError):
    """An uploaded file that cannot become the served model (the served model stays as it is)."""


def check_model_file(path: str | Path) -> None:
    """Only a readable neolabel checkpoint for this server's class table may be served (``PUT /model``)."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise ModelRefused(str(exc).replace(str(path), "uploaded file")) from None
    if ckpt.class_table != class_table():
        raise ModelRefused("the uploaded checkpoint was trained for another class table than this server's "
                           "(drawem9 classes 0-9, 255 = not annotated)")


def keep_previous(model_path: str | Path) -> Path | None:
    """Keep the served model as ``previous/<name>-<UTC time>.pt`` beside it (a hard link: no copy, and the
    served file stays in place); None when there is no served model."""
    src = Path(model_path)
    if not src.is_file():
        return None
    folder = src.parent / "previous"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = folder / f"{src.stem}-{stamp}{src.suffix}"
    try:
        os.link(src, dest)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dest)
    return dest


def replace_model(upload: str | Path, model_path: str | Path) -> Path | None:
    """Check an uploaded checkpoint, keep the served one, publish the upload atomically; the kept file."""
    check_model_file(upload)
    kept = keep_previous(model_path)
    publish(upload, model_path)
    return kept


def retire_model(model_path: str | Path) -> Path | None:
    """``DELETE /model``: stop serving the model, keeping its file under ``previous/``; None when there was none."""
    kept = keep_previous(model_path)
    if kept is not None:
        Path(model_path).unlink(missing_ok=True)
    return kept
