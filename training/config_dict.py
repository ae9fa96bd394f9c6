"""Rebuilding a config dataclass from its JSON form (checkpoints, run folders).

JSON turns tuples into lists and older files may carry keys a newer config dropped: every config
``from_dict`` goes through this one function so those two rules cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: Mapping[str, Any], tuple_fields: Iterable[str] = ()) -> T:
    """``cls(**d)`` keeping only ``cls``'s fields, with ``tuple_fields`` turned back into tuples (None stays)."""
    d = dict(d)
    for k in tuple_fields:
        if d.get(k) is not None:
            d[k] = tuple(d[k])
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in d.items() if k in known})
