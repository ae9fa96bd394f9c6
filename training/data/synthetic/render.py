"""Render drawn :class:`~.params.SubjectParams` into volumes: the deterministic twin of ``params``.

Why: the anatomy and contrast model lives here and only here, with no random draws of its own,
so the same params always render the same bytes. The label geometry is drawn on coordinate grids
(ellipsoids, tubes and a folded cortical ribbon, warped by a smooth displacement field and a small
rigid jitter); then neonatal contrasts are rendered (T2: fluid brightest, unmyelinated white
matter brighter than cortex; T1 roughly inverted) with texture, partial-volume blur, a strong
smooth bias field (raw images) and Rician noise. The scanner stage replays the noise stream
recorded in the params (:meth:`~.params.SubjectParams.scanner_rng`).

Memory matters at dHCP size (217×290×290): each step returns only what later steps use, and the
large intermediates are deleted as soon as they are done with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from training.data.labels import BRAIN, NUM_CLASSES
from training.data.synthetic.params import (
    DEFAULT_SPACING,
    SmoothField,
    SubjectParams,
    SyntheticError,
    check_grid,
    draw_field,
    field_size,
)

# Brain (cerebrum) semi-axes at 40 weeks in mm: left-right, posterior-anterior, inferior-superior.
_TERM_AXES = np.array([39.0, 51.0, 36.0])
# Where the cerebrum centre sits in the field of view (mm, RAS); slightly superior like dHCP.
_CENTRE = np.array([0.0, 0.0, 6.0])
_BIAS_CORR_MM = 45.0
_f32 = np.float32


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


def affine_for(shape, spacing: float) -> np.ndarray:
    """RAS affine: axis 0 left→right, 1 posterior→anterior, 2 inferior→superior, centred."""
    shp, sp = check_grid(shape, spacing)
    aff = np.diag([sp, sp, sp, 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * sp for n in shp]
    return aff


# --------------------------------------------------------------------------------------------
# helpers


def smooth_field(f: SmoothField, shape, spacing: float) -> np.ndarray:
    """Expand a field's coefficients into a smooth Gaussian field with unit standard deviation.

    A separable Gaussian-kernel basis on a coarse control grid: three small matrix products, so a
    217×290×290 field costs a fraction of a second (no full-size filtering or interpolation).
    """
    corr_mm = f.corr_mm
    if f.coeff.shape != field_size(shape, spacing, corr_mm):
        raise SyntheticError(f"field coefficients {f.coeff.shape} were drawn for another grid than {tuple(shape)}")
    mats = []
    for n, m in zip(shape, f.coeff.shape, strict=True):
        ext = n * spacing
        centres = np.linspace(-corr_mm, ext + corr_mm, m)
        pos = (np.arange(n) + 0.5) * spacing
        mats.append(np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / corr_mm) ** 2).astype(np.float32))
    out = np.tensordot(mats[0], f.coeff, axes=(1, 0))  # (X, b, c)
    out = np.tensordot(out, mats[1], axes=(1, 1))  # (X, c, Y)
    out = np.tensordot(out, mats[2], axes=(1, 1))  # (X, Y, Z)
    out = np.ascontiguousarray(out, dtype=np.float32)
    sub = out[::3, ::3, ::3]
    out -= np.float32(sub.mean())
    out /= np.float32(max(float(sub.std()), 1e-6))
    return out


def _rotation(angles) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# step 1: derived sizes


@dataclass(frozen=True)
class _Sizes:
    """Age- and subject-dependent sizes (mm) and maturation indices derived from the params."""

    mat: float  # cortical maturation 0 (28 w) .. 1 (42 w)
    pre: float  # prematurity 0 (term) .. 1 (26 w)
    s: float  # linear size relative to a term brain
    axes: np.ndarray  # cerebrum semi-axes (mm)
    r_mean: float
    thick_mm: float  # cortical ribbon
    csf_mm: float  # extra-axial CSF
    ring_mm: float  # scalp + skull
    head_axes: np.ndarray
    depth: float  # sulcal depth (ρ units)


def _sizes(p: SubjectParams) -> _Sizes:
    sp, age = p.spacing, p.scan_age
    mat = float(np.clip((age - 28.0) / 14.0, 0.0, 1.0))
    pre = float(np.clip((40.0 - age) / 14.0, 0.0, 1.0))
    s = _age_scale(age) * p.size_jitter
    axes = _TERM_AXES * s * np.asarray(p.axes_jitter)
    csf_mm = max(2.0 + 1.5 * pre, 1.05 * sp)
    ring_mm = max(5.0 * s, 1.6 * sp)
    return _Sizes(
        mat=mat,
        pre=pre,
        s=s,
        axes=axes,
        r_mean=float(np.cbrt(np.prod(axes))),
        thick_mm=max(1.7 - 0.2 * mat, 1.05 * sp),
        csf_mm=csf_mm,
        ring_mm=ring_mm,
        head_axes=axes + csf_mm + ring_mm,
        depth=(0.02 + 0.26 * mat**1.3) * p.folding_jitter,  # ~10 mm at term
    )


# --------------------------------------------------------------------------------------------
# step 2: label geometry


def _head_frame(p: SubjectParams, z: _Sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates in mm in the head frame: ``R^T (x - t) + d(x)`` (rigid jitter + elastic warp)."""
    shp, sp = p.shape, p.spacing
    rot = _rotation(p.rotation_rad)
    t = _CENTRE + np.asarray(p.shift_mm)
    g = [((np.arange(n, dtype=_f32) - _f32((n - 1) / 2.0)) * _f32(sp)) for n in shp]
    gx = (g[0] - _f32(t[0]))[:, None, None]
    gy = (g[1] - _f32(t[1]))[None, :, None]
    gz = (g[2] - _f32(t[2]))[None, None, :]
    out = []
    for i in range(3):
        pi = _f32(rot[0, i]) * gx + _f32(rot[1, i]) * gy + _f32(rot[2, i]) * gz
        pi = np.array(np.broadcast_to(pi, shp), dtype=_f32)
        pi += _f32(p.elastic_amp * z.s) * smooth_field(p.elastic[i], shp, sp)
        out.append(pi)
    return out[0], out[1], out[2]


def _label_head(lab: np.ndarray, pxyz, z: _Sizes) -> np.ndarray:
    """Head = ellipsoid + neck + face, written as label 4; returns the head ellipsoid's ``q``."""
    px, py, pz = pxyz
    ha = z.head_axes
    hx, hy, hz = px / _f32(ha[0]), py / _f32(ha[1]), pz / _f32(ha[2])
    q_head = hx * hx + hy * hy + hz * hz
    # the neck ends above the field of view's lower edge, so head volume scales with the head alone
    neck_end = (np.minimum(hz + _f32(1.0), 0) / _f32(0.45)) ** 2
    neck = (hx / _f32(0.62)) ** 2 + ((hy + _f32(0.12)) / _f32(0.62)) ** 2 + neck_end < 1
    neck &= hz < 0
    face = _ell(hx, hy, hz, (0.0, 0.5, -0.5), (0.6, 0.5, 0.5)) < 1
    lab[(q_head < 1) | neck | face] = 4
    return q_head


class _BrainFrame(NamedTuple):
    """Brain-normalised coordinates and the quadratic forms of the hindbrain."""

    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    rho: np.ndarray  # cerebrum radius (< 1 inside)
    q_cb: np.ndarray  # cerebellum (< 1 inside)
    q_bs: np.ndarray  # brainstem (< 1 inside)
    cb_r: np.ndarray  # cerebellum semi-axes (brain units)


def _brain_frame(p: SubjectParams, pxyz, z: _Sizes) -> _BrainFrame:
    """Cerebrum radius, cerebellum (posterior-inferior, with a midline notch) and brainstem."""
    px, py, pz = pxyz
    sp, axes = p.spacing, z.axes
    u, v, w = px / _f32(axes[0]), py / _f32(axes[1]), pz / _f32(axes[2])
    wa = np.where(w < 0, w / _f32(0.88), w)  # flatter base
    ua = u * (1 + _f32(0.12) * np.clip(v, 0, 1))  # narrower frontal lobes
    rho = np.sqrt(ua * ua + v * v + wa * wa)
    del ua, wa
    cb_c = (0.0, -0.6, -0.6)
    cb_r = np.array([0.6, 0.35, 0.31]) * (0.85 + 0.15 * z.mat) * p.cerebellum_jitter
    q_cb = _ell(u, v, w, cb_c, cb_r)
    q_cb += _f32(0.8) * np.exp(-((u / _f32(0.07)) ** 2)) * np.clip((_f32(cb_c[1]) - v) / _f32(cb_r[1]), 0, 1)
    vc = _f32(-0.2) + _f32(0.125) * (w + _f32(0.2))
    rv = _f32(0.13) + _f32(0.05) * np.exp(-(((w + _f32(0.5)) / _f32(0.15)) ** 2))  # pons bulge
    rv = np.maximum(rv, _f32(0.75 * sp / axes[1]))
    q_bs = (u / _f32(max(0.115, 0.75 * sp / axes[0]))) ** 2 + ((v - vc) / rv) ** 2
    q_bs[(w > -0.1) | (w < -1.25)] = np.inf  # midbrain .. medulla
    return _BrainFrame(u, v, w, rho, q_cb, q_bs, cb_r)


def _label_brain(lab: np.ndarray, pxyz, b: _BrainFrame, p: SubjectParams, z: _Sizes) -> None:
    """Extra-axial CSF around all brain parts, white matter, folded cortex, tentorium, hindbrain."""
    cb_gap = z.csf_mm / float(np.cbrt(np.prod(b.cb_r * z.axes)))
    bs_gap = z.csf_mm / (0.12 * z.axes[0])
    env = (b.rho < 1 + z.csf_mm / z.r_mean) | (b.q_cb < (1 + cb_gap) ** 2) | (b.q_bs < (1 + bs_gap) ** 2)
    lab[env] = 1
    del env
    lab[b.rho < 1] = 3
    _fold_cortex(lab, b.rho, pxyz, b.v, b.w, z.depth * z.r_mean, p, z)
    cereb = lab == 2
    cereb |= lab == 3
    tent = cereb & (b.q_cb < (1 + cb_gap) ** 2)  # tentorium: CSF between occipital lobe and cerebellum
    lab[tent] = 1
    del cereb, tent
    lab[b.q_cb < 1] = 6
    lab[b.q_bs < 1] = 8


def _fold_cortex(lab, rho, pxyz, v, w, depth_mm: float, p: SubjectParams, z: _Sizes) -> None:
    """Cortical ribbon with sulci, written into ``lab`` (which holds 3 inside the cerebrum).

    Sulci are the zero sheets of a band-limited plane-wave noise ``n`` reaching ``depth_mm`` below
    the surface; the distance to a sheet is ``|n| / |∇n|`` (first order), so the ribbon keeps its
    thickness on crowns, walls and fundi. The interhemispheric fissure is a midline sheet above the
    corpus callosum (reaching down to the base at the frontal and occipital poles).
    """
    px, py, pz = pxyz
    sp, r_mean, thick_mm = p.spacing, z.r_mean, z.thick_mm
    csf_half = max(0.5, 0.3 * sp)  # half-width of the sulcal CSF sheet (visible at coarse spacing)
    d_out_full_limit = depth_mm + thick_mm + csf_half + sp
    band = np.flatnonzero(((rho < 1) & (rho > 1 - d_out_full_limit / r_mean)).ravel())
    if band.size:
        d_out = (1 - rho.ravel()[band]) * _f32(r_mean)
        lam = (30.0 - 12.0 * z.mat) * np.sqrt(z.s)  # gyral wavelength (mm): more, narrower gyri when older
        k = 2 * np.pi / lam
        dirs = p.wave_dirs / np.linalg.norm(p.wave_dirs, axis=1, keepdims=True)
        bx, by, bz = px.ravel()[band], py.ravel()[band], pz.ravel()[band]
        n = np.zeros(band.size, _f32)
        gx, gy, gz = (np.zeros(band.size, _f32) for _ in range(3))
        for d, ph in zip(dirs, p.wave_phase, strict=True):
            arg = _f32(k * d[0]) * bx + _f32(k * d[1]) * by + _f32(k * d[2]) * bz + _f32(ph)
            n += np.cos(arg)
            sn = np.sin(arg)
            gx -= _f32(k * d[0]) * sn
            gy -= _f32(k * d[1]) * sn
            gz -= _f32(k * d[2]) * sn
        del bx, by, bz, arg, sn
        grad = np.sqrt(gx * gx + gy * gy + gz * gz)
        del gx, gy, gz
        d_sheet = np.abs(n) / np.maximum(grad, _f32(0.3 * k))
        # sulcal depth varies along the sheet (shallow dimples to deep sulci)
        local_depth = _f32(depth_mm) * np.clip(0.65 + 0.5 * np.cos(n * _f32(0.7) + grad / _f32(k)), 0.2, 1.0)
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


def _label_deep_structures(lab: np.ndarray, b: _BrainFrame, p: SubjectParams, z: _Sizes) -> None:
    """Deep grey matter, hippocampi/amygdalae and ventricles, on the central region only."""
    core = np.flatnonzero((b.rho < 0.8).ravel())
    if not core.size:
        return
    sp, axes = p.spacing, z.axes
    cu, cv, cw = b.u.ravel()[core], b.v.ravel()[core], b.w.ravel()[core]
    au = np.abs(cu)
    cl = lab.ravel()[core].copy()
    inside = (cl == 2) | (cl == 3) | (cl == 8)
    vf = (1.0 + 0.7 * z.pre) * p.ventricle_jitter  # ventricles relatively larger in preterm

    def fl(r: tuple[float, float, float]) -> tuple[float, float, float]:
        # keep small structures at least ~1.5 voxels across so every class survives coarse grids
        return tuple(max(ri, 0.75 * sp / axes[i]) for i, ri in enumerate(r))

    dgm = (
        (_ell(au, cv, cw, (0.14, -0.12, -0.03), fl((0.16, 0.24, 0.17))) < 1)  # thalami
        | (_ell(au, cv, cw, (0.32, 0.08, 0.0), fl((0.1, 0.26, 0.17))) < 1)  # lentiform nuclei
        | (_ell(au, cv, cw, (0.18, 0.26, 0.12), fl((0.08, 0.16, 0.13))) < 1)  # caudate heads
    )
    cl[dgm & inside] = 7
    hip_w = _f32(-0.32) - _f32(0.4) * (cv + _f32(0.12))  # posterior end rises
    hr = fl((0.075, 0.26, 0.09))
    hip = ((au - _f32(0.34)) / _f32(hr[0])) ** 2 + ((cv + _f32(0.12)) / _f32(hr[1])) ** 2 + (
        (cw - hip_w) / _f32(hr[2])
    ) ** 2 < 1
    hip |= _ell(au, cv, cw, (0.32, 0.16, -0.38), fl((0.09, 0.09, 0.09))) < 1  # amygdalae
    cl[hip & inside] = 9
    vr = fl((0.05 * vf, 0.42, 0.09 * vf))
    ru = _f32(vr[0]) * (1 + _f32(0.6) * np.clip(-cv / _f32(0.4), 0, 1))  # wider trigones
    vent = ((au - _f32(0.13)) / ru) ** 2 + (cv / _f32(vr[1])) ** 2 + (
        (cw - (_f32(0.12) - _f32(0.35) * cv * cv)) / _f32(vr[2])
    ) ** 2 < 1
    third = (au < max(0.02, 0.55 * sp / axes[0])) & (cv > -0.25) & (cv < 0.08) & (cw > -0.2) & (cw < 0.08)
    cl[(vent | third) & (cl != 0) & (cl != 4) & (cl != 1)] = 5
    lab.ravel()[core] = cl


def _render_labels(p: SubjectParams, z: _Sizes):
    """The drawem9 label plus what the intensity steps need (head ``q``, frame, coordinates)."""
    pxyz = _head_frame(p, z)
    lab = np.zeros(p.shape, np.uint8)
    q_head = _label_head(lab, pxyz, z)
    b = _brain_frame(p, pxyz, z)
    _label_brain(lab, pxyz, b, p, z)
    _label_deep_structures(lab, b, p, z)
    return lab, q_head, b, pxyz


# --------------------------------------------------------------------------------------------
# step 3: intensities (relative to CSF on T2 = 1)


def _class_intensities(lab: np.ndarray, p: SubjectParams, z: _Sizes) -> tuple[np.ndarray, np.ndarray]:
    """Per-class T2 / T1 look-up (jittered per subject); several classes share intensities."""
    mat = z.mat
    t2_lut = np.array([0.015, 1.0, 0.42, 0.72 - 0.1 * mat, 0.0, 1.0, 0.5, 0.40, 0.56, 0.45])
    t1_lut = np.array([0.015, 0.18, 0.55, 0.36 + 0.06 * mat, 0.0, 0.18, 0.5, 0.62, 0.5, 0.53])
    t2_lut *= p.lut_jitter[0]
    t1_lut *= p.lut_jitter[1]
    return t2_lut.astype(_f32)[lab], t1_lut.astype(_f32)[lab]


def _inner_background(t2, t1, lab, q_head, pxyz, p: SubjectParams, z: _Sizes) -> None:
    """Scalp, skull and dura/fluid layers by depth below the head surface; eyes."""
    ib = np.flatnonzero((lab == 4).ravel())
    if not ib.size:
        return
    px, py, pz = pxyz
    axes = z.axes
    depth_mm = (1 - np.sqrt(q_head.ravel()[ib])) * _f32(np.cbrt(np.prod(z.head_axes)))
    frac = depth_mm / _f32(z.ring_mm)
    v2 = np.full(ib.size, _f32(p.soft_t2))
    v1 = np.full(ib.size, _f32(p.soft_t1))
    scalp = (frac >= 0) & (frac < 0.45)
    skull = (frac >= 0.45) & (frac < 0.8)
    fluid = frac >= 0.8
    v2[scalp], v1[scalp] = p.scalp_t2, p.scalp_t1
    v2[skull], v1[skull] = 0.1, 0.1
    v2[fluid], v1[fluid] = p.fluid_t2, 0.25
    ex, ey, ez = px.ravel()[ib], py.ravel()[ib], pz.ravel()[ib]
    er = 0.21 * axes[0]
    eyes = (
        (np.abs(ex) - _f32(0.33 * axes[0])) ** 2 + (ey - _f32(0.95 * axes[1])) ** 2 + (ez + _f32(0.5 * axes[2])) ** 2
    ) < _f32(er * er)
    v2[eyes], v1[eyes] = 0.95, 0.15
    t2.ravel()[ib] = v2
    t1.ravel()[ib] = v1


def _white_matter_and_folia(t2, t1, lab, b: _BrainFrame, p: SubjectParams, z: _Sizes) -> None:
    """Periventricular white matter brighter (T2) / darker (T1); cerebellar folia as stripes."""
    wm = np.flatnonzero((lab == 3).ravel())
    if wm.size:
        grad = np.clip((0.75 - b.rho.ravel()[wm]) / 0.75, 0, 1) * _f32(0.15 * (0.5 + z.pre))
        t2.ravel()[wm] *= 1 + grad
        t1.ravel()[wm] *= 1 - grad
        del grad
    cbv = np.flatnonzero((lab == 6).ravel())
    if cbv.size:
        lam_f = max(3.0, 2.5 * p.spacing)
        rr = np.sqrt(b.q_cb.ravel()[cbv]) * _f32(np.cbrt(np.prod(b.cb_r * z.axes)))
        stripes = np.cos(rr * _f32(2 * np.pi / lam_f) + _f32(p.folia_phase))
        t2.ravel()[cbv] *= 1 + _f32(0.18) * stripes
        t1.ravel()[cbv] *= 1 - _f32(0.12) * stripes


def _add_texture(t2, t1, lab, p: SubjectParams) -> None:
    """Tissue texture: one fine and one coarse field, class-dependent amplitude."""
    amp = np.array([0.0, 0.04, 0.07, 0.07, 0.15, 0.04, 0.1, 0.08, 0.1, 0.07], dtype=_f32)[lab]
    fine, coarse = p.texture
    tex = smooth_field(fine, p.shape, p.spacing)
    tex *= _f32(0.6)
    tex += _f32(0.8) * smooth_field(coarse, p.shape, p.spacing)
    tex *= amp
    del amp
    t2 *= 1 + tex
    t1 *= 1 - _f32(0.7) * tex


# --------------------------------------------------------------------------------------------
# step 4: the scanner


def _scanner(t2, t1, p: SubjectParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """Partial-volume blur, bias field and Rician noise → ``[(raw, restore)]`` for T2, T1.

    ``restore`` = raw / bias × a mild residual field, like a bias-corrected release image.
    """
    shp, sp = p.shape, p.spacing
    rng = p.scanner_rng()
    out = []
    contrasts = ((t2, p.t2_scale, p.noise_sd[0], p.bias_sd[0]), (t1, p.t1_scale, p.noise_sd[1], p.bias_sd[1]))
    for img, scale, nsd, bsd in contrasts:
        img = ndimage.gaussian_filter(img, sigma=p.blur_sigma, mode="nearest", truncate=3.0)
        log_b = smooth_field(draw_field(rng, shp, sp, _BIAS_CORR_MM), shp, sp)
        log_b *= _f32(bsd)
        bias = np.exp(log_b)
        del log_b
        sig = img
        sig *= bias
        sig *= _f32(scale)
        n1 = rng.standard_normal(shp, dtype=_f32)
        n1 *= _f32(nsd * scale)
        sig += n1
        np.square(sig, out=sig)
        n1 = rng.standard_normal(shp, dtype=_f32)
        n1 *= _f32(nsd * scale)
        np.square(n1, out=n1)
        sig += n1
        del n1
        raw = np.sqrt(sig, out=sig)
        resid = smooth_field(draw_field(rng, shp, sp, _BIAS_CORR_MM), shp, sp)
        resid *= _f32(0.04)
        resid = np.exp(resid)
        restore = raw / bias
        restore *= resid
        del resid, bias
        out.append((raw, restore))
    return out


def _head_circumference_cm(head_axes: np.ndarray) -> float:
    ha, hb = head_axes[0], head_axes[1]
    hc = np.pi * (3 * (ha + hb) - np.sqrt((3 * ha + hb) * (ha + 3 * hb)))  # Ramanujan ellipse perimeter
    return round(float(hc) / 10.0, 1)


# --------------------------------------------------------------------------------------------
# the renderer


def render_subject(params: SubjectParams) -> SyntheticSubject:
    """Render drawn params into one session; deterministic (same params → same bytes).

    The grid is the one the params were drawn for (``params.shape``, ``params.spacing``): the
    smooth fields' coefficients only fit that grid.
    """
    p = params
    shp, sp = check_grid(p.shape, p.spacing)
    z = _sizes(p)
    lab, q_head, b, pxyz = _render_labels(p, z)
    brain_mask = np.isin(lab, BRAIN).astype(np.uint8)
    t2, t1 = _class_intensities(lab, p, z)
    _inner_background(t2, t1, lab, q_head, pxyz, p, z)
    del q_head, pxyz
    _white_matter_and_folia(t2, t1, lab, b, p, z)
    del b
    _add_texture(t2, t1, lab, p)
    (t2_raw, t2_restore), (t1_raw, t1_restore) = _scanner(t2, t1, p)
    return SyntheticSubject(
        t2w=t2_restore,
        t1w=t1_restore,
        label=lab,
        brain_mask=brain_mask,
        affine=affine_for(shp, sp),
        scan_age=p.scan_age,
        t2w_raw=t2_raw,
        t1w_raw=t1_raw,
        head_circumference=_head_circumference_cm(z.head_axes),
        spacing=sp,
        params={
            "scale": z.s,
            "brain_axes_mm": [float(a) for a in z.axes],
            "sulcal_depth": z.depth,
            "cortex_mm": z.thick_mm,
            "ventricle_factor": (1.0 + 0.7 * z.pre) * p.ventricle_jitter,
            "blur_sigma_vox": p.blur_sigma,
        },
    )
