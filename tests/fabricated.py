"""Run folders written by hand, shaped like sst-train's, for the results tools' tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def make_run(
    root: Path,
    *,
    method: str = "srigl",
    density: float = 0.1,
    seed: int = 0,
    acc: float | None = 90.0,
    best: float | None = None,
    dataset: str = "digits",
    model: str = "mlp",
    gamma_sal: float = 0.3,
    epochs: int = 3,
    flops: float = 0.1,
    distribution: str = "erk",
    last_step: int = 20,
    settings: dict[str, Any] | None = None,
) -> Path:
    """A run folder shaped like sst-train's; ``acc=None`` leaves it unfinished.
    ``settings`` sets more config values by dotted path (``{"trainer.batch_size": 512}``)."""
    folder = root / f"{dataset}-{model}-{method}-{distribution}-d{density}-g{gamma_sal}-s{seed}"
    (folder / "checkpoints").mkdir(parents=True)
    sparsity = {"_target_": f"sst.sparsity.{method}", "density": density}
    if method != "dense":
        sparsity["distribution"] = distribution
    if method == "srigl":
        sparsity["gamma_sal"] = gamma_sal
    config = {
        "model": {"_target_": f"sst.models.{model}"},
        "dataset": {"_target_": f"sst.data.{dataset}"},
        "sparsity": sparsity,
        "distill": {"enabled": False},
        "trainer": {"epochs": epochs, "batch_size": 64, "progress_bar": False},
        "seed": seed,
        "choices": {"model": model, "dataset": dataset, "sparsity": method, "distill": "none"},
        "method": method,
        "density": density,
    }
    for dotted, value in (settings or {}).items():
        *parents, key = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": last_step, "epoch": 1.0}) + "\n")
    if acc is not None:
        summary = {
            "finished": True,
            "dataset": dataset,
            "model": model,
            "method": method,
            "density": density,
            "seed": seed,
            "final_test_acc": acc,
            "best_test_acc": best if best is not None else acc + 1.0,
            "train_flops_rel": flops,
            "inference_flops_rel": flops / 2,
            "layers": [
                {"layer": "fc1", "shape": [64, 16], "density": min(1.0, 2 * density)},
                {"layer": "fc2", "shape": [10, 64], "density": density},
            ],
        }
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder
