"""Transfer learning: freeze levels defined on the U-Net's *structure*, not on parameter names.

Why structure: the paper's public code listed parameter names per freeze level, and those lists
silently stopped matching when MONAI renamed modules. Here a level is a depth measured from the
bottleneck, and the blocks at each depth are found by walking DynUNet's topology
(``skip_layers``: a chain of ``DynUNetSkipLayer(downsample, upsample, super_head, next_layer)``
ending in the bottleneck). Names are only used to *report* what trains.

Levels (Richter & Fetit 2022, transfer experiment), with ``d`` = distance from the bottleneck
(encoder block at resolution level ``i`` of an ``L``-level U-Net has ``d = L-1-i``; so has the
decoder block that outputs that level, its deep-supervision head and, at level 0, the output block):

* ``none``    — no training at all: the source model is evaluated as it is;
* ``shallow`` — ``d ≤ 1``: bottleneck + the directly adjacent encoder and decoder block;
* ``medium``  — ``d ≤ 2``: + one more encoder and decoder block on each side;
* ``deep``    — ``d ≤ 3``: + two more;
* ``full``    — every parameter trains (fine-tuning from the checkpoint);
* ``scratch`` — every parameter trains from random initialisation (the checkpoint is not loaded).

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
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

FREEZE_LEVELS: tuple[str, ...] = ("none", "shallow", "medium", "deep", "full", "scratch")
"""Valid ``freeze`` values; ``full`` is the default (everything trains, from ``init`` when given)."""

_DEPTH: dict[str, int] = {"shallow": 1, "medium": 2, "deep": 3}


class FreezeError(ValueError):
    """Unknown freeze level, a network whose U-Net structure cannot be found, or a bad init checkpoint."""


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


def check_level(level: str) -> str:
    """Normalised freeze level or a :class:`FreezeError` listing the valid ones."""
    lv = str(level).strip().lower()
    if lv not in FREEZE_LEVELS:
        raise FreezeError(f"unknown freeze level {level!r}; choose one of {', '.join(FREEZE_LEVELS)}")
    return lv


@dataclass
class UNetLevel:
    """The blocks at one resolution level (0 = full resolution) and their distance from the bottleneck."""

    index: int
    depth: int
    modules: list[nn.Module]


def unet_levels(model: nn.Module) -> tuple[list[UNetLevel], nn.Module]:
    """Walk a DynUNet's topology: per resolution level its encoder/decoder/head blocks, plus the bottleneck.

    Uses ``skip_layers`` (the chain DynUNet actually runs in ``forward``); falls back to the
    ``input_block``/``downsamples``/``upsamples`` lists if that chain is missing.
    """
    per_level: list[list[nn.Module]] = []
    layer = getattr(model, "skip_layers", None)
    if layer is not None and hasattr(layer, "next_layer"):
        while hasattr(layer, "next_layer") and hasattr(layer, "downsample"):
            mods = [layer.downsample, layer.upsample]
            head = getattr(layer, "super_head", None)
            if isinstance(head, nn.Module):
                mods.append(head)
            per_level.append(mods)
            layer = layer.next_layer
        bottleneck = layer
    else:
        try:
            enc = [model.input_block, *model.downsamples]
            dec = list(model.upsamples)[::-1]
            bottleneck = model.bottleneck
        except AttributeError as exc:
            raise FreezeError(f"{type(model).__name__} has no DynUNet structure (input_block/downsamples/"
                              f"bottleneck/upsamples): freeze levels need a U-Net") from exc
        if len(enc) != len(dec):
            raise FreezeError(f"encoder has {len(enc)} blocks but decoder {len(dec)}: not a DynUNet")
        heads = list(getattr(model, "deep_supervision_heads", []) or [])
        per_level = [[e, d] for e, d in zip(enc, dec, strict=True)]
        for i, h in enumerate(heads):  # DynUNet: head i reads the decoder output of level i + 1
            if i + 1 < len(per_level):
                per_level[i + 1].append(h)
    if bottleneck is None or not per_level:
        raise FreezeError(f"{type(model).__name__}: no encoder/decoder levels found")
    out_block = getattr(model, "output_block", None)
    if isinstance(out_block, nn.Module):
        per_level[0].append(out_block)
    n = len(per_level) + 1  # + bottleneck level
    levels = [UNetLevel(i, n - 1 - i, mods) for i, mods in enumerate(per_level)]
    return levels, bottleneck


def _bottleneck_extras(model: nn.Module) -> list[nn.Module]:
    """Modules that read the bottleneck and train with it (the AgeU-Net age head)."""
    head = getattr(model, "age_head", None)
    return [head] if isinstance(head, nn.Module) else []


def _names(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, mod in model.named_modules():  # first (shortest, registration-order) name wins
        names.setdefault(id(mod), name or type(mod).__name__)
    return names


def apply_freeze(model: nn.Module, level: str) -> FreezeReport:
    """Set ``requires_grad`` per freeze ``level`` on a DynUNet (optionally with an age head).

    ``none`` freezes everything; ``full``/``scratch`` train everything (loading or not loading
    weights is the caller's business, see :func:`prepare_finetune`). Every parameter must belong to
    a block of the U-Net structure (or the age head); otherwise the level would be ambiguous and a
    :class:`FreezeError` is raised. Use :func:`trainable_parameters` to build the optimiser.
    """
    lv = check_level(level)
    levels, bottleneck = unet_levels(model)
    names = _names(model)
    groups: list[tuple[int, list[nn.Module]]] = [(lvl.depth, lvl.modules) for lvl in levels]
    groups.append((0, [bottleneck, *_bottleneck_extras(model)]))

    owner: dict[int, int] = {}  # id(param) -> depth
    for depth, mods in groups:
        for m in mods:
            for p in m.parameters():
                owner.setdefault(id(p), depth)
    params = list(model.parameters())
    if lv not in ("full", "scratch", "none"):
        stray = [n for n, p in model.named_parameters() if id(p) not in owner]
        if stray:
            raise FreezeError(f"parameters outside the U-Net structure, cannot place them at a freeze level: "
                              f"{', '.join(stray[:5])}{' …' if len(stray) > 5 else ''}")
    max_depth = _DEPTH.get(lv)

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


def load_init_weights(model: nn.Module, init: str | os.PathLike, network_cfg: Any | None = None) -> list[str]:
    """Copy a checkpoint's weights into ``model``; returns the parameter names the checkpoint lacked.

    Networks must match except for an optional age head: fine-tuning a segmentation-only
    checkpoint into an AgeU-Net leaves the (new) age head randomly initialised; a checkpoint's age
    head is dropped when the target network has none.
    """
    from training.model.checkpoint import load_checkpoint

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
                     network_cfg: Any | None = None) -> FreezeReport:
    """Load ``init`` (unless ``scratch``) and apply the freeze ``level``: the one call the trainers make.

    ``shallow``/``medium``/``deep``/``none`` need ``init`` (freezing random weights is meaningless);
    ``scratch`` refuses an ``init`` (it would be ignored, which is surely not what was meant).
    """
    lv = check_level(level)
    if lv == "scratch" and init is not None:
        raise FreezeError("freeze level 'scratch' trains from random weights; do not pass an init checkpoint")
    if lv in ("none", "shallow", "medium", "deep") and init is None:
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


def copy_without_training(init: str | os.PathLike, out_dir: str | os.PathLike, train_config: dict) -> Any:
    """Freeze level ``none``: publish the init checkpoint unchanged as ``best.pt``/``last.pt`` (epoch 0).

    Returns a :class:`training.fit.train.TrainResult`, so "no fine-tuning" flows through the same
    evaluation and publishing path as every other level.
    """
    from pathlib import Path

    from training.fit.train import TrainResult
    from training.model.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(init)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"source_metrics": ck.metrics, "trained_epochs": 0}
    tc = {**train_config, "freeze": "none", "init": str(init)}
    last, best = out / "last.pt", out / "best.pt"
    for p in (last, best):
        save_checkpoint(p, ck.model, network=ck.network, preprocess=ck.preprocess, train_config=tc, epoch=0,
                        metrics=metrics)
    return TrainResult(out_dir=out, best_path=best, last_path=last, epochs_completed=0, best_metric=None,
                       history=[], n_train=0, stopped_early=False)
