"""Multiply-accumulates of weight layers, for the RigL paper's FLOP accounting."""

from __future__ import annotations

import torch
from torch import nn

from .layers import unwrap


@torch.no_grad()
def weight_layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """Per-sample multiply-accumulates of every Linear, Conv and attention projection,
    keyed like ``layers.weight_layers``: numel(weight) * output positions (for a conv,
    out_h * out_w; for a linear, the tokens it is applied to). Attention score products and
    elementwise layers are not counted.
    """
    model = unwrap(model)
    batch = example_input.shape[0]
    macs: dict[str, float] = {}
    hooks = []

    def record(name: str, weight: torch.Tensor, positions: float) -> None:
        macs[name] = macs.get(name, 0.0) + weight.numel() * positions

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):

            def conv_hook(mod, _inputs, output, name=name):
                record(name, mod.weight, output[0, 0].numel())

            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):

            def linear_hook(mod, _inputs, output, name=name):
                record(name, mod.weight, output.numel() / output.shape[-1] / batch)

            hooks.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.MultiheadAttention):
            # MHA uses its projection weights directly, so out_proj's own hook never fires.
            def attention_hook(mod, args, kwargs, _output, name=name):
                query = args[0] if args else kwargs["query"]
                tokens = query.numel() / query.shape[-1] / batch
                if mod.in_proj_weight is not None:
                    record(f"{name}.in_proj_weight", mod.in_proj_weight, tokens)
                else:
                    for key in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                        record(f"{name}.{key}", getattr(mod, key), tokens)
                record(f"{name}.out_proj", mod.out_proj.weight, tokens)

            hooks.append(module.register_forward_hook(attention_hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return macs
