"""Benchmark: annotation efficiency — budget curves with statistics, an active choice against foreground-aware random.

Two parts on one generated dHCP-like study set (``cpu`` preset, 2 mm voxels), every model trained with
the same iterations and batch, every model scored on the same held-out, densely labelled scans:

1. **Budget curves** (``neolabel simulate --budgets … --dispersion …``): tissue Dice against the
   budget (percent of the pool's usable slices; 100 = every usable slice of every pool scan, the
   full-annotation reference) for each dispersion (how many scans share a budget), equidistant slices.
2. **Active-learning loop** (``--rounds`` with the same budgets as growth targets): ``claspe``
   (class-stratified, power-noised entropy), ``uncertainty`` (plain entropy), ``fgrandom``
   (foreground-aware random, nnActive's bar) and ``equidistant`` from one shared seed set, paired by seed.

Statistics (``apps.simulation.stats``): mean and 95 % bootstrap CI over seeds, paired differences by
seed with a CI and a Wilcoxon signed-rank p, AUBC, and the budget needed for 95 / 97 % of the
full-annotation Dice. Each part's run keeps its tables and figures in
``bench/results/efficiency/<profile>/runs/<part>-seeds<a>-<b>/`` (models and checkpoints stay in the
work folder, ``bench/out/efficiency/<profile>``, resumable); every run there of the same
configuration is then reported together in ``static/``, ``loop/``, ``summary.md`` and
``summary.json``, so seeds can be added later (``--part loop --seeds 2 --seed-offset 3``; ``--merge``
only reports). Prints last::

    full_dice=<x> slices_pct_for_97=<p> aubc_<strategy>=<a> ... best=<s> best_vs_fgrandom=<d> ci=[lo,hi]

Profiles (``--quick`` ≈ 10 min on 2 CPU cores: a smoke run whose Dice is far from converged; default
≤ 2 h on 2 CPU cores; ``--gpu`` a larger configuration for one GPU). Re-running resumes. On a shared
machine pass ``--threads 1`` (two torch threads under contention were 5–10× slower per iteration).

    .venv/bin/python bench/annotation_efficiency.py --quick
    nohup .venv/bin/python bench/annotation_efficiency.py > bench/out/efficiency.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like our packages (bench/training.py): never import from the script folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from apps.simulation.config import SimulationConfig  # noqa: E402
from apps.simulation.curves import build_curves, compare_aubc, full_reference, reach_estimate  # noqa: E402
from apps.simulation.report import read_csv  # noqa: E402
from apps.simulation.run import run_simulation, write_reports  # noqa: E402
from apps.simulation.stats import mean_ci  # noqa: E402
from strategies.plan.selection import SCORED_SELECTIONS  # noqa: E402


@dataclass(frozen=True)
class Profile:
    """One benchmark configuration (what is simulated, and how long each model trains)."""

    subjects: int  # generated scans, test scans included
    test_scans: int
    seeds: int
    epochs: int  # × iterations = the iterations of every static model and of the loop's seed-set model
    iterations: int
    round_epochs: int  # loop: warm-start epochs per round
    budgets: tuple[str, ...]
    dispersions: tuple[str, ...]
    loop_budgets: tuple[str, ...]
    strategies: tuple[str, ...]
    axes: tuple[str, ...] = ("axial",)
    shape: tuple[int, int, int] = (54, 72, 72)
    spacing: float = 2.0
    preset: str = "cpu"
    patch: int | None = None  # training patch edge (None: the preset's)


PROFILES: dict[str, Profile] = {
    # ≈ 10 min on 2 quiet cores: the pipeline end to end (real training, prediction, statistics), Dice far
    # from converged (50 iterations per model).
    "quick": Profile(subjects=10, test_scans=3, seeds=2, epochs=2, iterations=25, round_epochs=1,
                     budgets=("2", "10", "100"), dispersions=("0.33", "1.0"), loop_budgets=("2", "5", "10"),
                     strategies=("claspe", "fgrandom")),
    # ≈ 2 h on 2 quiet cores (the full run; 2-core AMD EPYC measured 0.95 s per iteration, batch 2, 48³):
    # 15 static models (5 per seed: budgets 2 / 10 / 100 × the dispersions the pool can pay for, identical
    # plans shared) + 5 loop models per seed (the shared seed-set model, then 2 rounds for each of claspe
    # and fgrandom; plain entropy runs in the gpu profile). 300 iterations: a calibration run measured 0.867
    # tissue Dice for full annotation (200 → 0.666, 350 → 0.898, 400 → 0.912; a 32³ patch at 300 iterations only
    # 0.566); the benchmark's 5 seeds: 0.853 [0.827, 0.868] (bench/results/efficiency/full).
    "full": Profile(subjects=16, test_scans=4, seeds=3, epochs=6, iterations=50, round_epochs=2,
                    budgets=("2", "10", "100"), dispersions=("1slice", "0.33", "1.0"),
                    loop_budgets=("2", "5", "10"), strategies=("claspe", "fgrandom")),
    # one GPU: more scans, seeds, budgets, rounds and iterations.
    "gpu": Profile(subjects=40, test_scans=8, seeds=5, epochs=12, iterations=100, round_epochs=6,
                   budgets=("1", "2", "5", "10", "20", "33", "100"), dispersions=("1slice", "0.1", "0.33", "1.0"),
                   loop_budgets=("1", "2", "5", "10", "20"),
                   strategies=("claspe", "uncertainty", "fgrandom", "random", "equidistant")),
}
KEEP = ("results.csv", "results.md", "simulation.json", "timing.json", "*.png")
"""What is copied from a simulation output into bench/results (not the models)."""


def _configs(p: Profile, work: Path, data: Path, args: argparse.Namespace) -> tuple[SimulationConfig, SimulationConfig]:
    overrides: dict = {"threads": args.threads} if args.threads else {}
    device = args.device or ("cuda" if args.gpu else None)
    if device:
        overrides["device"] = device
    if p.patch:
        overrides["patch_size"] = (p.patch,) * 3
    common = dict(data=data, epochs=p.epochs, iterations=p.iterations, seeds=p.seeds, test_scans=p.test_scans,
                  seed_offset=args.seed_offset,
                  preset=p.preset, train_overrides=overrides, progress=not args.quiet)
    static = SimulationConfig(out=work / "static", budgets=p.budgets, dispersions=p.dispersions, axes=p.axes,
                              selections=("equidistant",), **common)
    loop = SimulationConfig(out=work / "loop", rounds=len(p.loop_budgets) - 1, budgets=p.loop_budgets,
                            strategies=p.strategies, round_epochs=p.round_epochs, loop_axis=p.axes[0], **common)
    return static, loop


DATA_RECORD = "data.json"
"""How the study set was generated: in the work folder and in every run's results (runs merge only on equal ones)."""


def _data(p: Profile, work: Path, thick_axis: str | None) -> tuple[Path, dict]:
    """The study set, generated once (thick-slice acquisition along ``thick_axis`` when given), and its record;
    a work folder whose data were generated otherwise is refused rather than reused."""
    from training.data.synthetic.write import write_study_set

    data, record_file = work / "data", work / DATA_RECORD
    record = {"subjects": p.subjects, "shape": list(p.shape), "spacing": p.spacing, "seed": 0, "thick_axis": thick_axis}
    if (data / "participants.tsv").is_file():
        old = json.loads(record_file.read_text()) if record_file.is_file() else None
        if old is not None and old != record:
            raise SystemExit(f"{data} was generated as {old}, not {record}: pass another --work")
    else:
        extra = {"acquisition_axis": thick_axis} if thick_axis else {}
        write_study_set(data, p.subjects, shape=p.shape, spacing=p.spacing, seed=0, **extra)
    record_file.write_text(json.dumps(record) + "\n")
    return data, record


def _copy(src: Path, dst: Path, data_record: dict) -> None:
    """One run's tables and figures into ``dst`` (cleared first). A resume that reused models keeps the
    timing record of the run that trained them."""
    old = dst / "timing.json"
    first = json.loads(old.read_text()) if old.is_file() else None
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for pattern in KEEP:
        for f in src.glob(pattern):
            shutil.copy2(f, dst / f.name)
    new = dst / "timing.json"
    if first is not None and not first.get("reused") and json.loads(new.read_text()).get("reused"):
        new.write_text(json.dumps(first, indent=1) + "\n")
    (dst / DATA_RECORD).write_text(json.dumps(data_record) + "\n")


def _f(v: float, nd: int = 3) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{nd}f}"


def summarise(static: list[dict], loop: list[dict]) -> tuple[dict, list[str]]:
    """The numbers of the last line and of summary.md, from the two runs' results."""
    scurves = build_curves(static)
    full = full_reference(scurves)
    full_est = mean_ci(list(full.values()))
    reach = {}
    for c in scurves:
        est, n = reach_estimate(c, full, 0.97)
        reach[c.name] = (est, n)
    reached = {k: v for k, v in reach.items() if v[0].n == v[1] and v[1] > 0}
    best_static = min(reached, key=lambda k: reached[k][0].mean) if reached else None
    lcurves = build_curves(loop)
    aubcs = {c.name: mean_ci(list(c.aubc().values())) for c in lcurves}
    fg = next((c for c in lcurves if c.selection == "fgrandom"), None)
    actives = [c for c in lcurves if c.selection in SCORED_SELECTIONS]
    best = max(actives, key=lambda c: aubcs[c.name].mean) if actives else None
    cmp = {c.name: compare_aubc(c, fg) for c in lcurves if fg is not None and c is not fg}
    out = {
        "full_dice": full_est.mean, "full_dice_ci": [full_est.lo, full_est.hi],
        "slices_pct_for_97": reached[best_static][0].mean if best_static else math.nan,
        "slices_pct_for_97_ci": [reached[best_static][0].lo, reached[best_static][0].hi] if best_static else None,
        "slices_pct_for_97_curve": best_static,
        "aubc": {k: [v.mean, v.lo, v.hi] for k, v in aubcs.items()},
        "vs_fgrandom": {k: None if v is None else {"diff": v[0].diff.mean, "ci": [v[0].diff.lo, v[0].diff.hi],
                                                    "p": v[0].p_value, "verdict": v[0].verdict}
                        for k, v in cmp.items()},
        "best": None if best is None else best.name,
    }
    lines = [f"- full annotation (100 %, whole volumes): tissue Dice {full_est.fmt()}"]
    for name, (est, n) in reach.items():
        lines.append(f"- {name}: 97 % of full Dice at {est.fmt(1)} % of the pool's slices "
                     f"({est.n}/{n} seeds reach it within the budgets run)")
    for name, est in aubcs.items():
        got = cmp.get(name)
        vs = "" if got is None else f"; − fgrandom: {got[0].fmt()}"
        lines.append(f"- loop {name}: AUBC {est.fmt()}{vs}")
    return out, lines


def last_line(s: dict) -> str:
    parts = [f"full_dice={_f(s['full_dice'])}", f"slices_pct_for_97={_f(s['slices_pct_for_97'], 1)}"]
    parts += [f"aubc_{k}={_f(v[0])}" for k, v in s["aubc"].items()]
    b = s["best"]
    got = s["vs_fgrandom"].get(b) if b else None
    if got:
        parts += [f"best={b}", f"best_vs_fgrandom={got['diff']:+.3f}", f"ci=[{_f(got['ci'][0])},{_f(got['ci'][1])}]"]
    else:
        parts += ["best=none", "best_vs_fgrandom=nan", "ci=[nan,nan]"]
    return " ".join(parts)


def _run_name(part: str, seeds: list[int]) -> str:
    return f"{part}-seeds{min(seeds)}-{max(seeds)}"


def _seeds_of(run: Path) -> set[int]:
    return {r["seed"] for r in read_csv(run / "results.csv")} if (run / "results.csv").is_file() else set()


def _check_new_seeds(results: Path, part: str, name: str, seeds: list[int]) -> None:
    """Before training: seeds another run of this part holds already are refused (the merge would be)."""
    for run in sorted((results / "runs").glob(f"{part}-seeds*")):
        clash = _seeds_of(run) & set(seeds) if run.name != name else set()
        if clash:
            raise SystemExit(f"seed(s) {sorted(clash)} are in {run} already: choose others with --seed-offset")


MAY_DIFFER = ("out", "data", "seeds", "seed_offset", "progress", "executor", "jobs")
"""Configuration entries that may differ between runs merged into one report: where, which seeds, how they
were run (also ``slurm_*`` and the ``threads`` override); everything else must agree."""


def _what_was_simulated(run: Path) -> dict:
    """What must agree for two runs to be reported together: configuration, split, loop plan, generated data."""
    sim = json.loads((run / "simulation.json").read_text())
    cfg = {k: v for k, v in sim["config"].items() if k not in MAY_DIFFER and not k.startswith("slurm_")}
    cfg["train_overrides"] = {k: v for k, v in (cfg.get("train_overrides") or {}).items() if k != "threads"}
    data = json.loads((run / DATA_RECORD).read_text()) if (run / DATA_RECORD).is_file() else None
    loop = dict(sim.get("loop") or {})
    if loop.get("targets"):  # rounds grow to the targets; round_slices (from the first seed's plan) is unused
        loop.pop("round_slices", None)
    return {"config": cfg, "test_ids": sim.get("test_ids"), "pool_ids": sim.get("pool_ids"),
            "loop": loop or None, "data": data}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(prefix + k)
    return out


def _part_results(results: Path, part: str) -> tuple[list[dict], dict[str, float | None]]:
    """All runs of one part (``results/runs/<part>-seeds<a>-<b>``): their results, and each run's wall time
    (None where unknown: no timing record, or the record of a resume that reused earlier models).

    Runs are merged only when they simulated the same thing (configuration but for the seeds and how they
    ran, split, loop plan and generated data) and no seed appears twice.
    """
    rows: list[dict] = []
    walls: dict[str, float | None] = {}
    ref = None
    for run in sorted((results / "runs").glob(f"{part}-seeds*")):
        what = _what_was_simulated(run)
        if ref is not None and what != ref[1]:
            raise SystemExit(f"{run.name} and {ref[0]} simulated different things "
                             f"({', '.join(_differences(what, ref[1]))}): not merged")
        ref = ref or (run.name, what)
        got = read_csv(run / "results.csv")
        clash = {r["seed"] for r in got} & {r["seed"] for r in rows}
        if clash:
            raise SystemExit(f"{run.name}: seed(s) {sorted(clash)} are in another {part} run too")
        rows += got
        timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
        walls[run.name] = None if timing.get("reused", True) else timing["wall_seconds"]
    return rows, walls


def merge(results: Path) -> tuple[dict, list[str]]:
    """Report every run under ``results/runs`` together: ``static/`` and ``loop/`` reports, the summary numbers."""
    static, s_walls = _part_results(results, "static")
    loop, l_walls = _part_results(results, "loop")
    for part, rows, walls in (("static", static, s_walls), ("loop", loop, l_walls)):
        if rows:
            seeds = sorted({r["seed"] for r in rows})
            write_reports(results / part, rows, {"merged runs": ", ".join(walls), "seeds": seeds},
                          with_figures=True)
    summary, lines = summarise(static, loop)
    # one entry per model: a shared plan's and the loop's shared seed-set model's rows are copies (same timing,
    # same scores in every class); the CSV does not say which rows share a model
    models = {(r["mode"], r["seed"], r["n_slices"], r["train_seconds"], json.dumps(r["scores"], sort_keys=True)): r
              for r in (*static, *loop)}
    summary.update({"runs": {**s_walls, **l_walls}, "models": len(models),
                    "seeds": {"static": sorted({r["seed"] for r in static}), "loop": sorted({r["seed"] for r in loop})},
                    "train_seconds_all_models": round(sum(r["train_seconds"] for r in models.values()), 1)})
    return summary, lines


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="≈ 10 min smoke version (2 CPU cores)")
    g.add_argument("--gpu", action="store_true", help="the larger configuration for one GPU")
    ap.add_argument("--work", type=Path, default=None, help="models and checkpoints (default bench/out/efficiency/<p>)")
    ap.add_argument("--results", type=Path, default=None, help="default bench/results/efficiency/<profile>")
    ap.add_argument("--seeds", type=int, default=None, help="override the profile's seeds")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="first seed (add seeds to an earlier run: --part loop --seeds 2 --seed-offset 3)")
    ap.add_argument("--part", choices=("both", "static", "loop"), default="both",
                    help="run only the budget curves or only the loop (then see --merge)")
    ap.add_argument("--axes", default=None, help="static curves' axes, comma list (e.g. sagittal,axial)")
    ap.add_argument("--thick-axis", default=None, help="thick-slice acquisition axis of the generated data")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    ap.add_argument("--device", default=None, help="training device (default: cuda with --gpu, else training's)")
    ap.add_argument("--merge", action="store_true",
                    help="train nothing: report the runs already under <results>/runs together")
    ap.add_argument("--quiet", action="store_true")
    return ap


def run_parts(p: Profile, args: argparse.Namespace, work: Path, results: Path) -> None:
    """Run the chosen parts, each into ``results/runs/<part>-seeds<a>-<b>`` (seeds checked before training)."""
    data, record = _data(p, work, args.thick_axis)
    static_cfg, loop_cfg = _configs(p, work, data, args)
    parts = [(n, cfg) for n, cfg in (("static", static_cfg), ("loop", loop_cfg)) if args.part in ("both", n)]
    seeds = list(range(args.seed_offset, args.seed_offset + p.seeds))
    for part, _cfg in parts:
        _check_new_seeds(results, part, _run_name(part, seeds), seeds)
    for part, cfg in parts:
        done = run_simulation(cfg)
        if done.results:
            _copy(cfg.out, results / "runs" / _run_name(part, sorted({r["seed"] for r in done.results})), record)


def write_summary(results: Path, name: str, p: Profile) -> dict:
    """Merge the runs, write ``summary.json`` / ``summary.md`` and print the findings and the last line."""
    summary, lines = merge(results)
    config = {k: str(v) for k, v in p.__dict__.items() if k != "seeds"}  # the seeds are the merged runs'
    summary.update({"profile": name, "config": config})
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    md = [f"# Annotation efficiency ({name} profile)", "",
          "- configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()),
          f"- seeds: static {summary['seeds']['static']}, loop {summary['seeds']['loop']}",
          "- runs (wall time): " + ", ".join(f"{k} ({'unknown' if v is None else f'{v:.0f} s'})"
                                             for k, v in summary["runs"].items()),
          f"- {summary['models']} models, training time of all models {summary['train_seconds_all_models']:.0f} s",
          "",
          *lines, "", "Details, CIs and paired tests per budget: `static/results.md`, `loop/results.md`.", "",
          "```", last_line(summary), "```", ""]
    (results / "summary.md").write_text("\n".join(md))
    print("\n".join(lines))
    print(last_line(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = "quick" if args.quick else "gpu" if args.gpu else "full"
    p = PROFILES[name]
    if args.seeds:
        p = replace(p, seeds=args.seeds)
    if args.axes:
        p = replace(p, axes=tuple(a.strip() for a in args.axes.split(",") if a.strip()))
    work = args.work or ROOT / "bench" / "out" / "efficiency" / name
    results = args.results or ROOT / "bench" / "results" / "efficiency" / name
    if not args.merge:
        run_parts(p, args, work, results)
    write_summary(results, name, p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
