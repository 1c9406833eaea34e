"""What Hydra, W&B and terminal users expect of sst (issue 19): W&B's environment
variables, quiet logs, one-line interrupts."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import wandb
from fabricated import make_run
from runs import compose_run, long_train_command

from sst import __version__
from sst.condensed import cli as export_cli
from sst.engine.records import Records
from sst.launch.build import default_tags, make_run_log
from sst.runs.runlog import RunLog, wandb_init_args
from sst.runs.wandb_file import read_chunks
from sst.study import plot_cli as sst_plot
from sst.study import plots, sweep_cli
from sst.study.results import DEFAULT_KEYS, aggregate, gather
from sst.study.table_cli import main as sst_table

WANDB_VARIABLES = (
    "WANDB_MODE",
    "WANDB_PROJECT",
    "WANDB_TAGS",
    "WANDB_JOB_TYPE",
    "WANDB_DISABLED",
    "WANDB_RUN_ID",
    "WANDB_SWEEP_ID",
)


@pytest.fixture
def clean_wandb_env(monkeypatch):
    """No W&B variable of the caller's shell leaks into a test."""
    for name in WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    wandb.teardown()  # W&B reads its variables once per process, when it sets up
    return monkeypatch


def run_record(run_dir: Path):
    """The ``run`` record (project, tags, job type) of the run folder's offline W&B log."""
    from wandb.proto import wandb_internal_pb2

    wandb.teardown()  # finish() returns before W&B's service has written every record
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for raw in read_chunks(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"{path} has no run record")


def test_unset_settings_take_sst_defaults(clean_wandb_env):
    args = wandb_init_args(None, None, None, None, ["srigl", "cpu_study_digits"])
    assert args == {
        "mode": "offline",
        "project": "sst",
        "tags": ["srigl", "cpu_study_digits"],
        "job_type": "train",
    }


def test_unset_settings_leave_wandb_variables_alone(clean_wandb_env):
    for name, value in [
        ("WANDB_MODE", "disabled"),
        ("WANDB_PROJECT", "p"),
        ("WANDB_TAGS", "a,b"),
        ("WANDB_JOB_TYPE", "eval"),
    ]:
        clean_wandb_env.setenv(name, value)
    assert wandb_init_args(None, None, None, None, ["srigl"]) == {"mode": "disabled"}
    explicit = wandb_init_args("online", "mine", ["x"], "sweep", ["srigl"])
    assert explicit == {"mode": "online", "project": "mine", "tags": ["x"], "job_type": "sweep"}


def test_wandb_mode_disabled_in_the_environment_starts_no_wandb_run(clean_wandb_env, tmp_path):
    clean_wandb_env.setenv("WANDB_MODE", "disabled")
    log = RunLog(tmp_path, config={}, kind="wandb")
    assert log.wandb_run is None and log.wandb_mode == "disabled"
    assert not (tmp_path / "wandb").exists()
    log.finish()


def test_offline_run_takes_project_and_tags_from_the_environment(clean_wandb_env, tmp_path):
    clean_wandb_env.setenv("WANDB_PROJECT", "from-env")
    clean_wandb_env.setenv("WANDB_TAGS", "env1,env2")
    log = RunLog(tmp_path, config={"a": 1}, kind="wandb", default_tags=["srigl"])
    assert log.wandb_mode == "offline"
    log.finish()
    run = run_record(tmp_path)
    assert run.project == "from-env"
    assert list(run.tags) == ["env1", "env2"]
    assert run.job_type == "train"


def test_explicit_logger_settings_win_over_the_environment(clean_wandb_env, tmp_path):
    clean_wandb_env.setenv("WANDB_PROJECT", "from-env")
    clean_wandb_env.setenv("WANDB_TAGS", "env1")
    clean_wandb_env.setenv("WANDB_MODE", "disabled")
    log = RunLog(tmp_path, config={}, kind="wandb", mode="offline", project="mine", tags=["t"])
    log.finish()
    run = run_record(tmp_path)
    assert (run.project, list(run.tags)) == ("mine", ["t"])


def test_an_unknown_wandb_mode_is_named_before_anything_is_written(clean_wandb_env, tmp_path):
    clean_wandb_env.setenv("WANDB_MODE", "foo")
    with pytest.raises(ValueError, match=r"WANDB_MODE='foo' is unknown: allowed values are"):
        RunLog(tmp_path / "run", config={"a": 1}, kind="wandb")
    assert not (tmp_path / "run" / "config.json").exists()
    clean_wandb_env.setenv("WANDB_MODE", "dryrun")  # W&B's legacy spelling of offline
    assert wandb_init_args(None, None, None, None, [])["mode"] == "offline"


def test_an_empty_stored_wandb_id_gives_a_new_one(clean_wandb_env, tmp_path):
    """A ``wandb_id.txt`` emptied by a write cut short (before it was written atomically)
    used to give the run the id ''."""
    clean_wandb_env.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb_id.txt").write_text("")
    log = RunLog(tmp_path, config={}, kind="wandb")
    log.finish()
    assert log.run_id and (tmp_path / "wandb_id.txt").read_text().strip() == log.run_id


def test_a_sweep_refuses_one_wandb_run_id_for_all_its_jobs(clean_wandb_env, tmp_path):
    """``WANDB_RUN_ID=x sst-train -m seed=0,1,2`` would write three runs into one W&B run;
    a single run (or a W&B sweep agent's job) keeps honouring it."""
    from omegaconf import OmegaConf

    from sst.config import runtime
    from sst.config.keys import ConfigError
    from sst.launch.build import make_run_log

    clean_wandb_env.setenv("WANDB_RUN_ID", "abc123")
    clean_wandb_env.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create({"logger": {"kind": "wandb"}, "name": "r"})
    clean_wandb_env.setattr(runtime, "is_multirun", lambda: True)
    with pytest.raises(ConfigError, match="WANDB_RUN_ID=abc123 names one W&B run"):
        make_run_log(cfg, tmp_path / "a", {})
    clean_wandb_env.setattr(runtime, "is_multirun", lambda: False)
    log = make_run_log(cfg, tmp_path / "b", {})
    log.finish()
    assert log.run_id == "abc123"


def test_default_tags_name_the_method_and_the_experiment(clean_wandb_env, tmp_path):
    cfg, run_dir, choices = compose_run(["experiment=cpu_study_digits"], tmp_path)
    assert cfg.logger.mode is None and cfg.logger.tags is None
    tags = default_tags(cfg, {"choices": choices})
    assert tags == [choices["sparsity"], "cpu_study_digits"]
    log = make_run_log(cfg, run_dir, {"choices": choices})
    log.finish()
    run = run_record(run_dir)
    assert (run.project, run.job_type, list(run.tags)) == ("sst", "train", tags)


ROOT = Path(__file__).resolve().parent.parent


def start_train(tmp_path: Path) -> subprocess.Popen:
    """``python -m sst.train`` on digits for 100 epochs (stopped long before the end), its
    stdout and stderr piped: not a terminal."""
    cmd = long_train_command(tmp_path, progress_bar=True)
    env = {**os.environ, "WANDB_SILENT": "true"}
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def default_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt in the child even when the tests run in a background
    job, whose shell starts its commands with SIGINT ignored (Python then leaves it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(process: subprocess.Popen, pattern: str) -> list[str]:
    """stdout's lines up to the first that matches ``pattern``."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matched {pattern!r}: {lines[-5:]}")


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_says_it_resumes(tmp_path):
    process = start_train(tmp_path)
    try:
        lines = read_until(process, r"^epoch 2/100 step \d+: test/loss=.*, test/acc=")
        time.sleep(0.2)  # into epoch 3, past the checkpoint of epoch 2
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in stderr and "\r" not in stderr  # no bar either: not a terminal
    assert re.match(r"^epoch 1/100 step 44: test/loss=.*, test/acc=", lines[0])
    (message,) = [line for line in stderr.splitlines() if line.startswith("sst:")]
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"]
    assert re.fullmatch(
        rf"sst: interrupted at step \d+; the checkpoint of step {saved} is kept: run the "
        rf"same command to resume from step {saved}|sst: interrupted at step {saved}, "
        r"checkpoint saved; run the same command to resume",
        message,
    ), message
    assert message in (run_dir / "train.log").read_text()

    again = start_train(tmp_path)
    try:
        (resumed,) = read_until(again, r"^sst: resuming")
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=120)
    finally:
        again.kill()
    steps_per_epoch = 44  # digits: 1437 training samples, whole batches of 32
    assert resumed == f"sst: resuming from step {saved}, epoch {saved // steps_per_epoch + 1}/100\n"


# ----------------------------------------------------------------------------- sst-table
@pytest.fixture
def study(tmp_path: Path) -> Path:
    """2 seeds of SRigL at 90% sparsity and 2 of RigL, with different gamma_sal."""
    root = tmp_path / "runs"
    for seed, acc in enumerate([90.0, 92.0]):
        make_run(root, seed=seed, acc=acc, gamma_sal=0.3)
        make_run(root, method="rigl", seed=seed, acc=acc - 10)
    return root


def test_a_path_after_by_stays_a_path(study: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(study.parent)  # no outputs/runs here: a path read as a key finds none
    assert sst_table(["--by", "seed", str(study), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted((g["method"], g["seed"]) for g in data["groups"]) == [
        ("rigl", 0),
        ("rigl", 1),
        ("srigl", 0),
        ("srigl", 1),
    ]
    assert sst_table([str(study), "--by", "seed,sparsity.gamma_sal", "--format", "json"]) == 0
    group = json.loads(capsys.readouterr().out)["groups"][0]
    assert {"seed", "sparsity.gamma_sal"} <= set(group)


def test_csv_holds_numbers(study: Path, capsys) -> None:
    assert sst_table([str(study), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    srigl = next(r for r in rows if r["method"] == "srigl")
    assert float(srigl["sparsity"]) == pytest.approx(0.9)
    assert float(srigl["final_test_acc_mean"]) == pytest.approx(91.0)
    assert float(srigl["final_test_acc_std"]) == pytest.approx(2**0.5)
    assert int(srigl["n"]) == 2
    assert float(srigl["train_flops_rel"]) > 0
    assert not any("±" in v or "%" in v for r in rows for v in r.values())


def test_markdown_columns_are_padded(study: Path, capsys) -> None:
    assert sst_table([str(study)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 4  # header, rule, two rows
    assert len({len(line) for line in table}) == 1
    assert len({tuple(i for i, ch in enumerate(line) if ch == "|") for line in table}) == 1


@pytest.mark.parametrize(
    "cli", [sst_table, sst_plot.main, sweep_cli.main, export_cli.main], ids=lambda f: f.__module__
)
def test_every_cli_prints_sst_version(cli, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"sst {__version__}"


# ----------------------------------------------------------------------------- sst-plot
def write_metrics(run_dir: Path, records: list[dict]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_importing_plots_leaves_the_backend_alone() -> None:
    code = "import sst.study.plots, matplotlib; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"


def test_accuracy_plot_one_density_no_warning_axis_at_most_100(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, acc in enumerate([99.9, 92.0]):  # a std of 5.6 points: the band passes 100
        make_run(root, seed=seed, acc=acc)
    groups = aggregate(gather([root]).runs, list(DEFAULT_KEYS), metric="final")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.accuracy_vs_sparsity(groups)
    assert fig.axes[0].get_ylim()[1] <= 100
    plots.save(fig, tmp_path / "acc", ["png"])


def test_accuracy_plot_splits_lines_where_runs_differ(tmp_path, capsys, monkeypatch):
    root = tmp_path / "runs"
    make_run(root, seed=0, acc=90.0, epochs=3)
    make_run(root, seed=1, acc=91.0, epochs=5)
    for seed, acc in enumerate([93.0, 95.0]):
        make_run(root, seed=seed, acc=acc, gamma_sal=0.3, density=0.05)
        make_run(root, seed=seed, acc=acc - 2, gamma_sal=0.0, density=0.05)
    drawn = {}

    def record(groups, series_keys, **kwargs):
        drawn["series"] = series_keys
        drawn["points"] = {
            tuple(g.key[k] for k in ["sparsity", *series_keys]): g.accuracy.mean for g in groups
        }
        return real(groups, series_keys=series_keys, **kwargs)

    real = plots.accuracy_vs_sparsity
    monkeypatch.setattr(plots, "accuracy_vs_sparsity", record)
    assert sst_plot.main(["accuracy", str(root), "-o", str(tmp_path / "acc")]) == 0
    err = capsys.readouterr().err
    assert "lines split by" in err and "trainer.epochs" in err
    assert "averages runs that differ" not in err  # no point averages unlike runs
    assert {"sparsity.gamma_sal", "trainer.epochs"} <= set(drawn["series"])
    gamma = 1 + drawn["series"].index("sparsity.gamma_sal")
    means = {key[gamma]: acc for key, acc in drawn["points"].items() if key[0] == 0.95}
    assert means == {0.0: 92.0, 0.3: 94.0}


def test_curves_mark_only_sparse_series(tmp_path: Path) -> None:
    dense_run = make_run(tmp_path, seed=0)
    sparse_run = make_run(tmp_path, seed=1)
    write_metrics(dense_run, [{"step": s, "test/acc": 50.0 + s / 10} for s in range(250)])
    write_metrics(sparse_run, [{"step": 50 * s, "test/acc": 99.0 + s / 5} for s in range(5)])
    fig = plots.training_curves([dense_run, sparse_run], ["many", "few"])
    acc_ax = fig.axes[1]
    assert [line.get_marker() for line in acc_ax.lines] == ["None", "."]
    assert acc_ax.get_ylim()[1] <= 100


def test_neurons_figure_says_when_nothing_is_ablated(tmp_path: Path) -> None:
    kept = make_run(tmp_path, seed=0)
    records = [
        {"step": s, f"active_neurons/{layer}": 32, f"ablated_neurons/{layer}": 0}
        for s in (10, 20)
        for layer in ("fc1", "fc2")
    ]
    write_metrics(kept, records)
    (ax,) = plots.neurons_over_training(kept).axes
    assert any("no neuron ablated" in t.get_text() for t in ax.texts)
    assert not ax.lines

    ablating = make_run(tmp_path, seed=1)
    records[-1]["ablated_neurons/fc2"] = 8
    write_metrics(ablating, records)
    (ax,) = plots.neurons_over_training(ablating).axes
    assert not ax.texts and len(ax.lines) == 2


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def bar_state(queue) -> None:
    """In a pool worker: whether the progress bar is on and whether lines replace it."""
    sys.stderr = FakeTerminal()
    records = Records(None, progress_bar=True)
    records.open_progress(total=10, initial=0)
    queue.put((not records._progress.disable, records._lines))


def test_pool_workers_print_lines_instead_of_bars_that_would_interleave(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    records = Records(None, progress_bar=True)
    records.open_progress(total=10, initial=0)
    assert not records._progress.disable and not records._lines  # a terminal: the bar
    records._progress.close()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=bar_state, args=(queue,))
    worker.start()
    worker.join(timeout=60)
    assert queue.get(timeout=5) == (False, True)  # a joblib job: a line per evaluation
