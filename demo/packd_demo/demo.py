"""`packd-demo`: the main job on built-in defaults, end to end: synthetic data -> meta-train PACKD and write a
training-free nearest-neighbour (kNN) checkpoint (offline teacher) -> export both bundles -> torch-free runtime: the
same changeover (same supports) on an unseen category for both, detection, overlays from the better one ->
benchmark summary. The options only: the work (`packd_demo.job`) is imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from packd.console import run_app
from packd.errors import PackdError
from packd_demo.recipe import DEMO_TRAIN

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, checkpoints, bundles, overlays and reports.")
                   ] = Path("runs/demo"),
    category: Annotated[str, typer.Option(
        help="Held-out synthetic category to deploy on (never seen in meta-training).")] = "tiles",
    epochs: Annotated[int, typer.Option(help="PACKD meta-training epochs.", min=1)] = 4,
    shots: Annotated[int, typer.Option(help="Support images at the product changeover.", min=1, max=8)] = 4,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels (a multiple of 32).", min=64)] = 128,
) -> None:
    """The main job on built-in defaults: synthetic data -> meta-train PACKD and a training-free kNN checkpoint
    (offline teacher) -> export both bundles -> torch-free runtime: the same changeover on an unseen category
    for both, detection, overlays from the better one -> benchmark summary."""
    if category in DEMO_TRAIN:
        raise PackdError(f"--category must be held out from meta-training ({', '.join(DEMO_TRAIN)})")
    from packd_demo.job import run_demo

    run_demo(out=out, category=category, epochs=epochs, shots=shots, image_size=image_size)


def main() -> None:
    """Console entry point of `packd-demo`."""
    run_app(app, prog_name="packd-demo")


if __name__ == "__main__":
    main()
