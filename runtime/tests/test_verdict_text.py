"""The verdict line overlays and the station show: a clear OK, an OK near the threshold and a defect read apart, and
two scores that print alike to four digits still differ (issue 32: an OK overlay said "score 3.178 threshold 3.178")."""

import pytest

from packd_runtime.threshold import margin, verdict_text


def test_near_the_threshold_reads_apart_from_a_clear_ok():
    assert verdict_text(3.17812, 3.17831) == "OK (near threshold)  score 3.17812  threshold 3.17831  (-0.0%)"
    assert verdict_text(2.0, 3.0) == "OK  score 2  threshold 3  (-33.3%)"
    assert verdict_text(2.71, 3.0).startswith("OK (near threshold)")  # 9.7 % below
    assert verdict_text(2.69, 3.0).startswith("OK  ")  # 10.3 % below
    assert verdict_text(3.3, 3.0) == "DEFECT  score 3.3  threshold 3  (+10.0%)"
    assert verdict_text(3.0, 3.0).startswith("OK (near threshold)")  # score > threshold is a defect, equal is not
    assert verdict_text(4.5, None) == "UNCALIBRATED  score 4.5"


def test_margin_is_a_fraction_of_the_threshold():
    assert margin(4.0, 2.0) == pytest.approx(1.0)
    assert margin(1.0, 2.0) == pytest.approx(-0.5)
    assert margin(-1.0, -2.0) == pytest.approx(0.5)
    assert margin(1.0, 0.0) == float("inf")
