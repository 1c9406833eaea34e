"""A throw-away policy, as a user would write one: keep the largest |w| at step 0 and never
change them. With its YAML file beside it (conf/sparsity/top_magnitude.yaml) it is a new
``sparsity=top_magnitude`` option, composed from outside sst through Hydra's search path."""

from __future__ import annotations

import torch

from sst.sparsity.method import SparsityMethod, magnitude_masks


class TopMagnitude(SparsityMethod):
    """One-shot magnitude masks at initialisation, fixed for the whole run."""

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return magnitude_masks(self.weights, self.layer_density, self.structure)
