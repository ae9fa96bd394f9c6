"""Checkpoints that carry everything needed to use them: weights, resolved configs, class table, version.

Written atomically (temp file in the same folder + ``os.replace``): a crash mid-save, or a server
reloading the model while training writes, never sees a half-written file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from training.data.labels import LABEL_VERSION, class_table
from training.data.nifti import atomic_write
from training.data.preprocess import PreprocessConfig
from training.model.network import NetworkConfig, build_network

CHECKPOINT_VERSION = 1
FORMAT = "neolabel-checkpoint"
GENERATION = "generation"
"""``extra`` entry: which published model of an annotation project this is (0 = the first; see
:func:`copy_with_generation`). Active selection's noise schedule runs on it, so it travels with the weights."""


class CheckpointError(ValueError):
    """A file that is not a readable neolabel checkpoint."""


def _package_version() -> str:
    try:
        return version("neolabel")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _plain(obj: Any) -> Any:
    """JSON-plain copy (numpy scalars → float, tuples → lists, paths → str) so ``weights_only`` loads it."""
    def default(o: Any) -> Any:
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


@dataclass
class Checkpoint:
    model: torch.nn.Module
    network: NetworkConfig
    preprocess: PreprocessConfig
    train_config: dict
    epoch: int
    metrics: dict
    class_table: list
    version: dict
    raw: dict = field(repr=False)

    @property
    def generation(self) -> int:
        return _generation(self.raw)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state on the CPU, a tensor the model shares between names copied once.

    DynUNet lists its skip layers under two names; ``v.cpu()`` per name would store a GPU model's
    shared weights twice (a 240 MiB paper checkpoint instead of 120 MiB).
    """
    copies: dict[tuple, torch.Tensor] = {}
    state = {}
    for k, v in model.state_dict().items():
        key = (v.device, v.dtype, v.data_ptr(), tuple(v.shape), v.stride(), v.storage_offset())
        if key not in copies:
            copies[key] = v.detach().cpu()
        state[k] = copies[key]
    return state


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    network: NetworkConfig,
    preprocess: PreprocessConfig,
    train_config: dict,
    epoch: int,
    metrics: dict,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict | None = None,
) -> Path:
    """Atomically write a checkpoint (weights + configs + class table + version [+ optimizer state])."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = cpu_state_dict(model)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": {"checkpoint": CHECKPOINT_VERSION, "labels": LABEL_VERSION, "package": _package_version(),
                    "torch": str(torch.__version__)},
        "state_dict": state,
        "network": network.to_dict(),
        "preprocess": preprocess.to_dict(),
        "train_config": _plain(train_config),
        "epoch": int(epoch),
        "metrics": _plain(metrics),
        "class_table": class_table(),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if extra:
        payload["extra"] = _plain(extra)
    return atomic_write(p, lambda tmp: torch.save(payload, tmp))


def _generation(raw: dict) -> int:
    return int((raw.get("extra") or {}).get(GENERATION, 0))


def _read_raw(p: Path, map_location: str | torch.device = "cpu") -> dict:
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        # weights_only=True: a checkpoint is data, never code (only tensors and plain containers inside)
        raw = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p}: not a readable checkpoint ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a neolabel checkpoint")
    return raw


def checkpoint_generation(path: str | os.PathLike) -> int:
    """The stored generation of a checkpoint (0 when none was stored: a first or an imported model)."""
    return _generation(_read_raw(Path(path)))


def copy_with_generation(src: str | os.PathLike, dst: str | os.PathLike, generation: int) -> Path:
    """Atomically write ``src`` to ``dst`` as model generation ``generation`` (weights and configs unchanged)."""
    raw = _read_raw(Path(src))
    raw["extra"] = {**(raw.get("extra") or {}), GENERATION: int(generation)}
    return atomic_write(Path(dst), lambda tmp: torch.save(raw, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint and rebuild its network (eval mode) from the stored config."""
    p = Path(path)
    raw = _read_raw(p, map_location)
    ver = raw.get("version", {})
    if int(ver.get("checkpoint", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format {ver.get('checkpoint')} is newer than supported "
                              f"({CHECKPOINT_VERSION}); upgrade neolabel")
    if ver.get("labels") != LABEL_VERSION:
        raise CheckpointError(f"{p}: trained for label table {ver.get('labels')!r}, this build uses {LABEL_VERSION!r}")
    net_cfg = NetworkConfig.from_dict(raw["network"])
    model = build_network(net_cfg)
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: weights do not match the stored network config ({exc})") from exc
    model.to(map_location)
    model.eval()
    return Checkpoint(
        model=model,
        network=net_cfg,
        preprocess=PreprocessConfig.from_dict(raw["preprocess"]),
        train_config=dict(raw.get("train_config", {})),
        epoch=int(raw.get("epoch", 0)),
        metrics=dict(raw.get("metrics", {})),
        class_table=list(raw.get("class_table", [])),
        version=dict(ver),
        raw=raw,
    )
