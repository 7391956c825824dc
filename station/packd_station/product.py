"""A line's product across restarts: its prototypes (few-shot bundles), threshold and calibration summary, in the
station's data folder beside its pool of normal images. Every write is atomic (the runtime's own writer)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from packd_runtime.atomic import atomic_dir, atomic_file, text_marker, write_json
from packd_runtime.detector import Prototypes
from packd_runtime.errors import PackdError
from packd_runtime.files import read_json
from packd_station.config import NAME
from packd_station.drift import Calibration
from packd_station.images import encode, read_frames

log = logging.getLogger("packd_station")
POOL_LIMIT = 500  # normal images kept per product; the oldest go first
SUPPORTS_WRITTEN = "support images of the last changeover, written by packd-station\n"
SUPPORTS = text_marker(".packd-supports", "support images", SUPPORTS_WRITTEN)  # only such a folder is replaced


@dataclass(frozen=True)
class Product:
    """What a line judges with. `threshold` None: not calibrated yet (few-shot products after a changeover)."""

    name: str
    bundle: str  # the fingerprint of the bundle it was made for
    threshold: float | None = None
    calibration: Calibration | None = None
    changed: float = 0.0  # when (epoch seconds)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PackdError(f"product name {name!r}: 1-64 letters, digits, '-' or '_'")
    return name


class ProductStore:
    """DATA/lines/LINE/: product.json, prototypes.npz, pool/PRODUCT/*.png."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, product: Product, prototypes: Prototypes | None) -> None:
        """Prototypes first, then the product that names them: a crash between the two keeps the old product's
        file pointing at prototypes whose fingerprint and product name are checked on load."""
        if prototypes is not None:
            prototypes.save(self.folder / "prototypes.npz")
        d = asdict(product)
        d["calibration"] = None if product.calibration is None else asdict(product.calibration)
        d["shots"] = prototypes.shots if prototypes is not None else None
        write_json(self.folder / "product.json", d)

    def load(self, fingerprint: str, few_shot: bool) -> tuple[Product, Prototypes | None] | None:
        """The saved product when it belongs to this bundle; None (logged) when there is none or it does not."""
        if not (self.folder / "product.json").exists():
            return None
        d = read_json(self.folder / "product.json", "product file")
        try:
            cal = d["calibration"]
            product = Product(check_name(d["name"]), str(d["bundle"]), None if d["threshold"] is None else
                              float(d["threshold"]), None if cal is None else Calibration(
                                  float(cal["mean"]), float(cal["std"]), int(cal["n"])), float(d["changed"]))
        except (KeyError, TypeError, ValueError) as e:
            raise PackdError(f"{self.folder / 'product.json'} is damaged ({e}): change the product over again") \
                from None
        if product.bundle != fingerprint:
            log.warning("line state in %s was made with another bundle: a changeover is needed", self.folder)
            return None
        prototypes = Prototypes.load(self.folder / "prototypes.npz") if few_shot else None
        if prototypes is not None and (prototypes.threshold != product.threshold or prototypes.shots != d["shots"]):
            log.warning("prototypes in %s do not match its product file (a crash mid-changeover?): a changeover is "
                        "needed", self.folder)
            return None
        return product, prototypes

    def keep_supports(self, frames: list[np.ndarray]) -> None:
        """The last changeover's images (a line served by Triton changes over again from them after a restart)."""
        folder = self.folder / "supports"
        with atomic_dir(folder, SUPPORTS) as tmp:
            (tmp / SUPPORTS.name).write_text(SUPPORTS_WRITTEN)
            for i, frame in enumerate(frames):
                (tmp / f"{i:03d}.png").write_bytes(encode(frame))

    def supports(self, hw: tuple[int, int]) -> list[np.ndarray]:
        files = sorted((self.folder / "supports").glob("*.png"))
        if not files:
            raise PackdError(f"{self.folder} keeps no support images: change the product over again")
        return read_frames(files, hw)

    def pool(self, product: str) -> Path:
        return self.folder / "pool" / check_name(product)

    def add_to_pool(self, product: str, frames: list[np.ndarray], tag: str) -> list[str]:
        """Keep normal frames (lossless PNG) in the product's pool; the pool's names, newest last."""
        folder = self.pool(product)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for i, frame in enumerate(frames):
            with atomic_file(folder / f"{stamp}-{time.time_ns() % 10**9:09d}-{tag}-{i}.png") as f:
                f.write(encode(frame))
        names = sorted(p.name for p in folder.glob("*.png"))
        for old in names[:-POOL_LIMIT]:
            (folder / old).unlink(missing_ok=True)
        return names[-POOL_LIMIT:]

    def pool_frames(self, product: str, hw: tuple[int, int]) -> list[np.ndarray]:
        return read_frames(sorted(self.pool(product).glob("*.png")), hw)
