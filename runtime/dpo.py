"""The DPO objective (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7) on a micro-batch of
preference pairs (rows 2i chosen, 2i + 1 rejected):

    loss = -log sigmoid(beta [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

with log pi(y|x) the sum of the completion tokens' log-probabilities. The implicit rewards
are beta (log pi - log ref) of each side (§5); their margin and how often the chosen one is
higher are reported. With policy == reference every difference is 0 and the loss is ln 2.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from runtime.dataset import IGNORE


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence, the sum of log p(label) over its scored tokens (labels != IGNORE)."""
    per_token = -F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                 ignore_index=IGNORE, reduction="none")
    return per_token.view(labels.shape).sum(-1)


def dpo_terms(policy: torch.Tensor, reference: torch.Tensor, beta: float):
    """(summed loss, summed reward margin, pairs whose chosen reward is higher) of the pairs
    in these per-sequence log-probabilities."""
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[0::2], rewards[1::2]
    loss = -F.logsigmoid(chosen - rejected).sum()
    margin = (chosen - rejected).detach()
    return loss, margin.sum(), (margin > 0).sum()


@contextlib.contextmanager
def adapters_off(parts):
    """The base model: every LoRA update scaled to zero (the reference of a LoRA policy, as
    TRL's ``disable_adapter``)."""
    from runtime.lora import LoRALinear

    modules = [m for part in parts for m in part.modules() if isinstance(m, LoRALinear)]
    saved = [m.scaling for m in modules]
    for m in modules:
        m.scaling = 0.0
    try:
        yield
    finally:
        for m, s in zip(modules, saved):
            m.scaling = s
