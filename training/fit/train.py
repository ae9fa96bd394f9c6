"""Masked-loss training on (partial) labels: the library function behind ``neolabel train`` and the app.

:func:`train` is the entry point; the run itself is a :class:`Trainer` (nnU-Net style), whose
steps are separate so each can be read, tested and changed alone: ``setup`` (device, data,
network, optimiser, scheduler, resume, logs), then per epoch ``run_epoch``, ``validate`` and
``save``, all driven by ``fit``.

Data: every subject is pre-processed once (``preprocess_subject``) and held in memory; a
``PatchDataset`` draws annotated-voxel patches and augments them per iteration.

Optimiser: the ``paper`` preset keeps the paper's recipe (SGD lr 1e-2, Nesterov momentum 0.99,
weight decay 3e-5, poly (1 − epoch/max)^0.9). The ``cpu`` and ``tiny`` presets default to AdamW
(lr 3e-3, same poly decay): DESIGN.md measured on CPU that the paper's SGD reached tissue Dice 0.34
after 8 min where AdamW reached 0.84 after 6 min; short CPU budgets need the faster optimiser.
Both are overridable in ``TrainConfig``.

Checkpoints: ``last.pt`` after every epoch (with optimiser/scheduler state, for ``resume``) and
``best.pt`` by validation tissue Dice (without validation subjects: ``best.pt`` = latest epoch).
Both carry the resolved ``TrainConfig`` (also written to ``train_config.json``) and the history.

Several processes: launched by torchrun (``WORLD_SIZE`` > 1 in the environment) the trainer joins the
process group and trains with ``DistributedDataParallel``: each rank samples ``batch_size`` patches
per iteration from its shard of the subjects, rank 0 validates and saves (see
:mod:`training.fit.distributed`). :func:`train_distributed` launches such a run from Python. One
process (no torchrun) runs exactly as before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from training.config_dict import config_from_dict
from training.data.labels import IGNORE, NUM_CLASSES
from training.data.nifti import atomic_write
from training.data.preprocess import PreprocessConfig, preprocess_subject
from training.fit import distributed
from training.fit.age import DEFAULT_AGE_WEIGHT, AgeTraining
from training.fit.augment import AugmentConfig, build_augmentations
from training.fit.finetune import (
    FreezeReport,
    copy_without_training,
    prepare_finetune,
    trainable_parameters,
    untrained_result,
)
from training.fit.freeze import FreezeError, check_level
from training.fit.loss import MaskedDiceCELoss
from training.fit.result import TrainResult
from training.fit.sampling import PatchDataset, SamplingConfig, TrainCase, make_case
from training.metrics import dice_per_class, tissue_mean
from training.model.checkpoint import load_checkpoint, save_checkpoint
from training.model.network import NetworkConfig, build_network, network_config
from training.model.presets import PRESETS

log = logging.getLogger(__name__)


class TrainError(ValueError):
    """Bad training input: no labelled subjects, unknown preset/optimiser, mismatching checkpoint."""


_OPT_DEFAULTS = {
    "sgd": {"lr": 1e-2, "weight_decay": 3e-5},
    "adamw": {"lr": 3e-3, "weight_decay": 3e-5},
}


@dataclass
class TrainConfig:
    """Everything a run depends on; ``resolved()`` fills the preset defaults and is what checkpoints store."""

    preset: str = "cpu"
    epochs: int = 50
    iterations_per_epoch: int | None = None  # None → max(25, 4 × number of training subjects)
    batch_size: int = 2
    optimizer: str | None = None  # None → "sgd" for the paper preset, "adamw" for cpu/tiny (see module doc)
    lr: float | None = None  # None → 1e-2 (sgd) / 3e-3 (adamw)
    momentum: float = 0.99  # SGD only (Nesterov)
    weight_decay: float | None = None  # None → 3e-5
    poly_power: float = 0.9
    grad_clip: float = 12.0  # nnU-Net's gradient-norm clip; keeps the 0.99-momentum SGD stable
    patch_size: tuple[int, int, int] | None = None  # None → preset's
    modalities: tuple[str, ...] = ("T2w",)
    crop_margin_mm: float = 4.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0
    device: str | None = None  # None → "cuda" when available, else "cpu"
    amp: bool | None = None  # None → on for CUDA (bf16 when supported, else fp16), off on CPU
    num_workers: int | None = None  # None → 0 on CPU, 4 on CUDA
    threads: int | None = None  # torch CPU threads; None → all cores
    val_every: int = 1
    val_overlap: float = 0.25
    val_sw_batch_size: int = 2
    resume: bool = False
    time_limit_s: float | None = None  # stop (after the current epoch's checkpoint) once exceeded
    tensorboard: bool = True
    freeze: str = "full"  # transfer learning: one of training.fit.freeze.FREEZE_LEVELS
    age_head: bool = False  # AgeU-Net: + scan-age regression head, loss += age_weight · MSE (training/fit/age.py)
    age_weight: float = DEFAULT_AGE_WEIGHT

    def resolved(self) -> TrainConfig:
        """Copy with preset defaults filled in (what gets stored in checkpoints)."""
        if self.preset not in PRESETS:
            raise TrainError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        opt = (self.optimizer or ("sgd" if self.preset == "paper" else "adamw")).lower()
        if opt not in _OPT_DEFAULTS:
            raise TrainError(f"unknown optimizer {opt!r}; choose sgd or adamw")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainError("epochs and batch_size must be ≥ 1")
        d = {**self.__dict__}
        d["optimizer"] = opt
        d["lr"] = float(self.lr if self.lr is not None else _OPT_DEFAULTS[opt]["lr"])
        d["weight_decay"] = float(self.weight_decay if self.weight_decay is not None
                                  else _OPT_DEFAULTS[opt]["weight_decay"])
        if isinstance(self.augment, dict):
            d["augment"] = AugmentConfig.from_dict(self.augment)
        if isinstance(self.sampling, dict):
            d["sampling"] = SamplingConfig.from_dict(self.sampling)
        d["modalities"] = tuple(self.modalities)
        try:
            d["freeze"] = check_level(self.freeze)
        except FreezeError as exc:
            raise TrainError(str(exc)) from exc
        return TrainConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        if self.patch_size is not None:
            d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if "augment" in d and isinstance(d["augment"], dict):
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        if "sampling" in d and isinstance(d["sampling"], dict):
            d["sampling"] = SamplingConfig.from_dict(d["sampling"])
        return config_from_dict(cls, d, ("patch_size", "modalities"))


def _label_source(subject: Any, partial_labels: dict | None) -> Any:
    if partial_labels is None:
        return subject.label
    return partial_labels.get(subject.id)


def trainable_indices(subjects: Sequence[Any], partial_labels: dict | None = None) -> list[int]:
    """Positions of the subjects that have a training label (what :func:`load_cases` keeps)."""
    return [i for i, s in enumerate(subjects) if _label_source(s, partial_labels) is not None]


def load_cases(subjects: Sequence[Any], pcfg: PreprocessConfig, partial_labels: dict | None = None,
               max_candidates: int = 20000, seed: int = 0, only: Sequence[int] | None = None) -> list[TrainCase]:
    """Pre-process every trainable subject once. With ``partial_labels`` only the subjects it names train;
    ``only`` (positions in ``subjects``) restricts it to a rank's shard, with the same per-subject seeds."""
    keep = None if only is None else set(only)
    cases = []
    for i, s in enumerate(subjects):
        lab = _label_source(s, partial_labels)
        if lab is None or (keep is not None and i not in keep):
            continue
        pp = preprocess_subject(s, pcfg, label=lab)
        assert pp.label is not None
        cases.append(make_case(s.id, pp.image, pp.label, max_candidates, seed + i))
    return cases


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _poly(max_epochs: int, power: float) -> Callable[[int], float]:
    return lambda e: max(0.0, 1.0 - e / max_epochs) ** power


def validate(model: torch.nn.Module, val_cases: list[TrainCase], patch: tuple[int, int, int], device: torch.device,
             amp_dtype: torch.dtype | None = None, overlap: float = 0.25, sw_batch_size: int = 2) -> dict[str, Any]:
    """Sliding-window prediction on pre-processed volumes; mean Dice per class and tissue mean."""
    model.eval()
    per_subject = []
    with torch.no_grad():
        for case in val_cases:
            x = torch.as_tensor(case.image[None], device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = sliding_window_inference(x, patch, sw_batch_size, model, overlap=overlap, mode="gaussian")
            pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
            d = dice_per_class(pred, case.label)
            per_subject.append({"id": case.id, "dice": d, "tissue_dice": tissue_mean(d)})
    mean = {c: float(np.nanmean([s["dice"][c] for s in per_subject])) if any(
        not math.isnan(s["dice"][c]) for s in per_subject) else float("nan") for c in range(NUM_CLASSES)}
    # tissue Dice = mean over subjects of each subject's tissue mean, as `neolabel evaluate` reports it
    tissue = [s["tissue_dice"] for s in per_subject if not math.isnan(s["tissue_dice"])]
    return {"dice": mean, "tissue_dice": float(np.mean(tissue)) if tissue else float("nan"), "subjects": per_subject}


@contextmanager
def _torch_state_restored() -> Iterator[None]:
    """Restore torch's thread count, MONAI's meta tracking and cuDNN's benchmark flag afterwards:
    training also runs in-process inside the server, which must not inherit the run's settings."""
    threads, track_meta, cudnn_benchmark = torch.get_num_threads(), get_track_meta(), torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_track_meta(track_meta)
        torch.backends.cudnn.benchmark = cudnn_benchmark


class Trainer:
    """One training run, nnU-Net style: :meth:`setup`, then per epoch :meth:`run_epoch`, :meth:`validate`,
    :meth:`save`; :meth:`fit` drives them. Arguments as for :func:`train`.

    The steps run in a fixed order that also fixes the use of torch's global RNG (seeded in
    ``setup`` before the network is initialised; DataLoader iteration draws from it every epoch),
    so the same config and seed give the same run.

    Launched by torchrun, each rank runs these steps on its shard with DDP (module doc); one process
    runs the same steps, with the same results, as without torch.distributed.
    """

    def __init__(self, cfg: TrainConfig, subjects: Sequence[Any], out_dir: str | os.PathLike,
                 partial_labels: dict[str, np.ndarray | Path] | None = None,
                 val_subjects: Sequence[Any] | None = None, init: str | os.PathLike | None = None,
                 progress: bool = True, callback: Callable[[dict], bool | None] | None = None) -> None:
        self.cfg = cfg.resolved()
        self.subjects, self.partial_labels, self.val_subjects = subjects, partial_labels, val_subjects
        self.init, self.progress, self.callback = init, progress, callback
        self.out = Path(out_dir)
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        self.start_epoch = 0
        self.best_metric: float | None = None  # best validation tissue Dice so far
        self.history: list[dict[str, Any]] = []  # one record per epoch, kept in last.pt for resume
        self.writer: Any = None  # torch.utils.tensorboard.SummaryWriter when enabled and available
        self.dist = distributed.DistContext()  # this process's rank and world size (set in setup)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Everything before the first epoch, in the order that fixes the RNG use (see the class doc)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._setup_device()
        self._setup_data()
        self._setup_model()
        if self.cfg.resume and self.last_path.is_file():
            self._resume()
        # DDP wraps after resume so that every rank starts from the same weights and optimiser state
        self.net = distributed.wrap(self.model, self.dist, self.device)
        self._setup_logs()

    def _setup_device(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        set_track_meta(False)  # plain tensors through the transforms: faster, and nothing needs the meta
        self.dist, self.device = distributed.init_from_env(_device(cfg))  # one process: nothing changes
        if self.device.type == "cuda":  # fixed patch size: let cuDNN pick the fastest convolution once
            torch.backends.cudnn.benchmark = True
        amp_on = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        self.amp_dtype = None
        if amp_on:
            self.amp_dtype = (torch.bfloat16 if (self.device.type == "cpu" or torch.cuda.is_bf16_supported())
                              else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        torch.manual_seed(cfg.seed)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.pcfg = PreprocessConfig(modalities=tuple(cfg.modalities), crop_margin_mm=cfg.crop_margin_mm)
        self.net_cfg: NetworkConfig = network_config(cfg.preset, in_channels=len(cfg.modalities),
                                                     patch_size=cfg.patch_size)
        self.net_cfg.age_head = bool(cfg.age_head)
        self.patch = tuple(self.net_cfg.patch_size)
        t0 = time.perf_counter()
        trainable = trainable_indices(self.subjects, self.partial_labels)
        self.train_ids = [self.subjects[i].id for i in trainable]
        mine = distributed.shard(trainable, self.dist.rank, self.dist.world_size) if self.dist.enabled else None
        self.cases = load_cases(self.subjects, self.pcfg, self.partial_labels, cfg.sampling.max_candidates, cfg.seed,
                                only=mine)
        if not self.cases:
            raise TrainError("no trainable subject: none has a label" +
                             (" in partial_labels" if self.partial_labels is not None else ""))
        annotated = sum(int((c.label != IGNORE).sum()) for c in self.cases)
        if distributed.all_sum(annotated, self.dist, self.device) == 0:
            raise TrainError("the training labels contain no annotated voxel (all 255)")
        self.val_cases: list[TrainCase] = []
        if self.val_subjects and self.dist.is_main:  # validation is rank 0's
            self.val_cases = load_cases([s for s in self.val_subjects if s.label is not None], self.pcfg, None, 1,
                                        cfg.seed)
        shard = f" (rank {self.dist.rank}'s shard of {len(self.train_ids)})" if self.dist.enabled else ""
        log.info("loaded %d training%s and %d validation subjects in %.1f s", len(self.cases), shard,
                 len(self.val_cases), time.perf_counter() - t0)
        # optimiser steps per epoch, from all ranks' subjects; each rank draws batch_size patches per step
        self.iters = cfg.iterations_per_epoch or max(25, 4 * len(self.train_ids))
        aug = build_augmentations(cfg.augment, self.patch) if cfg.augment.enabled else None
        self.dataset = PatchDataset(self.cases, self.patch, self.iters * cfg.batch_size, aug, cfg.sampling,
                                    seed=distributed.rank_seed(cfg.seed, self.dist.rank, self.dist.world_size))
        workers = cfg.num_workers if cfg.num_workers is not None else (4 if self.device.type == "cuda" else 0)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=cfg.batch_size, shuffle=False,
                                                  num_workers=workers, drop_last=True,
                                                  pin_memory=self.device.type == "cuda")

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = build_network(self.net_cfg).to(self.device)
        # init weights + freeze level; frozen parameters stay out of the optimiser (no decay, no momentum)
        try:
            self.freeze_report: FreezeReport = prepare_finetune(self.model, self.init, cfg.freeze, self.net_cfg)
        except FreezeError as exc:
            raise TrainError(str(exc)) from exc
        params = trainable_parameters(self.model)
        if cfg.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                              nesterov=True, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.age_term = (AgeTraining.for_cases(self.model, self.cases, self.subjects, cfg.age_weight)
                         if cfg.age_head else None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _poly(cfg.epochs, cfg.poly_power))
        self.loss_fn = MaskedDiceCELoss(num_classes=self.net_cfg.out_channels)

    def _resume(self) -> None:
        """Continue ``last.pt``: weights, optimiser, scheduler, epoch, best metric and history."""
        ck = load_checkpoint(self.last_path, map_location=self.device)
        if ck.network.to_dict() != self.net_cfg.to_dict():
            raise TrainError(f"cannot resume {self.last_path}: it was trained with another network config")
        self.model.load_state_dict(ck.model.state_dict())
        if "optimizer" in ck.raw:
            self.opt.load_state_dict(ck.raw["optimizer"])
        if "scheduler" in ck.raw:
            self.sched.load_state_dict(ck.raw["scheduler"])
        self.start_epoch = ck.epoch
        # the schedule follows this run's ``epochs`` (a resume may extend the run): recompute the lr
        poly = _poly(self.cfg.epochs, self.cfg.poly_power)
        for g, base in zip(self.opt.param_groups, self.sched.base_lrs, strict=True):
            g["lr"] = base * poly(self.start_epoch)
        self.sched.lr_lambdas = [poly] * len(self.opt.param_groups)
        self.best_metric = ck.metrics.get("best_tissue_dice")
        self.history = list(ck.raw.get("extra", {}).get("history", []))
        log.info("resuming from %s at epoch %d", self.last_path, self.start_epoch)

    def _setup_logs(self) -> None:
        """TensorBoard (optional) and ``train_config.json``: the resolved config plus what the run derived
        (rank 0 only; every rank keeps the dict, which goes into the checkpoints)."""
        if self.cfg.tensorboard and self.dist.is_main:
            try:  # deferred: tensorboard is optional; missing or broken, it must not stop training
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except Exception as exc:
                log.warning("TensorBoard disabled: %s", exc)
        self.train_dict = {
            **self.cfg.to_dict(), "iterations_per_epoch": self.iters, "device": str(self.device),
            "amp_dtype": str(self.amp_dtype) if self.amp_dtype else None, "n_train": len(self.train_ids),
            "train_ids": self.train_ids, "n_val": len(self.val_cases),
            "init": str(self.init) if self.init is not None else None,
            "freeze_report": self.freeze_report.to_dict(),
            # processes that trained together: each drew batch_size patches per step from its shard
            "world_size": self.dist.world_size, "global_batch_size": self.dist.world_size * self.cfg.batch_size,
        }
        if self.dist.is_main:
            (self.out / "train_config.json").write_text(json.dumps(self.train_dict, indent=2, default=str))

    # ------------------------------------------------------------------ one epoch

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train ``iterations_per_epoch`` batches, step the schedule; the epoch's record (loss, lr, timing)."""
        cfg = self.cfg
        self.model.train()
        self.dataset.set_epoch(epoch)
        t_ep = time.perf_counter()
        losses = []
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (self.progress and self.dist.is_main))
        for batch in bar:
            losses.append(self.train_step(batch))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        self.sched.step()
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                               "lr": float(self.opt.param_groups[0]["lr"]), "epoch_s": time.perf_counter() - t_ep,
                               "s_per_iteration": (time.perf_counter() - t_ep) / max(len(losses), 1)}
        if self.dist.enabled:  # the epoch's loss over every rank's patches
            rec["loss"] = distributed.all_mean(rec["loss"], self.dist, self.device)
        if self.age_term is not None:
            rec["age_mse_normalised"] = self.age_term.epoch_mse()
        return rec

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimiser step on one batch; its loss. Under DDP, backward averages the gradients over ranks,
        so clipping and the step see the same gradients on every rank."""
        device = self.device
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.net(x)
        loss = self.loss_fn(outputs.float(), y)
        if self.age_term is not None:
            loss = self.age_term(loss, batch)  # + age_weight · MSE(normalised age)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach())

    def validate(self, epoch: int, force: bool = False) -> dict[str, Any] | None:
        """Validation metrics for the epoch's record when validation is due (every ``val_every`` epochs, the
        last one, or ``force``: the run is about to stop); ``None`` when not due or without validation set."""
        if not self.val_cases:
            return None
        if not (force or (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs):
            return None
        v = validate(self.model, self.val_cases, self.patch, self.device, self.amp_dtype, self.cfg.val_overlap,
                     self.cfg.val_sw_batch_size)
        return {"val_tissue_dice": v["tissue_dice"], "val_dice": {str(k): dv for k, dv in v["dice"].items()}}

    def save(self, epoch: int, best: bool) -> None:
        """``last.pt`` (with optimiser/scheduler state and history, for ``resume``), ``best.pt`` when ``best``,
        and ``history.json``; the epoch's record must already be the last entry of the history."""
        rec = self.history[-1]
        metrics = {k: rec[k] for k in rec if k != "epoch"}
        metrics["best_tissue_dice"] = self.best_metric
        common = dict(network=self.net_cfg, preprocess=self.pcfg, train_config=self.train_dict, epoch=epoch + 1,
                      metrics=metrics)
        save_checkpoint(self.last_path, self.model, **common, optimizer=self.opt, scheduler=self.sched,
                        extra={"history": self.history})
        if best:
            save_checkpoint(self.best_path, self.model, **common)
        (self.out / "history.json").write_text(json.dumps(self.history, indent=1))

    def _log_epoch(self, rec: dict[str, Any]) -> None:
        if self.writer is not None:
            step = rec["epoch"]
            self.writer.add_scalar("train/loss", rec["loss"], step)
            self.writer.add_scalar("train/lr", rec["lr"], step)
            if "val_tissue_dice" in rec:
                self.writer.add_scalar("val/tissue_dice", rec["val_tissue_dice"], step)
                for k, dv in rec["val_dice"].items():
                    self.writer.add_scalar(f"val/dice_{k}", dv, step)
            self.writer.flush()

    def _report_epoch(self, rec: dict[str, Any]) -> None:
        msg = f"epoch {rec['epoch']}/{self.cfg.epochs} loss {rec['loss']:.4f} ({rec['epoch_s']:.0f} s)"
        if "val_tissue_dice" in rec:
            msg += f" val tissue Dice {rec['val_tissue_dice']:.4f}"
        log.info(msg)
        if self.progress:
            tqdm.write(msg)

    # ------------------------------------------------------------------ the run

    def fit(self) -> TrainResult:
        """Run the epochs (stopping early on ``callback`` or ``time_limit_s``); freeze level ``none``
        publishes ``init`` unchanged instead. Torch's global settings are restored afterwards."""
        if self.cfg.freeze == "none":  # transfer level "no fine-tuning": publish the init checkpoint as it is
            return self._publish_init()
        with _torch_state_restored():
            self.setup()
            try:
                stopped = self._epochs()
            finally:
                if self.writer is not None:
                    self.writer.close()
            # validation never ran (e.g. stopped early)
            if self.dist.is_main and not self.best_path.exists() and self.last_path.exists():
                atomic_write(self.best_path, lambda tmp: shutil.copyfile(self.last_path, tmp))
            distributed.shutdown(self.dist)  # waits for rank 0's files
        done = self.history[-1]["epoch"] if self.history else self.start_epoch
        return TrainResult(out_dir=self.out, best_path=self.best_path, last_path=self.last_path,
                           epochs_completed=int(done), best_metric=self.best_metric, history=self.history,
                           n_train=len(self.train_ids), stopped_early=stopped)

    def _publish_init(self) -> TrainResult:
        """Freeze level ``none``: rank 0 alone writes ``init`` as the run's checkpoints (like every other file
        of a run); the other ranks wait for it, so the result they return names files that exist."""
        if self.init is None:
            raise TrainError("freeze level 'none' needs an init checkpoint")
        self.dist, device = distributed.init_from_env(_device(self.cfg))
        error: Exception | None = None
        if self.dist.is_main:
            try:
                copy_without_training(self.init, self.out, self.cfg.to_dict())
            except Exception as exc:  # tell the waiting ranks, then raise it here
                error = exc
        copied = distributed.broadcast_flag(error is None, self.dist, device)
        distributed.shutdown(self.dist)
        if error is not None:
            raise error
        if not copied:
            raise TrainError("rank 0 could not publish the init checkpoint (freeze level 'none'); see its log")
        return untrained_result(self.out)

    def _epochs(self) -> bool:
        """The epoch loop; True when it stopped early. Decisions to stop are rank 0's (the same epochs everywhere)."""
        t_start = time.perf_counter()
        d = self.dist
        for epoch in range(self.start_epoch, self.cfg.epochs):
            rec = self.run_epoch(epoch)
            over_time = self.cfg.time_limit_s is not None and time.perf_counter() - t_start > self.cfg.time_limit_s
            over_time = distributed.broadcast_flag(over_time, d, self.device)
            val = self.validate(epoch, force=over_time)
            improved = False
            if val is not None:
                rec.update(val)
                if not math.isnan(val["val_tissue_dice"]) and (self.best_metric is None
                                                                or val["val_tissue_dice"] > self.best_metric):
                    self.best_metric, improved = val["val_tissue_dice"], True
            self.history.append(rec)
            if d.is_main:
                self._log_epoch(rec)
                self.save(epoch, best=improved or not self.val_cases)
                self._report_epoch(rec)
            stop = d.is_main and self.callback is not None and bool(self.callback(rec))
            if distributed.broadcast_flag(stop, d, self.device):
                return True
            if over_time:
                return True
        return False


def train(
    cfg: TrainConfig,
    subjects: Sequence[Any],
    out_dir: str | os.PathLike,
    partial_labels: dict[str, np.ndarray | Path] | None = None,
    val_subjects: Sequence[Any] | None = None,
    init: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[dict], bool | None] | None = None,
) -> TrainResult:
    """Train a DynUNet on (partial) labels; write ``last.pt``/``best.pt`` into ``out_dir``.

    ``partial_labels`` (id → array in the image's grid, or a NIfTI path) replaces the subjects'
    dense labels, and only the subjects it names are trained on. ``val_subjects`` need dense
    labels. ``init`` starts from a checkpoint's weights (fine-tuning); ``cfg.resume`` continues
    ``out_dir/last.pt`` (epoch, optimiser, scheduler). ``callback(epoch_record)`` returning True stops.
    Torch's thread count, MONAI's meta tracking and cuDNN's benchmark flag are restored afterwards (training
    also runs in-process inside the server). The run itself is a :class:`Trainer`.
    """
    return Trainer(cfg, subjects, out_dir, partial_labels, val_subjects, init, progress, callback).fit()


_SPEC, _RESULT = "ddp_spec.pkl", "ddp_result.pkl"


def train_distributed(
    nproc: int,
    cfg: TrainConfig,
    subjects: Sequence[Any],
    out_dir: str | os.PathLike,
    partial_labels: dict[str, Path] | None = None,
    val_subjects: Sequence[Any] | None = None,
    init: str | os.PathLike | None = None,
) -> TrainResult:
    """:func:`train` as ``nproc`` DDP processes on this machine, launched by torchrun; rank 0's result.

    The inputs travel to the ranks as a pickle in ``out_dir`` (written and read by the same user), so
    partial labels must be file paths (arrays would be copied to every rank). Used by the app's
    retraining on several GPUs; the command line re-runs itself under torchrun instead.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if partial_labels and any(not isinstance(v, str | os.PathLike) for v in partial_labels.values()):
        raise TrainError("train_distributed needs partial labels as file paths")
    spec = {"cfg": cfg, "subjects": list(subjects), "partial_labels": partial_labels,
            "val_subjects": list(val_subjects) if val_subjects else None, "init": init}
    atomic_write(out / _SPEC, lambda tmp: Path(tmp).write_bytes(pickle.dumps(spec)))
    (out / _RESULT).unlink(missing_ok=True)
    distributed.run_torchrun(nproc, ["training.fit.train", str(out / _SPEC)])
    return pickle.loads((out / _RESULT).read_bytes())


def _run_spec(spec_path: Path) -> None:
    """One rank of :func:`train_distributed`: train from the spec; rank 0 stores the result beside it."""
    spec = pickle.loads(spec_path.read_bytes())
    out = spec_path.parent
    res = train(spec["cfg"], spec["subjects"], out, partial_labels=spec["partial_labels"],
                val_subjects=spec["val_subjects"], init=spec["init"], progress=False)
    if distributed.env_context().is_main:
        atomic_write(out / _RESULT, lambda tmp: Path(tmp).write_bytes(pickle.dumps(res)))


if __name__ == "__main__":  # python -m torch.distributed.run … -m training.fit.train SPEC (train_distributed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _run_spec(Path(sys.argv[1]))
