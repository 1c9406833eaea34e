"""Config helpers: the resolvers that name run folders, and config errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Settings that change how a run is watched, not what it computes: left out of the run's
# identity, so changing them resumes the same run folder.
NOT_IDENTITY = {
    "progress_bar",
    "log_every",
    "checkpoint_every_epochs",
    "num_workers",
    "device",
    "eval_batch_size",
    "download",
}
# Settings that enter the identity as written, not as resolved. A data root set through an
# environment variable (``${oc.env:SST_DATA,data}/cifar10``) is the same run wherever the
# variable points (node-local scratch on a cluster); a root written out
# (``dataset=imagefolder dataset.root=/data/flowers``) names the data and tells runs apart.
AS_WRITTEN = {"root"}


class ConfigError(ValueError):
    """A config that cannot run; the message names the setting and the allowed values."""


def _plain(node: Any, written: Any = None) -> Any:
    """``node`` as plain data for hashing; ``written`` is the same node unresolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        written = OmegaConf.to_container(node, resolve=False)
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        written = written if isinstance(written, dict) else {}
        return {
            k: written.get(k, v) if k in AS_WRITTEN else _plain(v, written.get(k))
            for k, v in sorted(node.items())
            if k not in NOT_IDENTITY
        }
    if isinstance(node, list):
        written = written if isinstance(written, list) else [None] * len(node)
        return [_plain(v, w) for v, w in zip(node, written, strict=True)]
    return node


def config_hash(*nodes: Any) -> str:
    """8 hex digits identifying a run's settings: the same command gives the same folder, so
    relaunching it resumes (or skips a finished run), and different settings never share one."""
    text = json.dumps([_plain(n) for n in nodes], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sst.hash"):
        OmegaConf.register_new_resolver("sst.hash", config_hash)


register_resolvers()
