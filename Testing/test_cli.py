"""`medagentseg` end to end: segment on real Kvasir-SEG images, output formats, replay, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import slicerio
from conftest import dataset_cases

from MedAgentSegLib import images
from MedAgentSegLib.cli import SAMPLE_IMAGE, SAMPLE_LABELS, main
from MedAgentSegLib.metrics import dice
from MedAgentSegLib.oracle import box_from_mask


def _seg_mask(path, name):
    seg = slicerio.read_segmentation(str(path))
    return seg, slicerio.segment_mask(seg, slicerio.segment_from_name(seg, name)).astype(bool)


def test_segment_with_reference_box_on_20_kvasir_images(tmp_path, lite_engine):
    root, cases = dataset_cases("kvasir-seg")
    scores = []
    for case in cases[:20]:
        img = images.load_image(root / case["image"])
        gt = images.load_mask(root / case["mask"], img)
        x1, y1, x2, y2 = box_from_mask(gt)
        out = tmp_path / case["id"]
        rc = main(["segment", str(root / case["image"]), "--target", "polyp", "--box", f"{x1},{y1},{x2},{y2}",
                   "--engine", "litemedsam", "--device", "cpu", "--out", str(out)])
        assert rc == 0
        seg, ijk = _seg_mask(out / "segmentation.seg.nrrd", "polyp")
        assert ijk.shape == (gt.shape[1], gt.shape[0], 1)
        scores.append(dice(ijk[:, :, 0].T, gt))
    print(f"mean Dice over {len(scores)} Kvasir-SEG images with the reference box: {np.mean(scores):.3f}")
    assert np.mean(scores) >= 0.85


def test_demo_outputs_geometry_and_bit_exact_replay(tmp_path, lite_engine, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--engine", "litemedsam", "--device", "cpu"]) == 0
    assert {p.name for p in out.iterdir()} == {"segmentation.seg.nrrd", "trajectory.json", "turns.png"}
    src = images.load_image(SAMPLE_IMAGE)
    seg, ijk = _seg_mask(out / "segmentation.seg.nrrd", "liver")
    assert np.allclose(seg["ijkToLPS"], images.ijk_to_lps(src))
    assert ijk.shape == src.array.shape[::-1]
    traj = json.loads((out / "trajectory.json").read_text())
    k = traj["metadata"]["slice"]
    assert ijk[:, :, k].any() and ijk.sum() == ijk[:, :, k].sum()  # only the agent's slice was written
    ref = images.load_mask(SAMPLE_LABELS, src, 1)
    assert dice(ijk[:, :, k].T, ref[k]) > 0.75
    assert traj["turns"][0]["action"]["name"] == "add_bbox"
    assert traj["metadata"]["segment"]["type"]["code"] == "10200004"  # SNOMED CT liver
    assert main(["replay", str(out / "trajectory.json"), "--device", "cpu"]) == 0
    assert "identical" in capsys.readouterr().out
    # a tampered recording is caught
    traj["turns"][-2]["mask_rle"]["counts"][1] += 1
    traj["turns"][-2]["mask_rle"]["counts"][2] -= 1
    (tmp_path / "t.json").write_text(json.dumps(traj))
    assert main(["replay", str(tmp_path / "t.json"), "--device", "cpu"]) == 2
    assert "different mask" in capsys.readouterr().err


def test_user_clicks_and_scripted_policy(tmp_path, lite_engine):
    root, cases = dataset_cases("kvasir-seg")
    out = tmp_path / "o"
    assert main(["segment", str(root / cases[1]["image"]), "--target", "polyp", "--box", "100,100,400,400",
                 "--click", "250,250,+", "--click", "120,110,-", "--device", "cpu", "--engine", "litemedsam",
                 "--out", str(out)]) == 0
    turns = json.loads((out / "trajectory.json").read_text())["turns"]
    assert [t["action"]["name"] for t in turns] == ["add_bbox", "add_point", "add_point", "stop_action"]
    assert turns[2]["prompts"]["labels"] == [1, 0] and turns[2]["source"] == "user"


@pytest.mark.parametrize("args,fragment", [
    (["segment", "missing.png", "--target", "polyp", "--box", "1,1,5,5"], "image not found"),
    (["segment", "{bad}", "--target", "polyp", "--box", "1,1,5,5"], "cannot read"),
    (["segment", "{img}", "--target", "xyzzy", "--box", "1,1,5,5"], "unknown target 'xyzzy'"),
    (["segment", "{img}", "--target", "polyp", "--box", "1,1,5000,5"], "outside"),
    (["segment", "{img}", "--target", "polyp", "--click", "3,3,?"], "X,Y,+ or X,Y,-"),
    (["segment", "{img}", "--target", "polyp", "--box", "1,2,3"], "4 comma-separated numbers"),
    (["segment", "{img}", "--target", "polyp"], "not sure where the polyp is"),  # flat grey: the locator asks
    (["segment", "{img}", "--target", "polyp", "--gt", "{empty}"], "mask is empty"),
    (["segment", "{img}", "--target", "polyp", "--box", "1,1,5,5", "--engine", "nope"], "unknown engine 'nope'"),
    (["segment", "{img}", "--target", "polyp", "--box", "1,1,5,5", "--engine", "sam_vit_b"], "needs a checkpoint"),
    (["replay", "{bad}"], "not valid JSON"),
])
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, args, fragment):
    from PIL import Image

    Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tmp_path / "empty.png")
    (tmp_path / "bad").write_bytes(b"\x00\x01 corrupt")
    subs = {"{img}": tmp_path / "img.png", "{bad}": tmp_path / "bad", "{empty}": tmp_path / "empty.png"}
    argv = [str(subs.get(a, a)) for a in args] + (["--out", str(tmp_path / "out")] if args[0] == "segment" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medagentseg: error:") and fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "MedAgentSegLib.cli", "segment", str(tmp_path / "nope.png"),
                        "--target", "liver", "--box", "1,1,4,4", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "image not found" in r.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,fragment", [
    (["segment", "{vol}", "--target", "liver", "--box", "20,30,100,110", "--window", "nope"], "unknown CT window"),
    (["segment", "{vol}", "--target", "liver", "--box", "20,30,100,110", "--device", "cuda"], "no CUDA GPU"),
    (["segment", "{vol}", "--target", "liver", "--box", "-5,30,100,110"], "outside the 128x128 image"),
    (["segment", "{vol}", "--target", "liver", "--box", "20,30,100,110", "--out", "{file}"], "is a file"),
    (["segment", "{vol}", "--target", "liver", "--box", "20,30,100,110", "--policy", "heuristic",
      "--policy-weights", "x.pt"], "--policy learned only"),
    (["replay", "{dir}"], "is a folder"),
    (["replay", "{keyless}"], "incomplete trajectory"),
    (["replay", "{binary}"], "not a text file"),
])
def test_plain_mistakes_are_one_line_exit_2_before_any_output(tmp_path, capsys, args, fragment):
    """Each of these ended in a traceback (issue #18); none may write anything."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "k.json").write_text(json.dumps({"format": "medagentseg-trajectory/1"}))
    (tmp_path / "b.json").write_bytes(bytes(range(128, 256)))
    subs = {"{vol}": SAMPLE_IMAGE, "{file}": tmp_path / "afile", "{dir}": tmp_path / "folder",
            "{keyless}": tmp_path / "k.json", "{binary}": tmp_path / "b.json"}
    argv = [str(subs.get(a, a)) for a in args]
    if argv[0] == "segment" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if argv[0] == "segment" and "--device" not in argv:
        argv += ["--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medagentseg: error:") and fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and (tmp_path / "afile").read_text() == "x"
