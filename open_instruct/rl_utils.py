"""GRPO's numbers: group-relative advantages and the clipped policy-gradient loss.

Advantages (per prompt group of n samples):
    A_i = (r_i - mean(r)) / (std(r) + eps)        normalize="mean_std" (population std over the group)
    A_i =  r_i - mean(r)                          normalize="mean"
Samples without a reward (their judge call failed) are left out of the group statistics and of training;
a group with fewer than two rewarded samples is dropped. A group whose rewards are all equal carries no
signal: it is counted and skipped unless `keep_zero_std`.

Loss, per response token t of sample i (token-level aggregation: summed over every response token of the
batch and divided by their count, so long responses weigh by their tokens, as in DAPO):
    ratio   = exp(logp_new - logp_old)
    pg      = max(-A_i * ratio, -A_i * clip(ratio, 1 - clip_lower, 1 + clip_higher))
    pg     *= min(exp(logp_old - logp_vllm), tis_cap)      truncated importance sampling, when tis_cap > 0
    loss_t  = pg + beta * KL_t(new || ref)                   only when beta > 0
KL_t is Schulman's k1, k2 or k3 of log r = clamp(logp_ref - logp_new, -40, 40). All log-probs are of the
same distribution: the policy's logits divided by the sampling temperature (vLLM's processed logprobs).
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

# --------------------------------------------------------------------------------------------------
# Advantages


@dataclass
class Advantages:
    values: np.ndarray
    """float32 [N]; 0.0 where a sample is not trained on."""
    keep: np.ndarray
    """bool [N]; the samples that enter the loss."""
    num_groups: int
    failed_samples: int
    """samples with no reward (judge failure)."""
    dropped_groups: int
    """groups with fewer than two rewarded samples."""
    zero_std_groups: int
    """groups whose rewards are all equal (skipped unless keep_zero_std)."""


def group_advantages(
    scores: list[float | None],
    group_size: int,
    normalize: Literal["mean_std", "mean"] = "mean_std",
    keep_zero_std: bool = False,
    eps: float = 1e-6,
) -> Advantages:
    """Advantages for consecutive groups of `group_size` samples (one group per prompt)."""
    if group_size < 1 or len(scores) % group_size:
        raise ValueError(f"{len(scores)} scores do not split into groups of {group_size}")
    values = np.zeros(len(scores), dtype=np.float32)
    keep = np.zeros(len(scores), dtype=bool)
    failed = dropped = zero_std = 0
    for start in range(0, len(scores), group_size):
        idx = [i for i in range(start, start + group_size) if scores[i] is not None]
        failed += group_size - len(idx)
        if len(idx) < 2:
            dropped += 1
            continue
        r = np.array([scores[i] for i in idx], dtype=np.float64)
        centered = r - r.mean()
        std = r.std()
        if std < 1e-8:
            zero_std += 1
            if not keep_zero_std:
                continue
        adv = centered / (std + eps) if normalize == "mean_std" else centered
        values[idx] = adv
        keep[idx] = True
    return Advantages(values, keep, len(scores) // group_size, failed, dropped, zero_std)


# --------------------------------------------------------------------------------------------------
# Loss

KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 40.0


def parse_kl_estimator(value: str | int) -> str:
    """Accept 'k1'/'k2'/'k3', or Open Instruct's integer index (0 -> k1, 1 -> k2, 2 -> k3)."""
    text = str(value).strip().lower()
    if text in KL_ESTIMATORS:
        return text
    if text in ("0", "1", "2"):
        return KL_ESTIMATORS[int(text)]
    raise ValueError(f"--kl_estimator must be k1, k2, k3 (or 0, 1, 2), not {value!r}")


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Schulman's estimators of KL(pi || ref) from samples of pi, with log r = ref - new clamped to
    [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] (as Open Instruct does): k3's exp would overflow to inf where the two
    policies disagree wildly (a token pi samples that ref all but rules out), and one inf poisons the batch.
    k1 = -log r,  k2 = (log r)^2 / 2,  k3 = (r - 1) - log r."""
    log_r = torch.clamp(ref_logprobs - logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}")


@dataclass
class LossConfig:
    clip_lower: float = 0.2
    clip_higher: float = 0.2
    tis_cap: float = 0.0
    """Truncated importance sampling cap on exp(logp_old - logp_vllm); 0 turns it off."""
    beta: float = 0.0
    kl_estimator: str = "k3"


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    num_tokens: float,
    vllm_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss summed over the masked tokens of this micro-batch and divided by `num_tokens`, the response
    token count of the whole mini-batch, so micro-batch losses add up to the token-level mean.

    Shapes: logprobs, old_logprobs, vllm_logprobs, ref_logprobs, mask: [B, T]; advantages: [B] (one per
    row) or [B, T] (one per token: a packed row holds several samples).
    Returned stats are sums over masked tokens (divide by the token count to get means).
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - cfg.clip_lower, 1.0 + cfg.clip_higher)
    per_token = torch.maximum(unclipped, clipped)
    stats = {"clipped_tokens": float(((clipped > unclipped).to(mask.dtype) * mask).sum())}
    if cfg.tis_cap > 0 and vllm_logprobs is not None:
        weight = torch.clamp(torch.exp(old_logprobs - vllm_logprobs), max=cfg.tis_cap).detach()
        per_token = per_token * weight
        stats["tis_weight_sum"] = float((weight * mask).sum())
    if cfg.beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs reference log-probabilities")
        kl = kl_per_token(logprobs, ref_logprobs, cfg.kl_estimator)
        per_token = per_token + cfg.beta * kl
        stats["kl_sum"] = float((kl.detach() * mask).sum())
    elif vllm_logprobs is not None:
        # Without a reference policy, report how far the learner is from the sampler that made the data.
        stats["kl_sum"] = float(
            (kl_per_token(logprobs.detach(), vllm_logprobs, cfg.kl_estimator) * mask).sum()
        )
    stats["ratio_sum"] = float((ratio.detach() * mask).sum())
    loss = (per_token * mask).sum() / max(num_tokens, 1.0)
    return loss, stats
