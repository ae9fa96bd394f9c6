"""``neolabel plan``: spend a slice budget over a study set and write the plan as JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from strategies.plan.selection import SCORED_SELECTIONS


def plan(
    data: Path = typer.Argument(
        ..., help="Study set: a dHCP tree (sub-*/ses-*/anat) or a plain folder of NIfTI images."
    ),
    budget: int = typer.Option(..., "--budget", help="Total number of 2D slices to annotate."),
    dispersion: float = typer.Option(
        1.0,
        "--dispersion",
        help="Fraction of a volume's usable slices one volume receives (1.0 = whole volumes, 0.33 = paper's high).",
    ),
    slices_per_volume: int | None = typer.Option(
        None, "--slices-per-volume", help="Fixed slices per volume instead of --dispersion (1 = one slice per volume)."
    ),
    axis: str = typer.Option("axial", "--axis", help="sagittal | coronal | axial | random (per volume) | mixed."),
    margin: float = typer.Option(
        0.0, "--margin", help="Fraction of the brain's extent excluded at each end of the axis (0 ≤ M < 0.5)."
    ),
    selection: str = typer.Option(
        "equidistant", "--selection",
        help="equidistant | random | fgrandom (slices within a scan; fgrandom without class counts = random).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed: same data + options + seed = same plan."),
    out: Path = typer.Option(..., "--out", help="Where to write the plan JSON."),
    figure: Path | None = typer.Option(None, "--figure", help="PNG of the assigned planes on one scan, 3 views."),
    figure_scan: str | None = typer.Option(
        None, "--figure-scan", help="Scan id for --figure (default: first planned)."
    ),
    source: str = typer.Option("auto", "--source", help="Brain extents from: auto (mask, else label) | mask | label."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Folder for the brain-extent cache (default DATA/.neolabel)."
    ),
) -> None:
    """Plan which scans, axes and slices to annotate within a fixed slice budget."""
    import json
    import time

    from strategies.plan.budget import BudgetConfig, BudgetError, plan_budget
    from strategies.plan.extents import ExtentCache, ExtentError, default_cache_path, entries_from_dataset
    from training.data.dataset import DatasetError, open_dataset
    from training.data.nifti import atomic_write_text

    if selection in SCORED_SELECTIONS:
        raise typer.BadParameter(
            f"{selection} selection needs a model's probability maps; it is used by the server and `neolabel "
            "simulate`, not by `plan`",
            param_hint="--selection",
        )
    try:
        cfg = BudgetConfig(
            total_slices=budget,
            dispersion=dispersion,
            axis=axis,
            margin=margin,
            selection=selection,
            seed=seed,
            slices_per_volume=slices_per_volume,
        )
    except BudgetError as exc:
        raise typer.BadParameter(str(exc)) from exc
    start = time.perf_counter()
    try:
        ds = open_dataset(data)
        cache = ExtentCache(default_cache_path(ds.root, cache_dir))
        entries, skipped = entries_from_dataset(ds, cache=cache, source=source)
    except (DatasetError, ExtentError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not entries:
        typer.echo(f"error: no scan in {data} has a brain mask or label to plan from", err=True)
        for sid, why in skipped[:10]:
            typer.echo(f"  {sid}: {why}", err=True)
        raise typer.Exit(1)
    t_load = time.perf_counter() - start
    result = plan_budget(entries, cfg)
    result.skipped = skipped + result.skipped
    t_plan = time.perf_counter() - start - t_load
    atomic_write_text(out, json.dumps(result.to_json(), indent=1) + "\n")

    s = result.summary()
    pps = s["slices_per_scan"]
    per = f"{slices_per_volume} per volume" if slices_per_volume is not None else f"dispersion {dispersion:g}"
    typer.echo(f"plan: {budget} slices, {per}, axis {axis}, margin {margin:g}, {selection}, seed {seed}")
    typer.echo(
        f"  {len(ds.subjects)} scans in {data} ({ds.layout}); {len(entries)} plannable "
        f"({cache.misses} read, {cache.hits} from cache) in {t_load:.2f} s; planned in {t_plan:.3f} s"
    )
    typer.echo(f"  {'scans used':<18}{s['scans']}")
    typer.echo(f"  {'slices spent':<18}{s['spent']} of {s['budget']}")
    typer.echo(f"  {'slices per scan':<18}min {pps['min']}, median {pps['median']:g}, max {pps['max']}")
    typer.echo(f"  {'axis':<18}{'scans':>7}{'slices':>8}")
    for ax, n in s["slices_per_axis"].items():
        typer.echo(f"  {ax:<18}{s['scans_per_axis'][ax]:>7}{n:>8}")
    if result.shortfall is not None:
        typer.echo(f"  shortfall: {result.shortfall.slices} slices — {result.shortfall.reason}")
    if result.skipped:
        typer.echo(f"  skipped {len(result.skipped)} scans, e.g. {result.skipped[0][0]}: {result.skipped[0][1]}")
    typer.echo(f"wrote {out}")

    if figure is not None:
        scan = figure_scan or (result.images[0] if result.images else None)
        if scan is None:
            typer.echo("no scan planned; no figure drawn", err=True)
            raise typer.Exit(1)
        if scan not in {e.id for e in entries}:
            raise typer.BadParameter(f"scan {scan!r} is not in the plan's data", param_hint="--figure-scan")
        draw_plan_figure(ds.get(scan).image, result.for_image(scan), figure, title=f"{scan}: {per}, axis {axis}")
        typer.echo(f"wrote {figure}")


def draw_plan_figure(image_path: Path, assignments: list, out: Path, title: str = "") -> Path:
    """The image in sagittal/coronal/axial views with the assigned planes drawn as lines (paper Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    from strategies.plan.axes import AXES, axis_frames

    img = nib.load(str(image_path))
    frames = axis_frames(img.affine, img.shape[:3])
    ras = nib.as_closest_canonical(img)  # voxel axes R, A, S with indices growing R/A/S = canonical frame
    vol = np.asarray(ras.dataobj, dtype=np.float32)
    if vol.ndim == 4:
        vol = vol[..., 0]
    zooms = ras.header.get_zooms()[:3]
    planes: dict[str, list[int]] = {ax: [] for ax in AXES}
    for a in assignments:
        planes[a.axis].extend(int(i) for i in frames[a.axis].to_canonical(a.indices))
    centre = [int(np.median(planes[ax])) if planes[ax] else vol.shape[i] // 2 for i, ax in enumerate(AXES)]
    lo, hi = np.percentile(vol, [1, 99.5])
    colours = {"sagittal": "tab:red", "coronal": "tab:green", "axial": "tab:blue"}
    # view name -> (fixed axis, horizontal axis, vertical axis)
    views = {"sagittal": (0, 1, 2), "coronal": (1, 0, 2), "axial": (2, 0, 1)}
    fig, axs = plt.subplots(1, 3, figsize=(12, 4.4))
    for axp, (view, (fixed, h, v)) in zip(axs, views.items(), strict=True):
        sl = np.take(vol, centre[fixed], axis=fixed)  # remaining axes in increasing order
        sl = sl if h < v else sl.T
        axp.imshow(sl.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=zooms[v] / zooms[h])
        for ax_name, idx in planes.items():
            a_i = AXES.index(ax_name)
            for i in idx:
                if a_i == h:
                    axp.axvline(i, color=colours[ax_name], lw=0.8, alpha=0.8)
                elif a_i == v:
                    axp.axhline(i, color=colours[ax_name], lw=0.8, alpha=0.8)
        axp.set_title(f"{view} (slice {centre[fixed]})")
        axp.set_xticks([])
        axp.set_yticks([])
    handles = [plt.Line2D([], [], color=colours[a], label=f"{a} ({len(planes[a])})") for a in AXES if planes[a]]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
