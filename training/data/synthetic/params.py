"""Every random quantity of one synthetic subject, drawn from a seeded ``np.random.Generator``.

Why a separate step: the randomness of a subject (its size, pose, folding pattern, contrast,
noise) is drawn here once, into a frozen :class:`SubjectParams`; :mod:`.render` then turns those
parameters into volumes deterministically. So a subject can be inspected, stored, compared or
re-rendered without re-running the random stream, and the anatomy model can be changed without
touching how subjects are drawn.

The draw order and count are fixed (they define the bytes of every generated file): the
per-subject scalars, then the coarse coefficients of the three elastic displacement fields and the
two texture fields. The scanner stage (bias fields, Rician noise, residual bias) draws full-size
noise, which is not worth storing; its generator state is recorded instead
(:attr:`SubjectParams.scanner_state`) so render replays exactly that stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from training.data.labels import NUM_CLASSES

DEFAULT_SHAPE: tuple[int, int, int] = (54, 72, 72)
DEFAULT_SPACING: float = 2.0
AGE_RANGE: tuple[float, float] = (26.0, 45.5)
"""Scan ages (weeks post-menstrual) the anatomy model is meant for (dHCP: 26.7–45.1)."""

ELASTIC_CORR_MM: float = 18.0
"""Correlation length of the elastic displacement fields (one per axis)."""
TEXTURE_CORR_MM: tuple[float, float] = (4.0, 12.0)
"""Correlation lengths of the fine and coarse tissue-texture fields."""


class SyntheticError(ValueError):
    """Invalid generator arguments (shape, spacing, age, subject count, output folder)."""


# --------------------------------------------------------------------------------------------
# validation (shared by every module of the package)


def check_grid(shape: Sequence[int], spacing: float) -> tuple[tuple[int, int, int], float]:
    """Validated ``(shape, spacing)``: three integers in [8, 1024] and a spacing in (0, 20] mm."""
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"shape must be three integers, got {shape!r}") from exc
    if len(shp) != 3 or any(s < 8 for s in shp):
        raise SyntheticError(f"shape must be three integers ≥ 8, got {shape!r}")
    if any(s > 1024 for s in shp):
        raise SyntheticError(f"shape {shp} is too large (at most 1024 voxels a side)")
    try:
        sp = float(spacing)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"spacing must be a number in mm, got {spacing!r}") from exc
    if not np.isfinite(sp) or sp <= 0 or sp > 20:
        raise SyntheticError(f"spacing must be in (0, 20] mm, got {spacing!r}")
    return shp, sp  # type: ignore[return-value]


def check_age(scan_age: float) -> float:
    """Validated scan age in weeks (within :data:`AGE_RANGE`)."""
    try:
        age = float(scan_age)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"scan_age must be a number of weeks, got {scan_age!r}") from exc
    lo, hi = AGE_RANGE
    if not np.isfinite(age) or not lo <= age <= hi:
        raise SyntheticError(f"scan_age {scan_age!r} outside the supported range {lo}–{hi} weeks")
    return age


# --------------------------------------------------------------------------------------------
# smooth random fields: a correlation length and coarse Gaussian coefficients


def field_size(shape: Sequence[int], spacing: float, corr_mm: float) -> tuple[int, int, int]:
    """Control-grid size of a smooth field with correlation length ``corr_mm`` on this grid."""
    return tuple(max(2, int(np.ceil(n * spacing / corr_mm)) + 3) for n in shape)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class SmoothField:
    """The random part of a smooth Gaussian field: coarse coefficients (float32, read-only).

    :func:`training.data.synthetic.render.smooth_field` expands them with a separable Gaussian
    basis into a full-size, unit-variance field.
    """

    corr_mm: float
    coeff: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SmoothField):
            return NotImplemented
        return self.corr_mm == other.corr_mm and np.array_equal(self.coeff, other.coeff)

    __hash__ = None  # type: ignore[assignment]


def draw_field(rng: np.random.Generator, shape: Sequence[int], spacing: float, corr_mm: float) -> SmoothField:
    """Draw the coefficients of one smooth field (consumes one coarse block of normals)."""
    coeff = rng.standard_normal(field_size(shape, spacing, corr_mm)).astype(np.float32)
    coeff.setflags(write=False)
    return SmoothField(corr_mm=float(corr_mm), coeff=coeff)


# --------------------------------------------------------------------------------------------
# the parameters of one subject


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


def _vec(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in a)


@dataclass(frozen=True, eq=False)
class SubjectParams:
    """Everything random about one subject on one voxel grid; render makes it into volumes.

    Arrays are read-only; two params compare equal when every field is equal. The field
    coefficients depend on the grid, so the grid (``shape``, ``spacing``) is part of the params.
    """

    scan_age: float
    shape: tuple[int, int, int]
    spacing: float
    # anatomy: size, shape and pose
    size_jitter: float
    axes_jitter: tuple[float, float, float]
    rotation_rad: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    ventricle_jitter: float
    cerebellum_jitter: float
    folding_jitter: float
    wave_dirs: np.ndarray  # (7, 3) directions of the cortical folding plane waves (unnormalised)
    wave_phase: np.ndarray  # (7,)
    elastic_amp: float  # elastic displacement amplitude, mm at term size
    # contrast and scanner
    blur_sigma: float  # partial-volume blur, voxels
    noise_sd: tuple[float, float]  # Rician noise (T2, T1), relative to the image scale
    t2_scale: float
    t1_scale: float
    lut_jitter: np.ndarray  # (2, NUM_CLASSES) multiplicative jitter of the T2 / T1 class intensities
    fluid_t2: float  # dura / extra-cerebral fluid inside the skull
    scalp_t2: float
    scalp_t1: float
    soft_t2: float
    soft_t1: float
    bias_sd: tuple[float, float]  # log bias-field standard deviation (T2, T1)
    folia_phase: float
    # smooth random fields
    elastic: tuple[SmoothField, SmoothField, SmoothField]
    texture: tuple[SmoothField, SmoothField]  # fine, coarse
    scanner_state: str
    """JSON of the bit-generator state that the scanner stage (bias fields, Rician noise, residual
    bias) draws from; :meth:`scanner_rng` rebuilds that generator."""

    def scanner_rng(self) -> np.random.Generator:
        """A fresh generator positioned where the scanner stage's draws begin."""
        state = json.loads(self.scanner_state)
        bit_gen = getattr(np.random, state["bit_generator"])()
        bit_gen.state = state
        return np.random.Generator(bit_gen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubjectParams):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            same = np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            if not same:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def _state_json(rng: np.random.Generator) -> str:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, np.integer):
            return int(x)
        return x

    return json.dumps(plain(rng.bit_generator.state), sort_keys=True)


def draw_params(
    seed: int | np.random.Generator,
    scan_age: float,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
) -> SubjectParams:
    """Draw one subject at ``scan_age`` weeks on the given grid.

    The number of draws does not depend on the age, so the same seed at different ages gives the
    same "individual" at different sizes and folding stages. A generator passed in is advanced by
    the draws stored here (the scanner stage is replayed from :attr:`SubjectParams.scanner_state`).
    """
    shp, sp = check_grid(shape, spacing)
    age = check_age(scan_age)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # per-subject scalars: fixed draw order and count
    size_jit = rng.uniform(0.98, 1.02)
    axes_jit = rng.uniform(0.97, 1.03, 3)
    angles = np.deg2rad(rng.uniform(-6.0, 6.0, 3))
    shift = rng.uniform(-1.0, 1.0, 3) * np.array([2.0, 3.0, 3.0])
    vent_jit = rng.uniform(0.85, 1.25)
    cb_jit = rng.uniform(0.92, 1.08)
    fold_jit = rng.uniform(0.85, 1.15)
    wave_dirs = rng.standard_normal((7, 3))
    wave_phase = rng.uniform(0, 2 * np.pi, 7)
    elastic_amp = rng.uniform(1.5, 3.0)
    blur_sigma = rng.uniform(0.35, 0.6)
    noise_sd = rng.uniform(0.02, 0.045, 2)
    t2_scale, t1_scale = rng.uniform(800, 1200), rng.uniform(600, 1000)
    lut_jit = 1.0 + rng.normal(0.0, 0.04, (2, NUM_CLASSES))
    fluid_t2 = rng.uniform(0.3, 0.95)  # CSF-like for some subjects
    scalp_t2, scalp_t1 = rng.uniform(0.35, 0.7), rng.uniform(0.6, 0.95)
    soft_t2, soft_t1 = rng.uniform(0.25, 0.5), rng.uniform(0.35, 0.6)
    bias_sd = rng.uniform(0.25, 0.4, 2)
    folia_phase = rng.uniform(0, 2 * np.pi)
    # then the coarse field coefficients, in the order render uses them
    elastic = tuple(draw_field(rng, shp, sp, ELASTIC_CORR_MM) for _ in range(3))
    texture = tuple(draw_field(rng, shp, sp, c) for c in TEXTURE_CORR_MM)
    return SubjectParams(
        scan_age=age,
        shape=shp,
        spacing=sp,
        size_jitter=float(size_jit),
        axes_jitter=_vec(axes_jit),
        rotation_rad=_vec(angles),
        shift_mm=_vec(shift),
        ventricle_jitter=float(vent_jit),
        cerebellum_jitter=float(cb_jit),
        folding_jitter=float(fold_jit),
        wave_dirs=_frozen(wave_dirs),
        wave_phase=_frozen(wave_phase),
        elastic_amp=float(elastic_amp),
        blur_sigma=float(blur_sigma),
        noise_sd=_vec(noise_sd),
        t2_scale=float(t2_scale),
        t1_scale=float(t1_scale),
        lut_jitter=_frozen(lut_jit),
        fluid_t2=float(fluid_t2),
        scalp_t2=float(scalp_t2),
        scalp_t1=float(scalp_t1),
        soft_t2=float(soft_t2),
        soft_t1=float(soft_t1),
        bias_sd=_vec(bias_sd),
        folia_phase=float(folia_phase),
        elastic=elastic,  # type: ignore[arg-type]
        texture=texture,  # type: ignore[arg-type]
        scanner_state=_state_json(rng),
    )


# --------------------------------------------------------------------------------------------
# study sets: subject k depends only on (seed, k)


@dataclass(frozen=True)
class SubjectInfo:
    """Metadata of subject ``index`` of a study set (what goes into the tsv files)."""

    index: int
    participant_id: str  # without "sub-", as in dHCP participants.tsv
    session_id: str  # numeric, without "ses-"
    scan_age: float
    birth_age: float
    sex: str

    @property
    def image_id(self) -> str:
        return f"sub-{self.participant_id}_ses-{self.session_id}"


def _age_quantile(q: float) -> float:
    """dHCP-like scan-age distribution: 25 % preterm (26.7–37 w, uniform), 75 % triangular 37–45.1 w
    with mode 40.6 (dHCP median)."""
    if q < 0.25:
        return 26.7 + (q / 0.25) * (37.0 - 26.7)
    x = (q - 0.25) / 0.75
    a, c, b = 37.0, 40.6, 45.1
    fc = (c - a) / (b - a)
    if x < fc:
        return a + np.sqrt(x * (b - a) * (c - a))
    return b - np.sqrt((1 - x) * (b - a) * (b - c))


def subject_info(index: int, seed: int = 0) -> SubjectInfo:
    """Metadata of subject ``index`` (0-based); depends only on ``(seed, index)``.

    Ages follow a golden-ratio sequence through the age distribution's quantiles, so any first
    ``N`` subjects spread over the whole range (a few preterm, most near term) instead of clumping.
    """
    if index < 0:
        raise SyntheticError(f"subject index must be ≥ 0, got {index}")
    phase = np.random.default_rng([int(seed), 0x5EED]).random()
    rng = np.random.default_rng([int(seed), int(index), 1])
    q = (phase + index * 0.6180339887498949) % 1.0
    age = float(np.clip(_age_quantile(q) + rng.uniform(-0.2, 0.2), 26.7, 45.1))
    if age < 37.0:
        birth = age - rng.uniform(0.0, 1.5)
    elif rng.random() < 0.2:  # born preterm, scanned at term-equivalent age
        birth = rng.uniform(24.0, 36.5)
    else:
        birth = age - rng.uniform(0.0, min(3.0, age - 37.0))
    sex = "female" if rng.random() < 0.47 else "male"
    return SubjectInfo(
        index=index,
        participant_id=f"SYN{index + 1:04d}",
        session_id=str(1000 + index + 1),
        scan_age=round(age, 2),
        birth_age=round(float(birth), 2),
        sex=sex,
    )


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of subject ``index`` of a study set with ``seed`` (independent of the count)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 2]))


def draw_study_params(
    index: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
) -> tuple[SubjectInfo, SubjectParams]:
    """Metadata and parameters of subject ``index`` of a study set; depend only on ``(seed, index)``."""
    info = subject_info(index, seed)
    return info, draw_params(subject_rng(seed, index), info.scan_age, shape, spacing)
