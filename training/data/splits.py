"""Age-based source/target split for the transfer experiment (term → preterm), written as JSON.

Richter & Fetit 2022: source = the 100 oldest scans (trained on), target = the 120 youngest, of
which 40 (drawn at random) fine-tune and 80 test. With fewer subjects than 100 + 120 the three
group sizes shrink proportionally (source and target keep their 100 : 120 ratio, the target keeps
its 40 : 80 ratio); each group needs at least one subject, so fewer than 3 scans is an error.
Subjects without a scan age are left out (listed under ``no_age``); the ones between the two age
groups (only when there are more than 220) are listed under ``unused``.

Deterministic: ranking is by (scan age, id), so the input order does not matter, and the
train/test draw uses ``numpy.random.default_rng(seed)`` on the sorted target ids.

Command line: ``neolabel split DATA --out split.json`` (``apps/commands/split.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.data.nifti import atomic_write_text

SPLIT_VERSION = 1


class SplitError(ValueError):
    """Too few subjects with a scan age, duplicate ids or invalid group sizes."""


def _pairs(subjects: Iterable[Any] | Mapping[str, float | None]) -> list[tuple[str, float | None]]:
    if isinstance(subjects, Mapping):
        return [(str(k), v) for k, v in subjects.items()]
    out = []
    for s in subjects:
        if isinstance(s, tuple | list) and len(s) == 2:
            out.append((str(s[0]), s[1]))
        elif isinstance(s, Mapping):
            out.append((str(s["id"]), s.get("scan_age")))
        else:
            out.append((str(s.id), getattr(s, "scan_age", None)))
    return out


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def group_sizes(n: int, source_n: int = 100, target_n: int = 120, target_train: int = 40) -> tuple[int, int, int]:
    """``(source, target_train, target_test)`` for ``n`` subjects with an age (scaled down when n is small)."""
    if source_n < 1 or target_n < 2 or not 1 <= target_train < target_n:
        raise SplitError(f"need source_n ≥ 1, target_n ≥ 2 and 1 ≤ target_train < target_n "
                         f"(got {source_n}, {target_n}, {target_train})")
    if n >= source_n + target_n:
        return source_n, target_train, target_n - target_train
    f = n / (source_n + target_n)
    src = _round_half_up(source_n * f)
    tgt = n - src
    train = _round_half_up(tgt * target_train / target_n)
    train = min(max(train, 1), tgt - 1)
    test = tgt - train
    if src < 1 or train < 1 or test < 1:
        raise SplitError(f"too few subjects with a scan age for a source/target split: {n} "
                         f"(need at least 3: one source, one target-train and one target-test scan)")
    return src, train, test


def _stats(ids: list[str], ages: dict[str, float]) -> dict[str, float | int]:
    a = np.array([ages[i] for i in ids], dtype=float)
    return {"n": int(a.size), "min": round(float(a.min()), 2), "max": round(float(a.max()), 2),
            "mean": round(float(a.mean()), 2)}


def age_split(subjects: Iterable[Any] | Mapping[str, float | None], source_n: int = 100, target_n: int = 120,
              target_train: int = 40, seed: int = 0) -> dict:
    """Oldest ``source_n`` as source; youngest ``target_n`` split ``target_train`` / rest (seeded).

    ``subjects``: ``training.data.dataset.Subject`` objects (``id``, ``scan_age``), ``{"id", "scan_age"}``
    dicts, ``(id, age)`` pairs or an ``{id: age}`` mapping. Returns a JSON-ready dict with
    ``source``, ``target_train``, ``target_test`` (id lists), ``unused``, ``no_age``, age statistics
    per group and the sizes requested/used.
    """
    pairs = _pairs(subjects)
    ids = [i for i, _ in pairs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SplitError(f"duplicate subject ids: {', '.join(dup[:5])}")
    ages: dict[str, float] = {}
    no_age = []
    for i, a in pairs:
        try:
            v = float(a) if a is not None else math.nan
        except (TypeError, ValueError) as exc:
            raise SplitError(f"{i}: scan age {a!r} is not a number") from exc
        if math.isnan(v):
            no_age.append(i)
        else:
            ages[i] = v
    ranked = sorted(ages, key=lambda i: (ages[i], i))  # youngest first
    n_src, n_train, n_test = group_sizes(len(ranked), source_n, target_n, target_train)
    target = ranked[: n_train + n_test]
    source = ranked[len(ranked) - n_src:]
    unused = ranked[n_train + n_test: len(ranked) - n_src]
    order = np.random.default_rng(int(seed)).permutation(len(target))
    train = sorted((target[k] for k in order[:n_train]), key=lambda i: (ages[i], i))
    test = sorted((target[k] for k in order[n_train:]), key=lambda i: (ages[i], i))
    groups = {"source": source, "target_train": train, "target_test": test}
    return {
        "version": SPLIT_VERSION,
        "rule": "source = oldest source_n; target = youngest target_n, seeded draw of target_train for "
                "fine-tuning, the rest for testing; sizes scaled by n / (source_n + target_n) when fewer",
        "seed": int(seed),
        "requested": {"source_n": int(source_n), "target_n": int(target_n), "target_train": int(target_train)},
        "scaled": len(ranked) < source_n + target_n,
        "n_subjects": len(pairs),
        **groups,
        "unused": unused,
        "no_age": sorted(no_age),
        "ages": {k: _stats(v, ages) for k, v in groups.items()},
        "scan_age": {i: ages[i] for i in ranked},
    }


def write_split(split: dict, out: str | Path) -> Path:
    """Write the split JSON atomically (a reader never sees half a split)."""
    p = Path(out)
    atomic_write_text(p, json.dumps(split, indent=2) + "\n")
    return p


def read_split(path: str | Path) -> dict:
    """Read a split JSON written by :func:`write_split` (checks the groups are there and disjoint)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SplitError(f"{p}: not a readable split file ({exc})") from exc
    groups = ("source", "target_train", "target_test")
    if not isinstance(d, dict) or any(not isinstance(d.get(g), list) for g in groups):
        raise SplitError(f"{p}: a split needs the lists {', '.join(groups)}")
    seen: set[str] = set()
    for g in groups:
        overlap = seen & set(d[g])
        if overlap:
            raise SplitError(f"{p}: {sorted(overlap)[:3]} appear in more than one group")
        seen |= set(d[g])
    return d
