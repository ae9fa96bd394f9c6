"""Budget and learning curves from simulation results, and the statistics the reports state about them.

A :class:`Curve` is one strategy's results at several budgets, per seed: in budget-curve mode one
dispersion × axis × selection × margin over its budgets (x = percent of the pool's usable slices), in
loop mode one strategy over its rounds (x = annotated slices). Everything that compares curves pairs
them by seed on the budgets both ran (:mod:`apps.simulation.stats`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from apps.simulation.budgets import FULL_BUDGET
from apps.simulation.stats import Estimate, Paired, aubc, budget_to_reach, mean_ci, paired_difference

SHORT_NAMES = {0: "Out", 1: "CSF", 2: "cGM", 3: "WM", 4: "BG", 5: "Vent", 6: "Cereb", 7: "dGM", 8: "BStem",
               9: "Hip/Amy"}
"""Short class names for table headers and figure labels."""
REACH_FRACTIONS: tuple[float, ...] = (0.95, 0.97)
"""Fractions of the full-annotation Dice whose budget the reports state."""
BASELINE_ORDER: tuple[str, ...] = ("fgrandom", "random", "equidistant")
"""The reference selection of paired comparisons: the first of these present (nnActive's bar first)."""


def metric(r: dict, cls: int | str = "tissue") -> float:
    """Tissue Dice (``cls="tissue"``) or one class's Dice of a result (NaN if undefined)."""
    s = r["scores"]
    v = s["tissue_dice"] if cls == "tissue" else s["dice"].get(str(cls))
    return math.nan if v is None else float(v)


@dataclass
class Curve:
    """One strategy's results: ``points[x][seed] = result``."""

    name: str
    dispersion: object
    axis: str
    selection: str
    log_x: bool
    points: dict[float, dict[int, dict]] = field(default_factory=dict)

    @property
    def xs(self) -> list[float]:
        return sorted(self.points)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for p in self.points.values() for s in p})

    def slices(self, x: float) -> float:
        return float(np.mean([r["n_slices"] for r in self.points[x].values()]))

    def scans(self, x: float) -> float:
        return float(np.mean([r["n_volumes"] for r in self.points[x].values()]))

    def values(self, x: float, cls: int | str = "tissue") -> dict[int, float]:
        return {s: metric(r, cls) for s, r in self.points[x].items()}

    def estimate(self, x: float, cls: int | str = "tissue") -> Estimate:
        return mean_ci(list(self.values(x, cls).values()))

    def seed_curve(self, seed: int, xs: Sequence[float] | None = None,
                   cls: int | str = "tissue") -> tuple[list[float], list[float]]:
        xs = [x for x in (xs or self.xs) if seed in self.points.get(x, {})]
        return xs, [metric(self.points[x][seed], cls) for x in xs]

    def aubc(self, xs: Sequence[float] | None = None) -> dict[int, float]:
        """Per seed, the normalised area under this curve over ``xs`` (default: all its budgets)."""
        return {s: aubc(*self.seed_curve(s, xs), log_x=self.log_x) for s in self.seeds}

    def reach(self, full: dict[int, float], fraction: float) -> dict[int, float]:
        """Per seed, the budget (x units) at which tissue Dice first reaches ``fraction`` × that seed's full Dice."""
        out = {}
        for s in self.seeds:
            if s in full and math.isfinite(full[s]):
                out[s] = budget_to_reach(*self.seed_curve(s), fraction * full[s])
        return out


def _curve_of(r: dict, loop: bool) -> tuple[str, object, str, str]:
    if loop:
        return r["strategy"], r.get("dispersion"), r.get("axis", ""), r["strategy"]
    c = r["condition"]
    name = c["name"].split("-", 1)[1]
    return name, c["dispersion"], c["axis"], c["selection"]


def build_curves(results: Sequence[dict]) -> list[Curve]:
    """Budget-mode results (a ``condition.budget``) or loop results as curves, in first-seen order."""
    out: OrderedDict[str, Curve] = OrderedDict()
    for r in results:
        loop = r.get("mode") == "loop"
        if not loop and (r.get("condition") or {}).get("budget") is None:
            continue
        name, disp, axis, sel = _curve_of(r, loop)
        cur = out.setdefault(name, Curve(name, disp, axis, sel, log_x=not loop))
        x = float(r["round"]) if loop else float(r["condition"]["budget"])
        cur.points.setdefault(x, {})[int(r["seed"])] = r
    for c in out.values():
        if not c.log_x:  # loop: x = annotated slices after the round (mean over seeds)
            c.points = {c.slices(x): p for x, p in c.points.items()}
    return list(out.values())


def full_reference(curves: Sequence[Curve], count_axis: str = "axial") -> dict[int, float]:
    """Per seed, the full-annotation tissue Dice: the 100 % budget (every usable slice of every pool scan,
    one plan whatever the dispersion), the count axis first."""
    full = [c for c in curves if FULL_BUDGET in c.points]
    full.sort(key=lambda c: c.axis != count_axis)
    return full[0].values(FULL_BUDGET) if full else {}


def common_xs(a: Curve, b: Curve) -> list[float]:
    return sorted(set(a.xs) & set(b.xs))


def compare_aubc(a: Curve, b: Curve) -> tuple[Paired, list[float]] | None:
    """``a − b`` in AUBC over their common budgets, paired by seed (None without ≥ 2 common budgets)."""
    xs = common_xs(a, b)
    if len(xs) < 2:
        return None
    ua, ub = a.aubc(xs), b.aubc(xs)
    seeds = sorted(set(ua) & set(ub))
    return paired_difference([ua[s] for s in seeds], [ub[s] for s in seeds]), xs


def compare_at(a: Curve, b: Curve, x: float) -> Paired:
    va, vb = a.values(x), b.values(x)
    seeds = sorted(set(va) & set(vb))
    return paired_difference([va[s] for s in seeds], [vb[s] for s in seeds])


def reference_for(curve: Curve, curves: Sequence[Curve]) -> Curve | None:
    """The baseline a curve is compared with: same dispersion and axis, the first selection of BASELINE_ORDER
    present that ranks before the curve's own (so fgrandom is compared with nothing, equidistant with fgrandom)."""
    peers = {c.selection: c for c in curves if c.dispersion == curve.dispersion and c.axis == curve.axis}
    rank = BASELINE_ORDER.index(curve.selection) if curve.selection in BASELINE_ORDER else len(BASELINE_ORDER)
    for sel in BASELINE_ORDER[:rank]:
        if sel in peers:
            return peers[sel]
    return None


def reach_estimate(curve: Curve, full: dict[int, float], fraction: float) -> tuple[Estimate, int]:
    """Mean budget to reach ``fraction`` of the full Dice over the seeds that reach it, and how many do."""
    got = curve.reach(full, fraction)
    reached = [v for v in got.values() if math.isfinite(v)]
    return mean_ci(reached), len(got)


# ---------------------------------------------------------------------------------------------- report sections
def _disp_label(d: object) -> str:
    if d == "1slice":
        return "1 slice/scan"
    try:
        return f"{float(d):.0%}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(d)


def _points_table(curves: Sequence[Curve], x_name: str) -> list[str]:
    """One row per curve and budget; ``x_name`` "round" numbers the points instead of showing x."""
    lines = [
        f"| curve | dispersion | axis | selection | {x_name} | slices | scans | seeds | tissue Dice [95% CI] "
        "| all-class Dice [95% CI] |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in curves:
        for i, x in enumerate(c.xs):
            allc = mean_ci([math.nan if r["scores"]["mean_dice"] is None else float(r["scores"]["mean_dice"])
                            for r in c.points[x].values()])
            shown = str(i) if x_name == "round" else f"{x:g}"
            lines.append(
                f"| {c.name} | {_disp_label(c.dispersion)} | {c.axis} | {c.selection} | {shown} | {c.slices(x):.0f} | "
                f"{c.scans(x):.1f} | {len(c.points[x])} | {c.estimate(x).fmt()} | {allc.fmt()} |"
            )
    return lines


def _class_table(curves: Sequence[Curve], x_name: str) -> list[str]:
    from training.data.labels import TISSUE

    lines = [f"| curve | {x_name} | " + " | ".join(SHORT_NAMES[k] for k in TISSUE) + " |",
             "|---|---:|" + "---:|" * len(TISSUE)]
    for c in curves:
        for x in c.xs:
            cells = [f"{np.nanmean(list(c.values(x, k).values())):.3f}" for k in TISSUE]
            lines.append(f"| {c.name} | {x:g} | " + " | ".join(cells) + " |")
    return lines


def _comparisons(curves: Sequence[Curve], unit: str) -> list[str]:
    """Each curve against its baseline selection (fgrandom first) and, for dispersed curves, against whole
    volumes: AUBC over the common budgets and every common budget, paired by seed."""
    lines = []
    for c in curves:
        refs = [("selection", reference_for(c, curves))]
        if c.dispersion not in (1.0, None):
            refs.append(("dispersion", next((w for w in curves if w.dispersion == 1.0 and w.axis == c.axis
                                             and w.selection == c.selection), None)))
        for _kind, ref in refs:
            if ref is None:
                continue
            got = compare_aubc(c, ref)
            if got is None:
                continue
            paired, xs = got
            lines.append(f"- **{c.name} − {ref.name}**, AUBC over {len(xs)} common budgets: {paired.fmt()}")
            # the 100 % point is one shared model: its difference is 0 by construction
            shown = [x for x in xs if x != FULL_BUDGET or not c.log_x]
            lines += [f"  - at {x:g}{unit}: {compare_at(c, ref, x).fmt()}" for x in shown]
    return lines


def budget_section(curves: Sequence[Curve]) -> list[str]:
    """results.md of budget-curve mode: points, AUBC, budget to reach 95/97 % of full, paired comparisons."""
    full = full_reference(curves)
    full_est = mean_ci(list(full.values()))
    lines = ["## Budget curves (held-out scans; mean [95% bootstrap CI] over seeds)", "",
             *_points_table(curves, "budget %"), "",
             "## Annotation efficiency per curve", "",
             f"Full annotation (100 % of the pool's usable slices, whole volumes): tissue Dice {full_est.fmt()}."
             if full else "No full-annotation reference (add 100 to --budgets).", "",
             "| curve | AUBC (log budget) [95% CI] | "
             + " | ".join(f"budget % for {f:.0%} of full" for f in REACH_FRACTIONS) + " |",
             "|---|---:|" + "---:|" * len(REACH_FRACTIONS)]
    for c in curves:
        cells = []
        for f in REACH_FRACTIONS:
            est, n = reach_estimate(c, full, f)
            if not est.n:
                cells.append(f"not reached (0/{n} seeds)")
                continue
            below = max((x for x in c.xs if x <= est.mean), default=c.xs[0])
            above = min((x for x in c.xs if x >= est.mean), default=c.xs[-1])
            where = f"at the {below:g} % point" if below == above else f"between the {below:g} and {above:g} % points"
            cells.append(f"{est.fmt(1)} ({est.n}/{n} seeds; {where})")
        lines.append(f"| {c.name} | {mean_ci(list(c.aubc().values())).fmt()} | " + " | ".join(cells) + " |")
    lines += ["", "AUBC: area under tissue Dice over log10(budget %), divided by the log range (a mean Dice; "
              "each doubling of the budget weighs the same). Budget to reach: linear interpolation between the "
              "budgets run, per seed against that seed's full-annotation Dice; CI over the seeds that reach it.",
              "", "## Paired comparisons (by seed; difference [95% CI], Wilcoxon signed-rank)", ""]
    lines += _comparisons(curves, " %") or ["- no two curves share two budgets"]
    lines += ["", "Within noise = the CI of the paired difference includes 0. With n seeds the smallest "
              "possible Wilcoxon p is 2/2^n (0.25 for 3 seeds).", "",
              "## Dice per class (mean over seeds)", "", *_class_table(curves, "budget %")]
    return lines


def loop_section(curves: Sequence[Curve]) -> list[str]:
    """results.md of loop mode: the learning curves with CIs, AUBC per strategy, paired comparisons."""
    lines = ["## Active-learning loop (held-out scans; mean [95% bootstrap CI] over seeds)", "",
             *_points_table(curves, "round"), "",
             "| strategy | AUBC (annotated slices) [95% CI] | final tissue Dice [95% CI] |", "|---|---:|---:|"]
    for c in curves:
        lines.append(f"| {c.name} | {mean_ci(list(c.aubc().values())).fmt()} | {c.estimate(c.xs[-1]).fmt()} |")
    lines += ["", "AUBC: area under tissue Dice over annotated slices (seed set to last round), divided by "
              "that range.", "", "## Paired comparisons (by seed; difference [95% CI], Wilcoxon signed-rank)", ""]
    lines += _comparisons(curves, " slices") or ["- no baseline strategy (fgrandom, random, equidistant) to compare"]
    lines += ["", "Within noise = the CI of the paired difference includes 0.", "",
              "## Dice per class (mean over seeds)", "", *_class_table(curves, "slices")]
    return lines
