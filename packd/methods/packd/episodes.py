"""Episodic meta-training batches for PACKD: several categories per batch, each with queries and k supports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from packd.data.datasets import AnomalyDataset, list_split
from packd.data.preprocess import InputSpec
from packd.errors import PackdError


class EpisodeSampler:
    """Batches of E categories x Q queries, each query with its own k supports (the paper's episodes), all
    from train/good; a category's supports never include that batch's queries. An epoch shows every
    training image once as a query (up to rounding). Batches hold image indices (`image(i)` gives the image), so
    the teacher's maps of an image can be cached across batches and epochs.
    Decoded, preprocessed images are cached in memory (3*S*S floats each); with `tile`, random tile crops of
    the training frames, new each epoch."""

    def __init__(self, data: str | Path, categories: list[str], spec: InputSpec, shots: int,
                 queries: int = 4, categories_per_batch: int = 4, seed: int = 0, tile: int = 0):
        if shots < 1:
            raise PackdError(f"--shots must be at least 1, got {shots}")
        self.datasets = {c: AnomalyDataset(list_split(data, c, "train"), spec, tile=tile, seed=seed)
                         for c in categories}
        self.tile = tile
        small = [c for c, d in self.datasets.items() if len(d) < shots + queries]
        if small:
            raise PackdError(f"categories {small} have fewer than shots + queries = {shots + queries} training images")
        self.categories, self.shots, self.queries = list(categories), shots, queries
        self.per_batch = min(categories_per_batch, len(categories))
        self.seed = seed
        self.offsets = dict(zip(self.categories, np.cumsum([0] + [len(self.datasets[c]) for c in self.categories])))
        self._where = [(c, i) for c in self.categories for i in range(len(self.datasets[c]))]
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        total = sum(len(d) for d in self.datasets.values())
        return max(1, total // (self.per_batch * self.queries))

    @property
    def count(self) -> int:
        """Training images over all categories: indices run 0..count-1, category after category."""
        return len(self._where)

    def image(self, index: int) -> torch.Tensor:
        """The preprocessed image (3,S,S) of a batch index."""
        key = self._where[index]
        if key not in self._cache:
            self._cache[key] = self.datasets[key[0]][key[1]][0]
        return self._cache[key]

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (query indices (E,Q), support indices (E,Q,k)) for one epoch, seeded by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.tile:  # new crops every epoch, the same within it
            self._cache.clear()
            for dataset in self.datasets.values():
                dataset.set_epoch(epoch)
        queues: dict[str, list[int]] = {c: [] for c in self.categories}
        for _ in range(len(self)):
            queries, supports = [], []
            for cat in rng.choice(self.categories, self.per_batch, replace=False):
                n = len(self.datasets[cat])
                if len(queues[cat]) < self.queries:
                    queues[cat] += rng.permutation(n).tolist()
                q = [queues[cat].pop() for _ in range(self.queries)]
                rest = np.setdiff1d(np.arange(n), q)
                drawn = [rng.choice(rest, self.shots, replace=False) for _ in q]
                queries.append(self.offsets[cat] + np.asarray(q))
                supports.append(self.offsets[cat] + np.stack(drawn))
            yield np.stack(queries), np.stack(supports)
