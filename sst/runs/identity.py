"""A run's identity: which settings make two runs the same run, and its folder's name.

The same command always finds the same folder (so a relaunch resumes, or skips a finished
run) and two runs that can compute different results never share one. The identity is the
canonical JSON of the run's result-changing config groups with

- the settings named in ``NOT_IDENTITY`` left out (how a run is watched, not what it
  computes: progress bar, workers, device, ...);
- the settings named in ``AS_WRITTEN`` taken as written, not as resolved: a data root set
  through an environment variable (``${oc.env:SST_DATA,data}/cifar10``) is the same run
  wherever the variable points, a root written out names the data;
- the settings named in ``NEUTRAL`` left out while they hold their neutral value;
- every ``_target_`` of sst's own code counted by its stable name in ``TARGETS``, not by the
  module path it has today, so that moving code never moves a finished run's folder.

The number of processes (DDP world size) is not a setting: ``trainer.batch_size`` is the
global batch, so a run resumed on another number of GPUs is the same run in the same folder.

``NEUTRAL`` is how sst grows without moving finished runs: a setting added after runs exist,
whose default reproduces the old behaviour, is listed there with that default, so every run
that does not change it keeps its identity. ``tests/test_identity.py`` pins the identity of
a few configurations; a change that moves them fails there.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# The config groups (and top-level keys) that can change a run's results, in hash order.
IDENTITY_KEYS = (
    "model",
    "dataset",
    "sparsity",
    "distill",
    "optimizer",
    "lr_schedule",
    "trainer",
    "seed",
)

NOT_IDENTITY = frozenset(
    {
        "trainer.progress_bar",
        "trainer.log_every",
        "trainer.checkpoint_every_epochs",
        "trainer.num_workers",
        "trainer.device",
        "trainer.eval_batch_size",
        "trainer.mask_check",
        "trainer.sparse_compute",
        "dataset.download",
    }
)
AS_WRITTEN = frozenset({"dataset.root"})
# dotted path -> the value at which a later-added setting reproduces the behaviour that runs
# made before it existed had
NEUTRAL: dict[str, Any] = {
    "dataset.train_subset": None,
    "dataset.test_subset": None,
    "trainer.sync_batchnorm": False,
    "sparsity.asp_layers": False,
    "sparsity.sparse_init_rule": "he",
    "sparsity.grow_ties": "index",
}

# Stable name of a target -> where the code lives now. The stable name is the path the target
# had when runs were first made with it, and it is what the identity hashes. When code moves,
# change the right-hand side only (and the ``_target_`` in conf/): finished runs keep their
# folders. A target without an entry (a method added later, targets outside sst such as
# ``torch.optim.SGD``) counts by its path as written; when its code moves, add
# ``old path: new path``.
TARGETS: dict[str, str] = {
    "sst.data.cifar10": "sst.data.cifar10",
    "sst.data.cifar100": "sst.data.cifar100",
    "sst.data.digits": "sst.data.digits",
    "sst.data.imagefolder": "sst.data.imagefolder",
    "sst.data.imagenet": "sst.data.imagenet",
    "sst.data.synthetic": "sst.data.synthetic",
    "sst.lr_schedules.constant": "sst.lr_schedules.constant",
    "sst.lr_schedules.cosine": "sst.lr_schedules.cosine",
    "sst.lr_schedules.multistep": "sst.lr_schedules.multistep",
    "sst.lr_schedules.step_decay": "sst.lr_schedules.step_decay",
    "sst.models.mlp": "sst.models.mlp",
    "sst.models.mobilenet_v1": "sst.models.mobilenet_v1",
    "sst.models.mobilenet_v2": "sst.models.mobilenet_v2",
    "sst.models.mobilenet_v3_large": "sst.models.mobilenet_v3_large",
    "sst.models.mobilenet_v3_small": "sst.models.mobilenet_v3_small",
    "sst.models.resnet18_cifar": "sst.models.resnet18_cifar",
    "sst.models.resnet50": "sst.models.resnet50",
    "sst.models.resnet_cifar": "sst.models.resnet_cifar",
    "sst.models.vit_b_16": "sst.models.vit_b_16",
    "sst.models.wide_resnet": "sst.models.wide_resnet",
    "sst.sparsity.Dense": "sst.sparsity.Dense",
    "sst.sparsity.GMP": "sst.sparsity.GMP",
    "sst.sparsity.LRRewinding": "sst.sparsity.LRRewinding",
    "sst.sparsity.OneShot": "sst.sparsity.OneShot",
    "sst.sparsity.RigL": "sst.sparsity.RigL",
    "sst.sparsity.SET": "sst.sparsity.SET",
    "sst.sparsity.SRigL": "sst.sparsity.SRigL",
    "sst.sparsity.Static": "sst.sparsity.Static",
    "sst.sparsity.TargetedDropout": "sst.sparsity.TargetedDropout",
}


def stable_target(path: str) -> str:
    """The name a ``_target_`` counts by in the identity: its stable name in ``TARGETS``
    when it is where an entry says the code lives now, else the path as written."""
    for name, current in TARGETS.items():
        if current == path:
            return name
    return path


def _canonical(node: Any, written: Any, path: str) -> Any:
    if isinstance(node, dict):
        written = written if isinstance(written, dict) else {}
        out = {}
        for key in sorted(node):
            child = f"{path}.{key}" if path else str(key)
            value = node[key]
            if child in NOT_IDENTITY:
                continue
            if child in NEUTRAL and value == NEUTRAL[child]:
                continue
            if child in AS_WRITTEN:
                out[key] = written.get(key, value)
            elif key == "_target_" and isinstance(value, str):
                out[key] = stable_target(value)
            else:
                out[key] = _canonical(value, written.get(key), child)
        return out
    if isinstance(node, list):
        written = written if isinstance(written, list) else [None] * len(node)
        return [_canonical(v, w, path) for v, w in zip(node, written, strict=True)]
    return node


def identity(cfg: DictConfig | dict) -> list[Any]:
    """The canonical, hashable form of a run's result-changing settings."""
    return [_canonical_part(key, cfg[key]) for key in IDENTITY_KEYS]


def _canonical_part(key: str, node: Any) -> Any:
    """The canonical form of the identity key ``key``'s config node (as written where
    ``AS_WRITTEN`` says so: a plain dict counts as written)."""
    if isinstance(node, (DictConfig, ListConfig)):
        written = OmegaConf.to_container(node, resolve=False)
        node = OmegaConf.to_container(node, resolve=True)
    else:
        written = node
    return _canonical(node, written, key if isinstance(node, dict) else "")


def config_hash(cfg: DictConfig | dict) -> str:
    """8 hex digits of the sha256 of ``identity(cfg)``."""
    text = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


_UNSET = object()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; under ``prefix`` -> ``{"prefix.a.b": 1}``."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def identity_settings(record: dict[str, Any]) -> dict[str, Any]:
    """Dotted path -> value of a run's identity settings, the seed left out, from its
    ``config.json``: the ``identity`` it recorded (the canonical form the folder's hash
    was taken of), or, for a run recorded before that, the same rules applied to its
    resolved settings (a setting taken as written then counts as resolved)."""
    parts = record.get("identity")
    if not isinstance(parts, list) or len(parts) != len(IDENTITY_KEYS):
        parts = [_canonical_part(k, record[k]) if k in record else None for k in IDENTITY_KEYS]
    return flatten(
        {k: p for k, p in zip(IDENTITY_KEYS, parts, strict=True) if k != "seed" and p is not None}
    )


def identity_differences(stored: DictConfig | dict, cfg: DictConfig | dict) -> list[str]:
    """The identity settings in which two configs differ, as ``key: stored -> new``."""
    old = flatten(dict(zip(IDENTITY_KEYS, identity(stored), strict=True)))
    new = flatten(dict(zip(IDENTITY_KEYS, identity(cfg), strict=True)))
    return [
        f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    ]


_LONG_DECIMAL = re.compile(r"(?<![\d.])\d+\.\d{5,}(?:[eE][-+]?\d+)?(?![\d.])")


def readable_name(name: str) -> str:
    """``name`` with every number of more than 4 decimals written with 4 significant
    digits (a sweeper's draw ``d0.1736677810996509`` reads ``d0.1737``): the folder's hash
    carries the exact value."""

    def shorter(match: re.Match[str]) -> str:
        rounded = f"{float(match.group()):.4g}"
        return rounded if len(rounded) < len(match.group()) else match.group()

    return _LONG_DECIMAL.sub(shorter, name)


def run_folder_name(cfg: DictConfig | dict) -> str:
    """``<name>-<hash>``: the run's folder under ``<output_dir>/runs/``, long decimals
    of the name rounded (``readable_name``)."""
    return f"{readable_name(str(cfg['name']))}-{config_hash(cfg)}"


def distill_tag(choice: str | None) -> str:
    """The W&B group's suffix for a ``distill`` choice: none for ``none``, ``-<choice>``
    otherwise (``-kd``), so distilled and plain runs never share a group."""
    return "" if choice in (None, "none") else f"-{choice}"
