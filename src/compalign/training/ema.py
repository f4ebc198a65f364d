"""Exponential moving average of a model's parameters (the weights a finished run exports)."""

from __future__ import annotations

import torch


class EMA:
    """fp32 shadow copies of named parameters, updated with the usual warm-up
    ``decay_k = min(decay, (1 + k) / (10 + k))`` at step k."""

    def __init__(self, named_params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.Tensor], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        keys = list(named_params)
        # one fused lerp over all tensors (few kernel launches on a GPU): s += (1 - d) * (p - s)
        torch._foreach_lerp_(
            [self.shadow[k] for k in keys], [named_params[k].detach().float() for k in keys], 1 - d
        )

    @torch.no_grad()
    def copy_to(self, named_params: dict[str, torch.Tensor]) -> None:
        """Write the averages into `named_params` (in their dtype)."""
        for k, p in named_params.items():
            p.copy_(self.shadow[k].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; each average goes to the device of the one it replaces."""
        self.decay = state["decay"]
        self.load_shadow(state["shadow"])

    def load_shadow(self, shadow: dict[str, torch.Tensor]) -> None:
        """Restore the averages alone (each to the device of the one it replaces)."""
        self.shadow = {k: v.to(self.shadow[k].device, copy=True) for k, v in shadow.items()}
