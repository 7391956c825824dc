import csv

import numpy as np
import pytest
import torch
from PIL import Image

from packd.data.datasets import (
    AnomalyDataset,
    convert_visa,
    list_categories,
    list_split,
    resolve_categories,
)
from packd.data.preprocess import InputSpec
from packd.data.synth import CATEGORIES, Counts, synthesize
from packd.errors import PackdError

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(h=40, w=48, value=100):
    return np.full((h, w, 3), value, np.uint8)


def _mask(h=40, w=48, value=255):
    m = np.zeros((h, w), np.uint8)
    m[10:20, 5:15] = value
    return m


def make_mvtec(root, mask_name="{stem}_mask.png"):
    cat = root / "bottle"
    for i in range(3):
        _png(cat / "train" / "good" / f"{i:03d}.png", _rgb())
    _png(cat / "test" / "good" / "000.png", _rgb())
    _png(cat / "test" / "broken" / "000.png", _rgb(value=200))
    _png(cat / "ground_truth" / "broken" / mask_name.format(stem="000"), _mask())
    return root


def test_mvtec_layout(tmp_path):
    root = make_mvtec(tmp_path)
    assert list_categories(root) == ["bottle"]
    train = list_split(root, "bottle", "train")
    assert len(train) == 3 and all(s.label == 0 and s.mask is None for s in train)
    test = list_split(root, "bottle", "test")
    assert [(s.defect, s.label) for s in test] == [("broken", 1), ("good", 0)]
    assert test[0].mask.name == "000_mask.png"
    x, m, y = AnomalyDataset(test, SPEC)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert m.shape == (1, 32, 32) and set(m.unique().tolist()) == {0.0, 1.0} and y == 1
    # 200 -> (200/255 - 0.5) / 0.5
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - 0.5) / 0.5), atol=1e-5)


def test_mpdd_mask_names(tmp_path):
    root = make_mvtec(tmp_path, mask_name="{stem}.png")
    assert list_split(root, "bottle", "test")[0].mask.name == "000.png"


def test_visa_csv_and_conversion(tmp_path):
    root = tmp_path / "visa"
    rows = [("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", "")]
    rows += [("candle", "test", "normal", "candle/Data/Images/Normal/0001.JPG", "")]
    rows += [("candle", "test", "anomaly", "candle/Data/Images/Anomaly/0002.JPG", "candle/Data/Masks/Anomaly/0002.png")]
    for _, _, _, img, mask in rows:
        _png(root / img, _rgb())
        if mask:
            _png(root / mask, _mask(value=1))  # VisA masks hold small non-zero values
    (root / "split_csv").mkdir()
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    assert list_categories(root) == ["candle"]
    test = list_split(root, "candle", "test")
    assert [s.label for s in test] == [0, 1]
    _, m, _ = AnomalyDataset(test, InputSpec(40, (0, 0, 0), (1, 1, 1)))[1]
    assert m.sum() > 0  # value 1 binarised with != 0
    out = tmp_path / "mvtec"
    assert convert_visa(root, out) == ["candle"]
    assert len(list_split(out, "candle", "train")) == 1
    converted = list_split(out, "candle", "test")
    assert sorted(s.label for s in converted) == [0, 1]
    assert np.asarray(Image.open(next(s.mask for s in converted if s.mask))).max() == 255


def test_missing_folder_and_empty_category(tmp_path):
    with pytest.raises(PackdError, match="not found"):
        list_categories(tmp_path / "nope")
    with pytest.raises(PackdError, match="no categories"):
        list_categories(tmp_path)
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(PackdError, match="no train images"):
        list_split(tmp_path, "empty", "train")
    with pytest.raises(PackdError, match="missing folder"):
        list_split(tmp_path, "empty", "test")
    with pytest.raises(PackdError, match="unknown categories"):
        resolve_categories(tmp_path, "zzz")


def test_undecodable_image_and_bad_mask(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle" / "train" / "good" / "001.png").write_bytes(b"not a png")
    with pytest.raises(PackdError, match="cannot decode image"):
        AnomalyDataset(list_split(root, "bottle", "train"), SPEC)[1]
    _png(root / "bottle" / "ground_truth" / "broken" / "000_mask.png", _mask(h=20, w=20))
    with pytest.raises(PackdError, match="mask .* is 20x20 but its image is 48x40"):
        AnomalyDataset(list_split(root, "bottle", "test"), SPEC)[0]
    (root / "bottle" / "ground_truth" / "broken" / "000_mask.png").unlink()
    with pytest.raises(PackdError, match="no mask"):
        list_split(root, "bottle", "test")


def test_empty_dataset():
    with pytest.raises(PackdError, match="empty dataset"):
        AnomalyDataset([], SPEC)


def test_synth_deterministic_and_varied(tmp_path):
    counts = Counts(train=2, test_good=1, test_defect=1)
    synthesize(tmp_path / "a", seed=3, size=48, counts=counts)
    synthesize(tmp_path / "b", seed=3, size=48, counts=counts)
    synthesize(tmp_path / "c", seed=4, size=48, counts=counts, categories=["grid"])
    cats = list_categories(tmp_path / "a")
    assert len(cats) >= 8 and cats == sorted(CATEGORIES)
    a = np.asarray(Image.open(tmp_path / "a" / "grid" / "train" / "good" / "000.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "grid" / "train" / "good" / "000.png"))
    c = np.asarray(Image.open(tmp_path / "c" / "grid" / "train" / "good" / "000.png"))
    assert a.shape == (48, 48, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    means = [np.asarray(Image.open(tmp_path / "a" / k / "train" / "good" / "000.png")).mean(axis=(0, 1)) for k in cats]
    assert min(np.abs(m1 - m2).sum() for i, m1 in enumerate(means) for m2 in means[i + 1:]) > 1.0
    for cat in cats:
        test = list_split(tmp_path / "a", cat, "test")
        defects = {s.defect for s in test if s.label}
        assert len(defects) == 3
        for s in test:
            if s.label:
                assert np.asarray(Image.open(s.mask)).any(), s.mask


def test_synth_rejects_bad_arguments(tmp_path):
    with pytest.raises(PackdError, match="unknown synthetic categories"):
        synthesize(tmp_path, categories=["nope"])
    with pytest.raises(PackdError, match="between 32 and 2048"):
        synthesize(tmp_path, size=8)
    with pytest.raises(PackdError, match="--defect-window must be 0 .* or 32 to --size 64 px, got 100"):
        synthesize(tmp_path, size=64, defect_window=100)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("category", ["grid", "disc"])  # a texture, and an object (defects stay on the object)
def test_a_defect_window_paints_small_defects_on_large_frames(tmp_path, category):
    counts = Counts(train=1, test_good=1, test_defect=4)
    synthesize(tmp_path / "w", seed=0, size=256, categories=[category], counts=counts, defect_window=48)
    synthesize(tmp_path / "f", seed=0, size=256, categories=[category], counts=counts)
    masks = [np.asarray(Image.open(s.mask)) > 0 for s in list_split(tmp_path / "w", category, "test") if s.label]
    whole = [np.asarray(Image.open(s.mask)) > 0 for s in list_split(tmp_path / "f", category, "test") if s.label]
    for m in masks:
        ys, xs = np.nonzero(m)
        assert m.shape == (256, 256) and m.sum() >= 8 and np.ptp(ys) < 48 and np.ptp(xs) < 48  # inside one window
    assert np.mean([m.mean() for m in masks]) < np.mean([m.mean() for m in whole]) / 4
    assert len({tuple(np.argwhere(m).min(0)) for m in masks}) > 1  # windows at random places


def test_new_objects_vary_in_pose_and_lighting():
    """The later objects turn freely and are lit from varying directions, as MVTec's objects are."""
    from packd.data.synth import CATEGORIES as CATS

    rng = np.random.default_rng(0)
    draws = [CATS["screw"][0](rng, 64) for _ in range(6)]
    masks = [m for _, m in draws]
    assert all(m.any() for m in masks)
    assert min(np.mean(a != b) for i, a in enumerate(masks) for b in masks[i + 1:]) > 0.02  # every pose differs
    backgrounds = [img[0, 0].mean() - img[-1, -1].mean() for img, _ in (CATS["gear"][0](rng, 64) for _ in range(6))]
    assert np.ptp(backgrounds) > 0.02  # the illumination gradient changes between images
