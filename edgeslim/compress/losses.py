"""Knowledge-distillation losses: logits, hidden states, attention maps, relations, causal-LM tokens.

Every function takes student and teacher tensors and returns a scalar loss that is zero when the
student matches the teacher. Reductions are means over the items that count (batch rows, valid tokens
given by a mask), so loss weights in a recipe mean the same thing whatever the batch or sequence size.
Temperature and alpha can follow a schedule over training (:class:`edgeslim.compress.schedule.Schedule`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
REST_FLOOR = 1e-6  # smallest "rest of the vocabulary" mass in top-k losses (float32 sums round near 1)


# ----------------------------------------------------------------------------------------- logits


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2, averaged over rows (Hinton et al.).

    The T^2 factor keeps gradient size independent of the temperature.
    """
    t_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s_log = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1)
    return kl.mean() * temperature**2


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * soft_kl + (1 - alpha) * CE(labels)``; rows labelled ``-100`` (or no labels) get only
    the soft term, which is how unlabeled text is distilled."""
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if labels is None or alpha >= 1.0 or bool((labels == IGNORE_INDEX).all()):
        return soft
    hard = F.cross_entropy(student_logits.float(), labels, ignore_index=IGNORE_INDEX)
    return alpha * soft + (1.0 - alpha) * hard


# ----------------------------------------------------------------------------- hidden / attention


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` [B, L, ...] over positions where ``mask`` [B, L] is 1."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def hidden_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: Literal["mse", "cosine"] = "mse",
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """MSE (per element) or 1 - cosine (per token) between hidden states [B, L, D].

    ``projection`` maps the student width to the teacher's when they differ; it is trained with the
    student (FitNets-style hint layer).
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    student_hidden, teacher_hidden = student_hidden.float(), teacher_hidden.float()
    if kind == "mse":
        return _masked_mean((student_hidden - teacher_hidden) ** 2, mask)
    if kind == "cosine":
        return _masked_mean(1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1), mask)
    raise ValueError(f"unknown hidden loss kind '{kind}'; use mse or cosine")


def attention_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: Literal["kl", "mse"] = "kl",
) -> torch.Tensor:
    """KL(teacher || student) per query row, or MSE, between attention maps [B, H, L, L].

    When head counts differ both maps are averaged over heads first. ``mask`` [B, L] drops padded
    query rows (padded key columns carry zero probability already).
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn = student_attn.mean(1, keepdim=True)
        teacher_attn = teacher_attn.mean(1, keepdim=True)
    student_attn, teacher_attn = student_attn.float(), teacher_attn.float()
    row_mask = None if mask is None else mask[:, None, :].expand(-1, student_attn.shape[1], -1)
    if kind == "kl":
        eps = 1e-12
        per_row = (teacher_attn * ((teacher_attn + eps).log() - (student_attn + eps).log())).sum(-1)
        return _masked_mean(per_row, row_mask)
    if kind == "mse":
        return _masked_mean(((student_attn - teacher_attn) ** 2).mean(-1), row_mask)
    raise ValueError(f"unknown attention loss kind '{kind}'; use kl or mse")


# -------------------------------------------------------------------------------------- relations


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.float(), x.float(), p=2)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance loss (Park et al. 2019): smooth-L1 between pairwise distances of the batch's
    embeddings [B, D], each normalised by its mean off-diagonal distance (so widths may differ)."""
    batch = student.shape[0]
    off_diag = ~torch.eye(batch, dtype=torch.bool, device=student.device)
    t_dist = _pairwise_distances(teacher)
    s_dist = _pairwise_distances(student)
    t_dist = t_dist / t_dist[off_diag].mean().clamp_min(1e-12)
    s_dist = s_dist / s_dist[off_diag].mean().clamp_min(1e-12)
    return F.smooth_l1_loss(s_dist[off_diag], t_dist[off_diag])


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between (i - j) and (k - j) for every triplet (i, j, k)."""
    diff = F.normalize(x.float().unsqueeze(0) - x.float().unsqueeze(1), p=2, dim=2)  # [j, i, D]
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle loss: smooth-L1 between the cosines of all triplet angles in the batch."""
    return F.smooth_l1_loss(_angles(student).flatten(), _angles(teacher).flatten())


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss (Tung & Mori 2019): MSE between the batch's cosine-similarity
    matrices, so only relations between examples are matched, not the embeddings themselves."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return F.mse_loss(s @ s.T, t @ t.T)


RELATION_LOSSES = {"distance": rkd_distance_loss, "angle": rkd_angle_loss, "similarity": similarity_loss}


def relation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    if kind not in RELATION_LOSSES:
        raise ValueError(f"unknown relation loss kind '{kind}'; use {', '.join(RELATION_LOSSES)}")
    return RELATION_LOSSES[kind](student, teacher)


# ------------------------------------------------------------------------------------- causal LM


def _token_log_probs(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    topk_values: torch.Tensor | None = None,
    topk_indices: torch.Tensor | None = None,
    topk_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities on the same support.

    Full vocabulary: both log-softmaxes. Teacher top-k: the k tokens plus one "rest of the
    vocabulary" bucket, with both sides' true (full-vocabulary) probabilities: the student's from its
    full log-softmax, the teacher's from its kept log-normaliser ``topk_lse`` (taken at
    ``temperature``). Renormalising over the k tokens instead would ignore the mass the student puts
    elsewhere and bias the loss towards the teacher's head.
    """
    student_log = F.log_softmax(student_logits.float() / temperature, -1)
    if topk_indices is not None:
        if topk_values is None or topk_lse is None:
            raise ValueError("top-k token loss needs the teacher's top-k values, indices and log-normaliser")
        teacher_k = topk_values.float() / temperature - topk_lse.float().unsqueeze(-1)
        return _with_rest(student_log.gather(-1, topk_indices.long())), _with_rest(teacher_k)
    if teacher_logits is None:
        raise ValueError("token loss needs teacher logits or teacher top-k values and indices")
    return student_log, F.log_softmax(teacher_logits.float() / temperature, -1)


def _with_rest(log_probs_k: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum p) as one more column: the probability of every token outside the k."""
    mass = log_probs_k.exp().sum(-1).clamp(max=1.0 - REST_FLOOR)
    return torch.cat([log_probs_k, torch.log1p(-mass).unsqueeze(-1)], -1)


def _kl_log(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    kind: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    topk_values: torch.Tensor | None = None,
    topk_indices: torch.Tensor | None = None,
    topk_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token divergence between next-token distributions [B, L, V], averaged over ``mask``.

    - ``forward_kl``: KL(teacher || student), mode-covering (classic word-level KD);
    - ``reverse_kl``: KL(student || teacher), mode-seeking (MiniLLM);
    - ``jsd``: generalised JSD with mixture M = beta * teacher + (1 - beta) * student,
      ``beta * KL(teacher || M) + (1 - beta) * KL(student || M)`` (GKD, Agarwal et al. 2024).

    With ``topk_values``/``topk_indices``/``topk_lse`` (the teacher's top-k logits, their token ids
    and its full log-normaliser at ``temperature``, as kept in the teacher cache) the divergence is
    taken over those k tokens plus one bucket for the rest of the vocabulary, which equals the full
    loss when the teacher's top-k holds all its mass. Multiplied by T^2 like :func:`soft_kl`.
    """
    s_log, t_log = _token_log_probs(student_logits, teacher_logits, temperature, topk_values, topk_indices, topk_lse)
    if kind == "forward_kl":
        per_token = _kl_log(t_log, s_log)
    elif kind == "reverse_kl":
        per_token = _kl_log(s_log, t_log)
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError("jsd beta must be strictly between 0 and 1")
        m_log = torch.logsumexp(torch.stack([t_log + math.log(beta), s_log + math.log(1.0 - beta)]), dim=0)
        per_token = beta * _kl_log(t_log, m_log) + (1.0 - beta) * _kl_log(s_log, m_log)
    else:
        raise ValueError(f"unknown token loss kind '{kind}'; use forward_kl, reverse_kl or jsd")
    return _masked_mean(per_token, mask) * temperature**2


def shifted_token_mask(attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mask of the positions whose next-token prediction counts: real tokens, where a label exists."""
    mask = attention_mask.bool()
    if labels is not None:
        mask = mask & (labels != IGNORE_INDEX)
    return mask
