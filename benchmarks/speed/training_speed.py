"""Training throughput on this machine: query images per second of PACKD, RD and MemKD at 128 px (the demo's
offline teacher), for the speed habits one at a time, each variant in a fresh process (the allocator setting is
process-wide):

- `baseline`: the teacher run at every step, glibc malloc's defaults (what training did before the cache);
- `allocator`: + malloc keeping freed blocks (`packd.training.allocator`);
- `cache`: + the frozen teacher's maps cached once per run (`packd.training.teacher_features`): what `packd train`
  does now;
- `channels_last`: + the model in channels-last memory format (measured, not kept: see the docs);
- `bf16`: + CPU autocast to bfloat16.

Each variant times `--steps` training steps (Adam, as `packd train`; a fifth of them for bf16) after one warm-up
step, and the cache's fill separately (once per run). PACKD meta-trains on the demo's six categories, RD and MemKD
on grid. Reproduce:

    .venv/bin/python benchmarks/speed/training_speed.py --out runs/training_speed
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from packd_bench.train_timing import KIND_OPTIONS, Habits, measure_training
from packd_demo.recipe import DEMO_TRAIN

VARIANTS = {"baseline": Habits(allocator=False, cache=False), "allocator": Habits(cache=False), "cache": Habits(),
            "channels_last": Habits(channels_last=True), "bf16": Habits(autocast=True)}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data.")] = Path("runs/training_speed"),
    results: Annotated[Path, typer.Option(help="Results (.json / .md).")] = Path("benchmarks/results/training_speed"),
    steps: Annotated[int, typer.Option(help="Timed steps per variant.")] = 10,
    kinds: Annotated[str, typer.Option(help="Kinds to time.")] = ",".join(KIND_OPTIONS),
    variants: Annotated[str, typer.Option(help="Variants to time.")] = ",".join(VARIANTS),
    one: Annotated[str, typer.Option(hidden=True, help="KIND:VARIANT: time one in this process (internal).")] = "",
) -> None:
    """Time every kind and variant, each in a fresh process, and write the results."""
    data = out / "data"
    if one:
        kind, variant = one.split(":")
        steps = max(2, steps // 5) if variant == "bf16" else steps  # bf16 without CPU support for it is ~15x slower
        cats = DEMO_TRAIN if kind == "packd" else ["grid"]
        print(json.dumps({"variant": variant, **measure_training(kind, data, cats, VARIANTS[variant], steps=steps)}))
        return
    from packd.data.synth import synthesize

    load = os.getloadavg()[0]  # before this benchmark's own work
    if not (data / "plate").is_dir():
        synthesize(data, seed=0, size=128, categories=DEMO_TRAIN)
    rows = []
    for kind in kinds.split(","):
        for variant in variants.split(","):
            proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--steps", str(steps),
                                   "--one", f"{kind}:{variant}"], capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write(rows, results, load)


def write(rows: list[dict], results: Path, load: float) -> None:
    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_before": load}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    base = {r["kind"]: r["query_images_per_s"] for r in rows if r["variant"] == "baseline"}
    lines = ["<!-- --8<-- [start:table] -->", "",
             f"Machine: {machine['cores']} cores, torch {machine['torch']}, {machine['threads']} threads; "
             f"load average {machine['load_before']:.2f} before the run. 128 px, tf_efficientnet_lite0 teacher; "
             "each row a fresh process.", "",
             "| kind | variant | query images/s | vs baseline | s/step | first step s (cache fill) | epoch s (after) | "
             "CPU/wall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = f"{r['query_images_per_s'] / base[r['kind']]:.2f}x" if r["kind"] in base else ""
        lines.append(f"| {r['kind']} | {r['variant']} | {r['query_images_per_s']} | {gain} | {r['s_per_step']} | "
                     f"{r['first_step_s']} | {r['epoch_s']} | {r['cpu_per_wall']} |")
    lines += ["", "<!-- --8<-- [end:table] -->"]
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    app()
