"""The frozen teacher's maps of the training images, by image index and rotation: computed on demand, or once per
run into a cache in RAM.

Every kind's teacher is frozen and sees training images only through this: RD and MemKD encode each image once per
epoch, PACKD's meta-training encodes every support again for every query it is drawn for, in R rotations. The
cache encodes each (image, rotation) once, in the dtype the teacher computes in (fp32 on the CPU; fp16 / bf16 under
mixed precision on a GPU), held in host memory up to a size limit. A cache that would not fit is not built (one
line says so and training goes on computing the maps) so a large dataset never fails for its cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from packd.models.layers import rotate_supports
from packd.models.teachers import Teacher
from packd.training import distributed

FILL_BATCH = 32


def available_bytes() -> int | None:
    """Memory the system can give without swapping (MemAvailable), or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class TeacherFeatures:
    """`maps(index, rotations)`: per stage the teacher maps of images `index` turned by 0, 90, ... degrees,
    rotation-major (as `rotate_supports` orders them), on the teacher's device. `image(i)` gives the i-th
    preprocessed image (3,S,S); `cache_gb` > 0 builds the cache at the first call (the device is known then)."""

    teacher: Teacher
    image: Callable[[int], torch.Tensor]
    count: int
    rotations: int = 1
    cache_gb: float = 0.0
    _store: list[torch.Tensor] | None = None
    _decided: bool = False

    def _device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    @torch.no_grad()
    def _encode(self, index: np.ndarray, rotations: int) -> list[torch.Tensor]:
        x = torch.stack([self.image(int(i)) for i in index]).to(self._device(), non_blocking=True)
        return self.teacher(rotate_supports(x, rotations) if rotations > 1 else x)

    def cache_bytes(self) -> tuple[int, torch.dtype]:
        """What the cache would take (bytes) and its dtype, from the maps of one image."""
        probe = self._encode(np.zeros(1, dtype=np.int64), 1)
        per_image = sum(m[0].numel() for m in probe) * probe[0].element_size()
        return per_image * self.count * self.rotations, probe[0].dtype

    def _decide(self) -> None:
        """Build the cache if it is asked for and fits; else say why not, once."""
        self._decided = True
        if self.cache_gb <= 0:
            return
        needed, dtype = self.cache_bytes()
        free = available_bytes()
        limit = self.cache_gb * 1e9
        what = (f"teacher cache: {self.count} images x {self.rotations} rotation(s) take {needed / 1e9:.2f} GB "
                f"({str(dtype).removeprefix('torch.')})")
        if needed > limit or (free is not None and needed > 0.8 * free):
            why = (f"above --teacher-cache-gb {self.cache_gb:g}" if needed > limit
                   else f"above 80 % of the {free / 1e9:.1f} GB of free memory")
            self._say(f"{what}, {why}: training without it (slower; raise --teacher-cache-gb or free memory to use "
                      "it)")
            return
        self._say(f"{what}: encoding them once")
        self._fill()

    @staticmethod
    def _say(line: str) -> None:
        if distributed.is_main():
            Console().print(line, markup=False, highlight=False, soft_wrap=True)

    @torch.no_grad()
    def _fill(self) -> None:
        store: list[torch.Tensor] | None = None
        pin = self._device().type == "cuda"
        for start in range(0, self.count, FILL_BATCH):
            index = np.arange(start, min(start + FILL_BATCH, self.count))
            maps = self._encode(index, self.rotations)  # rotation-major: (R*n, C, h, w)
            if store is None:
                store = [torch.empty((self.count, self.rotations, *m.shape[1:]), dtype=m.dtype, pin_memory=pin)
                         for m in maps]
            for s, m in zip(store, maps):
                s[start:start + len(index)] = m.view(self.rotations, len(index), *m.shape[1:]).transpose(0, 1).cpu()
        self._store = store

    @property
    def cached(self) -> bool:
        return self._store is not None

    def maps(self, index: np.ndarray, rotations: int = 1) -> list[torch.Tensor]:
        """Teacher maps (R*n, C, h, w) of images `index` (n,) in `rotations` rotations, rotation-major."""
        if rotations > self.rotations:
            raise ValueError(f"{rotations} rotations asked of features made for {self.rotations}")
        if not self._decided:
            self._decide()
        if self._store is None:
            return self._encode(index, rotations)
        rows = torch.as_tensor(np.asarray(index, dtype=np.int64))
        device = self._device()
        return [s[rows, :rotations].transpose(0, 1).flatten(0, 1).to(device, non_blocking=True) for s in self._store]

