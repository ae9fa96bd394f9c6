"""Masked-loss training on (partial) labels: the library function behind ``neolabel train`` and the app.

Data: every subject is pre-processed once (``preprocess_subject``) and held in memory; a
``PatchDataset`` draws annotated-voxel patches and augments them per iteration.

Optimiser: the ``paper`` preset keeps the paper's recipe (SGD lr 1e-2, Nesterov momentum 0.99,
weight decay 3e-5, poly (1 − epoch/max)^0.9). The ``cpu`` and ``tiny`` presets default to AdamW
(lr 3e-3, same poly decay): DESIGN.md measured on CPU that the paper's SGD reached tissue Dice 0.34
after 8 min where AdamW reached 0.84 after 6 min; short CPU budgets need the faster optimiser.
Both are overridable in ``TrainConfig``.

Checkpoints: ``last.pt`` after every epoch (with optimiser/scheduler state, for ``resume``) and
``best.pt`` by validation tissue Dice (without validation subjects: ``best.pt`` = latest epoch).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.config_dict import config_from_dict
from training.data.labels import IGNORE, NUM_CLASSES, TISSUE
from training.data.nifti import atomic_write
from training.data.preprocess import PreprocessConfig
from training.evaluate.segmentation import dice_per_class
from training.fit.augment import AugmentConfig
from training.fit.sampling import SamplingConfig
from training.model.network import PRESETS

log = logging.getLogger(__name__)


class TrainError(ValueError):
    """Bad training input: no labelled subjects, unknown preset/optimiser, mismatching checkpoint."""


_OPT_DEFAULTS = {
    "sgd": {"lr": 1e-2, "weight_decay": 3e-5},
    "adamw": {"lr": 3e-3, "weight_decay": 3e-5},
}


@dataclass
class TrainConfig:
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
    freeze: str = "full"  # transfer learning: none|shallow|medium|deep|full|scratch (training/finetune.py)
    age_head: bool = False  # AgeU-Net: + scan-age regression head, loss += age_weight · MSE (training/age.py)
    age_weight: float = 0.01

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
        from training.fit.finetune import FreezeError, check_level

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


@dataclass
class TrainResult:
    out_dir: Path
    best_path: Path
    last_path: Path
    epochs_completed: int
    best_metric: float | None  # validation tissue Dice of best.pt (None without validation)
    history: list[dict]
    n_train: int
    stopped_early: bool = False


def tissue_mean(d: dict[int, float]) -> float:
    vals = [d[c] for c in TISSUE if c in d and not math.isnan(d[c])]
    return float(np.mean(vals)) if vals else float("nan")


def _label_source(subject: Any, partial_labels: dict | None) -> Any:
    if partial_labels is None:
        return subject.label
    return partial_labels.get(subject.id)


def load_cases(subjects: Sequence[Any], pcfg: PreprocessConfig, partial_labels: dict | None = None,
               max_candidates: int = 20000, seed: int = 0) -> list:
    """Pre-process every trainable subject once. With ``partial_labels`` only the subjects it names train."""
    from training.data.preprocess import preprocess_subject
    from training.fit.sampling import make_case

    cases = []
    for i, s in enumerate(subjects):
        lab = _label_source(s, partial_labels)
        if lab is None:
            continue
        pp = preprocess_subject(s, pcfg, label=lab)
        assert pp.label is not None
        cases.append(make_case(s.id, pp.image, pp.label, max_candidates, seed + i))
    return cases


def _device(cfg: TrainConfig):
    import torch

    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _poly(max_epochs: int, power: float) -> Callable[[int], float]:
    return lambda e: max(0.0, 1.0 - e / max_epochs) ** power


def validate(model: Any, val_cases: list, patch: tuple[int, int, int], device: Any, amp_dtype: Any = None,
             overlap: float = 0.25, sw_batch_size: int = 2) -> dict[str, Any]:
    """Sliding-window prediction on pre-processed volumes; mean Dice per class and tissue mean."""
    import torch
    from monai.inferers import sliding_window_inference

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
    Torch's thread count, MONAI's meta tracking and cuDNN's benchmark flag are restored afterwards (training also runs
    in-process inside the server).
    """
    import torch
    from monai.data.meta_obj import get_track_meta, set_track_meta

    threads, track_meta, cudnn_benchmark = torch.get_num_threads(), get_track_meta(), torch.backends.cudnn.benchmark
    try:
        return _train(cfg, subjects, out_dir, partial_labels, val_subjects, init, progress, callback)
    finally:
        torch.set_num_threads(threads)
        set_track_meta(track_meta)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _train(cfg, subjects, out_dir, partial_labels, val_subjects, init, progress, callback) -> TrainResult:
    import torch
    from monai.data import set_track_meta
    from tqdm.auto import tqdm

    from training.fit.augment import build_augmentations
    from training.fit.loss import MaskedDiceCELoss
    from training.fit.sampling import PatchDataset
    from training.model.checkpoint import load_checkpoint, save_checkpoint
    from training.model.network import build_network, network_config

    cfg = cfg.resolved()
    out = Path(out_dir)
    if cfg.freeze == "none":  # transfer level "no fine-tuning": publish the init checkpoint as it is
        if init is None:
            raise TrainError("freeze level 'none' needs an init checkpoint")
        from training.fit.finetune import copy_without_training

        return copy_without_training(init, out, cfg.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    set_track_meta(False)  # plain tensors through the transforms: faster, and nothing needs the meta
    device = _device(cfg)
    if device.type == "cuda":  # fixed patch size: let cuDNN pick the fastest convolution once
        torch.backends.cudnn.benchmark = True
    amp_on = cfg.amp if cfg.amp is not None else device.type == "cuda"
    amp_dtype = None
    if amp_on:
        amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    torch.manual_seed(cfg.seed)

    pcfg = PreprocessConfig(modalities=tuple(cfg.modalities), crop_margin_mm=cfg.crop_margin_mm)
    net_cfg = network_config(cfg.preset, in_channels=len(cfg.modalities), patch_size=cfg.patch_size)
    net_cfg.age_head = bool(cfg.age_head)
    patch = tuple(net_cfg.patch_size)

    t0 = time.perf_counter()
    cases = load_cases(subjects, pcfg, partial_labels, cfg.sampling.max_candidates, cfg.seed)
    if not cases:
        raise TrainError("no trainable subject: none has a label" +
                         (" in partial_labels" if partial_labels is not None else ""))
    n_annot = sum(int((c.label != IGNORE).sum()) for c in cases)
    if n_annot == 0:
        raise TrainError("the training labels contain no annotated voxel (all 255)")
    val_cases = []
    if val_subjects:
        val_cases = load_cases([s for s in val_subjects if s.label is not None], pcfg, None, 1, cfg.seed)
    log.info("loaded %d training and %d validation subjects in %.1f s", len(cases), len(val_cases),
             time.perf_counter() - t0)

    iters = cfg.iterations_per_epoch or max(25, 4 * len(cases))
    aug = build_augmentations(cfg.augment, patch) if cfg.augment.enabled else None
    ds = PatchDataset(cases, patch, iters * cfg.batch_size, aug, cfg.sampling, seed=cfg.seed)
    workers = cfg.num_workers if cfg.num_workers is not None else (4 if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                                         drop_last=True, pin_memory=device.type == "cuda")

    model = build_network(net_cfg).to(device)
    # init weights + freeze level; frozen parameters stay out of the optimiser (no decay, no momentum)
    from training.fit.finetune import FreezeError, prepare_finetune, trainable_parameters

    try:
        freeze_report = prepare_finetune(model, init, cfg.freeze, net_cfg)
    except FreezeError as exc:
        raise TrainError(str(exc)) from exc
    params = trainable_parameters(model)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    age_term = None
    if cfg.age_head:
        from training.model.age import AgeTraining

        age_term = AgeTraining.for_cases(model, cases, subjects, cfg.age_weight)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _poly(cfg.epochs, cfg.poly_power))
    loss_fn = MaskedDiceCELoss(num_classes=net_cfg.out_channels)

    last_path, best_path = out / "last.pt", out / "best.pt"
    start_epoch, best_metric, history = 0, None, []
    if cfg.resume and last_path.is_file():
        ck = load_checkpoint(last_path, map_location=device)
        if ck.network.to_dict() != net_cfg.to_dict():
            raise TrainError(f"cannot resume {last_path}: it was trained with another network config")
        model.load_state_dict(ck.model.state_dict())
        if "optimizer" in ck.raw:
            opt.load_state_dict(ck.raw["optimizer"])
        if "scheduler" in ck.raw:
            sched.load_state_dict(ck.raw["scheduler"])
        start_epoch = ck.epoch
        # the schedule follows this run's ``epochs`` (a resume may extend the run): recompute the lr
        poly = _poly(cfg.epochs, cfg.poly_power)
        for g, base in zip(opt.param_groups, sched.base_lrs, strict=True):
            g["lr"] = base * poly(start_epoch)
        sched.lr_lambdas = [poly] * len(opt.param_groups)
        best_metric = ck.metrics.get("best_tissue_dice")
        history = list(ck.raw.get("extra", {}).get("history", []))
        log.info("resuming from %s at epoch %d", last_path, start_epoch)

    writer = None
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except Exception as exc:  # tensorboard missing/broken must not stop training
            log.warning("TensorBoard disabled: %s", exc)
    train_dict = {**cfg.to_dict(), "iterations_per_epoch": iters, "device": str(device),
                  "amp_dtype": str(amp_dtype) if amp_dtype else None, "n_train": len(cases),
                  "train_ids": [c.id for c in cases], "n_val": len(val_cases),
                  "init": str(init) if init is not None else None, "freeze_report": freeze_report.to_dict()}
    (out / "train_config.json").write_text(json.dumps(train_dict, indent=2, default=str))

    stopped = False
    t_start = time.perf_counter()
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        ds.set_epoch(epoch)
        t_ep = time.perf_counter()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(x)
            loss = loss_fn(outputs.float(), y)
            if age_term is not None:
                loss = age_term(loss, batch)  # + age_weight · MSE(normalised age)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        sched.step()
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                               "lr": float(opt.param_groups[0]["lr"]), "epoch_s": time.perf_counter() - t_ep,
                               "s_per_iteration": (time.perf_counter() - t_ep) / max(len(losses), 1)}
        if age_term is not None:
            rec["age_mse_normalised"] = age_term.epoch_mse()
        do_val = bool(val_cases) and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
        over_time = cfg.time_limit_s is not None and time.perf_counter() - t_start > cfg.time_limit_s
        if val_cases and over_time:
            do_val = True
        if do_val:
            v = validate(model, val_cases, patch, device, amp_dtype, cfg.val_overlap, cfg.val_sw_batch_size)
            rec["val_tissue_dice"] = v["tissue_dice"]
            rec["val_dice"] = {str(k): dv for k, dv in v["dice"].items()}
        improved = False
        if (do_val and not math.isnan(rec["val_tissue_dice"])
                and (best_metric is None or rec["val_tissue_dice"] > best_metric)):
            best_metric, improved = rec["val_tissue_dice"], True
        history.append(rec)
        if writer is not None:
            writer.add_scalar("train/loss", rec["loss"], epoch + 1)
            writer.add_scalar("train/lr", rec["lr"], epoch + 1)
            if do_val:
                writer.add_scalar("val/tissue_dice", rec["val_tissue_dice"], epoch + 1)
                for k, dv in rec["val_dice"].items():
                    writer.add_scalar(f"val/dice_{k}", dv, epoch + 1)
            writer.flush()
        metrics = {k: rec[k] for k in rec if k != "epoch"}
        metrics["best_tissue_dice"] = best_metric
        save_checkpoint(last_path, model, network=net_cfg, preprocess=pcfg, train_config=train_dict,
                        epoch=epoch + 1, metrics=metrics, optimizer=opt, scheduler=sched,
                        extra={"history": history})
        if improved or not val_cases:
            save_checkpoint(best_path, model, network=net_cfg, preprocess=pcfg, train_config=train_dict,
                            epoch=epoch + 1, metrics=metrics)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        msg = f"epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.4f} ({rec['epoch_s']:.0f} s)"
        if do_val:
            msg += f" val tissue Dice {rec['val_tissue_dice']:.4f}"
        log.info(msg)
        if progress:
            tqdm.write(msg)
        if callback is not None and callback(rec):
            stopped = True
            break
        if over_time:
            stopped = True
            break
    if writer is not None:
        writer.close()
    if not best_path.exists() and last_path.exists():  # validation never ran (e.g. stopped early)
        atomic_write(best_path, lambda tmp: shutil.copyfile(last_path, tmp))
    done = history[-1]["epoch"] if history else start_epoch
    return TrainResult(out_dir=out, best_path=best_path, last_path=last_path, epochs_completed=int(done),
                       best_metric=best_metric, history=history, n_train=len(cases), stopped_early=stopped)
