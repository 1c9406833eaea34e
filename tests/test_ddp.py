"""Multi-process training (DDP): two gloo ranks on this machine train like one process on
the same global batch, hold the same masks, resume, stop together and catch diverged masks.

The multi-process tests spawn ranks (``tests/ddp.py``) or run ``torchrun``; each takes
10-30 s on two busy cores, most of it starting Python and importing torch in every rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp import (
    condensed_auto,
    dense_gradient,
    diverge,
    free_port,
    interrupt_and_resume,
    replicated_and_ddp,
    reports,
    spawn,
    sst_train,
    train_runs,
)
from runs import InterruptAt, compose_run, read_metrics

from sst import dist
from sst.config.keys import ConfigError
from sst.data.loaders import make_loader
from sst.engine.signals import Preempted, stop_signals
from sst.launch.build import build
from sst.launch.device import per_rank_batch
from sst.launch.run import run
from sst.sparsity import RigL

ROOT = Path(__file__).resolve().parent.parent
# 2 epochs of digits at a global batch of 64: 44 steps, a mask update every 5 (8 updates)
TINY = [
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.progress_bar=false",
    "trainer.log_every=10",
    "sparsity.delta_t=5",
    "logger=none",
]


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def assert_same_model(a: dict, b: dict, atol: float = 1e-5) -> None:
    """Equal masks, and weights equal within ``atol``, of two checkpoints."""
    assert a["sparsity"]["masks"].keys() == b["sparsity"]["masks"].keys()
    for name, mask in a["sparsity"]["masks"].items():
        assert torch.equal(mask, b["sparsity"]["masks"][name]), name
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], atol=atol, rtol=0, msg=key)


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = (output_dir / "runs").iterdir()
    return run_dir


# ----------------------------------------------------------------- launch environment
def test_launch_environment_is_read_from_torchrun_and_submitit_variables():
    assert dist.environment({}) == dist.Environment()
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    assert dist.environment(torchrun) == dist.Environment(3, 1, 4, "torchrun")
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
    slurm["SLURM_NTASKS"] = "8"
    assert dist.environment(slurm) == dist.Environment(5, 1, 8, "submitit")
    local = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2"}
    local |= {"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}
    assert dist.environment(local) == dist.Environment(1, 1, 2, "submitit")
    # a SLURM allocation alone (an sbatch script, salloc) is one process
    assert not dist.environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}).distributed
    # torchrun's variables win inside a submitit job
    assert dist.environment({**local, **torchrun}).launcher == "torchrun"


def test_global_batch_that_the_world_size_does_not_divide_is_refused(tmp_path, monkeypatch):
    assert per_rank_batch(64, 2, 4) == 8
    cfg, run_dir, choices = compose_run([*TINY, "trainer.batch_size=64"], tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"trainer.batch_size=64 .* 3 processes"):
        build(cfg, run_dir, choices)
    assert not dist.is_initialized()


def test_sync_batchnorm_on_cpu_ranks_is_refused_before_the_group_starts(tmp_path, monkeypatch):
    cfg, run_dir, choices = compose_run(
        [*TINY, "trainer.sync_batchnorm=true", "trainer.device=cpu"], tmp_path
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"trainer\.sync_batchnorm=true needs CUDA"):
        build(cfg, run_dir, choices)
    assert not dist.is_initialized()


# ----------------------------------------------------------------- data sharding
def test_ranks_share_each_global_batch_without_overlap_and_reshuffle_per_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(100), torch.zeros(100))

    def loader(rank: int, world: int, **kwargs):
        return make_loader(data, seed=3, rank=rank, world_size=world, **kwargs)

    train = {"batch_size": 12, "shuffle": True, "drop_last": True}
    single = loader(0, 1, **train)
    ranks = [loader(r, 4, **train) for r in range(4)]
    for epoch in (0, 1):
        for part in (single, *ranks):
            part.set_epoch(epoch, skip_batches=2)  # mid-epoch resume
        whole = [b[0] for b in single]
        shards = [[b[0] for b in part] for part in ranks]
        assert len(whole) == len(single) - 2 == 6
        for i, batch in enumerate(whole):
            assert torch.equal(torch.cat([s[i] for s in shards]), batch)
            assert all(len(s[i]) == 3 for s in shards)
    single.set_epoch(0)
    first = torch.cat([b[0] for b in single])
    single.set_epoch(1)
    assert not torch.equal(first, torch.cat([b[0] for b in single]))


def test_test_shards_count_every_example_once_without_padding():
    data = torch.utils.data.TensorDataset(torch.arange(13), torch.zeros(13))
    seen = []
    for rank in range(3):
        test = make_loader(data, batch_size=5, shuffle=False, seed=0, rank=rank, world_size=3)
        test.set_epoch(0)
        batches = [b[0] for b in test]
        # 13 = 5 + 5 + 3 examples; the last batch gives each rank one; no rank pads
        assert len(test._loader().batch_sampler) == len(batches) == 3
        seen.extend(torch.cat(batches).tolist())
    assert sorted(seen) == list(range(13))
    tiny = make_loader(data, batch_size=13, shuffle=False, seed=0, rank=2, world_size=15)
    tiny.set_epoch(0)
    assert [b[0].tolist() for b in tiny] == [[2]]


# ----------------------------------------------------------------- masks
def test_mask_checksum_tells_apart_masks_that_differ_in_one_weight(tiny_net):
    method = RigL(tiny_net, None, density=0.3, total_steps=100)
    before = method.mask_set.checksum()
    assert before.shape == (len(method.masks), 3)
    assert torch.equal(before[:, 0], torch.tensor(list(method.kept_counts.values())))
    masks = {n: m.bool().clone() for n, m in method.masks.items()}
    flat = masks["fc1"].view(-1)
    active, inactive = flat.nonzero()[0], (~flat).nonzero()[0]
    flat[active], flat[inactive] = False, True  # same count, one weight moved
    method.mask_set.set(masks)  # a single process: no check, no collective
    after = method.mask_set.checksum()
    changed = (after != before).any(dim=1).tolist()
    assert changed == [name == "fc1" for name in method.masks]


def test_stop_signal_is_handed_to_the_launchers_handler_after_the_checkpoint(tmp_path, monkeypatch):
    """submitit requeues the job in its own handler of its preemption signal (SIGUSR2): the
    loop takes the signal over, saves, and hands it back once the run has closed."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert signal.SIGUSR2 in stop_signals()
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        cfg, run_dir, choices = compose_run([*TINY, "sparsity=rigl"], tmp_path)
        loop = build(cfg, run_dir, choices)
        loop.hooks.append(InterruptAt(7, signum=signal.SIGUSR2))
        with pytest.raises(Preempted) as stopped:
            loop.fit()
        assert calls == []  # the loop held the signal until the checkpoint was saved
        assert checkpoint(run_dir)["step"] == 7
        stopped.value.hand_over()
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_stop_vote_in_one_process_is_the_local_signal():
    vote = dist.StopVote()
    assert vote.poll(None) is None
    assert vote.poll(15) == 15
    assert vote.close() is None


# ----------------------------------------------------------------- two ranks
def test_dense_gradient_is_the_global_one_and_enforcement_adds_no_collective(tmp_path):
    spawn(dense_gradient, "RigL", tmp_path)
    ranks = reports(tmp_path, "grad-RigL")
    for seen in ranks:
        assert seen["captured"].keys() == seen["reference"].keys()
        for name, grad in seen["captured"].items():
            torch.testing.assert_close(grad, seen["reference"][name], atol=1e-6, rtol=1e-5)
        # the captured gradient is dense: nonzero where weights are inactive
        for name, grad in seen["captured"].items():
            assert (grad[seen["inactive"][name]] != 0).any(), name
        assert seen["per_step_collectives"] == 0  # capture and masking: DDP's all-reduce only
        assert seen["update_collectives"] == 1  # the update: the mask checksum
    for name in ranks[0]["masks"]:
        assert torch.equal(ranks[0]["masks"][name], ranks[1]["masks"][name])
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])


def test_diverged_mask_on_one_rank_is_detected_on_every_rank(tmp_path):
    spawn(diverge, tmp_path)
    for rank, seen in enumerate(reports(tmp_path, "diverge")):
        # set() checks (trainer.mask_check=true); verify_ranks() checks on demand
        assert len(seen["errors"]) == 2, rank
        assert all("the masks of ['2'] differ between ranks" in e for e in seen["errors"])


@pytest.mark.parametrize(
    "options",
    [
        ["sparsity=rigl"],
        ["sparsity=srigl"],
        ["sparsity=set"],
        ["sparsity=rigl", "trainer.grad_accumulation=2"],
        ["sparsity=srigl", "distill=kd"],
        ["sparsity=srigl", "trainer.sparse_compute=on"],
        ["sparsity=rigl", "trainer.sparse_compute=on", "trainer.grad_accumulation=2"],
    ],
    ids=[
        "rigl",
        "srigl",
        "set",
        "rigl-accumulation",
        "srigl-distill",
        "srigl-condensed",
        "rigl-condensed-accumulation",
    ],
)
def test_two_ranks_train_like_one_process_on_the_same_global_batch(tmp_path, options):
    """Batch 32 on each of 2 ranks against batch 64 in one process: the same masks after 8
    updates, the same weights to float tolerance, the same test accuracy at every epoch."""
    overrides = [*TINY, *options]
    if "distill=kd" in options:  # the teacher: a dense run, outside DDP on every rank
        dense = [o for o in TINY if not o.startswith("sparsity.")]
        cfg, teacher_dir, choices = compose_run([*dense, "sparsity=dense"], tmp_path / "t")
        run(cfg, teacher_dir, choices)
        overrides.append(f"distill.teacher_run={teacher_dir}")
    spawn(train_runs, {"run": overrides}, tmp_path / "ddp", tmp_path)
    ranks = reports(tmp_path, "run")
    for layer, mask in ranks[0]["masks"].items():  # every rank holds the same masks
        assert torch.equal(mask, ranks[1]["masks"][layer]), layer
        assert torch.equal(ranks[0]["weights"][layer], ranks[1]["weights"][layer])
    assert ranks[0]["summary"] == ranks[1]["summary"] | {
        "wall_time_s": ranks[0]["summary"]["wall_time_s"]
    }
    ddp_dir = only_run_dir(tmp_path / "ddp" / "run")

    cfg, run_dir, choices = compose_run(overrides, tmp_path / "single")
    run(cfg, run_dir, choices)
    assert run_dir.name == ddp_dir.name  # the same run: the world size is not in its identity
    assert_same_model(checkpoint(ddp_dir), checkpoint(run_dir))
    single, multi = read_metrics(run_dir), read_metrics(ddp_dir)
    assert [r["step"] for r in single] == [r["step"] for r in multi]
    for a, b in zip(single, multi, strict=True):
        for key in ("test/acc", "sparsity/masked_layers", "update/changed_fraction"):
            assert a.get(key) == b.get(key), (a["step"], key)
        if "train/loss" in a:
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)


def test_condensed_training_takes_rank_0s_choice_of_layers_and_averages_their_values(tmp_path):
    """``sparse_compute=auto`` times each layer on every rank; the ranks must train the
    same layers condensed (else their parameters differ and the all-reduce mixes them), so
    rank 0's choice holds on every rank, and the condensed values' gradients are averaged."""
    overrides = [*TINY, "sparsity=srigl", "trainer.sparse_compute=auto"]
    spawn(condensed_auto, overrides, tmp_path / "run", tmp_path)
    ranks = reports(tmp_path, "auto")
    assert ranks[0]["wrapper"] == ranks[1]["wrapper"] == "Replicated"
    assert ranks[0]["chosen"] == ranks[1]["chosen"] == ["1", "3", "5"]
    for seen in ranks:  # 44 steps: the update steps train dense, the others 3 layers condensed
        assert seen["condensed_grads"][0] == 0  # the first step records the input shapes
        assert seen["condensed_grads"].count(3) >= 30
    for layer, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][layer]), layer
        assert torch.equal(ranks[0]["weights"][layer], ranks[1]["weights"][layer])


def test_batchnorm_ranks_evaluate_the_model_that_rank_0_saves(tmp_path):
    """Without SyncBatchNorm each rank's running statistics follow its own shard; before
    every evaluation rank 0's are broadcast, so every rank reports the saved model's
    accuracy."""
    overrides = [*TINY, "sparsity=rigl", "model=resnet20", "dataset=synthetic"]
    overrides.append("dataset.input_shape=[3,8,8]")
    spawn(train_runs, {"bn": overrides}, tmp_path / "ddp", tmp_path)
    ranks = reports(tmp_path, "bn")
    assert any("running_mean" in name for name in ranks[0]["buffers"])
    for name, buffer in ranks[0]["buffers"].items():
        assert torch.equal(buffer, ranks[1]["buffers"][name]), name
    for layer, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][layer]), layer
    assert ranks[0]["summary"]["final_test_acc"] == ranks[1]["summary"]["final_test_acc"]
    saved = checkpoint(only_run_dir(tmp_path / "ddp" / "bn"))["model"]
    for name, buffer in ranks[0]["buffers"].items():
        assert torch.equal(buffer, saved[name]), name


def test_replicated_trains_what_ddp_trains_on_a_batchnorm_cnn(tmp_path):
    """``Replicated`` (the wrapper that training in condensed form runs under) against DDP,
    both masked-dense, on a ResNet with BatchNorm on 2 ranks: the same masks, weights and
    running statistics, and every rank evaluates the model rank 0 saves."""
    overrides = [*TINY, "sparsity=rigl", "model=resnet20", "dataset=synthetic"]
    overrides.append("dataset.input_shape=[3,8,8]")
    spawn(replicated_and_ddp, overrides, tmp_path / "runs", tmp_path)
    ddp, replicated = reports(tmp_path, "ddp"), reports(tmp_path, "replicated")
    for layer, mask in ddp[0]["masks"].items():
        assert torch.equal(mask, replicated[0]["masks"][layer]), layer
        assert torch.equal(replicated[0]["masks"][layer], replicated[1]["masks"][layer]), layer
        torch.testing.assert_close(ddp[0]["weights"][layer], replicated[0]["weights"][layer])
    for name, buffer in ddp[0]["buffers"].items():
        torch.testing.assert_close(buffer, replicated[0]["buffers"][name], msg=name)
        assert torch.equal(replicated[0]["buffers"][name], replicated[1]["buffers"][name])
    accuracies = {r["summary"]["final_test_acc"] for r in [*ddp, *replicated]}
    assert len(accuracies) == 1


def test_resume_under_ddp_reproduces_the_uninterrupted_run(tmp_path):
    overrides = [*TINY, "sparsity=rigl"]
    spawn(interrupt_and_resume, overrides, tmp_path, 17, tmp_path)
    # SIGTERM reached rank 1 during step 17: both ranks stopped after step 18, saved once
    assert [r["stopped_at"] for r in reports(tmp_path, "resume")] == [18, 18]
    whole, resumed = only_run_dir(tmp_path / "whole"), only_run_dir(tmp_path / "resumed")
    assert_same_model(checkpoint(whole), checkpoint(resumed), atol=0)
    assert read_metrics(whole) == read_metrics(resumed)


# ----------------------------------------------------------------- launchers
def launch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["WANDB_SILENT"] = "true"
    env["OMP_NUM_THREADS"] = "1"
    return env


def assert_written_by_rank_0(run_dir: Path) -> None:
    """One ``config.json`` (Hydra writes no ``.hydra/``), one rank's ``train.log``, one
    record per step in ``metrics.jsonl``."""
    assert not (run_dir / ".hydra").exists()
    assert json.loads((run_dir / "config.json").read_text())["choices"]["sparsity"]
    log = (run_dir / "train.log").read_text().splitlines()
    assert len([line for line in log if "epoch 2 step 44" in line]) == 1
    assert [r["step"] for r in read_metrics(run_dir) if "test/acc" in r] == [22, 44]


def test_sst_train_on_two_ranks_writes_the_run_folder_from_rank_0_only(tmp_path, capfd):
    spawn(sst_train, [*TINY, "sparsity=srigl", f"output_dir={tmp_path}"])
    out = capfd.readouterr().out
    assert out.count("sst: finished") == 1  # rank 0 prints the summary, rank 1 nothing
    assert_written_by_rank_0(only_run_dir(tmp_path))
    assert checkpoint(only_run_dir(tmp_path))["step"] == 44


@pytest.mark.slow
def test_torchrun_launch_trains_like_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m sst.train`` (about 40 s: three interpreters)."""
    args = [*TINY, "sparsity=srigl", f"output_dir={tmp_path / 'ddp'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--master_port", str(free_port()), "-m", "sst.train", *args]
    done = subprocess.run(
        cmd, cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sst: finished") == 1
    run_dir = only_run_dir(tmp_path / "ddp")
    assert_written_by_rank_0(run_dir)
    cfg, single_dir, choices = compose_run([*TINY, "sparsity=srigl"], tmp_path / "single")
    run(cfg, single_dir, choices)
    assert_same_model(checkpoint(run_dir), checkpoint(single_dir))


def test_submitit_launcher_runs_a_two_task_job(tmp_path):
    """``sst-train -m launcher=submitit_local hydra.launcher.tasks_per_node=2``: submitit
    starts two tasks; sst reads their ranks from submitit's environment (20-60 s: three
    interpreters)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [*TINY, "sparsity=rigl", f"output_dir={tmp_path}", "launcher=submitit_local"]
    args += ["hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5"]
    env = launch_env()
    env["MASTER_PORT"] = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "sst.train", "-m", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    logs = "\n".join(p.read_text() for p in tmp_path.glob("runs/.submitit/*/*.err"))
    assert done.returncode == 0, done.stderr[-2000:] + logs[-3000:]
    (run_dir,) = (p for p in (tmp_path / "runs").glob("digits-*") if p.is_dir())
    outs = sorted(tmp_path.glob("runs/.submitit/*/*_log.out"))
    assert len(outs) == 2  # two tasks ran; rank 0 alone printed the summary
    assert sum("sst: finished" in p.read_text() for p in outs) == 1
    assert_written_by_rank_0(run_dir)
    # the same masks as two forked ranks (test_two_ranks_train_like_one_process...) and one
    # process reach: rank 0's checkpoint after the 8 updates of a RigL run
    state = checkpoint(run_dir)
    assert state["step"] == 44 and state["sparsity"]["step"] == 44
