"""Synthetic anomaly-detection data in the MVTec AD layout, deterministic by seed.

Eighteen categories (ten textures, eight objects) with three defect types each and pixel masks,
varied enough that meta-training on some categories and testing on others means something. The
later objects vary in pose (any rotation, shifts) and lighting (a smooth illumination gradient),
as MVTec's objects do. Also turns
real texture photographs (scikit-image's `brick`, `grass`, `gravel`) into a category with painted
defects, so results are not only measured on images this module drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from packd.errors import PackdError
from packd_runtime.atomic import atomic_dir, check_replaceable, text_marker

Array = np.ndarray


@dataclass(frozen=True)
class Counts:
    """Images per split: train/good, test/good, and test images per defect type."""

    train: int = 60
    test_good: int = 20
    test_defect: int = 10

    def __post_init__(self) -> None:
        for name in ("train", "test_good", "test_defect"):
            if getattr(self, name) < 1:
                raise PackdError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def _grid(s: int) -> tuple[Array, Array]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    return y, x


def _mix(a: Array, b: Array, t: Array) -> Array:
    return a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]


def _rgb(*v: float) -> Array:
    return np.array(v, dtype=np.float32)


# ---- textures: (rng, size) -> (image HxWx3 in [0,1], region where defects may go) --------------


def _tex_grid(rng, s):
    y, x = _grid(s)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    v = 0.5 + 0.25 * np.sin(2 * np.pi * 12 * x + px) + 0.25 * np.sin(2 * np.pi * 12 * y + py)
    return _mix(_rgb(0.25, 0.3, 0.45), _rgb(0.75, 0.78, 0.85), v), None


def _tex_carpet(rng, s):
    n = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), s / 128)
    n = (n - n.mean()) / (n.std() + 1e-6)
    return _mix(_rgb(0.45, 0.2, 0.15), _rgb(0.75, 0.45, 0.3), np.clip(0.5 + 0.2 * n, 0, 1)), None


def _tex_stripes(rng, s):
    y, x = _grid(s)
    a = np.deg2rad(30 + rng.uniform(-2, 2))
    v = 0.5 + 0.5 * np.sin(2 * np.pi * 16 * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 2 * np.pi))
    return _mix(_rgb(0.15, 0.35, 0.2), _rgb(0.6, 0.8, 0.55), v), None


def _tex_dots(rng, s):
    y, x = _grid(s)
    n, ox, oy = 10, *rng.uniform(0, 1, 2)
    gy = (y * n + oy) % 1.0
    row = np.floor(y * n + oy)
    gx = (x * n + ox + 0.5 * (row % 2)) % 1.0
    d = np.hypot(gx - 0.5, gy - 0.5)
    return _mix(_rgb(0.85, 0.8, 0.6), _rgb(0.3, 0.2, 0.4), (d < 0.25).astype(np.float32)), None


def _tex_wood(rng, s):
    y, x = _grid(s)
    cx, cy = rng.uniform(-0.6, -0.3), rng.uniform(0.2, 0.8)
    warp = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), s / 16) * 8
    r = np.hypot(x - cx, y - cy)
    v = 0.5 + 0.5 * np.sin(2 * np.pi * (14 * r + warp))
    return _mix(_rgb(0.55, 0.35, 0.18), _rgb(0.8, 0.6, 0.38), v), None


def _tex_tiles(rng, s):
    y, x = _grid(s)
    n = 6
    ox, oy = rng.uniform(0, 1, 2)
    u, v = x * n + ox, y * n + oy
    shade = rng.uniform(0.85, 1.0, (n + 2, n + 2)).astype(np.float32)
    tile = shade[np.floor(v).astype(int), np.floor(u).astype(int)]
    grout = (np.minimum(u % 1, v % 1) < 0.08).astype(np.float32)
    img = _rgb(0.85, 0.85, 0.8)[None, None] * tile[..., None]
    return _mix(np.zeros(3, np.float32), _rgb(0.35, 0.33, 0.3), grout) + img * (1 - grout[..., None]), None


def _tex_weave(rng, s):
    y, x = _grid(s)
    n = 10
    u, v = x * n + rng.uniform(0, 1), y * n + rng.uniform(0, 1)
    over = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    across = 0.5 + 0.5 * np.cos(np.pi * (2 * (v % 1) - 1))
    along = 0.5 + 0.5 * np.cos(np.pi * (2 * (u % 1) - 1))
    shade = over * across + (1 - over) * along
    return _mix(_rgb(0.3, 0.25, 0.2), _rgb(0.85, 0.78, 0.62), 0.15 + 0.8 * shade), None


def _tex_marble(rng, s):
    y, x = _grid(s)
    n = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), s / 20)
    n = n / (n.std() + 1e-6)
    a = rng.uniform(0, np.pi)
    veins = np.abs(np.sin(2 * np.pi * (3 * (x * np.cos(a) + y * np.sin(a)) + 0.6 * n)))
    return _mix(_rgb(0.35, 0.36, 0.4), _rgb(0.92, 0.92, 0.9), veins ** 0.3), None


def _tex_leather(rng, s):
    n = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), s / 64)
    grain = gaussian_filter(np.abs(n) / (np.abs(n).std() + 1e-6), 0.7)
    return _mix(_rgb(0.22, 0.12, 0.07), _rgb(0.5, 0.3, 0.17), np.clip(grain * 0.6, 0, 1)), None


def _tex_perforated(rng, s):
    y, x = _grid(s)
    n = 8
    u, v = (x * n + rng.uniform(0, 1)) % 1, (y * n + rng.uniform(0, 1)) % 1
    hole = np.hypot(u - 0.5, v - 0.5) < 0.2
    brushed = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), (0.5, s / 16))
    img = _mix(_rgb(0.55, 0.57, 0.6), _rgb(0.75, 0.77, 0.8), np.clip(0.5 + 2 * brushed, 0, 1))
    img[hole] = _rgb(0.08, 0.08, 0.1)
    return img, None


# ---- objects: a shape on a plain background; region = the object's pixels --------------------


def _background(s, color):
    return np.broadcast_to(color, (s, s, 3)).astype(np.float32).copy()


def _obj_disc(rng, s):
    y, x = _grid(s)
    cx, cy = 0.5 + rng.uniform(-0.03, 0.03, 2)
    r = np.hypot(x - cx, y - cy)
    img = _background(s, _rgb(0.2, 0.2, 0.22))
    obj = r < 0.35
    img[obj] = _rgb(0.78, 0.74, 0.65)
    img[(r > 0.18) & (r < 0.22)] = _rgb(0.5, 0.47, 0.42)
    return img, obj


def _obj_nut(rng, s):
    y, x = _grid(s)
    cx, cy = 0.5 + rng.uniform(-0.03, 0.03, 2)
    a = rng.uniform(0, np.pi / 3)
    ang = np.arctan2(y - cy, x - cx) - a
    r = np.hypot(x - cx, y - cy)
    hexr = 0.34 * np.cos(np.pi / 6) / np.cos((ang % (np.pi / 3)) - np.pi / 6)
    obj = (r < hexr) & (r > 0.12)
    img = _background(s, _rgb(0.9, 0.9, 0.88))
    img[obj] = _rgb(0.45, 0.47, 0.5)
    img[obj & (r < 0.16)] = _rgb(0.35, 0.36, 0.38)
    return img, obj


def _object_frame(rng, s, max_degrees):
    """Coordinates (u, v) centred on a slightly shifted, slightly rotated object (angle drawn first)."""
    y, x = _grid(s)
    a = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    cx, cy = 0.5 + rng.uniform(-0.02, 0.02, 2)
    return (x - cx) * np.cos(a) + (y - cy) * np.sin(a), -(x - cx) * np.sin(a) + (y - cy) * np.cos(a)


def _obj_capsule(rng, s):
    u, v = _object_frame(rng, s, 5)
    d = np.hypot(np.maximum(np.abs(u) - 0.22, 0), v)
    obj = d < 0.14
    img = _background(s, _rgb(0.12, 0.12, 0.14))
    img[obj & (u < 0)] = _rgb(0.8, 0.25, 0.2)
    img[obj & (u >= 0)] = _rgb(0.92, 0.9, 0.85)
    return img, obj


def _obj_plate(rng, s):
    u, v = _object_frame(rng, s, 3)
    obj = (np.abs(u) < 0.3) & (np.abs(v) < 0.3)
    for hx in (-0.22, 0.22):
        for hy in (-0.22, 0.22):
            obj &= np.hypot(u - hx, v - hy) > 0.045
    img = _background(s, _rgb(0.3, 0.4, 0.5))
    img[obj] = _rgb(0.7, 0.72, 0.74)
    img[obj & (np.abs(u) < 0.12) & (np.abs(v) < 0.04)] = _rgb(0.55, 0.57, 0.6)
    return img, obj


def _lit(rng, img: Array) -> Array:
    """A smooth illumination gradient in a random direction (strength up to 25 %)."""
    y, x = _grid(img.shape[0])
    a = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(a) + (y - 0.5) * np.sin(a)
    return img * (1 + rng.uniform(0.05, 0.25) * ramp)[..., None]


def _obj_screw(rng, s):
    u, v = _object_frame(rng, s, 180)
    shaft = (np.abs(v) < 0.06) & (u > -0.2) & (u < 0.32)
    head = (np.abs(v) < 0.13) & (u > -0.3) & (u <= -0.2)
    obj = shaft | head
    img = _background(s, _rgb(0.1, 0.1, 0.1))
    thread = 0.5 + 0.5 * np.sin(2 * np.pi * u * 40)
    img[shaft] = _mix(_rgb(0.45, 0.45, 0.47), _rgb(0.8, 0.8, 0.82), thread)[shaft]
    img[head] = _rgb(0.7, 0.7, 0.72)
    img[head & (np.abs(v) < 0.02)] = _rgb(0.3, 0.3, 0.32)
    return _lit(rng, img), obj


def _obj_gear(rng, s):
    u, v = _object_frame(rng, s, 180)
    r, ang = np.hypot(u, v), np.arctan2(v, u)
    teeth = 0.3 + 0.04 * (np.cos(12 * ang) > 0)
    obj = (r < teeth) & (r > 0.08)
    img = _background(s, _rgb(0.85, 0.85, 0.82))
    img[obj] = _rgb(0.6, 0.5, 0.3)
    img[obj & (r < 0.2) & (r > 0.16)] = _rgb(0.45, 0.37, 0.22)
    return _lit(rng, img), obj


def _obj_bottle(rng, s):
    u, v = _object_frame(rng, s, 10)
    r = np.hypot(u, v)
    obj = r < 0.38
    img = _background(s, _rgb(0.05, 0.05, 0.06))
    img[obj] = _mix(_rgb(0.15, 0.3, 0.12), _rgb(0.35, 0.55, 0.3), np.clip(r / 0.38, 0, 1))[obj]
    img[(r > 0.22) & (r < 0.25)] = _rgb(0.5, 0.7, 0.45)
    img[r < 0.1] = _rgb(0.02, 0.03, 0.02)
    return _lit(rng, img), obj


def _obj_chip(rng, s):
    u, v = _object_frame(rng, s, 8)
    body = (np.abs(u) < 0.22) & (np.abs(v) < 0.16)
    legs = (np.abs(v) < 0.26) & (np.abs(v) >= 0.16) & (np.abs((u + 0.2) % 0.1 - 0.05) < 0.02) & (np.abs(u) < 0.2)
    img = _background(s, _rgb(0.2, 0.45, 0.25))
    img[legs] = _rgb(0.82, 0.82, 0.85)
    img[body] = _rgb(0.12, 0.12, 0.13)
    img[body & (np.hypot(u + 0.15, v + 0.09) < 0.025)] = _rgb(0.3, 0.3, 0.32)
    return _lit(rng, img), body | legs


# ---- defects: (rng, image, region, background) -> (image, mask) --------------------------------


def _pick_center(rng, s, region):
    if region is None:
        return rng.uniform(0.15, 0.85, 2) * s
    ys, xs = np.nonzero(region)
    i = rng.integers(len(ys))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def _polyline_mask(s, points, width):
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    d = np.full((s, s), np.inf, np.float32)
    for p, q in zip(points[:-1], points[1:]):
        pq = q - p
        t = np.clip(((x - p[0]) * pq[0] + (y - p[1]) * pq[1]) / max(float(pq @ pq), 1e-6), 0, 1)
        d = np.minimum(d, np.hypot(x - p[0] - t * pq[0], y - p[1] - t * pq[1]))
    return d <= width / 2


def _def_scratch(rng, img, region, bg):
    s = img.shape[0]
    p = _pick_center(rng, s, region)
    a = rng.uniform(0, 2 * np.pi)
    seg = rng.uniform(0.06, 0.12) * s
    pts = [p]
    for _ in range(3):
        a += rng.uniform(-0.3, 0.3)
        pts.append(pts[-1] + seg * np.array([np.cos(a), np.sin(a)], np.float32))
    m = _polyline_mask(s, pts, max(1.5, s / 100))
    sign = 1 if img[m].mean() < 0.5 else -1
    img[m] = np.clip(img[m] + sign * rng.uniform(0.3, 0.45), 0, 1)
    return img, m


def _def_crack(rng, img, region, bg):
    s = img.shape[0]
    p = _pick_center(rng, s, region)
    a = rng.uniform(0, 2 * np.pi)
    pts = [p]
    for _ in range(12):
        a += rng.normal(0, 0.6)
        pts.append(pts[-1] + (s / 60) * np.array([np.cos(a), np.sin(a)], np.float32))
    m = _polyline_mask(s, pts, max(1.5, s / 128))
    img[m] = img[m] * 0.25
    return img, m


def _def_spot(rng, img, region, bg):
    s = img.shape[0]
    c = _pick_center(rng, s, region)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    rx, ry = rng.uniform(0.025, 0.06, 2) * s
    a = rng.uniform(0, np.pi)
    u = (x - c[0]) * np.cos(a) + (y - c[1]) * np.sin(a)
    v = -(x - c[0]) * np.sin(a) + (y - c[1]) * np.cos(a)
    m = (u / rx) ** 2 + (v / ry) ** 2 < 1
    color = rng.uniform(0, 1, 3).astype(np.float32)
    img[m] = 0.3 * img[m] + 0.7 * color
    return img, m


def _def_stain(rng, img, region, bg):
    s = img.shape[0]
    c = _pick_center(rng, s, region)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    r = rng.uniform(0.05, 0.09) * s
    blob = np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * r * r))
    tint = rng.choice([-1, 1]) * rng.uniform(0.2, 0.3) * np.array([1.0, 0.8, 0.4], np.float32)[rng.permutation(3)]
    img = np.clip(img + blob[..., None] * tint, 0, 1)
    return img, blob > 0.35


def _def_contamination(rng, img, region, bg):
    s = img.shape[0]
    c = _pick_center(rng, s, region)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    r = rng.uniform(0.04, 0.08) * s
    wobble = 1 + 0.3 * np.sin(3 * np.arctan2(y - c[1], x - c[0]) + rng.uniform(0, 6))
    m = np.hypot(x - c[0], y - c[1]) < r * wobble
    fibre = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), 1.0)
    fibre = np.clip(0.5 + 0.8 * fibre, 0, 1)
    img[m] = _mix(_rgb(0.1, 0.08, 0.05), _rgb(0.95, 0.9, 0.7), fibre)[m]
    return img, m


def _def_missing(rng, img, region, bg):
    s = img.shape[0]
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    a = rng.uniform(0, 2 * np.pi)
    extent = np.sqrt(region.sum() / np.pi)
    c = np.array([cx + extent * np.cos(a), cy + extent * np.sin(a)])
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    m = region & (np.hypot(x - c[0], y - c[1]) < rng.uniform(0.25, 0.4) * extent)
    img[m] = bg
    return img, m


Generator = Callable[[np.random.Generator, int], tuple[Array, Array | None]]
Defect = Callable[[np.random.Generator, Array, Array | None, Array], tuple[Array, Array]]

DEFECTS: dict[str, Defect] = {
    "scratch": _def_scratch,
    "crack": _def_crack,
    "spot": _def_spot,
    "stain": _def_stain,
    "contamination": _def_contamination,
    "missing": _def_missing,
}

CATEGORIES: dict[str, tuple[Generator, tuple[str, ...]]] = {
    "grid": (_tex_grid, ("scratch", "spot", "contamination")),
    "carpet": (_tex_carpet, ("stain", "crack", "spot")),
    "stripes": (_tex_stripes, ("scratch", "stain", "crack")),
    "dots": (_tex_dots, ("spot", "scratch", "contamination")),
    "wood": (_tex_wood, ("crack", "stain", "scratch")),
    "tiles": (_tex_tiles, ("crack", "spot", "stain")),
    "disc": (_obj_disc, ("scratch", "missing", "spot")),
    "nut": (_obj_nut, ("missing", "crack", "stain")),
    "capsule": (_obj_capsule, ("spot", "scratch", "missing")),
    "plate": (_obj_plate, ("crack", "spot", "contamination")),
    "weave": (_tex_weave, ("crack", "contamination", "spot")),
    "marble": (_tex_marble, ("scratch", "stain", "spot")),
    "leather": (_tex_leather, ("scratch", "contamination", "stain")),
    "perforated": (_tex_perforated, ("crack", "spot", "stain")),
    "screw": (_obj_screw, ("scratch", "missing", "spot")),
    "gear": (_obj_gear, ("missing", "crack", "contamination")),
    "bottle": (_obj_bottle, ("contamination", "crack", "spot")),
    "chip": (_obj_chip, ("scratch", "spot", "missing")),
}

SYNTH_MARKER = ".packd-synth"  # in every category folder the generator writes: only those are ever replaced
SYNTH_WRITTEN = "written by packd data synth"
SYNTHETIC_CATEGORY = text_marker(SYNTH_MARKER, "synthetic category", SYNTH_WRITTEN)
MAX_SIZE = 2048  # image side limit: a 2048 px category already takes about 2 GB of memory while drawing
PHOTO_TEXTURES = ("brick", "grass", "gravel")
PHOTO_DEFECTS = ("scratch", "spot", "stain")


def paint_defects(frames: Array, seed: int = 0) -> Array:
    """Copies of uint8 frames (N,H,W,3) with one painted defect each (scratch, spot or stain, in turn),
    inside the top-left square of side min(H, W): synthetic anomalies on real normal images, for checks
    that need anomalous images where a dataset has only normal ones (int8's sensitivity analysis)."""
    rng = np.random.default_rng(seed)
    out = frames.copy()
    side = min(frames.shape[1:3])
    for i, frame in enumerate(out):
        square = frame[:side, :side].astype(np.float32) / 255
        painted, _ = DEFECTS[PHOTO_DEFECTS[i % len(PHOTO_DEFECTS)]](rng, square, None, square[0, 0].copy())
        frame[:side, :side] = (np.clip(painted, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def _finish(rng, img: Array) -> Array:
    """Per-image lighting and sensor noise, then uint8."""
    img = img * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02, 3).astype(np.float32)
    img = img + 0.01 * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _defective(rng, draw, defect: str, window: int = 0) -> tuple[Array, Array]:
    """Draw an image and paint one defect on it, sized to the image or, with `window`, to a random window x window
    square of it (a small defect on a large frame); retry until the defect covers enough pixels."""
    for _ in range(20):
        img, region = draw(rng, "test")
        bg = img[0, 0].copy()
        side = window or img.shape[0]
        y, x = rng.integers(0, img.shape[0] - side + 1, 2) if window else (0, 0)  # 0: the stream of old datasets
        out, mask = img.copy(), np.zeros(img.shape[:2], bool)
        sub = None if region is None else region[y:y + side, x:x + side]
        if sub is not None and not sub.any():
            continue
        painted, small = DEFECTS[defect](rng, img[y:y + side, x:x + side].copy(), sub, bg)
        out[y:y + side, x:x + side], mask[y:y + side, x:x + side] = painted, small
        if mask.sum() >= max(8, side ** 2 // 2000):
            return out, mask
    raise RuntimeError(f"could not place a visible {defect} defect")


def _check_window(window: int, size: int) -> None:
    if window and not 32 <= window <= size:
        raise PackdError(f"--defect-window must be 0 (defects sized to the image) or 32 to --size {size} px, "
                         f"got {window}")


def _write_category(out: Path, name: str, draw, defects, counts: Counts, seed: int, window: int = 0) -> None:
    """Write one category atomically: into a temporary folder next to it, then rename."""
    key = sum(map(ord, name))
    jobs = [("train", "good", i) for i in range(counts.train)]
    jobs += [("test", "good", i) for i in range(counts.test_good)]
    jobs += [("test", d, i) for d in defects for i in range(counts.test_defect)]
    with atomic_dir(out / name, SYNTHETIC_CATEGORY) as tmp:
        (tmp / SYNTH_MARKER).write_text(f"{SYNTH_WRITTEN} (seed {seed})\n")
        for split, kind, i in jobs:
            rng = np.random.default_rng([seed, key, split == "test", sum(map(ord, kind)), i])
            folder = tmp / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            if kind == "good":
                img, _ = draw(rng, split)
                Image.fromarray(_finish(rng, img)).save(folder / f"{i:03d}.png", compress_level=1)
                continue
            img, mask = _defective(rng, draw, kind, window)
            Image.fromarray(_finish(rng, img)).save(folder / f"{i:03d}.png", compress_level=1)
            mdir = tmp / "ground_truth" / kind
            mdir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mdir / f"{i:03d}_mask.png", compress_level=1)


def synthesize(out: str | Path, seed: int = 0, size: int = 256, categories: list[str] | None = None,
               counts: Counts = Counts(), defect_window: int = 0) -> list[str]:
    """Write the synthetic dataset under `out` (MVTec layout); returns the categories written. With
    `defect_window`, each defect is sized to a random window of that side (line-resolution frames)."""
    if not 32 <= size <= MAX_SIZE:
        raise PackdError(f"--size must be between 32 and {MAX_SIZE} px, got {size}")
    _check_window(defect_window, size)
    if categories is not None and not [c for c in categories if c.strip()]:
        raise PackdError("--categories names no category")
    names = list(CATEGORIES) if categories is None else [c.strip() for c in categories if c.strip()]
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise PackdError(f"unknown synthetic categories {unknown}; available: {', '.join(CATEGORIES)}")
    for name in names:  # every output checked before the first is written
        check_replaceable(Path(out) / name, SYNTHETIC_CATEGORY)
    for name in names:
        gen, defects = CATEGORIES[name]
        _write_category(Path(out), name, lambda rng, split, g=gen: g(rng, size), defects, counts, seed,
                        defect_window)
    return names


def _photo_drawer(photo: Array, size: int, rows: tuple[float, float]):
    """Random crops (a third of the photo's side) from a band of rows, resized to `size`."""
    h, w = photo.shape[:2]
    crop = min(h, w) // 3
    lo, hi = int(rows[0] * h), int(rows[1] * h) - crop

    def draw(rng):
        y, x = rng.integers(lo, hi + 1), rng.integers(0, w - crop + 1)
        patch = Image.fromarray(photo[y:y + crop, x:x + crop]).resize((size, size), Image.BILINEAR)
        return np.asarray(patch, dtype=np.float32) / 255.0, None

    return draw


def synthesize_photos(out: str | Path, seed: int = 0, size: int = 256, textures: tuple[str, ...] = PHOTO_TEXTURES,
                      counts: Counts = Counts(), defect_window: int = 0) -> list[str]:
    """Categories `photo_<texture>` from scikit-image's texture photographs with painted defects (sized to a random
    `defect_window` square when given).

    Training crops come from the top 60 % of the photo, test crops from the bottom 40 %, so test
    images are parts of the photograph never seen in training.
    """
    if not 32 <= size <= MAX_SIZE:
        raise PackdError(f"--size must be between 32 and {MAX_SIZE} px, got {size}")
    _check_window(defect_window, size)
    try:
        import skimage.data
    except ImportError:
        raise PackdError("photo categories need scikit-image: pip install 'packd[photos]'") from None
    for tex in textures:
        if tex not in PHOTO_TEXTURES:
            raise PackdError(f"unknown texture photo {tex!r}; available: {', '.join(PHOTO_TEXTURES)}")
        check_replaceable(Path(out) / f"photo_{tex}", SYNTHETIC_CATEGORY)
    names = []
    for tex in textures:
        photo = np.asarray(getattr(skimage.data, tex)(), dtype=np.uint8)
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        train, test = _photo_drawer(photo, size, (0.0, 0.6)), _photo_drawer(photo, size, (0.6, 1.0))

        def draw(rng, split, train=train, test=test):
            return (test if split == "test" else train)(rng)

        name = f"photo_{tex}"
        _write_category(Path(out), name, draw, PHOTO_DEFECTS, counts, seed, defect_window)
        names.append(name)
    return names
