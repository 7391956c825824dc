"""Output a person reads: progress lines in a log (not a terminal), stage titles never cut, overlays that say OK or
DEFECT with the score and the threshold."""

import io

import numpy as np
import pytest
from rich.console import Console

from packd.evaluation.overlays import DEFECT_COLOUR, MIN_SIDE, OK_COLOUR, THRESHOLD_AT, colorize, overlay
from packd.progress import LogProgress, progress, stage


def _log_console():
    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=False), out


def test_progress_in_a_log_prints_tenths_with_elapsed_and_what_is_left():
    console, out = _log_console()
    bar = progress(console=console)
    assert isinstance(bar, LogProgress)
    with bar:
        bar.min_interval = 0.0
        task = bar.add_task("train", total=20, epoch="1/2", loss=float("nan"))
        for step in range(20):
            bar.update(task, advance=1, epoch=f"{step // 10 + 1}/2", loss=1.0 / (step + 1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # one per tenth
    assert lines[0].startswith("train epoch 1/2 loss 0.5000: 2/20 (10 %), ")
    assert lines[-1].startswith("train epoch 2/2 loss 0.0500: 20/20 (100 %), ") and lines[-1].endswith("0:00 left")
    assert all("elapsed, about" in line for line in lines)


def test_progress_in_a_log_is_rate_limited_but_always_prints_the_end():
    console, out = _log_console()
    bar = LogProgress(console, min_interval=3600)
    task = bar.add_task("predict", total=100)
    for _ in range(100):
        bar.advance(task)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == ["10/100", "100/100"]


def test_progress_in_a_terminal_is_rich_and_disabled_is_silent():
    console = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(progress(console=console), LogProgress)
    log, out = _log_console()
    with progress(console=log, disable=True) as bar:
        bar.update(bar.add_task("x", total=2), advance=2)
    assert out.getvalue() == ""


def test_stage_titles_are_never_cut():
    title = "2/5 meta-train PACKD on grid, carpet, stripes, disc, nut, plate (tf_efficientnet_lite0, 128 px, 4 epochs)"
    console, out = _log_console()
    stage(console, title)
    assert out.getvalue() == f"== {title}\n"
    terminal = Console(file=io.StringIO(), width=80, force_terminal=True)
    stage(terminal, title)
    assert f"== {title}" in terminal.file.getvalue()  # too long for a rule on 80 columns: printed whole


@pytest.mark.parametrize(("score", "colour"), [(0.05, OK_COLOUR), (0.3, DEFECT_COLOUR)])
def test_overlay_header_says_the_verdict_and_small_images_are_enlarged(score, colour):
    image = np.full((64, 64, 3), 128, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    picture = overlay(image, amap, None, score=score, threshold=0.2)
    assert picture.shape[1] == 3 * MIN_SIDE and picture.shape[0] > MIN_SIDE
    assert tuple(picture[2, -3]) == colour  # the header band, right of its text


def test_overlay_colours_are_tied_to_the_threshold():
    yellow = colorize(np.array([[THRESHOLD_AT]]))[0, 0]
    assert tuple(yellow) == (255, 255, 0)
    image = np.zeros((64, 64, 3), np.uint8)
    amap = np.full((64, 64), 0.2, np.float32)  # the whole map at the threshold
    picture = overlay(image, amap, None, score=0.2, threshold=0.2)
    centre = picture[picture.shape[0] // 2, MIN_SIDE + MIN_SIDE // 2]  # the middle of the map panel
    assert tuple(centre) == (127, 127, 0)  # 50 % yellow over black
    with pytest.raises(ValueError, match="positive threshold"):
        overlay(image, amap, None, score=0.1, threshold=0.0)
