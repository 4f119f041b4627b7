"""The segment-anything engine loads a user-given checkpoint (weights_only), checks it, and answers prompts.

No released SAM checkpoint may be downloaded here, so the checkpoint is a freshly initialised vit_b saved by
the test: this checks loading, validation and the prompt/coordinate plumbing, not SAM's accuracy.
"""

import numpy as np
import pytest

pytest.importorskip("segment_anything", reason="segment-anything is not installed: pip install -e '.[engine]'")


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def test_sam_engine_predicts_on_the_image_grid(vit_b_checkpoint):
    from MedAgentSegLib.engines import Prompts, create_engine
    from MedAgentSegLib.session import Session

    engine = create_engine("sam_vit_b", checkpoint=vit_b_checkpoint, device="cpu", reuse=False)
    image = (np.random.default_rng(0).random((90, 140, 3)) * 255).astype(np.uint8)
    session = Session(engine, image, "liver")
    t1 = session.add_box(10, 10, 100, 70)
    t2 = session.add_click(50, 40, positive=False)
    assert t1.mask.shape == (90, 140) and t1.mask.dtype == bool
    assert t2.logits.shape == (1, 256, 256) and t2.used_prev_logits
    assert isinstance(t1.score, float) and np.isfinite(t1.score)
    with pytest.raises(ValueError, match="outside"):
        engine.predict(Prompts(box=(0, 0, 200, 50)))


def test_wrong_variant_or_missing_file_is_explained(vit_b_checkpoint, tmp_path):
    from MedAgentSegLib.engines import EngineError, create_engine

    with pytest.raises(EngineError, match="not a SAM vit_l checkpoint"):
        create_engine("sam_vit_l", checkpoint=vit_b_checkpoint, device="cpu", reuse=False)
    with pytest.raises(EngineError, match="weights file not found"):
        create_engine("sam_vit_b", checkpoint=tmp_path / "nope.pth", device="cpu", reuse=False)
    with pytest.raises(EngineError, match="needs a checkpoint"):
        create_engine("sam_vit_h", device="cpu", reuse=False)
