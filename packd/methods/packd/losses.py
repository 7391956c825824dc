"""PACKD's losses (Eq. 7): per stage KD + lambda1 x CDS (contrastive distillation over correspondences,
averaged over the k supports) + lambda2 x orthogonality of each image's L prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from packd.methods.packd.model import PACKD
from packd.models.losses import kd_loss, orthogonality_loss
from packd.training.distributed import gather_rows


def correspondence_similarity(support: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """CDS similarities between flattened, L2-normalised correspondence matrices (Eqs. 5-6).

    support (E,Q,k,M,C) teacher maps of each query's supports, query (E,Q,M,C) teacher maps of the
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
        gram = u.transpose(-1, -2) @ u  # (E,Q,k,C,C)
        y = torch.einsum("eqmc,eqncd->eqnmd", v, gram)  # V G
        num = torch.einsum("eqnmd,xmd->eqnx", y, w)
        anchor_sq = (y * v.unsqueeze(2)).sum(dim=(-1, -2))  # (E,Q,k) = <G, V^T V>
        cand_sq = torch.einsum("eqncd,xcd->eqnx", gram, w.transpose(-1, -2) @ w)  # <G, W^T W>
    else:
        anchor = torch.einsum("eqnmc,eqpc->eqnmp", u, v)
        cand = torch.einsum("eqnmc,xpc->eqnxmp", u, w)
        num = torch.einsum("eqnmp,eqnxmp->eqnx", anchor, cand)
        anchor_sq = (anchor ** 2).sum(dim=(-1, -2))
        cand_sq = (cand ** 2).sum(dim=(-1, -2))
    denom = (anchor_sq.unsqueeze(-1) * cand_sq).clamp_min(1e-12).sqrt()
    return num / denom


def cds_loss(support: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor, tau: float = 0.05,
             first: int = 0) -> torch.Tensor:
    """InfoNCE over correspondences: positive = the query's own projected student, negatives = the
    students of queries from OTHER episodes (categories); averaged over the k supports and queries.

    Candidates are the students of every query of the global batch, episode-major, Q per episode; these E x Q
    queries are candidate rows `first` .. `first` + E*Q - 1 (under torchrun each rank scores its own episodes
    against the whole batch's candidates, so the loss is the one process's). Queries of the same category other
    than the positive are neither positive nor negative.
    """
    e, q = query.shape[:2]
    x = candidates.shape[0]
    if x // q < 2:
        raise ValueError("the contrastive loss needs queries of at least two categories in a batch")
    logits = correspondence_similarity(support, query, candidates) / tau  # (E,Q,k,X)
    device = logits.device
    episode = torch.arange(x, device=device) // q  # episode of each candidate
    own = first + torch.arange(e * q, device=device)
    positive = torch.zeros(e * q, x, dtype=torch.bool, device=device)
    positive[torch.arange(e * q, device=device), own] = True
    positive = positive.view(e, q, x)
    negative = episode.view(1, 1, -1) != (first // q + torch.arange(e, device=device)).view(e, 1, 1)
    keep = (positive | negative).unsqueeze(2)  # (E,Q,1,X)
    masked = logits.masked_fill(~keep, float("-inf"))
    pos = logits.masked_fill(~positive.unsqueeze(2), 0).sum(-1)
    return (torch.logsumexp(masked, dim=-1) - pos).mean()


def packd_loss(model: PACKD, t_q: list[torch.Tensor], t_s: list[torch.Tensor], episodes: tuple[int, int, int],
               cds_weight: float, orth_weight: float, tau: float) -> torch.Tensor:
    """Eq. 7 on one episodic batch of E episodes x Q queries, each query with its own k supports, from the
    teacher's maps: of the queries t_q (E*Q, C, h, w), episode-major, and of their supports t_s (R*E*Q*k, C, h, w),
    rotation-major. Sum over stages of KD + cds_weight * mean over supports of CDS + orth_weight * orthogonality."""
    e, q, k = episodes
    r = model.rotations
    per_image = model.extract(t_s)  # (R*E*Q*k, L, C)
    protos = [p.view(r, e * q, k, *p.shape[1:]).transpose(0, 1).reshape(e * q, -1, p.shape[-1])
              for p in per_image]
    student = model.decode(t_q, protos)
    loss = kd_loss(t_q, student)
    if orth_weight:
        loss = loss + orth_weight * sum(orthogonality_loss(p) for p in per_image)
    if cds_weight:
        for tq, ts, s, head in zip(t_q, t_s, student, model.projections):
            c = tq.shape[1]
            anchor_support = ts[: e * q * k].flatten(2).transpose(1, 2).reshape(e, q, k, -1, c)  # unrotated
            query = tq.flatten(2).transpose(1, 2).reshape(e, q, -1, c)
            # under torchrun: every rank's students, projected together (the head's BatchNorm sees the whole batch)
            students, first = gather_rows(s)
            cand = head(students).flatten(2).transpose(1, 2)
            loss = loss + cds_weight * cds_loss(anchor_support, query, cand, tau, first=first)
    return loss
