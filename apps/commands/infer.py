"""``neolabel infer``: segment one scan with a checkpoint; the label keeps the input's shape and affine."""

from __future__ import annotations

from pathlib import Path

import typer


def infer(
    ckpt: Path = typer.Argument(..., help="Checkpoint written by `neolabel train` (best.pt / last.pt)."),
    image: Path = typer.Argument(..., help="T2w NIfTI image (any orientation)."),
    out: Path = typer.Argument(..., help="Where to write the label (uint8 NIfTI, drawem9 classes 0–9)."),
    t1w: Path | None = typer.Option(None, "--t1w", help="T1w image, for models trained on T2w + T1w."),
    probabilities: Path | None = typer.Option(
        None, "--probabilities", help="Also write class probabilities (4D float32 NIfTI, 10 volumes)."
    ),
    tta: bool = typer.Option(
        False, "--tta/--no-tta", help="Mirror test-time augmentation (8 flips, 8× slower)."
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu | cuda | cuda:N (default: cuda if available)."
    ),
    reference: bool = typer.Option(
        False,
        "--reference",
        help="The paper's slow settings (128³ windows, overlap 0.5, fp32) for comparisons.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    """Segment IMAGE with the model in CKPT and write the label to OUT."""
    import time

    from training.data.nifti import NiftiError
    from training.data.preprocess import PreprocessError
    from training.infer.predictor import PredictError, Predictor
    from training.model.checkpoint import CheckpointError

    try:
        predictor = Predictor.from_checkpoint(
            ckpt, device=device, fast=not reference, tta=tta, threads=threads
        )
        mods = tuple(predictor.preprocess_cfg.modalities)
        if "T1w" in mods and t1w is None:
            raise PredictError(f"this model was trained on {', '.join(mods)}: pass the T1w image with --t1w")
        if "T1w" not in mods and t1w is not None:
            raise PredictError(f"this model was trained on {', '.join(mods)} only; it cannot use --t1w")
        by_name = {"T2w": image, "T1w": t1w}
        images = [by_name[m] for m in mods]
        t0 = time.perf_counter()
        written = predictor.predict_file(images, out, probabilities_path=probabilities)
    except (PredictError, CheckpointError, NiftiError, PreprocessError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    st = predictor.last_stats
    typer.echo(
        f"wrote {written} in {time.perf_counter() - t0:.1f} s "
        f"({st.windows} window(s) of {list(st.roi_size)}, {st.skipped} skipped, {st.autocast}, "
        f"device {predictor.device})"
    )
    if probabilities is not None:
        typer.echo(f"wrote {probabilities}")
