"""``neolabel split``: the transfer experiment's age split (old source → young target) as a JSON file.

The rule and its scaling for small sets are ``training.data.splits.age_split``; this command only
reads the study set and writes the result, so the split that a run used can be kept next to it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def split(
    data: Path = typer.Argument(
        ..., help="Study set with scan ages (dHCP tree with sessions.tsv, or a synthetic set)."
    ),
    out: Path = typer.Option(..., "--out", help="Split JSON to write."),
    source_n: int = typer.Option(100, "--source-n", help="Oldest N scans form the source (paper: 100)."),
    target_n: int = typer.Option(120, "--target-n", help="Youngest N scans form the target (paper: 120)."),
    target_train: int = typer.Option(
        40, "--target-train", help="Target scans drawn (seeded) for fine-tuning; the rest test (paper: 40)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the fine-tuning draw."),
) -> None:
    """Split by scan age: oldest → source, youngest → target fine-tune/test (sizes scale down for small sets)."""
    # deferred like every command module (apps/cli.py): `neolabel --help` must not import the library
    from training.data.dataset import open_dataset
    from training.data.splits import age_split, write_split

    try:
        ds = open_dataset(data)
        result = age_split(ds.subjects, source_n, target_n, target_train, seed)
    except ValueError as exc:  # DatasetError, SplitError
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    write_split(result, out)
    ag = result["ages"]
    t_lo = min(ag["target_train"]["min"], ag["target_test"]["min"])
    t_hi = max(ag["target_train"]["max"], ag["target_test"]["max"])
    typer.echo(f"source {ag['source']['n']} ({ag['source']['min']}–{ag['source']['max']} w), "
               f"target train {ag['target_train']['n']} / test {ag['target_test']['n']} ({t_lo}–{t_hi} w)"
               f"{' [scaled down]' if result['scaled'] else ''} → {out}")
