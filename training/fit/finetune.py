"""Transfer learning: freeze levels applied to the U-Net's *structure*, not to parameter names.

Why structure: the paper's public code listed parameter names per freeze level, and those lists
silently stopped matching when MONAI renamed modules. Here a level (:mod:`training.fit.freeze`
names them) is a depth measured from the bottleneck, and the blocks at each depth are found by
walking DynUNet's topology (:func:`training.model.levels.unet_levels`). Names are only used to
*report* what trains.

With a 4-level network (the ``tiny`` and ``cpu`` presets) ``deep`` already reaches level 0, so it
equals ``full``; with the 6-level ``paper`` preset the two outer levels stay frozen at ``deep``.
An age head (``training.model.age``) sits on the bottleneck and trains whenever the bottleneck does.

Frozen parameters get ``requires_grad = False`` *and* must be left out of the optimiser
(:func:`trainable_parameters`): then neither weight decay nor momentum can move them. Our
network normalises with instance norm without running statistics, so a frozen block has no
state that ``model.train()`` could still change (a BatchNorm variant would need its frozen
blocks kept in eval mode).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.fit.freeze import FREEZE_DEPTH, NEEDS_INIT, FreezeError, check_level
from training.fit.result import TrainResult
from training.model.checkpoint import load_checkpoint, save_checkpoint
from training.model.levels import UNetStructureError, bottleneck_extras, module_names, unet_levels
from training.model.network import NetworkConfig

log = logging.getLogger(__name__)


@dataclass
class FreezeReport:
    """What :func:`apply_freeze` left trainable (counts are parameter *elements*)."""

    level: str
    trainable_params: int
    frozen_params: int
    trained_modules: list[str] = field(default_factory=list)
    frozen_modules: list[str] = field(default_factory=list)
    max_depth: int | None = None  # deepest distance from the bottleneck that trains (None = all)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "trainable_params": self.trainable_params, "frozen_params": self.frozen_params,
                "trained_modules": list(self.trained_modules), "frozen_modules": list(self.frozen_modules),
                "max_depth": self.max_depth}

    def summary(self) -> str:
        total = self.trainable_params + self.frozen_params
        pct = 100.0 * self.trainable_params / total if total else 0.0
        return (f"freeze={self.level}: {self.trainable_params:,} of {total:,} parameters train ({pct:.1f} %); "
                f"trained: {', '.join(self.trained_modules) or '-'}")


def apply_freeze(model: nn.Module, level: str) -> FreezeReport:
    """Set ``requires_grad`` per freeze ``level`` on a DynUNet (optionally with an age head).

    ``none`` freezes everything; ``full``/``scratch`` train everything (loading or not loading
    weights is the caller's business, see :func:`prepare_finetune`). Every parameter must belong to
    a block of the U-Net structure (or the age head); otherwise the level would be ambiguous and a
    :class:`FreezeError` is raised. Use :func:`trainable_parameters` to build the optimiser.
    """
    lv = check_level(level)
    try:
        levels, bottleneck = unet_levels(model)
    except UNetStructureError as exc:
        raise FreezeError(str(exc)) from exc
    names = module_names(model)
    groups: list[tuple[int, list[nn.Module]]] = [(lvl.depth, lvl.modules) for lvl in levels]
    groups.append((0, [bottleneck, *bottleneck_extras(model)]))

    owner: dict[int, int] = {}  # id(param) -> depth
    for depth, mods in groups:
        for m in mods:
            for p in m.parameters():
                owner.setdefault(id(p), depth)
    params = list(model.parameters())
    if lv in FREEZE_DEPTH:  # a partial freeze must be able to place every parameter at a depth
        stray = [n for n, p in model.named_parameters() if id(p) not in owner]
        if stray:
            raise FreezeError(f"parameters outside the U-Net structure, cannot place them at a freeze level: "
                              f"{', '.join(stray[:5])}{' …' if len(stray) > 5 else ''}")
    max_depth = FREEZE_DEPTH.get(lv)

    def trains(p: torch.Tensor) -> bool:
        if lv == "none":
            return False
        if max_depth is None:
            return True
        return owner[id(p)] <= max_depth

    for p in params:
        p.requires_grad_(trains(p))
    trained, frozen = [], []
    for _depth, mods in sorted(groups, key=lambda g: g[0]):
        for m in mods:
            ps = list(m.parameters())
            if not ps:
                continue
            (trained if all(p.requires_grad for p in ps) else frozen).append(names.get(id(m), type(m).__name__))
    n_train = sum(p.numel() for p in params if p.requires_grad)
    n_frozen = sum(p.numel() for p in params if not p.requires_grad)
    return FreezeReport(lv, n_train, n_frozen, trained, frozen, max_depth)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``: what the optimiser may see (frozen ones stay out entirely)."""
    return [p for p in model.parameters() if p.requires_grad]


def load_init_weights(model: nn.Module, init: str | os.PathLike, network_cfg: NetworkConfig | None = None) -> list[str]:
    """Copy a checkpoint's weights into ``model``; returns the parameter names the checkpoint lacked.

    Networks must match except for an optional age head: fine-tuning a segmentation-only
    checkpoint into an AgeU-Net leaves the (new) age head randomly initialised; a checkpoint's age
    head is dropped when the target network has none.
    """
    ck = load_checkpoint(init)
    if network_cfg is not None:
        a = {k: v for k, v in ck.network.to_dict().items() if k != "age_head"}
        b = {k: v for k, v in network_cfg.to_dict().items() if k != "age_head"}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise FreezeError(f"init checkpoint {init} has another network config (differs in {', '.join(diff)}: "
                              f"preset {ck.network.preset}, patch {ck.network.patch_size}); cannot fine-tune it")
    src = {k: v for k, v in ck.model.state_dict().items() if not k.startswith("age_head.")}
    missing, unexpected = model.load_state_dict(src, strict=False)
    bad = [k for k in missing if not k.startswith("age_head.")]
    if bad or unexpected:
        raise FreezeError(f"init checkpoint {init} does not fit the network (missing {bad[:3]}, "
                          f"unexpected {list(unexpected)[:3]})")
    return list(missing)


def prepare_finetune(model: nn.Module, init: str | os.PathLike | None, level: str = "full",
                     network_cfg: NetworkConfig | None = None) -> FreezeReport:
    """Load ``init`` (unless ``scratch``) and apply the freeze ``level``: the one call the trainers make.

    ``shallow``/``medium``/``deep``/``none`` need ``init`` (freezing random weights is meaningless);
    ``scratch`` refuses an ``init`` (it would be ignored, which is surely not what was meant).
    """
    lv = check_level(level)
    if lv == "scratch" and init is not None:
        raise FreezeError("freeze level 'scratch' trains from random weights; do not pass an init checkpoint")
    if lv in NEEDS_INIT and init is None:
        raise FreezeError(f"freeze level {lv!r} needs an init checkpoint to start from")
    if init is not None:
        missing = load_init_weights(model, init, network_cfg)
        if missing:
            log.info("init %s: %d parameter tensors not in the checkpoint stay random (%s)", init, len(missing),
                     ", ".join(sorted({m.split('.')[0] for m in missing})))
    report = apply_freeze(model, lv)
    log.info(report.summary())
    return report


def iter_frozen(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Named parameters that are frozen (for tests and reports)."""
    for name, p in model.named_parameters():
        if not p.requires_grad:
            yield name, p


def copy_without_training(init: str | os.PathLike, out_dir: str | os.PathLike, train_config: dict) -> TrainResult:
    """Freeze level ``none``: publish the init checkpoint unchanged as ``best.pt``/``last.pt`` (epoch 0).

    Returns a :class:`training.fit.result.TrainResult`, so "no fine-tuning" flows through the same
    evaluation and publishing path as every other level.
    """
    ck = load_checkpoint(init)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"source_metrics": ck.metrics, "trained_epochs": 0}
    tc = {**train_config, "freeze": "none", "init": str(init)}
    result = untrained_result(out)
    for p in (result.last_path, result.best_path):
        save_checkpoint(p, ck.model, network=ck.network, preprocess=ck.preprocess, train_config=tc, epoch=0,
                        metrics=metrics)
    return result


def untrained_result(out_dir: str | os.PathLike) -> TrainResult:
    """What :func:`copy_without_training` returns, also for the DDP ranks that leave the copy to rank 0."""
    out = Path(out_dir)
    return TrainResult(out_dir=out, best_path=out / "best.pt", last_path=out / "last.pt", epochs_completed=0,
                       best_metric=None, history=[], n_train=0, stopped_early=False)
