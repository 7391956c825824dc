"""Hostile input, data surface: odd image files, dataset files that point outside, names that are paths."""

import csv

import numpy as np
import pytest
from PIL import Image

from packd.data.datasets import convert_visa, list_categories, list_split, resolve_categories
from packd.data.preprocess import load_image, load_mask
from packd.data.synth import Counts, synthesize
from packd.errors import PackdError


def _visa(root, rows):
    def inside(p):  # only ever create files inside the test's own tree
        return p and not p.startswith(("..", "/"))

    for _, _, _, img, mask in rows:
        if inside(img):
            (root / img).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / img)
        if inside(mask):
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16), 1, np.uint8)).save(root / mask)
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def test_16_bit_images_keep_their_values(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = load_image(tmp_path / "g16.png")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255 and 120 < img.mean() < 135  # not all white
    mask = np.zeros((64, 64), np.uint16)
    mask[10:20, 10:20] = 3  # small 16-bit label values are defects too
    Image.fromarray(mask).save(tmp_path / "m16.png")
    assert load_mask(tmp_path / "m16.png", (64, 64)).sum() == 100


def test_float_images_and_decompression_bombs_are_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(PackdError, match="floating-point"):
        load_image(tmp_path / "f.tif")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "warn.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("big.png", "warn.png"):  # above 2x the limit PIL raises, above 1x it warns: both refused
        with pytest.raises(PackdError, match="too large to decode safely"):
            load_image(tmp_path / name)


def test_category_names_that_are_paths_never_become_paths(tmp_path):
    root = _visa(tmp_path / "visa", [("../escape", "train", "normal", "a/0.png", ""),
                                     ("../escape", "test", "anomaly", "a/1.png", "a/1m.png")])
    with pytest.raises(PackdError, match="invalid category name"):
        list_categories(root)
    with pytest.raises(PackdError, match="invalid category name"):
        convert_visa(root, tmp_path / "out")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()
    for bad in ("a/b", "..", "x\\y"):
        with pytest.raises(PackdError, match="invalid category name"):
            resolve_categories(root, [bad])
    with pytest.raises(PackdError, match="names no category"):
        resolve_categories(root, ",")


def test_dataset_files_outside_the_dataset_are_refused(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"")
    root = _visa(tmp_path / "visa", [("candle", "train", "normal", "../secret.png", ""),
                                     ("candle", "test", "anomaly", "c/1.png", "/etc/passwd")])
    with pytest.raises(PackdError, match="outside the dataset folder"):
        list_split(root, "candle", "train")
    with pytest.raises(PackdError, match="outside the dataset folder"):
        list_split(root, "candle", "test")


def test_synth_refuses_bad_counts_sizes_names_and_foreign_folders(tmp_path):
    with pytest.raises(PackdError, match="--train must be at least 1"):
        Counts(train=-1)
    with pytest.raises(PackdError, match="between 32 and 2048"):
        synthesize(tmp_path, size=100000)
    with pytest.raises(PackdError, match="names no category"):
        synthesize(tmp_path, categories=["", " "])
    real = tmp_path / "data" / "grid"  # a real dataset's category of the same name
    (real / "train" / "good").mkdir(parents=True)
    (real / "train" / "good" / "000.png").write_bytes(b"precious")
    with pytest.raises(PackdError, match="not a synthetic category written by packd"):
        synthesize(tmp_path / "data", size=32, categories=["grid"], counts=Counts(1, 1, 1))
    assert (real / "train" / "good" / "000.png").read_bytes() == b"precious"
    synthesize(tmp_path / "data", size=32, categories=["disc"], counts=Counts(1, 1, 1))
    synthesize(tmp_path / "data", size=32, categories=["disc"], counts=Counts(1, 1, 1))  # ours: replaced
    assert len(list_split(tmp_path / "data", "disc", "train")) == 1
