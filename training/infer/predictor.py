"""Whole-volume prediction: preprocess → sliding window → paste back into the input's grid.

One :class:`Predictor` serves ``neolabel infer``, the MONAI Label infer task and the simulation's
evaluation; how it runs (fast or the paper's reference settings) is ``training.infer.settings``, the
window sizes ``training.infer.windows``, the head crop ``training.data.head``.

The network sees the preprocessed array (RAS, head crop, normalised: ``training.data.preprocess``);
``restore`` puts the result back, so the output always has the input's shape and affine whatever
its orientation. Only the full-resolution output of the deep-supervision DynUNet is used (in eval
mode DynUNet returns only that one).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from training.data import labels as L
from training.data.head import head_box
from training.data.nifti import Volume, read_header, save_volume
from training.data.preprocess import Preprocessed, preprocess, restore
from training.infer.settings import InferenceSettings, PredictError, resolve_precision, resolve_settings
from training.infer.windows import grow_box_to_window, stride_divisor, window_size
from training.model.checkpoint import load_checkpoint
from training.model.norms import with_fast_instance_norm

__all__ = [
    "PredictError",
    "PredictionStats",
    "Predictor",
    "class_argmax",
    "foreground_mask",
    "reference_predict",
]

RETRY_GROW_MM = 16.0  # how far a cut face of the head box moves out per retry


@dataclass
class PredictionStats:
    """What the last prediction did (windows, skips, fp32 fallbacks, timings): for benches and logs."""

    roi_size: tuple[int, ...] = ()
    crop_shape: tuple[int, ...] = ()
    windows: int = 0
    skipped: int = 0
    fp32_fallbacks: int = 0
    autocast: str = "fp32"
    seconds_preprocess: float = 0.0
    seconds_network: float = 0.0
    seconds_restore: float = 0.0
    extra: dict = field(default_factory=dict)


def _as_list(images: Any) -> list:
    if isinstance(images, str | os.PathLike | Volume | np.ndarray):
        return [images]
    return list(images)


def _device(device: str | torch.device | None) -> torch.device:
    """The requested device, else CUDA when present; a CUDA request without CUDA is an error."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device {device!r} requested but CUDA is not available")
    return dev


class Predictor:
    """Segment whole volumes with a trained network; the one inference path of the project.

    ``images`` everywhere is a sequence of NIfTI paths or :class:`~training.data.nifti.Volume` in the
    order of ``preprocess_cfg.modalities`` (T2w first); a single path/volume is accepted too.
    Keyword overrides (``roi_size``, ``overlap``, ``blend``, ``precision``, ``skip_empty``, ``tta``,
    ``sw_batch_size``, ``channels_last``, ...) replace fields of the chosen settings family.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        network_cfg: Any | None,
        preprocess_cfg: Any,
        device: str | torch.device | None = None,
        fast: bool = True,
        threads: int | None = None,
        generation: int = 0,
        **overrides: Any,
    ) -> None:
        self.device = _device(device)
        self.generation = int(generation)  # the checkpoint's model generation (active selection's schedule)
        self.network_cfg = network_cfg
        self.preprocess_cfg = preprocess_cfg
        self.fast = fast
        if threads is not None:
            if threads < 1:
                raise PredictError("threads must be ≥ 1")
            torch.set_num_threads(int(threads))
        patch = overrides.pop("patch_size", None) or getattr(network_cfg, "patch_size", None)
        self.patch_size = tuple(int(p) for p in patch) if patch is not None else None
        self.settings: InferenceSettings = resolve_settings(
            self.device, network_cfg, fast=fast, patch_size=self.patch_size, overrides=overrides
        )
        self.autocast_dtype = resolve_precision(self.settings.precision, self.device)
        self.divisor = stride_divisor(model, network_cfg)
        self.num_classes = int(getattr(network_cfg, "out_channels", L.NUM_CLASSES) or L.NUM_CLASSES)
        self.model = self._prepare_model(model)
        # background value of the normalised image (preprocess keeps zeros at 0 with normalize_nonzero)
        self.background_value: float | None = (
            0.0 if getattr(preprocess_cfg, "normalize_nonzero", False) else None
        )
        self.last_stats = PredictionStats()

    def _prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in eval mode on the device, in the settings' kernels and memory format."""
        s = self.settings
        if s.fast_norm:
            model = with_fast_instance_norm(model)  # a copy: the caller's model is left as it was
        elif s.channels_last:
            model = copy.deepcopy(model)
        model = model.eval().to(self.device)  # without a copy: the caller's model is put in eval mode
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        return model

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, fast: bool = True, **overrides: Any
    ) -> Predictor:
        """Load a checkpoint written by ``training.model.checkpoint.save_checkpoint``."""
        ck = load_checkpoint(path, map_location="cpu")
        return cls(ck.model, ck.network, ck.preprocess, device=device, fast=fast, generation=ck.generation,
                   **overrides)

    def describe(self) -> dict:
        """The resolved settings and device, for logs and the app's model info."""
        d = asdict(self.settings)
        d.update(
            device=str(self.device), autocast=str(self.autocast_dtype), divisor=self.divisor, fast=self.fast
        )
        return d

    # ------------------------------------------------------------------ core
    def _network(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self.model(x)
        if isinstance(out, list | tuple):
            out = out[0]
        if out.dim() == x.dim() + 1:  # deep-supervision stack (B, heads, C, ...): keep the main head
            out = out[:, 0]
        return out.float()

    def _window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one batch of windows: autocast with fp32 fallback, optional mirror TTA."""
        s = self.settings
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        flips: list[tuple[int, ...]] = [()]
        if s.tta:
            flips = [
                tuple(ax for ax, on in zip((2, 3, 4), bits, strict=True) if on)
                for bits in product((0, 1), repeat=3)
            ]
        acc = None
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            out = self._network(xi, self.autocast_dtype)
            if self.autocast_dtype is not None and not torch.isfinite(out).all():
                self.last_stats.fp32_fallbacks += 1
                out = self._network(xi, None)
            out = torch.flip(out, axes) if axes else out
            acc = out if acc is None else acc.add_(out)
        assert acc is not None
        if len(flips) > 1:
            acc /= len(flips)
        return acc  # channels-last when the model runs channels-last: argmax over classes stays cheap

    def _window_predictor(self, n_channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable handed to MONAI's sliding window (last input channel = foreground mask)."""
        s = self.settings

        def run(window: torch.Tensor) -> torch.Tensor:
            self.last_stats.windows += window.shape[0]
            if not s.skip_empty:
                return self._window_logits(window)
            img, fg = window[:, :n_channels], window[:, n_channels]
            has_fg = fg.flatten(1).amax(dim=1) > 0
            if bool(has_fg.all()):
                return self._window_logits(img)
            out = torch.full(
                (window.shape[0], self.num_classes, *window.shape[2:]),
                s.fill_logit,
                dtype=torch.float32,
                device=window.device,
            )
            out[:, L.OUTER_BACKGROUND] = 0.0
            n_skip = int((~has_fg).sum())
            self.last_stats.skipped += n_skip
            if n_skip < window.shape[0]:
                out[has_fg] = self._window_logits(img[has_fg])
            return out

        return run

    def logits_cropped(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Blended logits (K, X, Y, Z) float32 on the grid of the preprocessed ``image`` (C, X, Y, Z)."""
        s = self.settings
        x = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
        if x.dim() != 4:
            raise PredictError(f"expected a (C, X, Y, Z) array, got shape {tuple(x.shape)}")
        n_channels = int(x.shape[0])
        shape = tuple(int(v) for v in x.shape[1:])
        roi = self.window_size(shape)
        if any(r % d for r, d in zip(roi, self.divisor, strict=True)):
            raise PredictError(f"roi_size {tuple(roi)} must be a multiple of the network's total stride {self.divisor}")
        self.last_stats.roi_size, self.last_stats.crop_shape = tuple(roi), shape
        self.last_stats.autocast = (
            str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "fp32"
        )
        inp = x
        if s.skip_empty:
            inp = torch.cat([x, foreground_mask(x, self.background_value).unsqueeze(0).to(x.dtype)], dim=0)
        inp = inp.unsqueeze(0).to(self.device)
        with torch.inference_mode():
            if all(r >= n for r, n in zip(roi, shape, strict=True)):
                return self._single_window(inp, roi, n_channels)
            run = self._window_predictor(n_channels)
            out = sliding_window_inference(
                inp,
                roi_size=roi,
                sw_batch_size=s.sw_batch_size,
                predictor=lambda w: run(w).contiguous(),
                overlap=s.overlap,
                mode=s.blend,
                sigma_scale=s.sigma_scale,
                padding_mode="constant",
                cval=0.0,
                sw_device=self.device,
                device=self.device,
            )
        return torch.as_tensor(out)[0].float()

    def _single_window(self, inp: torch.Tensor, roi: Sequence[int], n_channels: int) -> torch.Tensor:
        """One window covers the volume: pad like MONAI's sliding window (zeros, centred), run, crop.

        Same result as ``sliding_window_inference`` with one window (its blending divides out), without
        its full-size importance, count and output buffers.
        """
        shape = inp.shape[2:]
        before = [(r - n) // 2 for r, n in zip(roi, shape, strict=True)]
        pad: list[int] = []
        for b, r, n in reversed(list(zip(before, roi, shape, strict=True))):
            pad += [b, r - n - b]
        x = torch.nn.functional.pad(inp, pad, mode="constant", value=0.0) if any(pad) else inp
        out = self._window_predictor(n_channels)(x)
        sl = tuple(slice(b, b + n) for b, n in zip(before, shape, strict=True))
        return out[(0, slice(None), *sl)].float()

    def window_size(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The sliding-window roi for a (cropped) volume of ``shape``: fixed, or planned (``plan_roi``)."""
        s = self.settings
        return window_size(
            shape,
            self.divisor,
            roi_size=s.roi_size,
            patch_size=self.patch_size,
            overlap=s.overlap,
            max_window_voxels=s.max_window_voxels,
            max_windows_per_axis=s.max_windows_per_axis,
        )

    def _preprocess(self, images: Any) -> tuple[Preprocessed, tuple[int, ...], np.ndarray]:
        """The network's input, and the shape and affine of the input's grid (read from the header only)."""
        items = _as_list(images)
        if not items:
            raise PredictError("no input image given")
        n_mod = len(getattr(self.preprocess_cfg, "modalities", ("T2w",)))
        if len(items) != n_mod:
            raise PredictError(
                f"the model expects {n_mod} image(s) ({', '.join(self.preprocess_cfg.modalities)}), "
                f"got {len(items)}"
            )
        first = items[0]
        if isinstance(first, Volume):
            shape, affine = tuple(first.shape), np.asarray(first.affine, float)
        else:
            shape, affine = read_header(first)
        return preprocess(items, None, self.preprocess_cfg), tuple(shape), affine

    def _run(self, images: Any) -> tuple[torch.Tensor, tuple[slice, ...], Any, tuple[int, ...], np.ndarray]:
        """Logits on the head box of the preprocessed grid, that box, the meta, the input shape and affine."""
        self.last_stats = PredictionStats()
        t0 = time.perf_counter()
        pre, shape, affine = self._preprocess(images)
        full = tuple(int(v) for v in pre.image.shape[1:])
        lo, hi = self._head_box(pre.image, pre.meta.spacing)
        t1 = time.perf_counter()
        self.last_stats.seconds_preprocess = t1 - t0
        logits, sl = self._logits_in_head_box(pre.image, lo, hi, pre.meta.spacing)
        self.last_stats.extra["preprocessed_shape"] = list(full)
        self.last_stats.seconds_network = time.perf_counter() - t1
        return logits, sl, pre.meta, shape, affine

    def _head_box(self, image: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """The first box to predict in: the detected head plus its margin, or the whole volume."""
        full = np.array(image.shape[1:])
        if self.settings.head_crop:
            box = head_box(image[0], spacing, self.settings.head_margin_mm, background=self.background_value)
            if box is not None:
                return box
        return np.zeros(3, int), full

    def _logits_in_head_box(
        self, image: np.ndarray, lo: np.ndarray, hi: np.ndarray, spacing: Sequence[float]
    ) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """Predict in the box; where brain reaches a cut face, widen the box there and predict again.

        The head crop's safety net: predicted brain on a cut face means the box was too tight there.
        """
        s = self.settings
        full = tuple(int(v) for v in image.shape[1:])
        grow = np.ceil(RETRY_GROW_MM / np.maximum(np.asarray(spacing), 1e-6)).astype(int)
        attempts = 1 + max(int(s.head_retries), 0)
        for attempt in range(attempts):
            if s.head_crop and s.roi_to_box:
                lo, hi = self._grow_to_window(lo, hi, full)
            sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            logits = self.logits_cropped(image[(slice(None), *sl)])
            if not s.head_crop or attempt == attempts - 1 or (lo == 0).all() and (hi == np.array(full)).all():
                break
            new_lo, new_hi = self._widen_cut_faces(logits, lo, hi, full, spacing, grow)
            if (new_lo == lo).all() and (new_hi == hi).all():
                break
            self.last_stats.extra["head_box_retries"] = attempt + 1
            lo, hi = new_lo, new_hi
        self.last_stats.extra["head_box"] = [[int(a), int(b)] for a, b in zip(lo, hi, strict=True)]
        return logits, sl

    def _widen_cut_faces(
        self,
        logits: torch.Tensor,
        lo: np.ndarray,
        hi: np.ndarray,
        full: Sequence[int],
        spacing: Sequence[float],
        grow: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The box with each inner face that cuts predicted brain moved out by ``grow`` voxels.

        Only brain (tissue classes) counts: a cut brain is worth a second pass, scattered voxels
        (< ``head_face_mm2``) or scalp at the margin are not.
        """
        lab = class_argmax(logits)
        lab = torch.isin(lab, torch.as_tensor(L.TISSUE, device=lab.device)).to(torch.uint8)
        sp = np.asarray(spacing, dtype=float)
        limit = self.settings.head_face_mm2
        new_lo, new_hi = lo.copy(), hi.copy()
        for ax in range(3):
            face_mm2 = float(np.prod(np.delete(sp, ax)))
            n_first = int(lab.select(ax, 0).sum())
            n_last = int(lab.select(ax, lab.shape[ax] - 1).sum())
            if lo[ax] > 0 and n_first * face_mm2 > limit:
                new_lo[ax] = max(lo[ax] - grow[ax], 0)
            if hi[ax] < full[ax] and n_last * face_mm2 > limit:
                new_hi[ax] = min(hi[ax] + grow[ax], full[ax])
        return new_lo, new_hi

    def _grow_to_window(
        self, lo: np.ndarray, hi: np.ndarray, full: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The box widened to the window planned for it (``windows.grow_box_to_window``)."""
        roi = self.window_size(tuple(int(v) for v in hi - lo))
        return grow_box_to_window(lo, hi, roi, full)

    def predict_probabilities(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (K, X, Y, Z) float32 on the input's grid (background 1 outside the head)."""
        logits, sl, meta, shape, affine = self._run(images)
        t = time.perf_counter()
        k = int(logits.shape[0])
        probs = np.zeros((k, *meta.shape), dtype=np.float32)
        probs[L.OUTER_BACKGROUND] = 1.0
        probs[(slice(None), *sl)] = torch.softmax(logits.float(), dim=0).cpu().numpy()
        out = np.empty((k, *shape), dtype=np.float32)
        out[0] = restore(probs[0], meta, fill=1.0)
        out[1:] = restore(probs[1:], meta, fill=0.0)
        self.last_stats.seconds_restore = time.perf_counter() - t
        return out, affine

    def predict(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Label volume (X, Y, Z) uint8 in the input's grid and its affine (the input's affine)."""
        logits, sl, meta, shape, affine = self._run(images)
        t = time.perf_counter()
        lab = np.full(meta.shape, L.OUTER_BACKGROUND, dtype=np.uint8)
        lab[sl] = class_argmax(logits).to(torch.uint8).cpu().numpy()
        out = np.asarray(restore(lab, meta, fill=L.OUTER_BACKGROUND)).astype(np.uint8, copy=False)
        if out.shape != shape:
            raise PredictError(f"internal error: restored shape {out.shape} differs from input shape {shape}")
        self.last_stats.seconds_restore = time.perf_counter() - t
        return out, affine

    def predict_file(
        self, image_paths: Any, out_path: str | Path, probabilities_path: str | Path | None = None
    ) -> Path:
        """Predict and write the label (uint8, input affine); optionally the probabilities (4D, float32)."""
        if probabilities_path is not None:
            probs, affine = self.predict_probabilities(image_paths)
            label = np.argmax(probs, axis=0).astype(np.uint8)
            save_volume(probabilities_path, np.moveaxis(probs, 0, -1), affine, dtype=np.float32)
        else:
            label, affine = self.predict(image_paths)
        return save_volume(out_path, label, affine, dtype=np.uint8)


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` over the class axis of (K, X, Y, Z) logits; ties go to the lower class, as ``torch.argmax``.

    On class-major (contiguous) logits ``torch.argmax(dim=0)`` walks memory with a stride of one volume
    (measured 3.2 s for a 217×290×288 volume on 2 cores); a running maximum over the K planes reads each
    plane once. Channels-last logits (the single-window path) are reduced directly.
    """
    if not logits.is_contiguous() or logits.shape[0] < 2:
        return torch.argmax(logits, dim=0)
    best = logits[0].clone()
    idx = torch.zeros(logits.shape[1:], dtype=torch.int64, device=logits.device)
    for k in range(1, int(logits.shape[0])):
        better = logits[k] > best
        best = torch.where(better, logits[k], best)
        idx.masked_fill_(better, k)
    return idx


def foreground_mask(image: torch.Tensor, background: float | None = 0.0) -> torch.Tensor:
    """Voxels that differ from the background value in any channel (``None``: the channel minimum).

    Used only to skip windows that contain no image at all (preprocess keeps background at exactly
    0), so it never drops head voxels; on noisy backgrounds nothing is skipped, which only costs time.
    """
    x = torch.as_tensor(image)
    if background is not None:
        return (x != background).any(dim=0)
    flat = x.flatten(1)
    lo = flat.amin(dim=1).view(-1, *([1] * (x.dim() - 1)))
    hi = flat.amax(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return (x > lo + (hi - lo) * 1e-4).any(dim=0)


def reference_predict(
    model: torch.nn.Module, network_cfg: Any, preprocess_cfg: Any, images: Any, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label with the paper's inference settings (roi = patch, overlap 0.5, constant, fp32, all windows)."""
    return Predictor(model, network_cfg, preprocess_cfg, device=device, fast=False).predict(images)
