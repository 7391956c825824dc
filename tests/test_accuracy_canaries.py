"""Accuracy canaries: every kind trained and scored at a tiny scale with fixed seeds must stay above its
floor (see `packd_bench.canaries` for the set-up and the docs' accuracy page for how each floor was chosen).
A change that costs a kind a real share of its accuracy fails here, in the default test run."""

import pytest

from packd_bench.canaries import CANARIES, make_data, run_canary


@pytest.fixture(scope="module")
def canary_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("canary_data"))


@pytest.mark.parametrize("kind", list(CANARIES))
def test_accuracy_canary(kind, canary_data, tmp_path):
    canary = CANARIES[kind]
    value = run_canary(kind, canary_data, tmp_path)
    assert value >= canary.floor, (f"{kind} canary: image AUROC {value:.3f} fell below its floor {canary.floor:.3f} "
                                   f"(it was {canary.reference:.3f} when the floor was set): run `make bench-accuracy`")


def test_floors_sit_below_their_references():
    for canary in CANARIES.values():
        assert 0.5 < canary.floor < canary.reference <= 1.0
