"""The GPU check in one command, for the day a GPU is at hand (PyTorch with CUDA; TensorRT not needed):

    .venv/bin/python benchmarks/speed/gpu_check.py

In under 8 minutes on one GPU it records, in `benchmarks/results/gpu_check.json` beside the CPU results:

- inference: PyTorch CUDA rows of every kind (knn, rd, memkd, packd) at 128 and 256 px: eager fp32, fp16
  autocast and CUDA graphs, batch 1 and 8 (median latency, images/s);
- training: query images/s of PACKD, RD and MemKD at 128 px with and without the teacher cache, channels-last and
  mixed precision (bf16 autocast), a few hundred steps in all;
- cuda-python: the device-array paths of the TensorRT backend that need no TensorRT: a torch CUDA tensor read
  through `__cuda_array_interface__` (`packd_runtime.cuda_arrays`), cudaMalloc, device-to-device and
  device-to-host copies ordered after the producer's stream with an event, and a CUDA graph of a copy replayed.

`--device cpu --quick` runs the same path on a CPU with the CUDA-only rows left out: the test suite runs it so, so
the script cannot rot while no GPU is at hand.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from packd.console import run_app
from packd_bench.train_timing import Habits, measure_training
from packd_demo.recipe import DEMO_TRAIN

KINDS = ("knn", "rd", "memkd", "packd")
TRAIN_ROWS = {"fp32, no cache": Habits(cache=False), "fp32, cache": Habits(),
              "fp32, cache, channels-last": Habits(channels_last=True),
              "bf16 autocast, no cache": Habits(cache=False, autocast=True),
              "bf16 autocast, cache": Habits(autocast=True)}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _checkpoints(root: Path, data: Path, size: int, device: str, epochs: int) -> dict[str, Path]:
    """A briefly trained checkpoint of every kind at `size` px (latency does not depend on how well it learnt)."""
    from packd.training.train import configure, train

    out = {}
    for kind in KINDS:
        options = {"epochs": epochs, "device": device, "batch_size": 8} if kind != "knn" else {}
        run, settings = configure(kind, teacher="tf_efficientnet_lite0", image_size=size, **options)
        cats = DEMO_TRAIN if kind in ("packd", "knn") else ["grid"]
        out[kind] = train(kind, data=data, categories=cats, out=root / f"{kind}_{size}", run=run,
                          settings=settings, resume=False, progress=False)
    return out


def inference_rows(ckpts: dict[str, Path], frames: np.ndarray, size: int, device: str, iters: int
                   ) -> list[dict[str, Any]]:
    """Median latency and images/s of every kind's query, per mode and batch."""
    from packd_bench.bench import TorchRunner, time_calls

    modes = ("eager", "fp16", "cudagraphs") if device.startswith("cuda") else ("eager",)
    rows = []
    for kind, ckpt in ckpts.items():
        for mode in modes:
            runner = TorchRunner(ckpt, device, mode)
            runner.set_supports(frames[:2])
            for batch in (1, 8):
                stats = time_calls(lambda b=batch, r=runner: r(frames[:b]), warmup=3, iters=iters, images=batch)
                rows.append({"kind": kind, "mode": mode, "batch": batch, "image_size": size,
                             "median_ms": round(stats["median_ms"], 3),
                             "images_per_s": round(stats["throughput_img_s"], 1)})
    return rows


def cuda_python_checks() -> dict[str, Any]:
    """The TensorRT backend's cuda-python calls without TensorRT, on a torch CUDA tensor; each check's result."""
    import torch

    from packd_runtime.cuda_arrays import array_interface, producer_stream

    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return {"skipped": "cuda-python (cuda.bindings) is not installed"}

    def ok(result: tuple) -> Any:
        err, *rest = result
        if err != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    x = torch.arange(4096, dtype=torch.float32, device="cuda").reshape(64, 64)
    shape, dtype = array_interface(x, "x")
    producer = producer_stream(x.__cuda_array_interface__)
    nbytes = x.numel() * x.element_size()
    stream = ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    ready = ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
    device_copy = ok(cudart.cudaMalloc(nbytes))
    host = np.empty(shape, dtype)
    ok(cudart.cudaEventRecord(ready, producer or 0))
    ok(cudart.cudaStreamWaitEvent(stream, ready, 0))
    kinds = cudart.cudaMemcpyKind
    ok(cudart.cudaMemcpyAsync(device_copy, x.data_ptr(), nbytes, kinds.cudaMemcpyDeviceToDevice, stream))
    ok(cudart.cudaMemcpyAsync(host.ctypes.data, device_copy, nbytes, kinds.cudaMemcpyDeviceToHost, stream))
    ok(cudart.cudaStreamSynchronize(stream))
    copied = bool(np.array_equal(host, x.cpu().numpy()))
    ok(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
    cudart.cudaMemcpyAsync(device_copy, x.data_ptr(), nbytes, kinds.cudaMemcpyDeviceToDevice, stream)
    graph = ok(cudart.cudaStreamEndCapture(stream))
    instance = ok(cudart.cudaGraphInstantiate(graph, 0))
    x.mul_(2)
    torch.cuda.synchronize()
    ok(cudart.cudaGraphLaunch(instance, stream))
    ok(cudart.cudaMemcpyAsync(host.ctypes.data, device_copy, nbytes, kinds.cudaMemcpyDeviceToHost, stream))
    ok(cudart.cudaStreamSynchronize(stream))
    replayed = bool(np.array_equal(host, x.cpu().numpy()))
    ok(cudart.cudaFree(device_copy))
    return {"cuda_array_interface": {"shape": list(shape), "dtype": dtype.name, "producer_stream": producer},
            "device_to_device_to_host": copied, "graph_replay": replayed}


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Folder for data and checkpoints.")] = Path("runs/gpu_check"),
    results: Annotated[Path, typer.Option(help="The JSON results file.")] = Path("benchmarks/results/gpu_check.json"),
    device: Annotated[str, typer.Option(help="cuda (the check) or cpu (the same path, CUDA rows left out).")] = "cuda",
    quick: Annotated[bool, typer.Option(help="Tiny sizes and few steps: the test suite's run.")] = False,
) -> None:
    """Record PyTorch CUDA inference rows, training throughput and the cuda-python paths; see the module doc."""
    import torch

    from packd.data.preprocess import load_frames
    from packd.data.synth import Counts, synthesize
    from packd.errors import PackdError
    from packd_bench.bench import machine_info

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PackdError("no CUDA GPU here: run it where one is, or --device cpu to check the path")
    start = time.monotonic()
    sizes, train_steps, iters = ((64,), 3, 3) if quick else ((128, 256), 100, 30)
    data = out / "data"
    counts = Counts(train=12, test_good=4, test_defect=2) if quick else Counts(train=40, test_good=8, test_defect=4)
    synthesize(data, seed=0, size=max(sizes), categories=DEMO_TRAIN, counts=counts)
    frames = load_frames(sorted((data / "grid" / "train" / "good").glob("*.png"))[:8])
    report: dict[str, Any] = {"machine": machine_info(), "device": device, "inference": [], "training": []}
    for size in sizes:
        ckpts = _checkpoints(out, data, size, device, epochs=1)
        report["inference"] += inference_rows(ckpts, frames, size, device, iters)
    for kind in ("packd", "rd", "memkd"):
        for name, habits in TRAIN_ROWS.items():
            if habits.autocast and not device.startswith("cuda"):
                continue  # bf16 autocast is a GPU habit (15x slower on CPUs without bf16 units)
            cats = DEMO_TRAIN if kind == "packd" else ["grid"]
            row = measure_training(kind, data, cats, habits, steps=train_steps, image_size=min(sizes), device=device)
            report["training"].append({"row": name, **row})
    report["cuda_python"] = cuda_python_checks() if device.startswith("cuda") else {"skipped": "no GPU"}
    report["wall_s"] = round(time.monotonic() - start, 1)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2))
    print(f"wrote {results} in {report['wall_s']} s")


if __name__ == "__main__":
    run_app(app, prog_name="gpu_check.py")
