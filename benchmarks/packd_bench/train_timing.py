"""Training throughput of one kind: query images per second of the training step `packd train` runs (the kind's
loss, backward, Adam), with the speed habits switched one at a time. Shared by
`benchmarks/speed/training_speed.py` (CPU) and `benchmarks/speed/gpu_check.py`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIND_OPTIONS = {"packd": {"lr": 0.005, "shots": 2}, "rd": {}, "memkd": {}}  # the demo's PACKD; RD and MemKD defaults


@dataclass(frozen=True)
class Habits:
    """What a row switches on: malloc keeping freed blocks, the teacher cache, channels-last, autocast (bf16). The
    defaults are what `packd train` does on a CPU (on a GPU it adds autocast)."""

    allocator: bool = True
    cache: bool = True
    channels_last: bool = False
    autocast: bool = False


def measure_training(kind: str, data: Path, categories: list[str], habits: Habits, *, steps: int,
                     image_size: int = 128, device: str = "cpu") -> dict[str, Any]:
    """Time `steps` training steps after a first one (the cache's fill, where there is one)."""
    import torch

    from packd.data.preprocess import InputSpec
    from packd.methods import method
    from packd.models.teachers import create_teacher
    from packd.training.allocator import keep_freed_memory
    from packd.training.train import configure

    if habits.allocator:
        keep_freed_memory()
    run, settings = configure(kind, teacher="tf_efficientnet_lite0", image_size=image_size, **KIND_OPTIONS[kind])
    torch.manual_seed(0)
    teacher = create_teacher(run.teacher, image_size=run.image_size)
    model, settings = method(kind).build(teacher, settings)
    model = model.to(device, memory_format=torch.channels_last if habits.channels_last else torch.preserve_format)
    spec = InputSpec(run.image_size, teacher.mean, teacher.std)
    training = method(kind).training(model, settings, run=run, data=data, categories=categories, spec=spec,
                                     cache_gb=4.0 if habits.cache else 0.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=run.lr, betas=tuple(run.betas))
    items = (item for epoch in range(10_000) for item in training.batches(epoch))
    model.train()
    kind_of_device = torch.device(device).type

    def sync() -> None:
        if kind_of_device == "cuda":
            torch.cuda.synchronize()

    def step() -> int:
        item = next(items)
        with torch.autocast(kind_of_device, dtype=torch.bfloat16, enabled=habits.autocast):
            loss = training.loss(model, item)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return int(item[0].size if isinstance(item, tuple) else item.size)  # queries (PACKD: E x Q episodes)

    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    cpu0, start = time.process_time(), time.perf_counter()
    done = sum(step() for _ in range(steps))
    sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"kind": kind, "device": device, "image_size": image_size, "first_step_s": round(first, 2),
            "steps": steps, "s_per_step": round(wall / steps, 4), "query_images_per_s": round(done / wall, 1),
            "cpu_per_wall": round(cpu / wall, 2), "steps_per_epoch": training.steps,
            "epoch_s": round(wall / steps * training.steps, 1)}
