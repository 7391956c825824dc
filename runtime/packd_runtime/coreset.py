"""A bounded memory bank: PatchCore's approximate greedy k-centre coreset, in numpy (torch-free).

It runs at changeover, after the support graph, in the runtime (`Detector.prototypes`) and on the
training side (`packd.scoring.Scorer.prototypes`) through this one function, so evaluation and
deployment keep the same bank. Features are first projected to `dim` random directions (seeded:
the same supports give the same bank), then each step adds the bank entry farthest from those
already kept.
"""

from __future__ import annotations

import numpy as np

PROJECTION_DIM = 128


def greedy_coreset(bank: np.ndarray, n: int, dim: int = PROJECTION_DIM, seed: int = 0) -> np.ndarray:
    """At most `n` rows of `bank` (N, D) that cover it: greedy k-centre on a random projection."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if n < 1:
        raise ValueError(f"a coreset needs at least one entry, got {n}")
    if len(bank) <= n:
        return bank
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
    return bank[np.sort(chosen)]


def bound_prototypes(arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
    """A kind's prototype tensors with at most `n` rows: the greedy coreset of a single bank."""
    if len(arrays) != 1:
        raise ValueError("only a single memory bank can be bounded")
    return [greedy_coreset(arrays[0], n)]
