"""Tables and figures of a simulation run: results.csv, results.md, PNG figures (matplotlib Agg)."""

from __future__ import annotations

import csv
import io
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apps.simulation.curves import SHORT_NAMES, Curve, budget_section, build_curves, loop_section
from apps.simulation.stats import Estimate, mean_ci, paired_difference
from training.data import labels as L
from training.data.nifti import atomic_write_text

CSV_COLUMNS: tuple[str, ...] = (
    "mode",
    "condition",
    "budget",
    "dispersion",
    "axis",
    "selection",
    "margin",
    "seed",
    "round",
    "n_volumes",
    "n_slices",
    "epochs",
    "class",
    "class_name",
    "dice",
    "hd95",
    "train_seconds",
)
"""One row per condition (loop mode: strategy and round) × seed × class; class ``tissue`` is the
mean over ``training.data.labels.TISSUE``. ``budget``: budget-curve mode, percent of the pool's
usable slices (empty otherwise)."""



def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def _fmt(v: float | None, nd: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def result_label(r: dict) -> str:
    return r["condition"]["name"] if r["mode"] == "static" else r["strategy"]


def csv_rows(results: Sequence[dict]) -> list[dict]:
    rows = []
    names = L.class_names()
    for r in results:
        cond = r.get("condition") or {}
        s = r["scores"]
        base = {
            "mode": r["mode"],
            "condition": result_label(r),
            "budget": "" if cond.get("budget") is None else f"{float(cond['budget']):g}",
            "dispersion": cond.get("dispersion", r.get("dispersion", "")),
            "axis": cond.get("axis", r.get("axis", "")),
            "selection": cond.get("selection", r.get("selection", "")),
            "margin": cond.get("margin", r.get("margin", "")),
            "seed": r["seed"],
            "round": r.get("round", ""),
            "n_volumes": r["n_volumes"],
            "n_slices": r["n_slices"],
            "epochs": r["epochs"],
            "train_seconds": r["train_seconds"],
        }
        if cond.get("full"):
            base["dispersion"] = "full"
        for c in range(L.NUM_CLASSES):
            rows.append({**base, "class": c, "class_name": names[c], "dice": _fmt(_f(s["dice"].get(str(c)))),
                         "hd95": _fmt(_f(s["hd95"].get(str(c))), 3)})
        rows.append({**base, "class": "tissue", "class_name": "tissue mean", "dice": _fmt(_f(s["tissue_dice"])),
                     "hd95": _fmt(_f(s["tissue_hd95"]), 3)})
    return rows


def write_csv(path: Path, results: Sequence[dict]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in csv_rows(results):
        w.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def _number(v: str) -> float | None:
    return None if v == "" else float(v)


def _dispersion(v: str) -> float | str:
    return v if v in ("1slice", "full") else float(v)


def read_csv(path: Path) -> list[dict]:
    """The results of a ``results.csv`` again, as far as the reports need them (scores, plan sizes, labels).

    Results kept in git outlive the work folder with the per-model JSONs: this lets runs made at
    different times (other seeds of the same configuration) be merged and reported together.
    """
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = set(CSV_COLUMNS) - set(rows[0] if rows else CSV_COLUMNS)
    if missing:
        raise ValueError(f"{path}: not a simulation results.csv (missing columns {sorted(missing)})")
    out: OrderedDict[tuple, dict] = OrderedDict()
    for row in rows:
        key = (row["mode"], row["condition"], row["seed"], row["round"])
        r = out.get(key)
        if r is None:
            r = out[key] = _result_of(row)
        dice, hd95 = _number(row["dice"]), _number(row["hd95"])
        if row["class"] == "tissue":
            r["scores"]["tissue_dice"], r["scores"]["tissue_hd95"] = dice, hd95
        else:
            r["scores"]["dice"][row["class"]], r["scores"]["hd95"][row["class"]] = dice, hd95
    for r in out.values():
        # the CSV has no all-class row: the mean of the class means, which is the evaluation's mean of the
        # subjects' all-class means whenever every class is defined on every test scan
        defined = [v for v in r["scores"]["dice"].values() if v is not None and math.isfinite(v)]
        r["scores"]["mean_dice"] = float(np.mean(defined)) if defined else None
    return list(out.values())


def _result_of(row: dict) -> dict:
    disp = _dispersion(row["dispersion"])
    common = {"mode": row["mode"], "seed": int(row["seed"]), "n_volumes": int(row["n_volumes"]),
              "n_slices": int(row["n_slices"]), "epochs": int(row["epochs"]),
              "train_seconds": float(row["train_seconds"]),
              "scores": {"dice": {}, "hd95": {}, "tissue_dice": None, "tissue_hd95": None, "mean_dice": None}}
    if row["mode"] == "loop":
        return {**common, "strategy": row["condition"], "round": int(row["round"]), "dispersion": disp,
                "axis": row["axis"], "selection": row["selection"], "margin": float(row["margin"])}
    cond = {"name": row["condition"], "dispersion": 1.0 if disp == "full" else disp, "axis": row["axis"],
            "selection": row["selection"], "margin": float(row["margin"]), "full": disp == "full"}
    if row["budget"] != "":
        cond["budget"] = float(row["budget"])
    return {**common, "condition": cond}


def _ms(values: Sequence[float], nd: int = 3) -> str:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.{nd}f}"
    return f"{v.mean():.{nd}f} ± {v.std(ddof=1):.{nd}f}"


def group(results: Sequence[dict]) -> OrderedDict[str, list[dict]]:
    g: OrderedDict[str, list[dict]] = OrderedDict()
    for r in results:
        key = result_label(r) if r["mode"] == "static" else f"{r['strategy']}|{r['round']}"
        g.setdefault(key, []).append(r)
    return g


def summary(results: Sequence[dict]) -> list[dict]:
    """Per condition: mean tissue Dice etc. over seeds (used by the findings and the figures)."""
    out = []
    for name, rs in group([r for r in results if r["mode"] == "static"]).items():
        td = [_f(r["scores"]["tissue_dice"]) for r in rs]
        out.append({
            "name": name,
            "condition": rs[0]["condition"],
            "tissue_dice": float(np.nanmean(td)) if not all(math.isnan(x) for x in td) else math.nan,
            "tissue_dice_values": td,
            "n": len(rs),
        })
    return out


def findings(results: Sequence[dict]) -> list[str]:
    """The paper's two findings checked on this run's numbers (whatever the answer is)."""
    s = summary(results)
    lines: list[str] = []
    full = next((x for x in s if x["condition"].get("full")), None)
    dispersed = [x for x in s if not x["condition"].get("full")]
    if full is None or not dispersed:
        return lines
    better = [x for x in dispersed if x["tissue_dice"] > full["tissue_dice"]]
    mean_disp = float(np.nanmean([x["tissue_dice"] for x in dispersed]))
    lines.append(
        f"High dispersion vs full volumes: {len(better)} of {len(dispersed)} dispersed condition(s) beat the "
        f"full-volume baseline in mean tissue Dice ({full['tissue_dice']:.3f}); mean over dispersed conditions "
        f"{mean_disp:.3f} ({'above' if mean_disp > full['tissue_dice'] else 'not above'} the baseline)."
    )
    by_axis = {}
    for x in dispersed:
        c = x["condition"]
        if c.get("selection") == "equidistant" and c.get("axis") in ("sagittal", "coronal", "axial", "random"):
            by_axis.setdefault(str(c.get("dispersion")), []).append(x)
    for disp, xs in by_axis.items():
        if len(xs) < 2:
            continue
        worst = min(xs, key=lambda x: x["tissue_dice"])
        verdict = ("sagittal is the weakest, as in the paper" if worst["condition"]["axis"] == "sagittal"
                   else "not sagittal, unlike the paper")
        order = ", ".join(f"{x['condition']['axis']} {x['tissue_dice']:.3f}" for x in
                          sorted(xs, key=lambda x: -x["tissue_dice"]))
        lines.append(
            f"Weakest axis at dispersion {disp}: {worst['condition']['axis']} "
            f"({verdict}); "
            f"ranking: {order}."
        )
    # Paired by seed: a seed fixes the scan order (nested scan sets) and the training seed for every
    # condition, so condition − baseline within a seed removes the between-seed spread.
    full_by_seed = {r["seed"]: _f(r["scores"]["tissue_dice"]) for r in results
                    if r["mode"] == "static" and r["condition"].get("full")}
    paired = []
    for x in dispersed:
        diffs = [_f(r["scores"]["tissue_dice"]) - full_by_seed[r["seed"]] for r in results
                 if r["mode"] == "static" and result_label(r) == x["name"] and r["seed"] in full_by_seed]
        diffs = [d for d in diffs if not math.isnan(d)]
        if diffs:
            wins = sum(d > 0 for d in diffs)
            p = paired_difference(diffs, [0.0] * len(diffs))
            paired.append(f"{x['name']} {np.mean(diffs):+.3f} (better in {wins}/{len(diffs)} seeds; 95% CI "
                          f"{_ci(p.diff)}, Wilcoxon p = {p.p_value:.3g}: {p.verdict})")
    if paired:
        lines.append("Paired by seed (condition − baseline, tissue Dice): " + "; ".join(paired) + ".")
    seeds = max(x["n"] for x in s)
    if seeds > 1:
        sds = [np.nanstd(x["tissue_dice_values"], ddof=1) for x in s if x["n"] > 1]
        diffs = [abs(x["tissue_dice"] - full["tissue_dice"]) for x in dispersed]
        lines.append(
            f"Seed spread: median sd over seeds {float(np.nanmedian(sds)):.3f}; largest difference from the "
            f"baseline {max(diffs):.3f} — differences smaller than about two sd are within seed noise."
        )
    else:
        lines.append("Only one seed per condition: no spread is known, so small differences may be noise.")
    return lines


def _paper_section(static: Sequence[dict]) -> list[str]:
    """The paper's design: a Table-3-style table (mean ± sd and the 95 % bootstrap CI over seeds)."""
    tissue = list(L.TISSUE)
    lines = [
        "## Conditions (mean ± sd over seeds, held-out test scans)",
        "",
        "| condition | dispersion | axis | scans | slices | seeds | tissue Dice | tissue Dice 95% CI | all-class Dice "
        "| tissue HD95 (mm) | train time (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in group(static).items():
        c = rs[0]["condition"]
        disp = "full volumes" if c.get("full") else (
            "1 slice/scan" if c["dispersion"] == "1slice" else f"{float(c['dispersion']):.0%}")
        axis = f"{c['axis']} (counted)" if c.get("full") else c["axis"]
        td = [_f(r["scores"]["tissue_dice"]) for r in rs]
        lines.append(
            f"| {name} | {disp} | {axis} | {_ms([r['n_volumes'] for r in rs], 1)} | "
            f"{_ms([r['n_slices'] for r in rs], 0)} | {len(rs)} | {_ms(td)} | {_ci(mean_ci(td))} | "
            f"{_ms([_f(r['scores']['mean_dice']) for r in rs])} | "
            f"{_ms([_f(r['scores']['tissue_hd95']) for r in rs], 2)} | "
            f"{_ms([r['train_seconds'] for r in rs], 0)} |"
        )
    lines += ["", "## Dice per class (mean ± sd over seeds)", ""]
    lines.append("| condition | " + " | ".join(SHORT_NAMES[c] for c in tissue) + " |")
    lines.append("|---|" + "---:|" * len(tissue))
    for name, rs in group(static).items():
        cells = [_ms([_f(r["scores"]["dice"].get(str(c))) for r in rs]) for c in tissue]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    f = findings(static)
    if f:
        lines += ["", "## Findings (the paper's two, checked on this run)", ""] + [f"- {x}" for x in f]
    return lines


def _ci(e: Estimate) -> str:
    return f"[{e.lo:.3f}, {e.hi:.3f}]" if e.has_ci else "n/a"


def markdown(results: Sequence[dict], meta: dict) -> str:
    """``results.md``: the setup, then the paper's table, the budget curves or the learning curves."""
    lines = ["# Simulation results", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    static = [r for r in results if r["mode"] == "static" and (r["condition"].get("budget") is None)]
    budget = [r for r in results if r["mode"] == "static" and r["condition"].get("budget") is not None]
    loop = [r for r in results if r["mode"] == "loop"]
    if static:
        lines += _paper_section(static)
    if budget:
        lines += budget_section(build_curves(budget))
    if loop:
        lines += loop_section(build_curves(loop))
    lines.append("")
    lines.append("Class names: " + ", ".join(f"{SHORT_NAMES[c]} = {L.class_names()[c]}" for c in L.TISSUE)
                 + ". Tissue = mean over these classes (backgrounds 0 and 4 excluded).")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, results: Sequence[dict], meta: dict) -> Path:
    return atomic_write_text(path, markdown(results, meta))


def _savefig(fig: Any, path: Path) -> Path:
    from training.data.nifti import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"), suffix=".png")


def figures(out: Path, results: Sequence[dict]) -> list[Path]:
    """``dice_by_condition.png``, ``dice_per_class.png`` (the paper's design), ``budget_curve.png`` and
    ``budget_curve_per_class.png`` (budget curves), ``learning_curve.png`` and
    ``learning_curve_per_class.png`` (loop)."""
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    static = [r for r in results if r["mode"] == "static" and r["condition"].get("budget") is None]
    if static:
        written += _condition_figures(out, static)
    budget = [r for r in results if r["mode"] == "static" and r["condition"].get("budget") is not None]
    if budget:
        written += curve_figures(out, build_curves(budget), "budget_curve", "budget (% of the pool's usable slices)")
    loop = [r for r in results if r["mode"] == "loop"]
    if loop:
        written += curve_figures(out, build_curves(loop), "learning_curve", "annotated slices")
    return written


def _condition_figures(out: Path, static: Sequence[dict]) -> list[Path]:
    import matplotlib.pyplot as plt

    written: list[Path] = []
    g = group(static)
    names = list(g)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    for i, name in enumerate(names):
        vals = np.asarray([_f(r["scores"]["tissue_dice"]) for r in g[name]], dtype=float)
        full = g[name][0]["condition"].get("full")
        ax.bar(i, np.nanmean(vals), yerr=np.nanstd(vals, ddof=1) if vals.size > 1 else 0, capsize=4,
               color="#888888" if full else "#3a7bd5", alpha=0.85)
        ax.scatter(np.full(vals.size, i), vals, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("tissue Dice (test scans; axis zoomed)")
    ax.set_title("Tissue Dice by condition (mean ± sd over seeds; dots = seeds)")
    vals_all = [_f(r["scores"]["tissue_dice"]) for r in static]
    if not all(math.isnan(v) for v in vals_all):
        lo, hi = np.nanmin(vals_all), np.nanmax(vals_all)
        pad = max(0.02, 0.25 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))  # zoomed: differences between conditions matter
    written.append(_savefig(fig, out / "dice_by_condition.png"))
    plt.close(fig)

    tissue = list(L.TISSUE)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(tissue) * max(1, len(names)) / 3), 4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        means = [np.nanmean([_f(r["scores"]["dice"].get(str(c))) for r in g[name]]) for c in tissue]
        ax.bar(np.arange(len(tissue)) + j * width - 0.4 + width / 2, means, width, label=name)
    ax.set_xticks(range(len(tissue)))
    ax.set_xticklabels([SHORT_NAMES[c] for c in tissue])
    ax.set_ylabel("Dice (test scans)")
    ax.set_title("Dice per class and condition (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    written.append(_savefig(fig, out / "dice_per_class.png"))
    plt.close(fig)
    return written


def curve_figures(out: Path, curves: Sequence[Curve], stem: str, x_label: str) -> list[Path]:
    """Tissue Dice against budget per curve with its 95 % bootstrap CI band (``<stem>.png``), and the
    mean Dice of every tissue class (``<stem>_per_class.png``)."""
    import matplotlib.pyplot as plt

    log_x = bool(curves) and curves[0].log_x
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for c in curves:
        est = [c.estimate(x) for x in c.xs]
        line = ax.plot(c.xs, [e.mean for e in est], marker="o", ms=4, label=c.name)[0]
        band = [(x, e.lo, e.hi) for x, e in zip(c.xs, est, strict=True) if e.has_ci]
        if band:
            bx, lo, hi = zip(*band, strict=True)
            ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("tissue Dice (held-out scans)")
    ax.set_title("Tissue Dice against annotation budget (mean, 95% bootstrap CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    written = [_savefig(fig, out / f"{stem}.png")]
    plt.close(fig)

    tissue = list(L.TISSUE)
    fig, axes = plt.subplots(2, (len(tissue) + 1) // 2, figsize=(13, 6), sharex=True, sharey=True)
    for ax, k in zip(axes.ravel(), tissue, strict=False):
        for c in curves:
            ax.plot(c.xs, [np.nanmean(list(c.values(x, k).values())) for x in c.xs], marker=".", label=c.name)
        ax.set_title(SHORT_NAMES[k])
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log")
    axes.ravel()[0].legend(fontsize=6)
    fig.supxlabel(x_label)
    fig.supylabel("Dice (mean over seeds)")
    written.append(_savefig(fig, out / f"{stem}_per_class.png"))
    plt.close(fig)
    return written
