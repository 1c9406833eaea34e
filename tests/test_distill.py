"""Knowledge distillation: the loss formula, a student trained from a teacher run, and the
teacher as a run of its own (composed from overrides, trained once for all students)."""

import json
import math
import multiprocessing
import time

import pytest
import torch
from runs import QUICK, compose_run, read_metrics

from sst.config.keys import ConfigError
from sst.engine.distill import kd_loss
from sst.launch.build import build
from sst.launch.run import run
from sst.launch.teacher import check_teacher_overrides, teacher_overrides
from sst.runs import RunFolder
from sst.runs.load import build_model
from sst.runs.lock import RunLock

NO_SPARSITY_KEYS = [o for o in QUICK if not o.startswith("sparsity.")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_the_formula():
    student, teacher = [1.0, 0.0, -1.0], [0.0, 1.0, 0.5]
    temperature, weight, hard = 2.0, 0.5, 1.25
    p_t = softmax([v / temperature for v in teacher])
    p_s = softmax([v / temperature for v in student])
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
    expected = (1 - weight) * hard + weight * temperature**2 * kl
    got = kd_loss(
        torch.tensor([student]),
        torch.tensor([teacher]),
        torch.tensor(hard),
        temperature=temperature,
        weight=weight,
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_limits():
    logits = torch.randn(8, 5)
    hard = torch.tensor(0.7)
    assert kd_loss(logits, torch.randn(8, 5), hard, temperature=3, weight=0).item() == (
        pytest.approx(0.7)
    )
    assert kd_loss(logits, logits, hard, temperature=3, weight=1).item() == pytest.approx(0.0)


def test_student_trains_from_a_teacher_run(tmp_path):
    dense = [o for o in QUICK if not o.startswith("sparsity.")]
    cfg, teacher_dir, choices = compose_run(
        [*dense, "logger=none", "sparsity=dense"], tmp_path / "teacher"
    )
    run(cfg, teacher_dir, choices)
    cfg, run_dir, choices = compose_run(
        [*QUICK, "logger=none", "distill=kd", f"distill.teacher_run={teacher_dir}"],
        tmp_path / "student",
    )
    loop = build(cfg, run_dir, choices)
    teacher = loop.hooks[0].teacher
    before = [p.clone() for p in teacher.parameters()]
    summary = loop.fit()
    assert summary["distill_temperature"] == 4.0
    assert summary["final_test_acc"] > 30.0
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert summary["teacher_run"] == str(teacher_dir)
    assert summary["teacher_checkpoint_sha256"] == RunFolder(teacher_dir).checkpoint_sha256()
    records = [r for r in read_metrics(run_dir) if "train/loss" in r]
    for record in records:
        # the logged loss is the mix of the two terms, each averaged over the same steps
        mixed = 0.1 * record["train/loss_hard"] + 0.9 * record["train/loss_soft"]
        assert record["train/loss"] == pytest.approx(mixed, rel=1e-5)


def test_missing_teacher_run_names_the_setting(tmp_path):
    cfg, run_dir, choices = compose_run(
        [*QUICK, "logger=none", "distill=kd", f"distill.teacher_run={tmp_path / 'nope'}"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"distill\.teacher_run=.* is not a finished sst run"):
        build(cfg, run_dir, choices)


def test_a_teacher_that_cannot_be_built_fails_as_a_distill_setting(tmp_path):
    teacher_dir = tmp_path / "teacher"
    (teacher_dir / "checkpoints").mkdir(parents=True)
    bad_model = {"_target_": "sst.models.mlp", "hidden": [0]}
    meta = {"model": bad_model, "num_classes": 10, "input_shape": [1, 8, 8]}
    torch.save({"model": {}, "model_meta": meta, "step": 1}, teacher_dir / "checkpoints/last.pt")
    (teacher_dir / "summary.json").write_text('{"finished": true}')
    (teacher_dir / "config.json").write_text("{}")
    cfg, run_dir, choices = compose_run(
        [*QUICK, "logger=none", "distill=kd", f"distill.teacher_run={teacher_dir}"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"^distill: hidden=\[0\]: every hidden width"):
        build(cfg, run_dir, choices)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (
            {"num_classes": 3, "input_shape": [1, 8, 8]},
            r"trained on 3 classes, this run.s data set has 10",
        ),
        ({"num_classes": 10, "input_shape": [3, 8, 8]}, r"trained on \(3, 8, 8\) inputs of shape"),
    ],
)
def test_a_teacher_of_another_data_set_fails_before_any_file_is_made(tmp_path, meta, message):
    teacher_dir = tmp_path / "teacher"
    (teacher_dir / "checkpoints").mkdir(parents=True)
    meta = {"model": {"_target_": "sst.models.mlp", "hidden": [16]}, **meta}
    state = {"model": build_model(meta).state_dict(), "model_meta": meta, "step": 1}
    torch.save(state, teacher_dir / "checkpoints/last.pt")
    (teacher_dir / "summary.json").write_text('{"finished": true}')
    (teacher_dir / "config.json").write_text("{}")
    cfg, run_dir, choices = compose_run(
        [*QUICK, "logger=none", "distill=kd", f"distill.teacher_run={teacher_dir}"], tmp_path
    )
    with pytest.raises(ConfigError, match=message):
        build(cfg, run_dir, choices)
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- the teacher
def test_teacher_overrides_replace_the_students_choices():
    student = [
        "sparsity=rigl",
        "sparsity.density=0.05",
        "distill=kd",
        "distill.weight=0.5",
        "trainer.epochs=3",
        "seed=2",
        "+sparsity.extra=1",
    ]
    assert teacher_overrides(student, ["sparsity=dense"]) == [
        "trainer.epochs=3",
        "seed=2",
        "distill=none",
        "sparsity=dense",
    ]
    assert teacher_overrides(["seed=2", "model=mlp"], ["seed=0", "model.hidden=[512]"]) == [
        "model=mlp",
        "distill=none",
        "seed=0",
        "model.hidden=[512]",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["distill=kd"], "a teacher is trained with distill=none"),
        (["sparsity"], "is not an override"),
        ([3], "is not an override"),
        ({"sparsity": "dense"}, "must be a run folder or a list of overrides"),
    ],
)
def test_bad_teacher_overrides_name_the_setting(value, message):
    with pytest.raises(ConfigError, match=f"distill.teacher_run.*{message}"):
        check_teacher_overrides(value)


def test_two_students_share_one_teacher_trained_once(tmp_path):
    common = [*NO_SPARSITY_KEYS, "trainer.epochs=2", "logger=none", "distill=kd"]
    summaries = []
    for method in ("gmp", "oneshot"):
        cfg, run_dir, choices = compose_run([*common, f"sparsity={method}"], tmp_path)
        summaries.append(run(cfg, run_dir, choices))
        if method == "gmp":
            (teacher_dir,) = [p for p in (tmp_path / "runs").iterdir() if "-dense-" in p.name]
            first = (teacher_dir / "summary.json").read_text(), RunFolder(teacher_dir).metrics()
    assert ((teacher_dir / "summary.json").read_text(), RunFolder(teacher_dir).metrics()) == first
    # the teacher is the run `sst-train sparsity=dense` with the students' settings
    dense = [*NO_SPARSITY_KEYS, "trainer.epochs=2", "logger=none", "sparsity=dense"]
    assert compose_run(dense, tmp_path)[1] == teacher_dir
    teacher = json.loads((teacher_dir / "summary.json").read_text())
    # its config.json records the teacher's own command line, not the student's
    recorded = json.loads((teacher_dir / "config.json").read_text())["overrides"]
    assert recorded[-2:] == ["distill=none", "sparsity=dense"]
    assert not any(o.startswith("sparsity=gmp") for o in recorded)
    for summary in summaries:
        assert summary["teacher_run"] == str(teacher_dir)
        assert summary["teacher_config_hash"] == teacher_dir.name.rsplit("-", 1)[1]
        assert summary["teacher_checkpoint_sha256"] == RunFolder(teacher_dir).checkpoint_sha256()
        assert summary["teacher_test_acc"] == teacher["final_test_acc"]
        assert summary["sparsity_masked_layers"] == pytest.approx(0.9, abs=1e-3)


def test_a_multi_round_student_distils(tmp_path):
    overrides = [
        *NO_SPARSITY_KEYS,
        "trainer.epochs=1",
        "logger=none",
        "distill=kd",
        "sparsity=lr_rewinding",
        "sparsity.density=0.64",
    ]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)
    summary = run(cfg, run_dir, choices)
    assert [row["stage"] for row in summary["stages"]] == [0, 1, 2]
    assert "-dense-" in summary["teacher_run"]
    assert any("train/loss_soft" in r and r["stage"] == 2 for r in read_metrics(run_dir))


def _hold_lock(path, marker, seconds):
    with RunLock(path, wait=True):
        marker.write_text("held")
        time.sleep(seconds)
        (path / "released").write_text("yes")


def test_a_second_process_waits_for_the_run_lock(tmp_path):
    marker = tmp_path / "marker"
    child = multiprocessing.get_context("fork").Process(
        target=_hold_lock, args=(tmp_path / "teacher", marker, 1.0)
    )
    child.start()
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with RunLock(tmp_path / "teacher", wait=True):
        assert (tmp_path / "teacher" / "released").exists()
    child.join(timeout=30)


def _train_in_child(cfg, run_dir, choices):
    torch.set_num_threads(1)
    run(cfg, run_dir, choices, wait_if_busy=True)


def test_two_processes_waiting_on_one_run_train_it_once(tmp_path):
    cfg, run_dir, choices = compose_run([*NO_SPARSITY_KEYS, "logger=none"], tmp_path)
    child = multiprocessing.get_context("fork").Process(
        target=_train_in_child, args=(cfg, run_dir, choices)
    )
    child.start()
    deadline = time.monotonic() + 60
    lock = run_dir / ".lock"
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    # as a distillation teacher is launched: wait for the child, then find the run finished
    summary = run(cfg, run_dir, choices, wait_if_busy=True)
    child.join(timeout=120)
    assert child.exitcode == 0
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == sorted(set(steps))  # one training: no step logged twice
    assert summary["steps"] == 3 * (1437 // 64)
