"""The bundled demo: a dHCP-like study set and a first model, made once, so one command gives a working server.

Layout under ``<workdir>/demo/``:

* ``dhcp/`` — the served scans (a synthetic dHCP release-3 tree); the server sees them through the
  view ``dhcp/.neolabel/studies/`` (images + brain masks, no labels), so they start unannotated.
  Their dense labels stay in the tree as an oracle for simulation, never served.
* ``labelled/train/`` and ``labelled/validation/`` — other synthetic subjects with dense labels: the
  bootstrap model is trained on ``train``; ``validation`` is held out, its Dice is printed, and it is
  the app's ``validation_dir`` (a retrained model worse on it is not published).
* ``demo.json`` — written last; when present the demo is reused as it is (idempotent).

Nothing is downloaded. The bootstrap trains ``training.fit.train.train`` for a few minutes on CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEMO_VERSION = 1
SEEDS = {"served": 3, "train": 1, "validation": 2}


@dataclass
class Demo:
    root: Path
    served: Path  # the dHCP tree that is served
    train: Path
    validation: Path

    @property
    def marker(self) -> Path:
        return self.root / "demo.json"


def demo_paths(workdir: str | Path) -> Demo:
    root = Path(workdir).expanduser().resolve() / "demo"
    return Demo(root, root / "dhcp", root / "labelled" / "train", root / "labelled" / "validation")


def prepare_demo(
    workdir: str | Path,
    served: int = 8,
    train: int = 6,
    validation: int = 2,
    shape: tuple[int, int, int] | None = None,
    say: Callable[[str], None] = print,
    spacing: float | None = None,
) -> Demo:
    """Generate the demo study set once (reused when ``demo.json`` exists)."""
    from training.data.nifti import atomic_write_text
    from training.data.synthetic.params import DEFAULT_SHAPE, DEFAULT_SPACING
    from training.data.synthetic.write import write_study_set

    d = demo_paths(workdir)
    if d.marker.is_file():
        say(f"reusing the demo study set in {d.root}")
        return d
    shp = tuple(shape or DEFAULT_SHAPE)
    sp = float(spacing or DEFAULT_SPACING)
    t0 = time.perf_counter()
    say(f"generating the demo study set in {d.root} ({served} served + {train} training + {validation} "
        f"validation synthetic subjects, {shp[0]}×{shp[1]}×{shp[2]} at {sp:g} mm)")
    for path, n, seed in ((d.served, served, SEEDS["served"]), (d.train, train, SEEDS["train"]),
                          (d.validation, validation, SEEDS["validation"])):
        write_study_set(path, n, shape=shp, spacing=sp, seed=seed)
    atomic_write_text(d.marker, json.dumps({"version": DEMO_VERSION, "served": served, "train": train,
                                            "validation": validation, "shape": list(shp), "spacing": sp}, indent=1))
    say(f"demo study set ready in {time.perf_counter() - t0:.0f} s")
    return d


def bootstrap_model(
    demo: Demo,
    model_path: str | Path,
    preset: str = "cpu",
    minutes: float = 3.0,
    device: str | None = None,
    say: Callable[[str], None] = print,
    min_iterations: int = 120,
    iterations_per_epoch: int = 10,
) -> dict:
    """Train a first model on the demo's labelled subjects, print its held-out Dice, publish it.

    Trains for ``minutes`` but at least ``min_iterations`` iterations (a slow or busy machine takes
    longer rather than serving a useless model); seeded, so the same machine gives the same model.
    """
    from neonatal_app.lib.trainers.segmentation import publish
    from training.data import labels as L
    from training.data.dataset import open_dataset
    from training.evaluate.segmentation import evaluate_checkpoint
    from training.fit.train import TrainConfig, train

    train_subjects = open_dataset(demo.train).with_labels()
    val_subjects = open_dataset(demo.validation).with_labels()
    out = demo.root / "bootstrap"
    say(f"training the first model ({preset} preset, {minutes:g} min and at least {min_iterations} iterations) "
        f"on {len(train_subjects)} labelled demo subjects; {len(val_subjects)} held out")
    t0 = time.perf_counter()
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # short epochs so the stop rule (checked after each epoch) is kept to within a few seconds
    per_epoch = int(iterations_per_epoch)
    cfg = TrainConfig(preset=preset, epochs=10_000, iterations_per_epoch=per_epoch, device=dev,
                      amp=dev == "cuda", tensorboard=False, val_every=10**6)

    def stop(rec: dict) -> bool:
        done = rec["epoch"] * per_epoch
        if rec["epoch"] % 5 == 0:
            say(f"  {done} iterations, {time.perf_counter() - t0:.0f} s, loss {rec['loss']:.3f}")
        return done >= min_iterations and time.perf_counter() - t0 >= minutes * 60

    result = train(cfg, train_subjects, out, val_subjects=None, progress=False, callback=stop)
    t_train = time.perf_counter() - t0
    report = evaluate_checkpoint(result.last_path, val_subjects, hd95=False)
    names = L.class_names()
    say(f"held-out Dice of the first model ({len(val_subjects)} validation subjects, "
        f"{result.epochs_completed * per_epoch} iterations in {t_train:.0f} s):")
    for c, v in sorted(report.mean_dice.items()):
        say(f"  {c} {names[c]:<38} {v:.3f}")
    say(f"  tissue mean (classes {', '.join(str(c) for c in L.TISSUE)}): {report.tissue_dice:.3f}")
    publish(result.last_path, model_path)
    info = {"held_out_tissue_dice": report.tissue_dice, "iterations": result.epochs_completed * per_epoch,
            "train_seconds": round(t_train, 1), "model": str(model_path)}
    (demo.root / "bootstrap.json").write_text(json.dumps(info, indent=1))
    return info
