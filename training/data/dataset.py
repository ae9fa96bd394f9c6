"""Index a study set: a dHCP anatomical tree (release 3, release 2 names accepted) or a plain folder.

Files are paired by the subject and session ids in their names (never by sort order) and the scan
age comes from the subject's ``sessions.tsv`` (or ``combined.tsv``) row with the same session id.
Only headers are touched here; voxel data is loaded by whoever needs it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# role -> accepted file suffixes after "sub-X_ses-Y_", preferred first (release 3, then release 2)
DHCP_ROLES: dict[str, tuple[str, ...]] = {
    "T2w": ("desc-restore_T2w", "T2w_restore", "T2w"),
    "T1w": ("desc-restore_T1w", "T1w_restore", "T1w"),
    "label": ("desc-drawem9_dseg", "drawem_tissue_labels"),
    "brain_mask": ("desc-brain_mask", "brainmask_drawem", "brainmask_bet"),
}
REQUIRED_FOR_COMPLETE = ("T2w", "T1w", "label", "scan_age")
_FILE_RE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)_(?P<suffix>.+?)\.nii(?:\.gz)?$")


class DatasetError(ValueError):
    """A study set that cannot be read as asked (missing folder, malformed tsv, unknown id...)."""


@dataclass(frozen=True)
class Subject:
    """One scan session: its image files, dense label (if any) and metadata."""

    id: str
    image: Path
    t1w: Path | None = None
    label: Path | None = None
    brain_mask: Path | None = None
    scan_age: float | None = None
    participant_id: str | None = None
    session_id: str | None = None
    sex: str | None = None
    birth_age: float | None = None

    def modality(self, name: str) -> Path:
        """Path of ``"T2w"`` or ``"T1w"``; a clear error when the session lacks it."""
        path = {"T2w": self.image, "T1w": self.t1w}.get(name, "unknown")
        if path == "unknown":
            raise DatasetError(f"unknown modality {name!r}; expected 'T2w' or 'T1w'")
        if path is None:
            raise DatasetError(f"{self.id}: no {name} image")
        return path


@dataclass(frozen=True)
class IncompleteSession:
    id: str
    missing: tuple[str, ...]
    usable: bool  # has a T2w image, so it can still be served / predicted

    def describe(self) -> str:
        state = "usable without them" if self.usable else "skipped"
        return f"{self.id}: missing {', '.join(self.missing)} ({state})"


@dataclass
class Dataset:
    root: Path
    layout: str
    subjects: list[Subject]
    incomplete: list[IncompleteSession] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {s.id: s for s in self.subjects}

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self):
        return iter(self.subjects)

    def ids(self) -> list[str]:
        return [s.id for s in self.subjects]

    def get(self, subject_id: str) -> Subject:
        try:
            return self._by_id[subject_id]
        except KeyError:
            raise DatasetError(f"unknown subject id {subject_id!r} in {self.root}") from None

    def with_labels(self) -> list[Subject]:
        return [s for s in self.subjects if s.label is not None]

    def subset(self, ids: Iterable[str]) -> list[Subject]:
        return [self.get(i) for i in ids]


def open_dataset(root: str | Path) -> Dataset:
    """Open a dHCP-layout tree (``sub-*/ses-*/anat``) or a plain folder of NIfTI images."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if any(p.is_dir() for p in root.glob("sub-*")):
        return index_dhcp(root)
    return index_folder(root)


def _strip_nifti(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


# --------------------------------------------------------------------------------------------- tsv


def read_tsv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Rows of a tab-separated file; clear error when it is unreadable or lacks a column."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            header = reader.fieldnames
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if not header:
        raise DatasetError(f"{path}: empty file, expected a header with {', '.join(required)}")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _float_or_none(value: str | None, *, where: str) -> float | None:
    if value is None or value == "" or value.lower() in ("n/a", "na", "nan"):
        return None
    try:
        return float(value)
    except ValueError:
        raise DatasetError(f"{where}: {value!r} is not a number") from None


def _bare(value: str, prefix: str) -> str:
    return value[len(prefix) :] if value.startswith(prefix) else value


def _read_metadata(root: Path) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """participants: {sub: row}; sessions: {(sub, ses): {"scan_age": float|None, ...}}."""
    participants: dict[str, dict] = {}
    sessions: dict[tuple[str, str], dict] = {}
    ptsv = root / "participants.tsv"
    if ptsv.exists():
        for i, row in enumerate(read_tsv(ptsv, ["participant_id"]), start=2):
            sub = _bare(row["participant_id"], "sub-")
            participants[sub] = {
                "sex": row.get("sex") or None,
                "birth_age": _float_or_none(row.get("birth_age"), where=f"{ptsv} line {i} birth_age"),
            }
    combined = root / "combined.tsv"
    if combined.exists():
        for i, row in enumerate(read_tsv(combined, ["participant_id", "session_id", "scan_age"]), start=2):
            key = (_bare(row["participant_id"], "sub-"), _bare(row["session_id"], "ses-"))
            sessions[key] = {"scan_age": _float_or_none(row["scan_age"], where=f"{combined} line {i} scan_age")}
            participants.setdefault(
                key[0],
                {
                    "sex": row.get("sex") or None,
                    "birth_age": _float_or_none(row.get("birth_age"), where=f"{combined} line {i} birth_age"),
                },
            )
    for stsv in sorted(root.glob("sub-*/sub-*_sessions.tsv")):
        sub = _bare(stsv.parent.name, "sub-")
        for i, row in enumerate(read_tsv(stsv, ["session_id", "scan_age"]), start=2):
            ses = _bare(row["session_id"], "ses-")
            sessions[(sub, ses)] = {"scan_age": _float_or_none(row["scan_age"], where=f"{stsv} line {i} scan_age")}
    return participants, sessions


# -------------------------------------------------------------------------------------------- dHCP


def index_dhcp(root: str | Path) -> Dataset:
    """Index ``sub-*/ses-*/anat`` files by (subject, session) parsed from each file name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    participants, sessions = _read_metadata(root)

    found: dict[tuple[str, str], dict[str, tuple[int, Path]]] = {}
    for anat in sorted(root.glob("sub-*/ses-*/anat")):
        dir_sub = _bare(anat.parent.parent.name, "sub-")
        dir_ses = _bare(anat.parent.name, "ses-")
        for path in sorted(anat.iterdir()):
            m = _FILE_RE.match(path.name)
            if not m:
                continue
            if (m["sub"], m["ses"]) != (dir_sub, dir_ses):
                raise DatasetError(
                    f"{path}: file name says sub-{m['sub']}_ses-{m['ses']} but it lies in "
                    f"sub-{dir_sub}/ses-{dir_ses}; refusing to guess which is right"
                )
            entry = found.setdefault((dir_sub, dir_ses), {})
            for role, suffixes in DHCP_ROLES.items():
                if m["suffix"] in suffixes:
                    rank = suffixes.index(m["suffix"])
                    if role not in entry or rank < entry[role][0]:
                        entry[role] = (rank, path)
        found.setdefault((dir_sub, dir_ses), {})
    if not found:
        raise DatasetError(f"{root}: no sub-*/ses-*/anat folders found (not a dHCP anatomical tree)")

    subjects: list[Subject] = []
    incomplete: list[IncompleteSession] = []
    for (sub, ses), files in sorted(found.items()):
        sid = f"sub-{sub}_ses-{ses}"
        meta = sessions.get((sub, ses), {})
        person = participants.get(sub, {})
        paths = {role: p for role, (_, p) in files.items()}
        missing = [r for r in REQUIRED_FOR_COMPLETE if r != "scan_age" and r not in paths]
        if meta.get("scan_age") is None:
            missing.append("scan_age")
        usable = "T2w" in paths
        if missing:
            incomplete.append(IncompleteSession(sid, tuple(missing), usable))
        if not usable:
            continue
        subjects.append(
            Subject(
                id=sid,
                image=paths["T2w"],
                t1w=paths.get("T1w"),
                label=paths.get("label"),
                brain_mask=paths.get("brain_mask"),
                scan_age=meta.get("scan_age"),
                participant_id=sub,
                session_id=ses,
                sex=person.get("sex"),
                birth_age=person.get("birth_age"),
            )
        )
    return Dataset(root=root, layout="dhcp", subjects=subjects, incomplete=incomplete)


# ------------------------------------------------------------------------------------ plain folder


def index_folder(root: str | Path) -> Dataset:
    """A MONAI Label studies folder: ``<id>.nii[.gz]`` images, labels in ``labels/final`` or ``labels``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    label_dirs = [root / "labels" / "final", root / "labels"]
    subjects: list[Subject] = []
    incomplete: list[IncompleteSession] = []
    for path in sorted(root.iterdir()):
        stem = _strip_nifti(path.name)
        if stem is None or not path.is_file() or stem.startswith("."):
            continue
        label = next(
            (d / f"{stem}{sfx}" for d in label_dirs for sfx in NIFTI_SUFFIXES if (d / f"{stem}{sfx}").is_file()),
            None,
        )
        if label is None:
            incomplete.append(IncompleteSession(stem, ("label",), True))
        subjects.append(Subject(id=stem, image=path, label=label))
    if not subjects:
        raise DatasetError(f"{root}: no NIfTI images (*.nii, *.nii.gz) and no dHCP sub-* folders")
    return Dataset(root=root, layout="folder", subjects=subjects, incomplete=incomplete)
