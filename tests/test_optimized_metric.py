"""The value sst-train returns to a Hydra sweeper (``optimized_metric``) and the parent
watch that stops a process-pool worker whose sweep died (fast checks; the real sweeps are
in test_optuna.py and test_sweeps.py)."""

from __future__ import annotations

import logging
import signal
import threading

import pytest
from omegaconf import OmegaConf

from sst.config import ConfigError
from sst.engine import signals
from sst.launch.run import optimized_metric, optimized_value


def test_the_metric_must_be_a_number_of_the_summary():
    assert optimized_metric(OmegaConf.create({})) == "final_test_acc"
    assert optimized_metric(OmegaConf.create({"optimized_metric": "best_test_acc"})) == (
        "best_test_acc"
    )
    stage = OmegaConf.create({"optimized_metric": "test_acc_before_prune"})
    assert optimized_metric(stage) == "test_acc_before_prune"
    with pytest.raises(ConfigError, match=r"optimized_metric='acc' .* allowed values are final"):
        optimized_metric(OmegaConf.create({"optimized_metric": "acc"}))


def test_the_value_is_the_summarys_number_or_none_with_a_warning(caplog):
    summary = {"final_test_acc": 97, "best_test_acc": None, "finished": True, "name": "x"}
    assert optimized_value(summary, "final_test_acc") == 97.0
    with caplog.at_level(logging.WARNING, logger="sst"):
        assert optimized_value(summary, "best_test_acc") is None
    assert "it has final_test_acc" in caplog.text


def test_a_worker_whose_parent_dies_is_stopped_like_sigterm(monkeypatch):
    assert not signals.ParentWatch.wanted()  # a run started from a shell is never watched
    monkeypatch.setattr(signals.ParentWatch, "wanted", staticmethod(lambda: True))
    parent = [4242]
    monkeypatch.setattr(signals.os, "getppid", lambda: parent[0])
    stop = signals.StopSignals()
    with stop.installed():
        assert stop.received is None
        parent[0] = 1  # re-parented to init: the pool's process died
        deadline = threading.Event()
        for _ in range(40):
            if stop.received is not None:
                break
            deadline.wait(0.05)
        assert stop.received == signal.SIGTERM and stop.orphaned
        assert stop.previous_handler(signal.SIGTERM) is signals.exit_orphan
