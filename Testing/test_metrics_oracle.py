"""Metrics and the simulated user (box jitter, RITM and CVPR25 click rules) on constructed masks."""

import numpy as np
import pytest
from conftest import square_mask

from MedAgentSegLib.metrics import area_under_curve, dice, iou, noc, nsd
from MedAgentSegLib.oracle import box_from_mask, next_click


def test_dice_iou_known_values():
    a = square_mask(box=(0, 10, 0, 10))   # 100 px
    b = square_mask(box=(0, 10, 5, 15))   # 100 px, 50 overlap
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(50 / 150)
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, a[:5])


def test_nsd_uses_spacing():
    a = square_mask((40, 40), (10, 30, 10, 30))
    b = square_mask((40, 40), (10, 30, 12, 32))  # shifted 2 columns
    assert nsd(a, a) == 1.0
    assert nsd(a, b, tolerance_mm=2.0, spacing=(1.0, 1.0)) == pytest.approx(1.0)
    # the same shift is 6 mm when columns are 3 mm apart: most surface now lies outside tolerance
    assert nsd(a, b, tolerance_mm=2.0, spacing=(1.0, 3.0)) < 0.7
    assert nsd(a, np.zeros_like(a)) == 0.0


def test_noc_and_auc():
    assert noc([0.5, 0.86, 0.95], 0.85) == 2
    assert noc([0.5, 0.6], 0.9, max_clicks=20) == 20
    assert area_under_curve([0.0, 1.0]) == pytest.approx(0.5)


def test_box_jitter_is_seeded_and_bounded():
    m = square_mask((100, 100), (20, 60, 30, 80))  # rows 20..59, cols 30..79
    assert box_from_mask(m) == (30.0, 20.0, 79.0, 59.0)
    b1 = box_from_mask(m, 0.1, np.random.default_rng(7))
    b2 = box_from_mask(m, 0.1, np.random.default_rng(7))
    assert b1 == b2 and b1 != (30.0, 20.0, 79.0, 59.0)
    assert abs(b1[0] - 30) <= 0.1 * 49 + 1e-9 and abs(b1[3] - 59) <= 0.1 * 39 + 1e-9
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(np.zeros((5, 5)))


def test_ritm_click_goes_to_the_deepest_error():
    gt = square_mask((60, 60), (10, 50, 10, 50))
    pred = square_mask((60, 60), (10, 50, 10, 30))  # left half found; right half missing
    c = next_click(pred, gt, "ritm")
    assert c.positive and 30 <= c.x < 50 and 10 <= c.y < 50
    assert gt[c.y, c.x] and not pred[c.y, c.x]
    over = square_mask((60, 60), (0, 60, 0, 60))
    c = next_click(over, gt, "ritm")
    assert not c.positive and not gt[c.y, c.x]
    assert next_click(gt, gt) is None


def test_cvpr25_click_picks_the_largest_component():
    gt = np.zeros((80, 80), bool)
    gt[5:15, 5:15] = True      # small missed part (100 px)
    gt[40:70, 40:70] = True    # large missed part (900 px)
    pred = np.zeros_like(gt)
    pred[20:26, 60:78] = True  # a thick false positive (108 px), deeper than nothing but smaller than 900
    c = next_click(pred, gt, "cvpr25")
    assert c.positive and 40 <= c.x < 70 and 40 <= c.y < 70
    with pytest.raises(ValueError, match="unknown click rule"):
        next_click(pred, gt, "random")
