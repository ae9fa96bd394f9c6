"""How many DDP processes one retraining of the app uses (``--conf gpus``): one per GPU from two GPUs on."""

from __future__ import annotations

import pytest

from neonatal_app.lib.trainers.segmentation import gpu_processes
from strategies.annotate.settings import AppConfig, ConfError


@pytest.mark.parametrize(("gpus", "device", "visible", "expected"), [
    ("all", "cpu", 0, 1),  # CPU: always one process
    ("all", "cpu", 4, 1),  # device cpu on a GPU machine
    ("all", "cuda", 1, 1),  # one GPU: no DDP
    ("all", "cuda", 4, 4),
    ("2", "cuda", 4, 2),
    ("1", "cuda", 4, 1),  # capped to one: the single-process path
    ("8", "cuda", 3, 3),  # never more than visible
])
def test_gpu_processes(gpus, device, visible, expected):
    assert gpu_processes(gpus, device, visible) == expected


def test_gpus_conf_key():
    assert AppConfig().gpus == "all" and AppConfig.from_conf({"gpus": "3"}).gpus == "3"
    with pytest.raises(ConfError, match="gpus"):
        AppConfig.from_conf({"gpus": "0"})
