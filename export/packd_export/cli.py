"""`packd-export`: CHECKPOINT --out BUNDLE (export, the default command), `check BUNDLE`, `build BUNDLE` (engines
on this GPU), `triton BUNDLE --out REPO` (a Triton model repository). No torch is imported until a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from packd.console import run_app
from packd.errors import PackdError
from packd.evaluation.tiling_options import (
    DEFAULT_MAX_SHOTS,
    FRAME_SIZE_HELP,
    MAP_SCALE_HELP,
    MEMORY_HELP,
    OVERLAP_HELP,
    ROI_HELP,
    TILE_HELP,
    parse_frame_size,
    parse_roi,
    tile_options,
)
from packd.models.score_settings import BORDER_HELP, PROTOTYPE_SCORE_HELP, STAGE_WEIGHTS_HELP, scoring_overrides

console = Console()
err_console = Console(stderr=True)


class ExportGroup(TyperGroup):
    """Subcommands where `export` is the default: `packd-export CHECKPOINT ...` is `packd-export export CHECKPOINT
    ...`, and `packd-export --help` lists export, check, build and triton."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["export", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=ExportGroup, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="Export a checkpoint to a bundle (`packd-export CHECKPOINT --out BUNDLE`"
                  " runs `export`), check it, build its TensorRT engines, or write a Triton model repository.")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder written by `packd train`.")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write (replaced atomically if it exists).")],
    precision: Annotated[str, typer.Option(
        help="fp32, fp16 (FP16 trunk, FP32 distances/maps/scores) or int8 (Q/DQ, calibrated on normal "
             "images).")] = "fp32",
    max_batch: Annotated[int, typer.Option(help="Largest query batch the engines are built for.")] = 32,
    max_shots: Annotated[int, typer.Option(
        help="Few-shot kinds: most support images per changeover the engines are built for.")] = DEFAULT_MAX_SHOTS,
    frame_size: Annotated[str | None, typer.Option(help=FRAME_SIZE_HELP, show_default="the model's input size")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17-19).")] = 18,
    calibration_data: Annotated[Path | None, typer.Option(
        help="Dataset root with the training categories' train/good images (int8 calibration and the "
             "default threshold).", show_default="the data the checkpoint was trained on")] = None,
    engines: Annotated[str, typer.Option(
        help="auto: build TensorRT engines when TensorRT and a GPU are here; never; require: fail without "
             "them.")] = "auto",
    stage_weights: Annotated[str | None, typer.Option(help=STAGE_WEIGHTS_HELP,
                                                      show_default="the checkpoint's")] = None,
    border: Annotated[int | None, typer.Option(help=BORDER_HELP, show_default="the checkpoint's")] = None,
    prototype_score: Annotated[float | None, typer.Option(help=PROTOTYPE_SCORE_HELP,
                                                          show_default="the checkpoint's")] = None,
    calibration: Annotated[str, typer.Option(
        help="int8: activation range calibration: minmax or percentile (99.99).")] = "minmax",
    fp16_fallback: Annotated[str, typer.Option(
        help="int8: auto (per-layer sensitivity analysis; the most sensitive layers stay FP16 until the graphs "
             "keep the FP32 decisions), none (every trunk convolution int8), or a number of layers.")] = "auto",
    report: Annotated[Path | None, typer.Option(
        help="int8: write the per-layer report (precision, sensitivity, why FP16) to this JSON file.")] = None,
    tile: Annotated[int | None, typer.Option(help=TILE_HELP, show_default="no tiling: the whole frame resized")] = None,
    overlap: Annotated[int, typer.Option(help=OVERLAP_HELP)] = 0,
    roi: Annotated[list[str] | None, typer.Option(help=ROI_HELP, show_default="the whole frame")] = None,
    map_scale: Annotated[float | None, typer.Option(
        help=MAP_SCALE_HELP, show_default="the model's input size over --tile")] = None,
    memory: Annotated[str, typer.Option(help=MEMORY_HELP)] = "shared",
) -> None:
    """Export a checkpoint to a bundle: ONNX graphs, manifest, and TensorRT engines where possible."""
    from packd_export.bundle import export_bundle
    from packd_export.int8 import Int8Settings
    from packd_runtime.tensorrt.build import why_no_tensorrt

    if engines not in ("auto", "never", "require"):
        raise PackdError(f"--engines must be auto, never or require, got {engines!r}")
    frame = parse_frame_size(frame_size)
    tiles = tile_options(tile, overlap, tuple(parse_roi(r) for r in roi or ()), map_scale, frame, memory)
    manifest = export_bundle(checkpoint, out, precision=precision, max_batch=max_batch, max_shots=max_shots,
                             frame_size=frame, opset=opset, calibration_data=calibration_data,
                             engines=engines, scoring=scoring_overrides(stage_weights=stage_weights, border=border,
                                                                        prototype_score=prototype_score),
                             int8=Int8Settings(calibration=calibration, fallback=fp16_fallback), report=report,
                             progress=lambda text: console.print(text, markup=False), tiles=tiles,
                             warn=lambda text: err_console.print(text, markup=False, soft_wrap=True))
    console.print(f"bundle written to {out}: {', '.join(manifest.files)}")
    if manifest.int8 is not None:
        v, fp16 = manifest.int8["validation"], manifest.int8["fp16_layers"]
        console.print(f"int8: {sum(len(v) for v in fp16.values())} layers kept in FP16; on held-out normal images "
                      f"Spearman {v['spearman']:.4f}, mean map error {100 * v['map_mean_error']:.2f} % of its range"
                      + ("" if v["meets_targets"] else " (targets NOT met: see --report)"), markup=False)
    if not manifest.engines and engines != "never":
        console.print(f"no TensorRT engine built: {why_no_tensorrt()}; on the target run: packd-export build {out}",
                      markup=False)


@app.command()
def check(bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
          key: Annotated[list[Path] | None, typer.Option(
              help="Public key file (packd-export keygen); the bundle must be signed by it (repeat for several).")
          ] = None) -> None:
    """Verify manifest version, file hashes, ONNX validity and TensorRT parser compatibility; with --key, the
    signature too."""
    from packd_export.check import check_bundle
    from packd_runtime.manifest import read_manifest
    from packd_runtime.signing import unverified_signature, verify_signature

    manifest = read_manifest(bundle)
    signed = verify_signature(bundle, manifest, key) if key else None
    signer = None if key else unverified_signature(bundle, manifest)
    manifest = check_bundle(bundle)
    trust = ("" if signed is None else f"; signed by a trusted key, {len(signed)} engine(s) signed") + (
        "" if signer is None else f"; signed by key {signer}, not verified: give --key to verify")
    console.print(f"{bundle}: ok ({manifest.kind}, {manifest.precision}, "
                  f"graphs: {', '.join(manifest.graphs)}, engines: {len(manifest.engines)}{trust})", markup=False)


@app.command()
def keygen(out: Annotated[Path, typer.Option(help="Folder for the key pair (two PEM files; never overwritten).")]
           ) -> None:
    """Make an Ed25519 key pair for signing bundles: keep the private key with whoever releases bundles, give
    the public key to every machine that runs them."""
    from packd_runtime.signing import generate_keys

    private, public = generate_keys(out)
    console.print(f"private key (owner-only, keep it secret): {private}\npublic key (for check --key and "
                  f"Detector.open(trusted_keys=...)): {public}", markup=False)


@app.command()
def sign(bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
         key: Annotated[Path, typer.Option(help="Private key file (packd-export keygen).")]) -> None:
    """Sign a bundle: its manifest (every file hash, the threshold, the limits) and the engines it holds now."""
    from packd_runtime.signing import SIGNATURE, sign_bundle

    signature = sign_bundle(bundle, key)
    console.print(f"signed {bundle} with key {signature['key']} ({len(signature['engines'])} engine(s)): "
                  f"{bundle / SIGNATURE}", markup=False)


@app.command()
def build(bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
          device: Annotated[int, typer.Option(help="CUDA device to build on.", min=0)] = 0) -> None:
    """Build TensorRT engines for an existing bundle on this machine's GPU (run it on the target device)."""
    from packd_runtime.tensorrt.build import build_bundle_engines

    manifest = build_bundle_engines(bundle, device)
    console.print(f"built {', '.join(e.file for e in manifest.engines)}")


@app.command()
def triton(bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
           out: Annotated[Path, typer.Option(help="Model repository folder to write (replaced atomically if "
                                                  "packd wrote it).")],
           runtime_backend: Annotated[str, typer.Option(
               help="What the line model's Detector runs on inside Triton: auto, tensorrt or onnxruntime.")] = "auto",
           engine_gpu: Annotated[str | None, typer.Option(
               help="Serve the TensorRT engines built on this GPU (name as in the manifest) as tensorrt_plan.",
               show_default="the bundle's engines, if all are for one GPU")] = None,
           trusted_key: Annotated[list[Path] | None, typer.Option(
               help="Public key file the line model requires the bundle to be signed by (a path on the server; "
                    "repeat for several).")] = None,
           ) -> None:
    """Write a Triton model repository: the support / query graphs and the `packd` line model that keeps
    each line's prototypes in the server."""
    from packd_export.triton import write_repository

    models = write_repository(bundle, out, backend=runtime_backend, engine_gpu=engine_gpu, trusted_keys=trusted_key)
    console.print(f"model repository written to {out}: " + ", ".join(f"{m} ({p})" for m, p in models.items()),
                  markup=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `packd-export`."""
    run_app(app, argv, "packd-export")


if __name__ == "__main__":
    main()
