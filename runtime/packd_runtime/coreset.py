"""A bounded memory bank: PatchCore's approximate greedy k-centre coreset, in numpy (torch-free).

It runs at changeover, after the support graph, in the runtime (`Detector.prototypes`) and on the
training side (`packd.models.scoring.Scorer.prototypes`) through this one function, so evaluation and
deployment keep the same bank. Features are first projected to `dim` random directions (seeded:
the same supports give the same bank), then each step adds the bank entry farthest from those
already kept. Kinds with one prototype tensor per stage (PACKD) keep the same rows in every stage (row i of each
stage comes from the same support image, rotation and slot), chosen on the stages' rows L2-normalised and side by
side, so no stage's scale outweighs another's.
"""

from __future__ import annotations

import numpy as np

PROJECTION_DIM = 128


def greedy_coreset(bank: np.ndarray, n: int, dim: int = PROJECTION_DIM, seed: int = 0) -> np.ndarray:
    """At most `n` rows of `bank` (N, D) that cover it: greedy k-centre on a random projection."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    return bank if len(bank) <= n else bank[coreset_rows(bank, n, dim, seed)]


def coreset_rows(bank: np.ndarray, n: int, dim: int = PROJECTION_DIM, seed: int = 0) -> np.ndarray:
    """The sorted indices of the at most `n` rows of `bank` (N, D) that `greedy_coreset` keeps."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if n < 1:
        raise ValueError(f"a coreset needs at least one entry, got {n}")
    if len(bank) <= n:
        return np.arange(len(bank))
    x = bank
    if bank.shape[1] > dim:
        x = bank @ (np.random.default_rng(seed).standard_normal((bank.shape[1], dim)).astype(np.float32)
                    / np.float32(np.sqrt(dim)))
    sq = np.einsum("ij,ij->i", x, x)
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = 0
    nearest = sq + sq[0] - 2.0 * (x @ x[0])
    for i in range(1, n):
        chosen[i] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, sq + sq[chosen[i]] - 2.0 * (x @ x[chosen[i]]))
    return np.sort(chosen)


def bound_prototypes(arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
    """A kind's prototype tensors with at most `n` rows: the greedy coreset of a single bank; of several (one per
    stage, rows aligned), the same rows of each, chosen on their L2-normalised rows side by side."""
    if not arrays or len({len(a) for a in arrays}) != 1:
        raise ValueError(f"prototype tensors must have one row count, got {[a.shape for a in arrays]}")
    if len(arrays) == 1:
        return [greedy_coreset(arrays[0], n)]
    joint = np.concatenate([a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays], axis=1)
    rows = coreset_rows(joint, n)
    return [np.ascontiguousarray(a[rows], dtype=np.float32) for a in arrays]
