"""Config helpers: the resolvers that name run folders, and config errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Settings that change how a run is watched or where its data lives, not what it computes:
# left out of the run's identity, so changing them resumes the same run folder.
NOT_IDENTITY = {
    "progress_bar",
    "log_every",
    "checkpoint_every_epochs",
    "num_workers",
    "device",
    "eval_batch_size",
    "root",
    "download",
}


class ConfigError(ValueError):
    """A config that cannot run; the message names the setting and the allowed values."""


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in sorted(node.items()) if k not in NOT_IDENTITY}
    if isinstance(node, list):
        return [_plain(v) for v in node]
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
