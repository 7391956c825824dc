import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from packd.errors import PackdError
from packd.evaluation.metrics import f1_max, image_auroc, pixel_metrics


def exact_aupro(maps, masks, limit=0.3):
    """Brute force: every distinct score is a threshold; PRO averaged over 8-connected regions."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg = maps[~masks]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append((neg >= t).mean())
        pro.append(np.mean([(maps[i][r] >= t).mean() for i, r in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    j = (fpr <= limit).sum()
    x, y = fpr[:j], pro[:j]
    if j < len(fpr):
        t = (limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x, y = np.append(x, limit), np.append(y, pro[j - 1] + t * (pro[j] - pro[j - 1]))
    return np.trapezoid(y, x) / limit


@pytest.fixture
def maps_masks():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 24, 24), bool)
    masks[0, 2:6, 2:9] = True
    masks[1, 10:20, 10:12] = True
    masks[1, 0:3, 0:3] = True  # two regions in one image
    masks[3, 5:15, 5:15] = True
    maps = rng.normal(size=masks.shape) + masks * rng.uniform(0.5, 2, size=masks.shape)
    return maps, masks


def test_image_metrics_against_sklearn_and_hand_cases():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc([0, 1], [0.0, 1.0]) == 1.0
    assert image_auroc([0, 1], [1.0, 0.0]) == 0.0
    # best threshold 0.35 keeps 3 positives and 1 negative: P=3/4, R=1 -> F1 = 6/7
    assert f1_max(labels, scores) == pytest.approx(6 / 7)
    with pytest.raises(PackdError, match="both normal and anomalous"):
        image_auroc([1, 1], [0.2, 0.3])


def test_pixel_auroc_matches_sklearn(maps_masks):
    maps, masks = maps_masks
    m = pixel_metrics(maps, masks)
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)


def test_aupro_matches_brute_force(maps_masks):
    maps, masks = maps_masks
    assert pixel_metrics(maps, masks)["aupro"] == pytest.approx(exact_aupro(maps, masks), abs=1e-4)


def test_perfect_and_inverted_maps():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    perfect = masks.astype(np.float32) + 0.01 * np.arange(16)[None, None, :]
    m = pixel_metrics(perfect, masks)
    assert m == {"pixel_auroc": pytest.approx(1.0), "aupro": pytest.approx(1.0), "pixel_f1_max": pytest.approx(1.0)}
    inverted = pixel_metrics(-perfect, masks)
    assert inverted["pixel_auroc"] < 0.01 and inverted["aupro"] < 0.01


def test_aupro_weights_regions_equally():
    # a big region found, a small one missed: PRO is 0.5 at low FPR, whatever the pixel counts
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 0:20, 0:20] = True
    masks[0, 30:32, 30:32] = True
    maps = np.zeros((1, 40, 40), np.float32)
    maps[0, 0:20, 0:20] = 1.0
    aupro = pixel_metrics(maps, masks)["aupro"]
    assert aupro == pytest.approx(exact_aupro(maps, masks), abs=1e-3)
    assert 0.5 <= aupro < 0.7


def test_many_large_maps_are_streamed(tmp_path):
    """1000 maps of 256 px from a memory-mapped file: extra memory stays far below the data size."""
    import tracemalloc

    maps = np.lib.format.open_memmap(tmp_path / "maps.npy", mode="w+", dtype=np.float32, shape=(1000, 256, 256))
    maps[:] = np.random.default_rng(1).random((256, 256), dtype=np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[::2, 100:140, 60:90] = True
    tracemalloc.start()
    m = pixel_metrics(maps, masks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0.4 < m["pixel_auroc"] < 0.6
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB for {maps.nbytes / 1e6:.0f} MB of maps"


def test_shape_errors():
    with pytest.raises(PackdError, match="must both be"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
    with pytest.raises(PackdError, match="anomalous and normal"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))
