"""The composed config: where the configs are, the check of every key and value against one
schema per group, the resolvers, and the one reader of Hydra's runtime state.

- ``directory``: ``CONFIG_DIR``;
- ``keys``: ``ConfigError``, unknown keys with their close matches, the command-line check;
- ``schema``: the dataclass schemas of the groups without ``_target_`` and the type check;
- ``resolvers``: ``register_resolvers()``;
- ``runtime``: Hydra's runtime state and ``compose``.
- ``callbacks``: Hydra callbacks (``SweepRecord`` keeps each sweep's ``multirun.yaml``).
"""

from . import runtime
from .directory import CONFIG_DIR
from .keys import ConfigError
from .resolvers import register_resolvers

__all__ = ["CONFIG_DIR", "ConfigError", "register_resolvers", "runtime"]
