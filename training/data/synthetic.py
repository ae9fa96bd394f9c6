"""Synthetic dHCP-like neonatal brain MRI (T2w, T1w, drawem9 label) for tests, demos and benchmarks.

Why: the real dHCP data cannot ship with the project, yet every part (data reading, budget
planning, masked training, the server, simulation) needs volumes that look and are laid out like
dHCP release 3. The generator draws an anatomical label geometry on coordinate grids (ellipsoids,
tubes and a folded cortical ribbon, warped by a smooth per-subject displacement field and a small
rigid jitter), then renders neonatal contrasts (T2: fluid brightest, unmyelinated white matter
brighter than cortex; T1 roughly inverted) with texture, partial-volume blur, a strong smooth bias
field (raw images) and Rician noise. Several classes share intensities on purpose (ventricles =
CSF, hippocampus ≈ cortex, deep GM ≈ cortex, brainstem ≈ white matter, eyes and dura ≈ CSF), so a
model must use spatial context, as with real data.

Numpy/scipy/nibabel only. Everything is seeded: subject ``k`` of a study set depends only on
``(seed, k)``, so the same seed gives byte-identical files whatever the number of subjects.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.data.labels import BRAIN, NUM_CLASSES
from training.data.nifti import atomic_write_text, save_volume

DEFAULT_SHAPE: tuple[int, int, int] = (54, 72, 72)
DEFAULT_SPACING: float = 2.0
AGE_RANGE: tuple[float, float] = (26.0, 45.5)
"""Scan ages (weeks post-menstrual) the anatomy model is meant for (dHCP: 26.7–45.1)."""
IMAGE_SUFFIXES: tuple[str, ...] = ("T2w", "desc-restore_T2w", "T1w", "desc-restore_T1w")
LABEL_SUFFIX = "desc-drawem9_dseg"
MASK_SUFFIX = "desc-brain_mask"

# Brain (cerebrum) semi-axes at 40 weeks in mm: left-right, posterior-anterior, inferior-superior.
_TERM_AXES = np.array([39.0, 51.0, 36.0])
# Where the cerebrum centre sits in the field of view (mm, RAS); slightly superior like dHCP.
_CENTRE = np.array([0.0, 0.0, 6.0])


class SyntheticError(ValueError):
    """Invalid generator arguments (shape, spacing, age, subject count, output folder)."""


@dataclass
class SyntheticSubject:
    """One generated session held in memory (images float32, label and mask uint8, RAS affine)."""

    t2w: np.ndarray
    """Bias-corrected T2w (``desc-restore_T2w``): the training input."""
    t1w: np.ndarray
    """Bias-corrected T1w (``desc-restore_T1w``)."""
    label: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    scan_age: float
    t2w_raw: np.ndarray
    t1w_raw: np.ndarray
    head_circumference: float
    """Head circumference in cm (axial ellipse of the head surface), as in dHCP sessions.tsv."""
    spacing: float = DEFAULT_SPACING
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.label.shape)

    def class_fractions(self) -> np.ndarray:
        """Fraction of voxels per drawem9 class (length ``NUM_CLASSES``)."""
        counts = np.bincount(self.label.ravel(), minlength=NUM_CLASSES).astype(float)
        return counts / counts.sum()


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


# --------------------------------------------------------------------------------------------
# validation


def _check_shape_spacing(shape, spacing) -> tuple[tuple[int, int, int], float]:
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
    return shp, sp


def _check_age(scan_age) -> float:
    try:
        age = float(scan_age)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"scan_age must be a number of weeks, got {scan_age!r}") from exc
    lo, hi = AGE_RANGE
    if not np.isfinite(age) or not lo <= age <= hi:
        raise SyntheticError(f"scan_age {scan_age!r} outside the supported range {lo}–{hi} weeks")
    return age


# --------------------------------------------------------------------------------------------
# smooth random fields and geometry helpers


def _smooth_field(rng: np.random.Generator, shape, spacing: float, corr_mm: float) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation (float32).

    A separable Gaussian-kernel basis on a coarse control grid: three small matrix products, so a
    217×290×290 field costs a fraction of a second (no full-size filtering or interpolation).
    """
    mats = []
    for n in shape:
        ext = n * spacing
        m = max(2, int(np.ceil(ext / corr_mm)) + 3)
        centres = np.linspace(-corr_mm, ext + corr_mm, m)
        pos = (np.arange(n) + 0.5) * spacing
        mats.append(np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / corr_mm) ** 2).astype(np.float32))
    coeff = rng.standard_normal(tuple(w.shape[1] for w in mats)).astype(np.float32)
    f = np.tensordot(mats[0], coeff, axes=(1, 0))  # (X, b, c)
    f = np.tensordot(f, mats[1], axes=(1, 1))  # (X, c, Y)
    f = np.tensordot(f, mats[2], axes=(1, 1))  # (X, Y, Z)
    f = np.ascontiguousarray(f, dtype=np.float32)
    sub = f[::3, ::3, ::3]
    f -= np.float32(sub.mean())
    f /= np.float32(max(float(sub.std()), 1e-6))
    return f


def _rotation(angles: np.ndarray) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ell(u, v, w, c, r) -> np.ndarray:
    """Squared normalised ellipsoid radius (< 1 inside)."""
    return ((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2


def _age_scale(age: float) -> float:
    """Linear brain size relative to 40 weeks (brain volume ≈ 400 ml + 23 ml/week, cube root)."""
    vol = max(60.0, 400.0 + 23.0 * (age - 40.0))
    return float((vol / 400.0) ** (1.0 / 3.0))


def affine_for(shape, spacing: float) -> np.ndarray:
    """RAS affine: axis 0 left→right, 1 posterior→anterior, 2 inferior→superior, centred."""
    shp, sp = _check_shape_spacing(shape, spacing)
    aff = np.diag([sp, sp, sp, 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * sp for n in shp]
    return aff


# --------------------------------------------------------------------------------------------
# the generator


def generate_subject(
    scan_age: float,
    seed: int | np.random.Generator,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
) -> SyntheticSubject:
    """Generate one synthetic neonatal session at ``scan_age`` weeks.

    The number of random draws does not depend on the age, so the same seed at different ages
    gives the same "individual" at different sizes and folding stages.
    """
    shp, sp = _check_shape_spacing(shape, spacing)
    age = _check_age(scan_age)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    f32 = np.float32

    mat = float(np.clip((age - 28.0) / 14.0, 0.0, 1.0))  # cortical maturation 0 (28 w) .. 1 (42 w)
    pre = float(np.clip((40.0 - age) / 14.0, 0.0, 1.0))  # prematurity 0 (term) .. 1 (26 w)

    # ---- per-subject scalars (fixed draw order and count) ----
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
    fluid_t2 = rng.uniform(0.3, 0.95)  # dura / extra-cerebral fluid inside the skull: CSF-like for some
    scalp_t2, scalp_t1 = rng.uniform(0.35, 0.7), rng.uniform(0.6, 0.95)
    soft_t2, soft_t1 = rng.uniform(0.25, 0.5), rng.uniform(0.35, 0.6)
    bias_sd = rng.uniform(0.25, 0.4, 2)
    folia_phase = rng.uniform(0, 2 * np.pi)

    s = _age_scale(age) * size_jit
    axes = _TERM_AXES * s * axes_jit  # cerebrum semi-axes (mm)
    r_mean = float(np.cbrt(np.prod(axes)))
    thick_mm = max(1.7 - 0.2 * mat, 1.05 * sp)  # cortical ribbon
    csf_mm = max(2.0 + 1.5 * pre, 1.05 * sp)  # extra-axial CSF
    ring_mm = max(5.0 * s, 1.6 * sp)  # scalp + skull
    head_axes = axes + csf_mm + ring_mm

    # ---- coordinates: rigid jitter + elastic displacement, in mm in the head frame ----
    rot = _rotation(angles)
    t = _CENTRE + shift
    g = [((np.arange(n, dtype=f32) - f32((n - 1) / 2.0)) * f32(sp)) for n in shp]
    gx = (g[0] - f32(t[0]))[:, None, None]
    gy = (g[1] - f32(t[1]))[None, :, None]
    gz = (g[2] - f32(t[2]))[None, None, :]
    p = []
    for i in range(3):  # p = R^T (x - t) + d(x)
        pi = f32(rot[0, i]) * gx + f32(rot[1, i]) * gy + f32(rot[2, i]) * gz
        pi = np.array(np.broadcast_to(pi, shp), dtype=f32)
        pi += f32(elastic_amp * s) * _smooth_field(rng, shp, sp, 18.0)
        p.append(pi)
    px, py, pz = p

    # ---- head: ellipsoid + neck + face; everything inside is label 4 to start with ----
    lab = np.zeros(shp, np.uint8)
    hx, hy, hz = px / f32(head_axes[0]), py / f32(head_axes[1]), pz / f32(head_axes[2])
    q_head = hx * hx + hy * hy + hz * hz
    # the neck ends above the field of view's lower edge, so head volume scales with the head alone
    neck_end = (np.minimum(hz + f32(1.0), 0) / f32(0.45)) ** 2
    neck = (hx / f32(0.62)) ** 2 + ((hy + f32(0.12)) / f32(0.62)) ** 2 + neck_end < 1
    neck &= hz < 0
    face = _ell(hx, hy, hz, (0.0, 0.5, -0.5), (0.6, 0.5, 0.5)) < 1
    head = (q_head < 1) | neck | face
    lab[head] = 4
    del neck

    # ---- cerebrum in brain-normalised coordinates ----
    u, v, w = px / f32(axes[0]), py / f32(axes[1]), pz / f32(axes[2])
    wa = np.where(w < 0, w / f32(0.88), w)  # flatter base
    ua = u * (1 + f32(0.12) * np.clip(v, 0, 1))  # narrower frontal lobes
    rho = np.sqrt(ua * ua + v * v + wa * wa)
    del ua, wa
    depth = (0.02 + 0.26 * mat**1.3) * fold_jit  # sulcal depth (ρ units), ~10 mm at term
    csf_r = csf_mm / r_mean

    # cerebellum (posterior-inferior) with a posterior midline notch; brainstem (inferior midline)
    cb_c = (0.0, -0.6, -0.6)
    cb_r = np.array([0.6, 0.35, 0.31]) * (0.85 + 0.15 * mat) * cb_jit
    q_cb = _ell(u, v, w, cb_c, cb_r)
    q_cb += f32(0.8) * np.exp(-((u / f32(0.07)) ** 2)) * np.clip((f32(cb_c[1]) - v) / f32(cb_r[1]), 0, 1)
    vc = f32(-0.2) + f32(0.125) * (w + f32(0.2))
    rv = f32(0.13) + f32(0.05) * np.exp(-(((w + f32(0.5)) / f32(0.15)) ** 2))  # pons bulge
    rv = np.maximum(rv, f32(0.75 * sp / axes[1]))
    q_bs = (u / f32(max(0.115, 0.75 * sp / axes[0]))) ** 2 + ((v - vc) / rv) ** 2
    q_bs[(w > -0.1) | (w < -1.25)] = np.inf  # midbrain .. medulla
    del vc, rv

    # extra-axial CSF around all brain parts (dilated envelopes), then the brain parts
    cb_gap = csf_mm / float(np.cbrt(np.prod(cb_r * axes)))
    bs_gap = csf_mm / (0.12 * axes[0])
    env = (rho < 1 + csf_r) | (q_cb < (1 + cb_gap) ** 2) | (q_bs < (1 + bs_gap) ** 2)
    lab[env] = 1
    del env, head
    lab[rho < 1] = 3
    _fold_cortex(
        lab, rho, (px, py, pz), v, w, r_mean, thick_mm, depth * r_mean, sp, mat, s, wave_dirs, wave_phase
    )
    cereb = lab == 2
    cereb |= lab == 3
    tent = cereb & (q_cb < (1 + cb_gap) ** 2)  # tentorium: CSF between occipital lobe and cerebellum
    lab[tent] = 1
    del cereb, tent
    lab[q_cb < 1] = 6
    lab[q_bs < 1] = 8

    # deep structures on the central region only (cheap at full size)
    core = np.flatnonzero((rho < 0.8).ravel())
    if core.size:
        cu, cv, cw = u.ravel()[core], v.ravel()[core], w.ravel()[core]
        au = np.abs(cu)
        cl = lab.ravel()[core].copy()
        inside = (cl == 2) | (cl == 3) | (cl == 8)
        vf = (1.0 + 0.7 * pre) * vent_jit  # ventricles relatively larger in preterm

        def fl(r: tuple[float, float, float]) -> tuple[float, float, float]:
            # keep small structures at least ~1.5 voxels across so every class survives coarse grids
            return tuple(max(ri, 0.75 * sp / axes[i]) for i, ri in enumerate(r))

        dgm = (
            (_ell(au, cv, cw, (0.14, -0.12, -0.03), fl((0.16, 0.24, 0.17))) < 1)  # thalami
            | (_ell(au, cv, cw, (0.32, 0.08, 0.0), fl((0.1, 0.26, 0.17))) < 1)  # lentiform nuclei
            | (_ell(au, cv, cw, (0.18, 0.26, 0.12), fl((0.08, 0.16, 0.13))) < 1)  # caudate heads
        )
        cl[dgm & inside] = 7
        hip_w = f32(-0.32) - f32(0.4) * (cv + f32(0.12))  # posterior end rises
        hr = fl((0.075, 0.26, 0.09))
        hip = ((au - f32(0.34)) / f32(hr[0])) ** 2 + ((cv + f32(0.12)) / f32(hr[1])) ** 2 + (
            (cw - hip_w) / f32(hr[2])
        ) ** 2 < 1
        hip |= _ell(au, cv, cw, (0.32, 0.16, -0.38), fl((0.09, 0.09, 0.09))) < 1  # amygdalae
        cl[hip & inside] = 9
        vr = fl((0.05 * vf, 0.42, 0.09 * vf))
        ru = f32(vr[0]) * (1 + f32(0.6) * np.clip(-cv / f32(0.4), 0, 1))  # wider trigones
        vent = ((au - f32(0.13)) / ru) ** 2 + (cv / f32(vr[1])) ** 2 + (
            (cw - (f32(0.12) - f32(0.35) * cv * cv)) / f32(vr[2])
        ) ** 2 < 1
        third = (au < max(0.02, 0.55 * sp / axes[0])) & (cv > -0.25) & (cv < 0.08) & (cw > -0.2) & (cw < 0.08)
        cl[(vent | third) & (cl != 0) & (cl != 4) & (cl != 1)] = 5
        lab.ravel()[core] = cl
        del cu, cv, cw, au, cl, inside, dgm, hip, ru, vent, third

    brain_mask = np.isin(lab, BRAIN).astype(np.uint8)

    # ---- intensities (relative to CSF on T2 = 1) ----
    t2_lut = np.array([0.015, 1.0, 0.42, 0.72 - 0.1 * mat, 0.0, 1.0, 0.5, 0.40, 0.56, 0.45])
    t1_lut = np.array([0.015, 0.18, 0.55, 0.36 + 0.06 * mat, 0.0, 0.18, 0.5, 0.62, 0.5, 0.53])
    t2_lut *= lut_jit[0]
    t1_lut *= lut_jit[1]
    t2 = t2_lut.astype(f32)[lab]
    t1 = t1_lut.astype(f32)[lab]

    # inner background: scalp, skull and dura/fluid layers by depth below the head surface; eyes
    ib = np.flatnonzero((lab == 4).ravel())
    if ib.size:
        depth_mm = (1 - np.sqrt(q_head.ravel()[ib])) * f32(np.cbrt(np.prod(head_axes)))
        frac = depth_mm / f32(ring_mm)
        v2 = np.full(ib.size, f32(soft_t2))
        v1 = np.full(ib.size, f32(soft_t1))
        scalp = (frac >= 0) & (frac < 0.45)
        skull = (frac >= 0.45) & (frac < 0.8)
        fluid = frac >= 0.8
        v2[scalp], v1[scalp] = scalp_t2, scalp_t1
        v2[skull], v1[skull] = 0.1, 0.1
        v2[fluid], v1[fluid] = fluid_t2, 0.25
        ex, ey, ez = px.ravel()[ib], py.ravel()[ib], pz.ravel()[ib]
        er = 0.21 * axes[0]
        eyes = (
            (np.abs(ex) - f32(0.33 * axes[0])) ** 2
            + (ey - f32(0.95 * axes[1])) ** 2
            + (ez + f32(0.5 * axes[2])) ** 2
        ) < f32(er * er)
        v2[eyes], v1[eyes] = 0.95, 0.15
        t2.ravel()[ib] = v2
        t1.ravel()[ib] = v1
        del depth_mm, frac, v2, v1, scalp, skull, fluid, ex, ey, ez, eyes
    del q_head

    # white matter: brighter (T2) / darker (T1) towards the ventricles (periventricular crossroads)
    wm = np.flatnonzero((lab == 3).ravel())
    if wm.size:
        grad = np.clip((0.75 - rho.ravel()[wm]) / 0.75, 0, 1) * f32(0.15 * (0.5 + pre))
        t2.ravel()[wm] *= 1 + grad
        t1.ravel()[wm] *= 1 - grad
        del grad
    # cerebellum: folia (concentric stripes) make it textured
    cbv = np.flatnonzero((lab == 6).ravel())
    if cbv.size:
        lam_f = max(3.0, 2.5 * sp)
        rr = np.sqrt(q_cb.ravel()[cbv]) * f32(np.cbrt(np.prod(cb_r * axes)))
        stripes = np.cos(rr * f32(2 * np.pi / lam_f) + f32(folia_phase))
        t2.ravel()[cbv] *= 1 + f32(0.18) * stripes
        t1.ravel()[cbv] *= 1 - f32(0.12) * stripes
        del rr, stripes
    del q_cb, q_bs, rho, u, v, w, hx, hy, hz, px, py, pz, p

    # tissue texture: one fine and one coarse field, class-dependent amplitude
    amp = np.array([0.0, 0.04, 0.07, 0.07, 0.15, 0.04, 0.1, 0.08, 0.1, 0.07], dtype=f32)[lab]
    tex = _smooth_field(rng, shp, sp, 4.0)
    tex *= f32(0.6)
    tex += f32(0.8) * _smooth_field(rng, shp, sp, 12.0)
    tex *= amp
    del amp
    t2 *= 1 + tex
    t1 *= 1 - f32(0.7) * tex
    del tex

    # partial-volume blur, bias field, Rician noise; restore = raw / bias × mild residual
    sigma = blur_sigma
    out = []
    contrasts = ((t2, t2_scale, noise_sd[0], bias_sd[0]), (t1, t1_scale, noise_sd[1], bias_sd[1]))
    for img, scale, nsd, bsd in contrasts:
        img = ndimage.gaussian_filter(img, sigma=sigma, mode="nearest", truncate=3.0)
        log_b = _smooth_field(rng, shp, sp, 45.0)
        log_b *= f32(bsd)
        bias = np.exp(log_b)
        del log_b
        sig = img
        sig *= bias
        sig *= f32(scale)
        n1 = rng.standard_normal(shp, dtype=f32)
        n1 *= f32(nsd * scale)
        sig += n1
        np.square(sig, out=sig)
        n1 = rng.standard_normal(shp, dtype=f32)
        n1 *= f32(nsd * scale)
        np.square(n1, out=n1)
        sig += n1
        del n1
        raw = np.sqrt(sig, out=sig)
        resid = _smooth_field(rng, shp, sp, 45.0)
        resid *= f32(0.04)
        resid = np.exp(resid)
        restore = raw / bias
        restore *= resid
        del resid, bias
        out.append((raw, restore))
    (t2_raw, t2_restore), (t1_raw, t1_restore) = out

    ha, hb = head_axes[0], head_axes[1]
    hc = np.pi * (3 * (ha + hb) - np.sqrt((3 * ha + hb) * (ha + 3 * hb)))  # Ramanujan ellipse perimeter
    return SyntheticSubject(
        t2w=t2_restore,
        t1w=t1_restore,
        label=lab,
        brain_mask=brain_mask,
        affine=affine_for(shp, sp),
        scan_age=age,
        t2w_raw=t2_raw,
        t1w_raw=t1_raw,
        head_circumference=round(float(hc) / 10.0, 1),
        spacing=sp,
        params={
            "scale": s,
            "brain_axes_mm": [float(a) for a in axes],
            "sulcal_depth": depth,
            "cortex_mm": thick_mm,
            "ventricle_factor": (1.0 + 0.7 * pre) * vent_jit,
            "blur_sigma_vox": blur_sigma,
        },
    )


def _fold_cortex(lab, rho, pxyz, v, w, r_mean, thick_mm, depth_mm, sp, mat, s, wave_dirs, wave_phase) -> None:
    """Cortical ribbon with sulci, written into ``lab`` (which holds 3 inside the cerebrum).

    Sulci are the zero sheets of a band-limited plane-wave noise ``n`` reaching ``depth_mm`` below
    the surface; the distance to a sheet is ``|n| / |∇n|`` (first order), so the ribbon keeps its
    thickness on crowns, walls and fundi. The interhemispheric fissure is a midline sheet above the
    corpus callosum (reaching down to the base at the frontal and occipital poles).
    """
    f32 = np.float32
    px, py, pz = pxyz
    csf_half = max(0.5, 0.3 * sp)  # half-width of the sulcal CSF sheet (visible at coarse spacing)
    d_out_full_limit = depth_mm + thick_mm + csf_half + sp
    band = np.flatnonzero(((rho < 1) & (rho > 1 - d_out_full_limit / r_mean)).ravel())
    if band.size:
        d_out = (1 - rho.ravel()[band]) * f32(r_mean)
        lam = (30.0 - 12.0 * mat) * np.sqrt(s)  # gyral wavelength (mm): more, narrower gyri when older
        k = 2 * np.pi / lam
        dirs = wave_dirs / np.linalg.norm(wave_dirs, axis=1, keepdims=True)
        bx, by, bz = px.ravel()[band], py.ravel()[band], pz.ravel()[band]
        n = np.zeros(band.size, f32)
        gx, gy, gz = (np.zeros(band.size, f32) for _ in range(3))
        for d, ph in zip(dirs, wave_phase, strict=True):
            arg = f32(k * d[0]) * bx + f32(k * d[1]) * by + f32(k * d[2]) * bz + f32(ph)
            n += np.cos(arg)
            sn = np.sin(arg)
            gx -= f32(k * d[0]) * sn
            gy -= f32(k * d[1]) * sn
            gz -= f32(k * d[2]) * sn
        del bx, by, bz, arg, sn
        grad = np.sqrt(gx * gx + gy * gy + gz * gz)
        del gx, gy, gz
        d_sheet = np.abs(n) / np.maximum(grad, f32(0.3 * k))
        # sulcal depth varies along the sheet (shallow dimples to deep sulci)
        local_depth = f32(depth_mm) * np.clip(0.65 + 0.5 * np.cos(n * f32(0.7) + grad / f32(k)), 0.2, 1.0)
        del n, grad
        cl = lab.ravel()[band]
        cortex = (d_out < thick_mm) | ((d_out < local_depth + thick_mm) & (d_sheet < csf_half + thick_mm))
        cl[cortex & (cl == 3)] = 2
        cl[(d_out < local_depth) & (d_sheet < csf_half)] = 1
        lab.ravel()[band] = cl
    fis_half = max(0.8, 0.5 * sp)
    slab = np.flatnonzero(((np.abs(px) < fis_half + thick_mm + sp) & (rho < 1)).ravel())
    if slab.size:
        sv, sw = v.ravel()[slab], w.ravel()[slab]
        wcc = 0.3 - 2.0 * np.clip(np.abs(sv) - 0.45, 0, None)  # top of the corpus callosum
        dm = np.abs(px.ravel()[slab])
        above = sw > wcc
        cl = lab.ravel()[slab]
        cl[above & (dm < fis_half + thick_mm) & (cl == 3)] = 2
        cl[above & (dm < fis_half)] = 1
        lab.ravel()[slab] = cl


# --------------------------------------------------------------------------------------------
# study sets


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


def _subject_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 2]))


def _check_count(subjects) -> int:
    try:
        n = int(subjects)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"subjects must be a positive integer, got {subjects!r}") from exc
    if n < 1 or n != subjects:
        raise SyntheticError(f"subjects must be a positive integer, got {subjects!r}")
    if n > 10000:
        raise SyntheticError(f"subjects={n} is too many (at most 10000)")
    return n


def _check_out(out) -> Path:
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise SyntheticError(f"{o} exists and is not a folder")
    return o


def iter_subjects(subjects: int, shape=DEFAULT_SHAPE, spacing: float = DEFAULT_SPACING, seed: int = 0):
    """Yield ``(SubjectInfo, SyntheticSubject)`` for subjects ``0..subjects-1``."""
    n = _check_count(subjects)
    shp, sp = _check_shape_spacing(shape, spacing)
    for k in range(n):
        info = subject_info(k, seed)
        yield info, generate_subject(info.scan_age, _subject_rng(seed, k), shp, sp)


def _tsv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow(r)
    return buf.getvalue()


def write_subject_files(anat: Path, image_id: str, subj: SyntheticSubject) -> list[Path]:
    """Write the six dHCP release-3 anatomical files of one session into ``anat``."""
    paths = []
    data = {
        "T2w": subj.t2w_raw,
        "desc-restore_T2w": subj.t2w,
        "T1w": subj.t1w_raw,
        "desc-restore_T1w": subj.t1w,
    }
    for suffix, arr in data.items():
        paths.append(save_volume(anat / f"{image_id}_{suffix}.nii.gz", arr, subj.affine, dtype=np.float32))
    for suffix, arr in ((MASK_SUFFIX, subj.brain_mask), (LABEL_SUFFIX, subj.label)):
        paths.append(save_volume(anat / f"{image_id}_{suffix}.nii.gz", arr, subj.affine, dtype=np.uint8))
    return paths


def write_study_set(
    out: Path,
    subjects: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    seed: int = 0,
    progress: Callable[[SubjectInfo, SyntheticSubject], None] | None = None,
) -> list[Path]:
    """Write a dHCP release-3 anatomical tree under ``out``; return the session ``anat`` folders.

    Layout: ``participants.tsv``, ``sub-<id>/sub-<id>_sessions.tsv`` and
    ``sub-<id>/ses-<ses>/anat/sub-<id>_ses-<ses>_{T2w,desc-restore_T2w,T1w,desc-restore_T1w,
    desc-brain_mask,desc-drawem9_dseg}.nii.gz``. ``progress`` is called after each subject.
    """
    n = _check_count(subjects)
    shp, sp = _check_shape_spacing(shape, spacing)
    root = _check_out(out)
    root.mkdir(parents=True, exist_ok=True)
    anat_dirs: list[Path] = []
    participants = []
    for info, subj in iter_subjects(n, shp, sp, seed):
        sub = f"sub-{info.participant_id}"
        anat = root / sub / f"ses-{info.session_id}" / "anat"
        write_subject_files(anat, info.image_id, subj)
        atomic_write_text(
            root / sub / f"{sub}_sessions.tsv",
            _tsv(
                [
                    {
                        "session_id": info.session_id,
                        "scan_age": f"{info.scan_age:.2f}",
                        "scan_head_circumference": f"{subj.head_circumference:.1f}",
                    }
                ],
                ["session_id", "scan_age", "scan_head_circumference"],
            ),
        )
        participants.append(
            {"participant_id": info.participant_id, "sex": info.sex, "birth_age": f"{info.birth_age:.2f}"}
        )
        anat_dirs.append(anat)
        if progress is not None:
            progress(info, subj)
    atomic_write_text(root / "participants.tsv", _tsv(participants, ["participant_id", "sex", "birth_age"]))
    return anat_dirs


def write_studies_folder(
    out: Path,
    subjects: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    seed: int = 0,
    with_labels: bool = True,
    progress: Callable[[SubjectInfo, SyntheticSubject], None] | None = None,
) -> list[str]:
    """Write a MONAI Label studies folder: ``out/<id>.nii.gz`` (restored T2w) and, if
    ``with_labels``, ``out/labels/final/<id>.nii.gz`` (drawem9); ids like ``sub-SYN0001_ses-1001``.

    The subjects are the same as in :func:`write_study_set` with the same seed.
    """
    n = _check_count(subjects)
    shp, sp = _check_shape_spacing(shape, spacing)
    root = _check_out(out)
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for info, subj in iter_subjects(n, shp, sp, seed):
        save_volume(root / f"{info.image_id}.nii.gz", subj.t2w, subj.affine, dtype=np.float32)
        if with_labels:
            final = root / "labels" / "final" / f"{info.image_id}.nii.gz"
            save_volume(final, subj.label, subj.affine, dtype=np.uint8)
        ids.append(info.image_id)
        if progress is not None:
            progress(info, subj)
    return ids
