"""sst's OmegaConf resolvers, registered by an explicit call before anything composes
(``sst.config.compose`` and ``sst-train`` make it; importing a module registers nothing).

- ``${sst.run_folder:}`` (``conf/config.yaml``): the run folder's name,
  ``sst.runs.identity.run_folder_name`` of the whole config;
- ``${sst.distill_tag:<choice>}``: marks distilled runs in the W&B group.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sst.runs.identity import distill_tag, run_folder_name


def _run_folder(*, _root_: DictConfig) -> str:
    return run_folder_name(_root_)


def register_resolvers() -> None:
    """Registers the resolvers once; later calls do nothing."""
    if not OmegaConf.has_resolver("sst.run_folder"):
        OmegaConf.register_new_resolver("sst.run_folder", _run_folder)
    if not OmegaConf.has_resolver("sst.distill_tag"):
        OmegaConf.register_new_resolver("sst.distill_tag", distill_tag)
