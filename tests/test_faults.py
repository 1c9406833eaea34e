"""Bad input and faults as a new user meets them: each fails before the first step with a
message that names the setting or the file, writes nothing that blocks a corrected
relaunch, and loses no data already written."""

from __future__ import annotations

import json
import os
import random
import urllib.error

import pytest
import torch
import wandb
from runs import QUICK, InterruptAt, compose_run, read_metrics, run_with

import sst.launch.run as run_module
from sst import files
from sst.config.keys import ConfigError
from sst.engine.signals import Preempted
from sst.engine.step import NonFiniteLoss
from sst.launch.build import build
from sst.runs.checkpoint import (
    CorruptCheckpoint,
    load,
    load_latest,
    save_atomic,
    state_digest,
    verify,
)
from sst.runs.lock import RunLock
from sst.runs.runlog import wandb_is_complete
from sst.runs.wandb_file import read_history

QUIET = [*QUICK, "logger=none"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "sparsity.density=abc",
            r"sparsity\.density='abc' has the wrong type: it must be a number",
        ),
        (
            "trainer.batch_size=abc",
            r"trainer\.batch_size='abc' has the wrong type: it must be an integer",
        ),
        ("trainer.epochs=ten", r"trainer\.epochs='ten' has the wrong type: it must be an integer"),
        ("trainer.epochs=1.5", r"trainer\.epochs=1\.5 has the wrong type: it must be an integer"),
        ("optimizer.lr=fast", r"optimizer\.lr='fast' has the wrong type: it must be a number"),
        (
            "optimizer.momentum=1.5",
            r"optimizer\.momentum=1\.5 is out of range: allowed values are in \[0, 1\)",
        ),
        (
            "trainer.progress_bar=maybe",
            r"trainer\.progress_bar='maybe' has the wrong type: it must be true/false",
        ),
        ("sparsity.structure=3", r"sparsity\.structure=3 has the wrong type: it must be a string"),
        ("trainer.amp=fp16", r"trainer\.amp=fp16 needs a CUDA device"),
        (
            "lr_schedule.warmup_epochs=-1",
            r"lr_schedule\.warmup_epochs=-1 is out of range: allowed values are >= 0",
        ),
        ("trainer.num_workers=-1", r"trainer\.num_workers=-1 must be >= 0"),
        ("trainer.eval_batch_size=0", r"trainer\.eval_batch_size=0 must be >= 1"),
        ("trainer.batch_size=100000", r"an epoch has 0 batches"),
    ],
)
def test_a_wrong_type_or_range_names_the_setting_before_anything_is_written(
    tmp_path, override, message
):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=wandb", override], tmp_path)
    with pytest.raises(ConfigError, match=message):
        run_module.run(cfg, run_dir, choices)
    # no W&B run, no checkpoint: only the released (empty) lock of the failed attempt
    left = {p.name: p.read_text() for p in run_dir.iterdir()} if run_dir.exists() else {}
    assert left in ({}, {".lock": ""})


def test_a_layer_named_by_an_integer_takes_a_density(tmp_path):
    cfg, run_dir, choices = compose_run([*QUIET, "sparsity.densities={1: 0.2}"], tmp_path)
    loop = build(cfg, run_dir, choices)
    assert loop.hooks[0].method.layer_density["1"] == 0.2


def finished_checkpoint_run(tmp_path, monkeypatch, stop_at=30):
    cfg, run_dir, choices = compose_run([*QUIET, "trainer.deterministic=true"], tmp_path)
    with pytest.raises(Preempted):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(stop_at, "signal")])
    return cfg, run_dir, choices


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, caplog):
    cfg, run_dir, choices = finished_checkpoint_run(tmp_path / "a", monkeypatch)
    last, prev = run_dir / "checkpoints/last.pt", run_dir / "checkpoints/prev.pt"
    assert torch.load(prev, weights_only=True)["step"] == 22  # the epoch-1 checkpoint
    last.write_bytes(last.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    stale = run_dir / "checkpoints/.last.pt.tmp-99999"
    stale.write_bytes(b"half a checkpoint")
    summary = run_with(monkeypatch, cfg, run_dir, choices)
    assert "cannot be read" in caplog.text and "previous checkpoint" in caplog.text
    assert not stale.exists()
    reference_cfg, reference_dir, reference_choices = compose_run(
        [*QUIET, "trainer.deterministic=true"], tmp_path / "b"
    )
    reference = run_with(monkeypatch, reference_cfg, reference_dir, reference_choices)
    assert summary["final_test_acc"] == reference["final_test_acc"]
    assert read_metrics(run_dir) == read_metrics(reference_dir)


def test_no_readable_checkpoint_names_the_files(tmp_path, monkeypatch):
    cfg, run_dir, choices = finished_checkpoint_run(tmp_path, monkeypatch)
    for name in ("last.pt", "prev.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(CorruptCheckpoint, match=r"last\.pt \(EOFError.*prev\.pt .*Delete the run"):
        run_with(monkeypatch, cfg, run_dir, choices)
    assert load_latest(tmp_path / "nowhere" / "last.pt") is None


def test_a_reader_leaves_a_live_writers_temporary_file_alone(tmp_path):
    """``load_run`` and ``sst-plot mask`` read a running run's checkpoint: they used to
    delete every temporary file beside it, the trainer's half-written next checkpoint too,
    whose rename then failed. Only the run's owner removes leftovers, of dead writers."""
    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)
    live = tmp_path / f".last.pt.tmp-{os.getpid()}"
    dead = tmp_path / ".last.pt.tmp-99999999"  # above any pid_max: no such process
    for leftover in (live, dead):
        leftover.write_bytes(b"part of a checkpoint")
    assert load_latest(path)[0]["step"] == 1
    assert live.exists() and dead.exists()
    assert load_latest(path, owner=True)[0]["step"] == 1
    assert live.exists() and not dead.exists()


def test_an_interrupted_rotation_keeps_last_pt(tmp_path, monkeypatch):
    """The new checkpoint's rename fails (a kill, a full disk): ``last.pt`` still holds the
    previous checkpoint. It used to be renamed to ``prev.pt`` first, leaving no ``last.pt``
    between the two renames."""
    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)
    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst) == str(path):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert load(path)["step"] == 1 and load(tmp_path / "prev.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]
    save_atomic({"step": 3}, path)
    assert load(path)["step"] == 3 and load(tmp_path / "prev.pt")["step"] == 1


def test_a_second_launch_into_a_busy_run_folder_is_refused(tmp_path):
    cfg, run_dir, choices = compose_run(QUIET, tmp_path)
    with RunLock(run_dir):
        with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} on host"):
            run_module.run(cfg, run_dir, choices)
        assert not (run_dir / "metrics.jsonl").exists()
    (run_dir / ".lock").write_text("pid 1 on host gone since yesterday\n")  # a killed owner
    assert run_module.run(cfg, run_dir, choices)["finished"]
    assert (run_dir / ".lock").read_text() == ""  # released


def test_nan_loss_without_a_checkpoint_says_so(tmp_path):
    cfg, run_dir, choices = compose_run([*QUIET, "optimizer.lr=1e30"], tmp_path)
    loop = build(cfg, run_dir, choices)
    with pytest.raises(NonFiniteLoss, match="no checkpoint had been written yet"):
        loop.fit()


def test_a_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    root = tmp_path / "cifar10"
    cfg, run_dir, choices = compose_run(
        ["dataset=cifar10", "dataset.download=true", f"dataset.root={root}", "logger=none"],
        tmp_path,
    )
    with pytest.raises(
        ConfigError,
        match=r"could not download it .*put its cifar-10-batches-py folder under dataset\.root",
    ):
        build(cfg, run_dir, choices)
    assert not root.exists()  # no empty folder left to confuse the next attempt


def test_records_that_wandb_lost_are_sent_again_on_resume(tmp_path, monkeypatch):
    cfg, run_dir, choices = compose_run([*QUICK, "logger=wandb"], tmp_path)
    with pytest.raises(Preempted):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(40, "signal")])
    wandb.teardown()
    (first,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    # a hard kill: W&B's service never wrote the steps after its last flush
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 3])
    kept = {row["_step"] for row in read_history(first)}
    saved = read_metrics(run_dir)
    assert {r["step"] for r in saved} - kept, "the cut must lose some records"
    run_with(monkeypatch, cfg, run_dir, choices)
    wandb.teardown()
    history = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for row in read_history(path):
            history.setdefault(row["_step"], {}).update(row)
    for record in read_metrics(run_dir, drop=()):
        assert record["step"] in history, record["step"]
        for key, value in record.items():
            if key != "step":
                assert history[record["step"]][key] == pytest.approx(value), (record["step"], key)
    assert json.loads((run_dir / "summary.json").read_text())["finished"]


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_record(tmp_path, monkeypatch):
    """A crash before any checkpoint: the relaunch starts from scratch and its records
    replace the first start's, so every step is recorded once."""
    overrides = [*QUIET, "trainer.checkpoint_every_epochs=50", "trainer.log_every=5"]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(monkeypatch, cfg, run_dir, choices, [InterruptAt(30, "crash")])
    assert not (run_dir / "checkpoints").exists()
    assert read_metrics(run_dir)  # the first start logged records before the crash
    run_module.run(cfg, run_dir, choices)
    steps = [(r["step"], "train/loss" in r) for r in read_metrics(run_dir)]
    assert len(steps) == len(set(steps))


def test_the_digest_format_is_stable():
    """Checkpoints written earlier keep verifying: the digest of a fixed state, holding every
    kind of value a checkpoint has (tensors of several dtypes, nested maps, Python's RNG
    state as a tuple of 625 ints, numbers, None, a list of tuples), is pinned."""
    gen = torch.Generator().manual_seed(0)
    state = {
        "model": {"fc.weight": torch.randn(4, 3, generator=gen), "fc.bias": torch.arange(4.0)},
        "masks": {"fc": torch.tensor([[1, 0, 1]] * 4, dtype=torch.bool)},
        "half": torch.ones(2, dtype=torch.bfloat16),
        "rng": {
            "python": random.Random(0).getstate(),
            "torch": torch.Generator().manual_seed(1).get_state(),
        },
        "step": 7,
        "best_acc": 0.5,
        "wandb_id": None,
        "stage_results": [("dense", 1.0)],
    }
    assert state_digest(state) == "74fa29aa7aa392aaee0d6f21ac4139e2"


def test_a_checkpoint_with_changed_bytes_is_refused_and_the_good_one_kept(
    tmp_path, monkeypatch, caplog
):
    """A last.pt that still loads but whose tensor bytes changed on disk fails its digest:
    the run resumes from prev.pt, sets the bad file aside, and its next save keeps prev.pt's
    content instead of rotating the bad file into its place."""
    cfg, run_dir, choices = finished_checkpoint_run(tmp_path / "a", monkeypatch)
    last = run_dir / "checkpoints/last.pt"
    state = torch.load(last, weights_only=True)
    weight = next(v for v in state["model"].values() if v.dim() == 2)
    weight[0, :16] = float("nan")  # as if 64 bytes had flipped on disk
    torch.save(state, last)
    with pytest.raises(ValueError, match="do not match the digest"):
        verify(torch.load(last, weights_only=True), last)
    summary = run_with(monkeypatch, cfg, run_dir, choices)
    assert "previous checkpoint" in caplog.text
    assert (run_dir / "checkpoints/last.pt.corrupt").exists()
    reference_cfg, reference_dir, reference_choices = compose_run(
        [*QUIET, "trainer.deterministic=true"], tmp_path / "b"
    )
    reference = run_with(monkeypatch, reference_cfg, reference_dir, reference_choices)
    assert summary["final_test_acc"] == reference["final_test_acc"]


def test_a_folder_holding_another_run_is_refused_naming_the_settings(tmp_path):
    """A run folder given by hand (hydra.run.dir) and reused with other settings: neither
    a finished nor an interrupted run there is skipped or continued as the new one."""
    cfg, run_dir, choices = compose_run(QUIET, tmp_path)
    run_module.run(cfg, run_dir, choices)
    config_before = (run_dir / "config.json").read_text()
    other, _, other_choices = compose_run([*QUIET, "sparsity=rigl"], tmp_path)
    with pytest.raises(ConfigError, match=r"holds another run.*sparsity\._target_"):
        run_module.run(other, run_dir, other_choices)
    assert (run_dir / "config.json").read_text() == config_before
    assert run_module.run(cfg, run_dir, choices)["finished"]  # the same settings: skipped


@pytest.mark.parametrize(
    "bad",
    [
        ["trainer.epochs=0"],
        ["sparsity.density=1.5"],
        ["trainer.amp=fp16"],
        ["seed=-1"],
        ["dataset=imagefolder"],  # its root is mandatory
        ["distill=kd", "distill.teacher_run=/no/such/run"],
    ],
)
def test_a_bad_setting_on_the_command_line_leaves_no_folder(tmp_path, monkeypatch, capsys, bad):
    """sst-train exits 2 with one sst: line, and the run folder Hydra made before the check
    is removed with its empty train.log and lock."""
    import sst.train

    args = ["sst-train", f"output_dir={tmp_path / 'out'}", "logger=none", *bad]
    monkeypatch.setattr("sys.argv", args)
    with pytest.raises(SystemExit) as exit_code:
        sst.train.main()
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sst: ")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_no_readable_checkpoint_on_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    """sst-train exits 1 with one sst: line naming the files; the traceback is kept in the
    run's train.log."""
    import sst.train

    _, run_dir, _ = compose_run(QUIET, tmp_path)
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "prev.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"")
    monkeypatch.setattr("sys.argv", ["sst-train", *QUIET, f"output_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_code:
        sst.train.main()
    assert exit_code.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint of this run can be read" in err[0]
    assert "Traceback" in (run_dir / "train.log").read_text()


def test_a_kill_after_the_summary_is_repaired_in_wandb_by_the_relaunch(tmp_path, monkeypatch):
    """The process dies after summary.json: W&B lost its last records and the exit. The
    relaunch skips the finished run and completes its W&B run."""
    cfg, run_dir, choices = compose_run([*QUICK, "logger=wandb"], tmp_path)
    run_module.run(cfg, run_dir, choices)
    wandb.teardown()
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])  # a hard kill before W&B's last flush
    assert not wandb_is_complete(run_dir)
    summary_before = (run_dir / "summary.json").read_text()
    with RunLock(run_dir):  # another relaunch is repairing it: this one leaves it alone
        assert run_module.run(cfg, run_dir, choices)["finished"]
    wandb.teardown()
    assert not wandb_is_complete(run_dir)
    assert run_module.run(cfg, run_dir, choices)["finished"]  # skipped ...
    wandb.teardown()
    assert wandb_is_complete(run_dir)  # ... and W&B has every record and the exit
    assert (run_dir / "summary.json").read_text() == summary_before


def test_the_ctrl_c_message_names_the_checkpoint_a_rerun_resumes_from(tmp_path):
    """A corrupt ``last.pt`` with a good ``prev.pt``: the rerun resumes from ``prev.pt``, so
    the interrupted run's line names its step instead of "no checkpoint saved yet"."""
    from sst.train import interrupted_message, saved_step

    checkpoints = tmp_path / "checkpoints"
    save_atomic({"step": 5}, checkpoints / "last.pt")
    save_atomic({"step": 9}, checkpoints / "last.pt")
    assert saved_step(tmp_path) == 9
    (checkpoints / "last.pt").write_bytes(b"cut short")
    assert saved_step(tmp_path) == 5
    assert "no checkpoint" not in interrupted_message(12, saved_step(tmp_path))
    (checkpoints / "prev.pt").unlink()
    assert saved_step(tmp_path) is None
