"""Mixture-of-experts terms for Qwen3-Omni-MoE students: the router load-balancing loss and the expert-load metric.

Pure functions of the routers' logits (one (tokens, experts) tensor per MoE layer, as the thinker model returns them
with `output_router_logits=True`) and the attention mask, so they can be tested alone. Qwen2.5-Omni is dense: these
apply to Qwen3-Omni only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MoEOptions:
    """Router terms of a mixture-of-experts student (Qwen3-Omni); an error on a dense model (Qwen2.5-Omni)."""

    router_aux_loss: bool = False
    """Add the load-balancing loss (`load_balancing_loss`) to the SFT loss. Off by default, as in the released
    Qwen3-Omni config (output_router_logits false): with LoRA on the attention the routers are frozen, and the
    loss only steers the adapted attention. The expert load is logged either way."""
    router_aux_loss_coef: float | None = None
    """Weight of the load-balancing loss; None takes the checkpoint's text_config.router_aux_loss_coef (0.001 in
    the released Qwen3-Omni-30B-A3B)."""


def _routing(router_logits: tuple[torch.Tensor, ...], top_k: int, mask: torch.Tensor | None):
    """Per layer: the top-k assignment counts (tokens, experts), the router probabilities (tokens, experts), and
    the weight of each token (1 for a real token, 0 for padding)."""
    weight = None if mask is None else mask.reshape(-1).float()
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        chosen = torch.zeros_like(probs).scatter_(1, probs.topk(top_k, dim=-1).indices, 1.0)
        yield chosen, probs, torch.ones(len(probs), device=probs.device) if weight is None else weight


def expert_load(router_logits: tuple[torch.Tensor, ...], top_k: int, mask: torch.Tensor | None) -> torch.Tensor:
    """The share of the routed (token, slot) assignments that each expert receives, per layer: (layers, experts),
    each row summing to 1 (1 / experts everywhere is a perfect balance). Padding tokens are left out."""
    rows = []
    for chosen, _, weight in _routing(router_logits, top_k, mask):
        counts = (chosen * weight[:, None]).sum(0)
        rows.append(counts / counts.sum())
    return torch.stack(rows)


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], top_k: int, mask: torch.Tensor | None) -> torch.Tensor:
    """The Switch Transformer's auxiliary load-balancing loss (Fedus et al. 2021, eqs. 4-6), with top-k routing, as
    transformers computes it for Qwen3-Omni-MoE (`load_balancing_loss_func`: statistics pooled over all layers):

        L = E * sum_e f_e * P_e,
        f_e = (1/N) sum over layers l and real tokens x of [e in top_k(x, l)]   (sums to top_k over e),
        P_e = (1/N) sum over layers l and real tokens x of softmax(router_logits(x, l))_e,

    with E experts and N = layers x real tokens. L = top_k when the routing is perfectly balanced.
    """
    assignments = probability = total = 0.0
    for chosen, probs, weight in _routing(router_logits, top_k, mask):
        assignments = assignments + (chosen * weight[:, None]).sum(0)
        probability = probability + (probs * weight[:, None]).sum(0)
        total = total + weight.sum()
    experts = router_logits[0].shape[-1]
    return experts * ((assignments / total) * (probability / total)).sum()
