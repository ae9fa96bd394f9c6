"""DDP training on CPU: 2 gloo processes on loopback launched by torchrun, the tiny preset, tiny volumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from training.data.labels import IGNORE
from training.fit.distributed import DistContext, rank_seed, shard
from training.fit.train import TrainConfig, Trainer, _torch_state_restored

# One rank of the equivalence test: the trainer's own setup (process group from torchrun's environment,
# DDP wrap), then one train_step on this rank's sample; rank 0 saves the weights.
WORKER = """
import json
import sys
from pathlib import Path

import torch

from training.data.dataset import open_dataset
from training.fit import distributed
from training.fit.train import TrainConfig, Trainer

root, samples, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = TrainConfig(**{**json.loads(sys.argv[4]), "batch_size": 1})
trainer = Trainer(cfg, open_dataset(root).with_labels(), out / "ddp", progress=False)
trainer.setup()
assert trainer.dist.world_size == 2 and isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel)
batch = torch.load(samples)
r = trainer.dist.rank
trainer.train_step({"image": batch["image"][r:r + 1], "label": batch["label"][r:r + 1]})
if trainer.dist.is_main:
    torch.save(trainer.model.state_dict(), out / "ddp_weights.pt")
distributed.shutdown(trainer.dist)
"""

CFG = dict(preset="tiny", epochs=1, iterations_per_epoch=1, optimizer="sgd", device="cpu", threads=1,
           tensorboard=False, seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _per_sample_mean(loss_fn):
    """What DDP optimises with batch 1 per rank: the mean over samples of each sample's loss."""
    def mean_loss(outputs, labels):
        return sum(loss_fn(outputs[i:i + 1], labels[i:i + 1]) for i in range(len(labels))) / len(labels)
    return mean_loss


def _one_step(trainer: Trainer, batch: dict) -> dict[str, torch.Tensor]:
    trainer.train_step(batch)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_two_gloo_ranks_with_batch_1_equal_one_process_with_batch_2(synth_root, synth_dataset, tmp_path):
    with _torch_state_restored():  # setup() sets torch's threads and MONAI's meta tracking for the run
        _equivalence(synth_root, synth_dataset, tmp_path)


def _equivalence(synth_root, synth_dataset, tmp_path):
    subjects = synth_dataset.with_labels()
    ref = Trainer(TrainConfig(**CFG, batch_size=2), subjects, tmp_path / "ref", progress=False)
    ref.setup()
    assert ref.dist.world_size == 1 and ref.net is ref.model  # one process: no DDP
    before = {k: v.detach().clone() for k, v in ref.model.state_dict().items()}
    items = [ref.dataset[i] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "label")}
    batch["label"][1, :, :, :, ::2] = IGNORE  # a partial label: the mask must act the same in both runs
    torch.save(batch, tmp_path / "samples.pt")

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(script), str(synth_root),
           str(tmp_path / "samples.pt"), str(tmp_path), json.dumps(CFG)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp_weights.pt")

    # Honest reference: the same loss reduction DDP applies (gradients averaged over the ranks' losses).
    pooled_loss = ref.loss_fn
    ref.loss_fn = _per_sample_mean(pooled_loss)
    one = _one_step(ref, batch)
    assert any(not torch.equal(one[k], before[k]) for k in one)  # the step changed the weights
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-5, atol=1e-6, msg=k)

    # The subtlety this guards: one pooled batch-2 loss (batch Dice) is a different objective.
    ref.model.load_state_dict(before)
    ref.opt = torch.optim.SGD(ref.opt.param_groups[0]["params"], lr=ref.cfg.lr, momentum=ref.cfg.momentum,
                              nesterov=True, weight_decay=ref.cfg.weight_decay)
    ref.loss_fn = pooled_loss
    pooled = _one_step(ref, batch)
    assert max(float((pooled[k] - one[k]).abs().max()) for k in one) > 1e-5


def test_shards_cover_every_subject_once_and_rank_seeds_differ():
    items = list(range(7))
    shards = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == items and shards[0] == [0, 3, 6]
    assert shard(items, 1, 1) == items and shard([5], 1, 2) == [5]  # fewer subjects than ranks: reuse
    assert rank_seed(11, 0, 1) == 11  # one process: the seed is untouched (same run as before DDP)
    seeds = {rank_seed(11, r, 4) for r in range(4)}
    assert len(seeds) == 4 and seeds == {rank_seed(11, r, 4) for r in range(4)}  # distinct, reproducible
    assert not DistContext().enabled and DistContext().is_main


@pytest.mark.timeout(400)
def test_cli_nproc_2_writes_one_checkpoint_and_one_log_and_resumes(synth_root, tmp_path):
    import typer

    from apps.commands.train import train
    from training.model.checkpoint import load_checkpoint

    app = typer.Typer()
    app.command()(train)
    out = tmp_path / "run"
    args = [str(synth_root), "--out", str(out), "--nproc", "2", "--preset", "tiny", "--iterations", "2",
            "--batch-size", "1", "--threads", "1", "--no-progress", "--val-fraction", "0.2"]
    res = CliRunner().invoke(app, [*args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.json", "last.pt", "tensorboard",
                                                     "train_config.json"]
    assert len(list((out / "tensorboard").iterdir())) == 1  # rank 0's log only
    ck = load_checkpoint(out / "last.pt")
    assert ck.epoch == 1 and ck.train_config["world_size"] == 2 and ck.train_config["n_train"] == 5
    assert ck.train_config["global_batch_size"] == 2 and not any(k.startswith("module.") for k in ck.raw["state_dict"])

    res = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume"])
    assert res.exit_code == 0, res.output
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and load_checkpoint(out / "last.pt").epoch == 2
    assert len(list((out / "tensorboard").iterdir())) == 2  # one event file per run, both from rank 0


@pytest.mark.timeout(300)
def test_train_distributed_runs_two_ranks_from_python(synth_dataset, tmp_path):
    """What the app's retraining calls on ≥ 2 GPUs, here with gloo: inputs to the ranks as files, rank 0's result."""
    from training.fit.train import train_distributed
    from training.model.checkpoint import load_checkpoint

    subjects = synth_dataset.with_labels()[:3]
    cfg = TrainConfig(preset="tiny", epochs=1, iterations_per_epoch=2, batch_size=1, device="cpu", threads=1,
                      tensorboard=False)
    res = train_distributed(2, cfg, subjects, tmp_path / "run", partial_labels={s.id: s.label for s in subjects})
    assert res.epochs_completed == 1 and res.n_train == 3 and res.best_path.is_file()
    assert load_checkpoint(res.last_path).train_config["world_size"] == 2


# One rank of the freeze-level-"none" test: counts who writes the init checkpoint, first from a missing
# init (rank 0 fails: every rank must raise, none may hang), then from a real one.
PUBLISH_WORKER = """
import json
import sys
from pathlib import Path

import torch.distributed as dist

import training.fit.train as T

init, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank, calls = dist.get_rank(), []
copy = T.copy_without_training
T.copy_without_training = lambda *a, **k: calls.append(rank) or copy(*a, **k)
cfg = T.TrainConfig(preset="tiny", freeze="none", device="cpu", tensorboard=False)
try:
    T.Trainer(cfg, [], out / "bad", init=out / "missing.pt", progress=False).fit()
    failed = None
except Exception as exc:
    failed = type(exc).__name__
res = T.Trainer(cfg, [], out / "run", init=init, progress=False).fit()
record = {"calls": calls, "failed": failed, "files": res.best_path.is_file() and res.last_path.is_file(),
          "epochs": res.epochs_completed}
(out / f"rank{rank}.json").write_text(json.dumps(record))
dist.destroy_process_group()
"""


@pytest.mark.timeout(300)
def test_freeze_none_is_published_by_rank_0_only_and_every_rank_returns_after_it(tmp_path):
    from training.data.preprocess import PreprocessConfig
    from training.model.checkpoint import load_checkpoint, save_checkpoint
    from training.model.network import build_network, network_config

    net_cfg = network_config("tiny")
    init = save_checkpoint(tmp_path / "init.pt", build_network(net_cfg), network=net_cfg,
                           preprocess=PreprocessConfig(), train_config={}, epoch=3, metrics={})
    script = tmp_path / "publish.py"
    script.write_text(PUBLISH_WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(script), str(init), str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["calls"] for r in ranks] == [[0, 0], []]  # both attempts written by rank 0 alone
    assert [r["failed"] for r in ranks] == ["CheckpointError", "TrainError"]
    assert all(r["files"] and r["epochs"] == 0 for r in ranks)
    ck, src = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(init)
    assert ck.epoch == 0 and ck.train_config["freeze"] == "none"
    assert all(torch.equal(ck.raw["state_dict"][k], v) for k, v in src.raw["state_dict"].items())
