"""Distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """RD's loss: per stage 1 - cos between the WHOLE flattened teacher and student maps of each
    sample (not per pixel, which scores worse), batch mean, summed over stages."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student):
        total = total + (1 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)).mean()
    return total


def orthogonality_loss(vectors: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine of each set of vectors (..., L, C): zero when orthogonal."""
    v = F.normalize(vectors.float(), dim=-1)
    gram = v @ v.transpose(-1, -2)
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    n = gram.shape[-1]
    return ((gram - eye) ** 2).sum(dim=(-1, -2)).mean() / max(n * (n - 1), 1)


def correspondence_similarity(support: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """CDS similarities between flattened, L2-normalised correspondence matrices (Eqs. 5-6).

    support (E,k,M,C) teacher maps of each episode's supports, query (E,Q,M,C) teacher maps of its
    queries, candidates (X,M,C) projected student maps of all X queries; locations are rows.
    Returns sim (E,Q,k,X) = cos(flat R(Ts_en, Tq_eq), flat R(Ts_en, Sx)), R(a,b) = cosine of
    every location of a with every location of b (M x M).

    Exact without materialising M x M matrices when C < M: with U, V, W the row-normalised maps,
    <U V^T, U W^T>_F = <U^T U, V^T W>_F, so everything is C x C (stage 1 at 256 px: M = 4096,
    C = 256 for WRN50: 64x less memory than the correspondences themselves).
    """
    u = F.normalize(support.float(), dim=-1)
    v = F.normalize(query.float(), dim=-1)
    w = F.normalize(candidates.float(), dim=-1)
    m, c = u.shape[-2], u.shape[-1]
    if c < m:
        gram = u.transpose(-1, -2) @ u  # (E,k,C,C)
        y = torch.einsum("eqmc,encd->eqnmd", v, gram)  # V G
        num = torch.einsum("eqnmd,xmd->eqnx", y, w)
        anchor_sq = (y * v.unsqueeze(2)).sum(dim=(-1, -2))  # (E,Q,k) = <G, V^T V>
        cand_sq = torch.einsum("encd,xcd->enx", gram, w.transpose(-1, -2) @ w)  # <G, W^T W>
    else:
        anchor = torch.einsum("enmc,eqpc->eqnmp", u, v)
        cand = torch.einsum("enmc,xpc->enxmp", u, w)
        num = torch.einsum("eqnmp,enxmp->eqnx", anchor, cand)
        anchor_sq = (anchor ** 2).sum(dim=(-1, -2))
        cand_sq = (cand ** 2).sum(dim=(-1, -2))
    denom = (anchor_sq.unsqueeze(-1) * cand_sq.unsqueeze(1)).clamp_min(1e-12).sqrt()
    return num / denom


def cds_loss(support: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """InfoNCE over correspondences: positive = the query's own projected student, negatives = the
    students of queries from OTHER episodes (categories); averaged over the k supports and queries.

    Candidates are ordered like the queries flattened (episode-major). Queries of the same
    category other than the positive are neither positive nor negative.
    """
    e, q = query.shape[:2]
    if e < 2:
        raise ValueError("the contrastive loss needs queries of at least two categories in a batch")
    logits = correspondence_similarity(support, query, candidates) / tau  # (E,Q,k,X)
    episode = torch.arange(e, device=logits.device).repeat_interleave(q)  # episode of each candidate
    own = torch.arange(e * q, device=logits.device).view(e, q)
    positive = torch.zeros(e, q, e * q, dtype=torch.bool, device=logits.device)
    positive.view(e * q, e * q)[torch.arange(e * q), own.flatten()] = True
    negative = episode.view(1, 1, -1) != torch.arange(e, device=logits.device).view(e, 1, 1)
    keep = (positive | negative).unsqueeze(2)  # (E,Q,1,X)
    masked = logits.masked_fill(~keep, float("-inf"))
    pos = logits.masked_fill(~positive.unsqueeze(2), 0).sum(-1)
    return (torch.logsumexp(masked, dim=-1) - pos).mean()
