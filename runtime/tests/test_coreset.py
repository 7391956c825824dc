"""The runtime's bounded memory bank (torch-free: also runs with --noconftest, as the mutation run does)."""

import numpy as np
import pytest

from packd_runtime.coreset import bound_prototypes, greedy_coreset


def test_greedy_coreset_covers_every_cluster_deterministically():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 300)) * 10
    bank = np.concatenate([c + rng.normal(size=(400, 300)) * 0.1 for c in centres]).astype(np.float32)
    core = greedy_coreset(bank, 5)
    assert core.shape == (5, 300) and core.dtype == np.float32
    nearest = np.linalg.norm(core[:, None] - centres[None], axis=2).argmin(1)
    assert sorted(nearest) == [0, 1, 2, 3, 4]  # one entry per cluster: a random subset would miss some
    assert np.array_equal(core, greedy_coreset(bank, 5)) and greedy_coreset(bank, 5000).shape == bank.shape


def _reference(x: np.ndarray, n: int) -> np.ndarray:
    """Greedy k-centre by the definition: start at row 0, then always the row farthest from those kept."""
    chosen = [0]
    nearest = np.linalg.norm(x.astype(np.float64) - x[0], axis=1)
    for _ in range(n - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, np.linalg.norm(x.astype(np.float64) - x[chosen[-1]], axis=1))
    return np.sort(chosen)


@pytest.mark.parametrize("d", [16, 128])  # at or below the projection dimension: the features themselves
def test_coreset_is_greedy_k_centre_on_the_features(d):
    bank = np.random.default_rng(d).normal(size=(300, d)).astype(np.float32)
    assert np.array_equal(greedy_coreset(bank, 20), bank[_reference(bank, 20)])


def test_coreset_of_wide_features_is_greedy_k_centre_on_a_seeded_projection():
    bank = np.random.default_rng(1).normal(size=(300, 200)).astype(np.float32)
    proj = np.random.default_rng(0).standard_normal((200, 128)).astype(np.float32) / np.float32(np.sqrt(128))
    core = greedy_coreset(bank, 20)
    assert np.array_equal(core, bank[_reference(bank @ proj, 20)])
    assert np.array_equal(core, greedy_coreset(bank, 20, dim=128, seed=0))
    assert not np.array_equal(core, greedy_coreset(bank, 20, seed=1))  # the seed picks the projection


def test_coreset_sizes_and_bank_bounds():
    bank = np.random.default_rng(2).normal(size=(10, 8)).astype(np.float64)
    assert greedy_coreset(bank, 1).shape == (1, 8) and greedy_coreset(bank, 10).dtype == np.float32
    with pytest.raises(ValueError, match="at least one"):
        greedy_coreset(bank, 0)
    assert [a.shape for a in bound_prototypes([bank], 4)] == [(4, 8)]
    with pytest.raises(ValueError, match="one row count"):
        bound_prototypes([bank, bank[:5]], 4)
    with pytest.raises(ValueError, match="one row count"):
        bound_prototypes([], 4)


def test_several_stages_keep_the_same_rows_chosen_on_their_normalised_rows_side_by_side():
    """PACKD's prototypes: one tensor per stage, row i of each from the same support; a stage of large values
    must not decide alone (rows are normalised per stage before the joint coreset)."""
    rng = np.random.default_rng(3)
    small = rng.normal(size=(200, 16)).astype(np.float32)
    large = (rng.normal(size=(200, 32)) * 1000).astype(np.float32)
    bounded = bound_prototypes([small, large], 10)
    assert [a.shape for a in bounded] == [(10, 16), (10, 32)] and all(a.dtype == np.float32 for a in bounded)
    joint = np.concatenate([small / np.linalg.norm(small, axis=1, keepdims=True),
                            large / np.linalg.norm(large, axis=1, keepdims=True)], axis=1)
    rows = _reference(joint, 10)
    assert np.array_equal(bounded[0], small[rows]) and np.array_equal(bounded[1], large[rows])
    assert not np.array_equal(rows, _reference(np.concatenate([small, large], axis=1), 10))
