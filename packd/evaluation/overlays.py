"""PNG overlays a person reads: a header with the verdict (OK / DEFECT), the score and the threshold; the image, the
anomaly map blended over it and the ground-truth outline side by side; a colour bar with the threshold marked.

The colour scale is tied to the threshold: 0 is dark blue, the threshold is yellow and 1.5 x the threshold is dark
red, the same for every image, so a good image looks calm and a flagged one shows where. Inputs smaller than
`MIN_SIDE` are enlarged so the picture is readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from packd_runtime.threshold import verdict_text

# jet-like colour ramp: blue -> cyan -> green -> yellow -> red; yellow sits at 4/6 of the scale
_RAMP = np.array([[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]], np.float32)
THRESHOLD_AT = 4 / 6  # where the threshold falls on the colour scale (yellow)
MIN_SIDE = 256  # panels are enlarged to at least this many pixels a side
OK_COLOUR, DEFECT_COLOUR = (40, 160, 70), (210, 40, 40)
ROI_COLOUR = (0, 230, 230)  # regions of interest of a tiled evaluation


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0,1] (H,W) -> uint8 RGB (H,W,3)."""
    pos = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    t = (pos - lo)[..., None]
    return ((_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t) * 255).astype(np.uint8)


def _box_edges(hw: tuple[int, int], rois: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    """The outlines (2 px, inside each box) of (y, x, h, w) boxes on an (H, W) picture."""
    edge = np.zeros(hw, bool)
    for y, x, h, w in rois:
        box = np.zeros(hw, bool)
        box[y:y + h, x:x + w] = True
        edge |= box & ~ndimage.binary_erosion(box, iterations=2, border_value=0)
    return edge


def _panels(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, threshold: float,
            rois: tuple[tuple[int, int, int, int], ...] = ()) -> np.ndarray:
    """image | map blended at 50 % | image with the mask outlined in white, all at the image's size; regions of
    interest outlined in cyan on every panel."""
    heat = colorize(amap / (threshold / THRESHOLD_AT))
    blend = (0.5 * image + 0.5 * heat).astype(np.uint8)
    outlined = image.copy()
    if mask is not None and mask.any():
        edge = ndimage.binary_dilation(mask & ~ndimage.binary_erosion(mask))
        outlined[edge] = 255
        blend[edge] = 255
    panels = [image.copy(), blend, outlined]
    if rois:
        edge = _box_edges(image.shape[:2], rois)
        for panel in panels:
            panel[edge] = ROI_COLOUR
    return np.concatenate(panels, axis=1)


def overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, *, score: float,
            threshold: float, rois: tuple[tuple[int, int, int, int], ...] = ()) -> np.ndarray:
    """The overlay as uint8 RGB: header (verdict, score, threshold), the three panels, the colour bar; `rois`
    (y, x, h, w in the image's pixels) outlined."""
    if not threshold > 0:
        raise ValueError(f"an overlay needs a positive threshold, got {threshold}")
    panels = Image.fromarray(_panels(image, amap, mask, threshold, tuple(rois)))
    scale = max(1, -(-MIN_SIDE // image.shape[0]))
    panels = panels.resize((panels.width * scale, panels.height * scale), Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=max(12, panels.height // 14))
    line = font.size + 10
    canvas = Image.new("RGB", (panels.width, panels.height + 2 * line + 18), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    defect = score > threshold
    draw.rectangle((0, 0, canvas.width, line), fill=DEFECT_COLOUR if defect else OK_COLOUR)
    draw.text((8, 4), verdict_text(score, threshold),
              fill=(255, 255, 255), font=font)
    canvas.paste(panels, (0, line))
    small = ImageFont.load_default(size=max(10, font.size * 3 // 4))
    for i, caption in enumerate(("image", "anomaly map", "ground truth")):
        x0 = i * panels.width // 3 + 4
        draw.rectangle(draw.textbbox((x0, line + 4), caption, font=small), fill=(0, 0, 0))
        draw.text((x0, line + 4), caption, fill=(255, 255, 255), font=small)
    bar_top, bar_h = line + panels.height + 4, 14
    ramp = colorize(np.linspace(0, 1, canvas.width - 16)[None].repeat(bar_h, 0))
    canvas.paste(Image.fromarray(ramp), (8, bar_top))
    x = 8 + round(THRESHOLD_AT * (canvas.width - 17))
    draw.line((x, bar_top - 3, x, bar_top + bar_h + 2), fill=(0, 0, 0), width=3)
    hi = threshold / THRESHOLD_AT
    draw.text((8, bar_top + bar_h + 2), "0", fill=(0, 0, 0), font=font)
    draw.text((x, bar_top + bar_h + 2), f"threshold {threshold:.3g}", fill=(0, 0, 0), font=font, anchor="ma")
    draw.text((canvas.width - 8, bar_top + bar_h + 2), f"{hi:.3g}", fill=(0, 0, 0), font=font, anchor="ra")
    return np.asarray(canvas)


def save_overlay(path: str | Path, image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, *, score: float,
                 threshold: float, rois: tuple[tuple[int, int, int, int], ...] = ()) -> None:
    """Write `overlay(...)` as a PNG (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, amap, mask, score=score, threshold=threshold, rois=rois)).save(path)
