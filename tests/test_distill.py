"""Knowledge distillation: the loss formula and a student trained from a teacher run."""

import math

import pytest
import torch
from runs import QUICK, compose_run

from sst.build import build
from sst.config import ConfigError
from sst.distill import kd_loss
from sst.train import run


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
    assert not teacher.training


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
