"""Simulation conditions: how a fixed budget of annotated 2D slices is spread over training scans.

A :class:`Condition` is one row of the paper's Table 3 design (Richter & Fetit 2022, label
budgeting): ``full`` = the low-dispersion baseline (whole, densely labelled volumes), the others
give every chosen scan a fraction (``dispersion``) of its usable slices along one axis and take as
many scans as the budget pays for. All conditions of one run spend the same number of slices
(see :mod:`apps.simulation.budget` for how the baseline's slices are counted).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from strategies.plan.axes import AXES
from strategies.plan.selection import AXIS_MODES, SCORED_SELECTIONS, SELECTIONS

STATIC_SELECTIONS: tuple[str, ...] = tuple(s for s in SELECTIONS if s not in SCORED_SELECTIONS)
"""Selections a static plan can use (the scored ones need a model: loop mode)."""
DEFAULT_AXES: tuple[str, ...] = (*AXES, "random")
DEFAULT_DISPERSIONS: tuple[str, ...] = ("0.33",)
ONE_SLICE = "1slice"
"""Dispersion level meaning "a single slice per scan" (the extreme end of dispersion)."""


class ConditionError(ValueError):
    """A condition specification that cannot be understood (unknown axis, dispersion out of range...)."""


@dataclass(frozen=True)
class Condition:
    """One way of spending the budget.

    ``dispersion``: fraction of a scan's usable slices it receives (1.0 = whole volumes) or
    ``"1slice"``; ``full`` marks the baseline that trains on the dense labels of whole volumes;
    ``budget``: budget-curve mode, the percentage of the pool's usable slices it spends (None: the
    baseline's slice count, the paper's design).
    """

    name: str
    dispersion: float | str
    axis: str
    selection: str = "equidistant"
    margin: float = 0.1
    full: bool = False
    budget: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        if self.budget is None:
            d.pop("budget")  # so results and resume keys of the paper's design stay as they were
        return d

    @classmethod
    def from_json(cls, d: dict) -> Condition:
        keys = ("name", "dispersion", "axis", "selection", "margin", "full", "budget")
        return cls(**{k: d[k] for k in keys if k in d})

    def key(self) -> str:
        """Stable hash of everything that changes the result (the name is only a label)."""
        d = self.to_json()
        d.pop("name")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def curve(self) -> str:
        """Budget mode: the name of the budget curve this point lies on (the name without the budget)."""
        return self.name.split("-", 1)[1] if self.budget is not None else self.name

    @property
    def dispersion_label(self) -> str:
        if self.full:
            return "full volumes"
        if self.dispersion == ONE_SLICE:
            return "1 slice/scan"
        return f"{float(self.dispersion):.0%} of slices"


def parse_dispersion(value: str | float) -> float | str:
    """``"0.33"``, ``"33%"``, ``"1slice"`` (one slice per scan) → float in (0, 1] or ``"1slice"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
    else:
        text = str(value).strip().lower()
        if text in (ONE_SLICE, "1-slice", "one", "single", "1slice/scan"):
            return ONE_SLICE
        try:
            v = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ConditionError(
                f"dispersion {value!r} is not a fraction (e.g. 0.33 or 33%) or '{ONE_SLICE}'"
            ) from None
    if not math.isfinite(v) or v <= 0 or v > 1:
        raise ConditionError(f"dispersion must be in (0, 1] (fraction of a scan's slices), got {value!r}")
    return v


def _check_axis(axis: str) -> str:
    if axis not in AXIS_MODES:
        raise ConditionError(f"unknown axis {axis!r}; expected one of {', '.join(AXIS_MODES)}")
    return axis


def _check_selection(sel: str) -> str:
    if sel not in STATIC_SELECTIONS:
        raise ConditionError(f"unknown selection {sel!r}; expected one of {', '.join(STATIC_SELECTIONS)}")
    return sel


def _check_margin(margin: float) -> float:
    m = float(margin)
    if not math.isfinite(m) or m < 0 or m >= 0.5:
        raise ConditionError(f"margin must be in [0, 0.5) (fraction of the brain extent per end), got {margin}")
    return m


def parse_budget(value: str | float) -> float:
    """A budget-curve point: percent of the pool's usable slices, in (0, 100] (``"10"``, ``"10%"``)."""
    text = str(value).strip().rstrip("%")
    try:
        v = float(text)
    except ValueError:
        raise ConditionError(f"budget {value!r} is not a percentage (e.g. 10 or 10%)") from None
    if not math.isfinite(v) or v <= 0 or v > 100:
        raise ConditionError(f"budget must be in (0, 100] (percent of the pool's usable slices), got {value!r}")
    return v


def condition_name(dispersion: float | str, axis: str, selection: str, margin: float, default_margin: float,
                   budget: float | None = None) -> str:
    level = "1slice" if dispersion == ONE_SLICE else f"d{round(float(dispersion) * 100):d}"
    name = f"{level}-{axis}" if budget is None else f"b{budget:g}-{level}-{axis}"
    if selection != "equidistant":
        name += f"-{selection}"
    if abs(margin - default_margin) > 1e-9:
        name += f"-m{round(margin * 100):d}"
    return name


def build_conditions(
    dispersions: Iterable[str | float] = DEFAULT_DISPERSIONS,
    axes: Iterable[str] = DEFAULT_AXES,
    selections: Iterable[str] = ("equidistant",),
    margins: Sequence[float] = (0.1,),
    *,
    baseline: bool = True,
    budgets: Sequence[str | float] = (),
) -> list[Condition]:
    """The baseline plus every dispersion × axis × selection × margin combination (paper default:
    full volumes + 33% along sagittal, coronal, axial, random). A dispersion of 1.0 is a
    sparse-label whole-volume condition along that axis (distinct from the dense baseline).

    With ``budgets`` (budget curves) every combination is repeated per budget and there is no dense
    baseline: the 100 % budget (every usable slice of every pool scan) is the full-annotation reference."""
    margins = [_check_margin(m) for m in margins] or [0.1]
    default_margin = margins[0]
    levels: list[float | None] = sorted({parse_budget(b) for b in budgets}) or [None]
    out: list[Condition] = []
    if baseline and levels == [None]:
        out.append(Condition("full", 1.0, "axial", "equidistant", default_margin, full=True))
    for b in levels:
        for d in dispersions:
            disp = parse_dispersion(d)
            for axis in axes:
                for sel in selections:
                    for m in margins:
                        name = condition_name(disp, _check_axis(axis), _check_selection(sel), m, default_margin, b)
                        out.append(Condition(name, disp, axis, sel, m, budget=b))
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConditionError(f"duplicate conditions: {', '.join(dup)}")
    if not out:
        raise ConditionError("no condition to simulate (no dispersion/axis given and the baseline is off)")
    return out


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A condition name usable as a folder name."""
    return _SAFE.sub("_", name)
