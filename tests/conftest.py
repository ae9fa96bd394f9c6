"""Shared seeded fake subjects: a tiny dHCP-layout study set generated once per test session."""

from __future__ import annotations

import os

import pytest

# Tests are CPU-only and must not fight over the 2 cores with oversubscribed thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

TINY_SHAPE = (32, 40, 40)
TINY_SPACING = 3.4


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A read-only tiny dHCP tree (6 subjects); copy it before changing anything in it."""
    from training.data.synthetic.write import write_study_set

    root = tmp_path_factory.mktemp("synth") / "dhcp"
    write_study_set(root, subjects=6, shape=TINY_SHAPE, spacing=TINY_SPACING, seed=0)
    return root


@pytest.fixture(scope="session")
def synth_dataset(synth_root):
    from training.data.dataset import open_dataset

    return open_dataset(synth_root)
