"""Tiling geometry: where tiles lie, cutting frames into them and stitching their maps back (runtime, numpy)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packd_runtime.errors import PackdError
from packd_runtime.tiling import MAX_TILES, Tiling


def _perfect_model(tiling: Tiling, truth: np.ndarray) -> np.ndarray:
    """Tile maps of a model that sees the true anomaly map exactly: truth cut like the frames."""
    return tiling.cut(truth[..., None])[..., 0]


def test_tiles_step_by_tile_minus_overlap_and_the_last_aligns_to_the_edge():
    t = Tiling((300, 500), tile=128, overlap=32)
    ys, xs = sorted(set(t.origins[:, 0])), sorted(set(t.origins[:, 1]))
    assert ys == [0, 96, 172] and xs == [0, 96, 192, 288, 372] and t.count == 15
    exact = Tiling((256, 384), tile=128)
    assert sorted(set(exact.origins[:, 0])) == [0, 128] and sorted(set(exact.origins[:, 1])) == [0, 128, 256]


def test_cut_equals_slicing_each_tile():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 100, 130, 3), dtype=np.uint8)
    t = Tiling((100, 130), tile=48, overlap=8)
    tiles = t.cut(frames)
    assert tiles.shape == (2 * t.count, 48, 48, 3) and tiles.dtype == np.uint8 and tiles.flags.c_contiguous
    for b in range(2):
        for i, (y, x) in enumerate(t.origins):
            np.testing.assert_array_equal(tiles[b * t.count + i], frames[b, y:y + 48, x:x + 48])


def test_a_defect_on_a_tile_border_or_in_an_overlap_is_stitched_whole():
    truth = np.zeros((2, 200, 300), np.float32)
    truth[0, 95:102, 60:70] = 5.0  # straddles the border y = 96 between the first two tile rows
    truth[1, 40:50, 75:100] = 3.0  # inside the overlap of the first two tile columns (x 80-96)
    t = Tiling((200, 300), tile=96, overlap=16)
    stitched = t.stitch(_perfect_model(t, truth))
    np.testing.assert_allclose(stitched, truth, atol=1e-5)  # no seam: neither flagged nor hidden


def test_stitching_at_a_fraction_of_the_frame_resolution():
    truth = np.zeros((1, 256, 384), np.float32)
    truth[0, 64:128, 128:192] = 1.0
    t = Tiling((256, 384), tile=128, overlap=0, map_side=32)
    assert t.map_hw == (64, 96)
    coarse = truth[:, ::4, ::4]
    tile_maps = Tiling((64, 96), tile=32).cut(coarse[..., None])[..., 0]
    np.testing.assert_allclose(t.stitch(tile_maps), coarse, atol=1e-6)


def test_outside_the_regions_of_interest_nothing_is_tiled_or_flagged():
    truth = np.full((1, 300, 400), 7.0, np.float32)
    t = Tiling((300, 400), tile=64, overlap=16, rois=((10, 20, 50, 100), (200, 300, 30, 30)))
    assert ((t.origins[:, 0] + 64 > 10) & (t.origins[:, 0] < 60) | (t.origins[:, 0] >= 136)).all()
    stitched = t.stitch(_perfect_model(t, truth))[0]
    inside = np.zeros((300, 400), bool)
    inside[10:60, 20:120] = inside[200:230, 300:330] = True
    np.testing.assert_allclose(stitched[inside], 7.0, atol=1e-5)
    assert (stitched[~inside] == 0).all()
    assert Tiling((300, 400), tile=64).count > 4 * t.count  # the rest of the frame costs nothing


@pytest.mark.parametrize("kwargs, message", [
    (dict(frame_hw=(100, 100), tile=128), "--tile 128 must be at least 1 and fit in the 100x100 frame"),
    (dict(frame_hw=(300, 300), tile=64, overlap=64), "--overlap 64 must be at least 0 and less than the tile"),
    (dict(frame_hw=(300, 300), tile=64, overlap=-1), "--overlap -1 must be at least 0"),
    (dict(frame_hw=(300, 300), tile=64, rois=((250, 0, 100, 10),)), "--roi 250,0,100,10 must lie inside"),
    (dict(frame_hw=(300, 300), tile=64, rois=((0, 0, 0, 10),)), "size of at least 1x1"),
    (dict(frame_hw=(300, 300), tile=64, rois=((0, 0, 100, 100), (50, 50, 100, 100))), "overlap: give one region"),
    (dict(frame_hw=(8192, 8192), tile=32, overlap=16), f"more than {MAX_TILES}: use larger tiles"),
    (dict(frame_hw=(300, 300), tile=64.0), "whole numbers of pixels"),
])
def test_bad_tilings_are_one_line(kwargs, message):
    with pytest.raises(PackdError, match=message.replace("(", r"\(")) as e:
        Tiling(**kwargs)
    assert "\n" not in str(e.value)


def test_frames_and_maps_of_another_size_are_refused():
    t = Tiling((100, 100), tile=50)
    with pytest.raises(PackdError, match="frames must be 100x100"):
        t.cut(np.zeros((1, 100, 120, 3), np.uint8))
    with pytest.raises(PackdError, match=r"tile maps must be \(B\*4, 50, 50\)"):
        t.stitch(np.zeros((3, 50, 50), np.float32))


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(h=st.integers(16, 200), w=st.integers(16, 200), data=st.data())
def test_any_tiling_covers_the_frame_and_stitches_a_perfect_model_exactly(h, w, data):
    tile = data.draw(st.integers(8, min(h, w)))
    t = Tiling((h, w), tile=tile, overlap=data.draw(st.integers(0, tile // 2)))
    truth = np.random.default_rng(h * w).random((1, h, w)).astype(np.float32)
    np.testing.assert_allclose(t.stitch(_perfect_model(t, truth)), truth, rtol=1e-5, atol=1e-6)
