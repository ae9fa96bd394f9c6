"""Brain-extent cache and ``neolabel plan`` on generated study sets (dHCP tree, plain folder, LPS copy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import training.data.nifti
from apps.commands.plan import plan as plan_command
from strategies.plan.axes import plane_positions_mm
from strategies.plan.extents import ExtentCache, entries_from_dataset, entry_from_arrays
from training.data.dataset import open_dataset
from training.data.synthetic.write import write_studies_folder, write_study_set

N_SUBJECTS = 5
SHAPE = (24, 30, 30)
SPACING = 4.0


@pytest.fixture(scope="module")
def dhcp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("strategies_dhcp")
    write_study_set(root, N_SUBJECTS, shape=SHAPE, spacing=SPACING, seed=11)
    return root


@pytest.fixture(scope="module")
def lps_root(dhcp_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same study set with every NIfTI file stored LPS (x and y voxel axes reversed)."""
    out = tmp_path_factory.mktemp("strategies_lps")
    for src in dhcp_root.rglob("*"):
        dst = out / src.relative_to(dhcp_root)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.name.endswith(".nii.gz"):
            img = nib.load(str(src))
            lps = img.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))
            dst.parent.mkdir(parents=True, exist_ok=True)
            nib.save(lps, str(dst))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    return out


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(plan_command)
    return app


def _flat(text: str) -> str:
    """Error text without the line breaks and box characters a rich terminal may add."""
    return "".join(ch for ch in text if not ch.isspace() and ch not in "│╭╮╰╯─")


def _run(args: list[str]):
    return CliRunner().invoke(_app(), [str(a) for a in args])


def test_extents_are_read_once_and_cached(dhcp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = training.data.nifti.load_volume

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(training.data.nifti, "load_volume", counting)
    ds = open_dataset(dhcp_root)
    cache_path = tmp_path / "cache" / "extents.json"
    entries, skipped = entries_from_dataset(ds, cache=ExtentCache(cache_path))
    assert skipped == [] and len(entries) == N_SUBJECTS
    assert len(calls) == N_SUBJECTS and len(set(calls)) == N_SUBJECTS
    assert cache_path.is_file()
    # the cached entry equals one built from the mask in memory
    s = ds.subjects[0]
    vol = real(s.brain_mask)
    direct = entry_from_arrays(s.id, vol.affine, mask=vol.data, scan_age=s.scan_age)
    got = next(e for e in entries if e.id == s.id)
    assert got.brain_slices_per_voxel_axis == direct.brain_slices_per_voxel_axis
    assert got.scan_age == s.scan_age is not None

    calls.clear()
    cache = ExtentCache(cache_path)
    again, _ = entries_from_dataset(ds, cache=cache)
    assert calls == [] and cache.hits == N_SUBJECTS
    assert [e.to_json() for e in again] == [e.to_json() for e in entries]

    st = os.stat(s.brain_mask)
    os.utime(s.brain_mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed file is re-read
    cache = ExtentCache(cache_path)
    entries_from_dataset(ds, cache=cache)
    assert calls == [str(s.brain_mask)] and cache.misses == 1


def test_plan_command_on_dhcp_tree(dhcp_root: Path, tmp_path: Path) -> None:
    out, fig = tmp_path / "plan.json", tmp_path / "plan.png"
    args = [dhcp_root, "--budget", 20, "--dispersion", 0.33, "--axis", "mixed", "--margin", 0.1, "--seed", 4]
    res = _run([*args, "--out", out, "--figure", fig, "--cache-dir", tmp_path / "c"])
    assert res.exit_code == 0, res.output
    assert "scans used" in res.output and "sagittal" in res.output
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "assignments", "shortfall"}
    assert data["shortfall"] is None
    assert sum(len(a["indices"]) for a in data["assignments"]) == 20
    assert {a["axis"] for a in data["assignments"]} == {"sagittal", "coronal", "axial"}
    assert data["config"]["total_slices"] == 20 and data["config"]["seed"] == 4
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same options again: same plan, extents from the cache
    res2 = _run([*args, "--out", tmp_path / "again.json", "--cache-dir", tmp_path / "c"])
    assert res2.exit_code == 0 and f"0 read, {N_SUBJECTS} from cache" in res2.output
    assert json.loads((tmp_path / "again.json").read_text()) == data


def test_plan_command_shortfall_and_bad_options(dhcp_root: Path, tmp_path: Path) -> None:
    res = _run([dhcp_root, "--budget", 100000, "--slices-per-volume", 1, "--out", tmp_path / "p.json"])
    assert res.exit_code == 0 and "shortfall" in res.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["shortfall"]["slices"] == 100000 - N_SUBJECTS
    bad = _run([dhcp_root, "--budget", 10, "--axis", "diagonal", "--out", tmp_path / "x.json"])
    assert bad.exit_code != 0 and "diagonal" in _flat(bad.output)
    bad = _run([dhcp_root, "--budget", 10, "--dispersion", 0, "--out", tmp_path / "x.json"])
    assert bad.exit_code != 0 and "slices-per-volume" in _flat(bad.output).replace("_", "-")
    assert not (tmp_path / "x.json").exists()
    missing = _run([tmp_path / "nothing", "--budget", 10, "--out", tmp_path / "x.json"])
    assert missing.exit_code != 0


def test_plan_command_on_plain_folder(tmp_path: Path) -> None:
    root = tmp_path / "studies"
    write_studies_folder(root, 3, shape=SHAPE, spacing=SPACING, seed=2)
    res = _run([root, "--budget", 9, "--dispersion", 0.5, "--axis", "coronal", "--out", tmp_path / "p.json"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert sum(len(a["indices"]) for a in data["assignments"]) == 9


def test_lps_copy_gets_the_same_physical_planes(dhcp_root: Path, lps_root: Path, tmp_path: Path) -> None:
    plans = {}
    for name, root in (("ras", dhcp_root), ("lps", lps_root)):
        out = tmp_path / f"{name}.json"
        opts = ["--budget", "15", "--dispersion", "0.4", "--axis", "random", "--selection", "random", "--margin", "0.1"]
        res = _run([root, *opts, "--out", out, "--cache-dir", tmp_path / name])
        assert res.exit_code == 0, res.output
        ds = open_dataset(root)
        planes = set()
        for a in json.loads(out.read_text())["assignments"]:
            shape, affine = training.data.nifti.read_header(ds.get(a["image"]).image)
            for p in plane_positions_mm(affine, shape, a["axis"], a["indices"]):
                planes.add((a["image"], a["axis"], round(float(p), 3)))
        plans[name] = planes
    assert plans["ras"] == plans["lps"]
    assert np.asarray(nib.load(str(next(lps_root.rglob("*dseg.nii.gz")))).affine)[0, 0] < 0
