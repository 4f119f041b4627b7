"""The review queue in the browser (issue #19): `medagentseg web --labeling DIR`, driven by Chromium as in test_web.py.

The labeling folder is made by `medagentseg label` itself with the fake engine (the mask is the box plus a disk at
each click): two 2D cases and a small volume, each pre-labelled from a box and one click. The page opens it at start
(reviewer "alice"); every click is checked on the MRML scene (the server's /__scene__) and on manifest.jsonl on disk:
next / previous / next unreviewed, the pre-label in the view and its turns on the case's turn slider, a case held by
another reviewer ("bob", a ReviewQueue in this test) skipped by Next and refused when picked, accept, reject refused
without a note, an edit with the box tool kept until it is saved (or dropped with Reload case), and saved as the
final mask with its provenance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import test_web
from fakes import BoxEngine, gray_image
from PIL import Image
from playwright.sync_api import expect
from test_web import Server, _open, chat, page_xy, turns_are, unpack

import MedAgentSegLib.engines as engines
from MedAgentSegLib import rle
from MedAgentSegLib.cli import main as cli_main
from MedAgentSegLib.labeling.manifest import read_manifest
from MedAgentSegLib.labeling.review import ReviewQueue

PROMPTS = {"c0": {"box": [5, 6, 30, 40], "clicks": [[40, 20, 1]]},
           "c1": {"box": [10, 4, 50, 20], "clicks": [[20, 30, 1]]},
           "v2": {"box": [10, 8, 30, 25], "clicks": [[36, 16, 1]], "slice": 3}}

browser = test_web.browser  # its Chromium fixture


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """`medagentseg label` of c0, c1 (48 x 64 PNGs) and v2 (a 6 x 40 x 48 volume, slice 3) with the fake engine."""
    root = tmp_path_factory.mktemp("labeling")
    src = root / "in"
    src.mkdir()
    for i, cid in enumerate(("c0", "c1")):
        Image.fromarray(gray_image(seed=i)).save(src / f"{cid}.png")
    vol = sitk.GetImageFromArray(np.random.default_rng(2).integers(-100, 200, (6, 40, 48)).astype(np.int16))
    vol.SetSpacing((0.8, 0.8, 2.5))
    vol.SetOrigin((3.0, -4.0, 5.0))
    sitk.WriteImage(vol, str(src / "v2.nrrd"))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"case": cid, **p}) + "\n" for cid, p in PROMPTS.items()))
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engines, "create_engine", lambda *a, **k: BoxEngine())
        assert cli_main(["label", str(src), "--target", "liver", "--prompts", str(prompts), "--out", str(out)]) == 0
    assert {r["status"] for r in read_manifest(out).values()} == {"pre-labelled"}
    return out


@pytest.fixture(scope="module")
def served(browser, folder):
    server = Server("fake", folder.parent, "--labeling", str(folder), "--reviewer", "alice")
    page = _open(browser, server)
    yield server, page
    page.close()
    server.stop()


def manifest(folder: Path) -> dict[str, dict]:
    return read_manifest(folder)


def statuses(folder: Path) -> dict[str, str]:
    return {cid: r["status"] for cid, r in manifest(folder).items()}


def on_case(cid: str):
    return lambda r: r["labeling"]["case"] == cid


def row(page, cid: str):
    return page.locator(f'#cases [data-case="{cid}"]')


def original_slice(folder: Path, cid: str, k: int) -> np.ndarray:
    seg = slicerio.read_segmentation(str(folder / "cases" / cid / "original.seg.nrrd"))
    return np.asarray(seg["voxels"])[:, :, k].T > 0  # (I, J, K) -> the slice's (rows, columns)


def trajectory_masks(folder: Path, cid: str) -> list[np.ndarray]:
    turns = json.loads((folder / "cases" / cid / "trajectory.json").read_text())["turns"]
    return [rle.decode(t["mask_rle"]).astype(bool) for t in turns]


def click(page, key: str) -> None:
    page.locator(f"#{key}").click()


def error_after(server: Server, n: int, what: str) -> str:
    report = server.wait_for(lambda r: len(chat(r, "error")) > n, what)
    return chat(report, "error")[-1]


# -- the flow ---------------------------------------------------------------------------------------------------------
def test_01_the_folder_opens_at_start_with_its_cases(served, folder):
    server, page = served
    page.wait_for_selector('#cases [data-case="v2"]')
    assert [row(page, c).get_attribute("data-status") for c in ("c0", "c1", "v2")] == ["pre-labelled"] * 3
    assert page.input_value("#reviewer") == "alice"
    report = server.scene()
    assert report["labeling"]["case"] is None and report["labeling"]["reviewer"] == "alice"
    assert any("3 case(s), 3 to review" in t for t in chat(report, "info"))


def test_02_next_unreviewed_loads_the_case_with_its_pre_label(served, folder):
    server, page = served
    click(page, "case-next-unreviewed")
    lab = server.wait_for(on_case("c0"), "case c0")["labeling"]
    assert lab["volume"] == "c0" and lab["slice"] == 0
    assert np.array_equal(unpack(lab["mask"]), original_slice(folder, "c0", 0))
    assert lab["mask_visible"] and not lab["turn_visible"]
    assert statuses(folder)["c0"] == "in review"  # on disk at once, with alice's lease
    assert json.loads((folder / "leases" / "c0.json").read_text())["reviewer"] == "alice"
    page.wait_for_selector('#cases [data-case="c0"].current')


def test_03_the_case_turn_slider_steps_through_the_pre_labels_turns(served, folder):
    server, page = served
    masks = trajectory_masks(folder, "c0")
    assert len(masks) == 3 and not np.array_equal(masks[0], masks[1])  # box; box and click; stop
    thumb = page.locator("#case-turn-slider .v-slider-thumb")
    thumb.focus()
    page.keyboard.press("Home")
    lab = server.wait_for(lambda r: r["labeling"]["turn_visible"], "turn 1 shown")["labeling"]
    assert np.array_equal(unpack(lab["turn"]), masks[0]) and not lab["mask_visible"]
    expect(page.locator("#case-turn-label")).to_contain_text("1 / 3 add_bbox by a person")
    page.keyboard.press("ArrowRight")
    server.wait_for(lambda r: np.array_equal(unpack(r["labeling"]["turn"]), masks[1]), "turn 2 shown")
    page.keyboard.press("End")
    lab = server.wait_for(lambda r: r["labeling"]["mask_visible"], "the last turn: the case's mask")["labeling"]
    assert not lab["turn_visible"] and np.array_equal(unpack(lab["mask"]), masks[2])


def test_04_next_and_previous(served, folder):
    server, page = served
    click(page, "case-next")
    lab = server.wait_for(on_case("c1"), "case c1")["labeling"]
    assert np.array_equal(unpack(lab["mask"]), original_slice(folder, "c1", 0))
    assert statuses(folder) == {"c0": "pre-labelled", "c1": "in review", "v2": "pre-labelled"}  # c0 given back
    assert not (folder / "leases" / "c0.json").exists()
    click(page, "case-previous")
    server.wait_for(on_case("c0"), "case c0 again")
    assert statuses(folder)["c0"] == "in review" and statuses(folder)["c1"] == "pre-labelled"


def test_05_a_case_another_reviewer_holds_is_skipped_and_refused(served, folder):
    server, page = served
    bob = ReviewQueue(folder, "bob")
    bob.open("c1")
    try:
        page.wait_for_selector('#cases [data-case="c1"].taken')  # the list refreshes by itself
        assert "bob (reviewing)" in row(page, "c1").inner_text()
        click(page, "case-next")
        lab = server.wait_for(on_case("v2"), "Next to skip c1")["labeling"]
        assert lab["volume"] == "v2" and lab["slice"] == 3
        assert np.array_equal(unpack(lab["mask"]), original_slice(folder, "v2", 3))
        errors = len(chat(server.scene(), "error"))
        row(page, "c1").click()
        line = error_after(server, errors, "picking c1 refused")
        assert "being reviewed by bob" in line and "open another case" in line, line
        assert server.scene()["labeling"]["case"] == "v2"  # nothing changed
        assert json.loads((folder / "leases" / "c1.json").read_text())["reviewer"] == "bob"
        click(page, "case-previous")
        server.wait_for(on_case("c0"), "Previous to skip c1")
    finally:
        bob.close()
    page.wait_for_selector('#cases [data-case="c1"]:not(.taken)')


def test_06_accept_is_in_the_manifest_at_once(served, folder):
    server, page = served
    page.fill("#review-note", "")
    click(page, "case-accept")
    page.wait_for_selector('#cases [data-case="c0"][data-status="accepted"]')
    rec = manifest(folder)["c0"]
    assert rec["status"] == "accepted" and rec["reviewer"] == "alice" and rec["reviewed_at"]
    assert rec["outputs"]["final"] is None  # the pre-label is the answer
    review = json.loads((folder / rec["outputs"]["review"]).read_text())
    assert [d["status"] for d in review["decisions"]] == ["accepted"]


def test_07_reject_needs_a_note(served, folder):
    server, page = served
    click(page, "case-next")
    server.wait_for(on_case("c1"), "case c1")
    errors = len(chat(server.scene(), "error"))
    click(page, "case-reject")
    line = error_after(server, errors, "reject without a note refused")
    assert "Write in 'Note' why" in line, line
    assert statuses(folder)["c1"] == "in review"  # nothing written
    page.fill("#review-note", "motion blur, not gradable")
    click(page, "case-reject")
    page.wait_for_selector('#cases [data-case="c1"][data-status="rejected"]')
    rec = manifest(folder)["c1"]
    assert rec["status"] == "rejected" and rec["review_note"] == "motion blur, not gradable"
    assert rec["reviewer"] == "alice"
    assert "motion blur" in row(page, "c1").inner_text()
    expect(page.locator("#review-note")).to_have_value("")  # not carried to the next case


def edit_by_hand(server: Server, page, folder: Path) -> tuple[np.ndarray, dict]:
    """Ask for the liver on the open case: the session goes on from the pre-label (its first turn, on the slice the
    logic picks) and the agent may add turns; once it is idle, erase a stroke through the mask's middle with the
    page's eraser (a 2 mm brush). Returns the edited slice and the run's report."""
    page.fill("#request", "segment the liver")
    page.locator("#send").click()
    report = server.wait_for(lambda r: r["run"] is not None and r["run"]["status"] != "loading" and not r["busy"]
                             and r["run"]["turns"] >= 1, "the session to go on from the pre-label")
    time.sleep(1.0)  # the agent's turns, if any, are done
    report = server.wait_for(lambda r: not r["busy"], "the agent to finish")
    run = report["run"]
    assert run["segment"]["name"] == "liver" and run["sources"][0] == "user"
    ys, xs = np.nonzero(unpack(run["segment"]))
    x, y = float(np.median(xs)), float(np.median(ys))
    page.locator("#brush-size").evaluate("e => { e.value = 2; e.dispatchEvent(new Event('input')); }")
    click(page, "erase")
    server.wait_for(lambda r: r["display"]["tool"] == "erase", "the eraser")
    page.mouse.move(*page_xy(page, report, x - 4.0, y))
    page.mouse.down()
    page.mouse.move(*page_xy(page, report, x + 4.0, y), steps=8)
    page.mouse.up()
    after = server.wait_for(turns_are(run["turns"] + 1), "the eraser's turn")["run"]
    assert after["actions"][-1] == "hand_edit" and after["sources"][-1] == "user"
    edited = unpack(after["segment"])
    assert not (edited & ~unpack(run["segment"])).any() and edited.sum() < unpack(run["segment"]).sum()  # erased
    click(page, "erase")  # put it down
    server.wait_for(lambda r: r["display"]["tool"] == "", "the eraser put down")
    return edited, after


def test_08_an_edit_is_kept_until_saved_or_dropped_with_reload(served, folder):
    server, page = served
    click(page, "case-next-unreviewed")  # c0 accepted, c1 rejected: v2
    server.wait_for(on_case("v2"), "case v2")
    edited, run = edit_by_hand(server, page, folder)
    original = original_slice(folder, "v2", run["slice"])
    assert not np.array_equal(edited, original)
    errors = len(chat(server.scene(), "error"))
    click(page, "case-next")  # moving on would lose the edit
    line = error_after(server, errors, "leaving an unsaved edit refused")
    assert "not saved" in line and "Save edit" in line and "Reload case" in line, line
    assert server.scene()["labeling"]["case"] == "v2" and server.scene()["labeling"]["dirty"]
    click(page, "case-reload")
    server.wait_for(lambda r: r["labeling"]["case"] == "v2" and not r["labeling"]["dirty"] and np.array_equal(
        unpack(r["labeling"]["mask"]), original_slice(folder, "v2", r["labeling"]["slice"])), "Reload to drop the edit")
    assert statuses(folder)["v2"] == "in review"


def test_09_save_edit_writes_the_final_mask_with_its_provenance(served, folder):
    server, page = served
    edited, run = edit_by_hand(server, page, folder)
    k = run["slice"]
    click(page, "case-save-edit")
    page.wait_for_selector('#cases [data-case="v2"][data-status="edited"]')
    rec = manifest(folder)["v2"]
    assert rec["status"] == "edited" and rec["outputs"]["final"] == "cases/v2/final.seg.nrrd"
    final = slicerio.read_segmentation(str(folder / rec["outputs"]["final"]))
    voxels = np.asarray(final["voxels"]) > 0
    original = np.asarray(slicerio.read_segmentation(str(folder / rec["outputs"]["original"]))["voxels"]) > 0
    assert np.array_equal(voxels[:, :, k].T, edited)  # the slice as edited
    others = [i for i in range(voxels.shape[2]) if i != k]
    assert np.array_equal(voxels[:, :, others], original[:, :, others])  # the propagated slices kept
    review = json.loads((folder / rec["outputs"]["review"]).read_text())
    assert [(t["by"], t["action"], t["mask"]) for t in review["turns"]][-1] == ("human", "hand_edit", "final")
    # the pre-label's three prompt turns (box, click, stop from the prompts file: a person's) and its propagation
    # (the label batch's: the agent's), then the session's
    users, agents = run["sources"].count("user"), run["sources"].count("agent")
    assert rec["provenance"] == {"agent": 1 + agents, "human": 3 + users} and rec["reviewer"] == "alice"
    assert not server.scene()["labeling"]["dirty"]


def test_09b_the_pages_save_never_writes_into_the_labeling_folder(served, folder):
    server, page = served
    case = folder / "cases" / "v2"
    before = {p.name: p.read_bytes() for p in case.iterdir()}
    errors = len(chat(server.scene(), "error"))
    page.fill("#save-dir", str(case))  # the open case's run would be saved as cases/v2/trajectory.json
    click(page, "save")
    line = error_after(server, errors, "Save into the labeling folder refused")
    assert f"The save folder {case} is inside the labeling folder {folder}" in line, line
    assert {p.name: p.read_bytes() for p in case.iterdir()} == before  # the pre-label's files untouched
    assert server.scene()["labeling"]["case"] == "v2"  # the case is still open for review


def test_10_the_labeling_folder_must_be_served(served, folder):
    server, page = served
    errors = len(chat(server.scene(), "error"))
    page.fill("#labeling-dir", "/etc")
    click(page, "labeling-open")
    line = error_after(server, errors, "an outside folder refused")
    assert "labeling folder /etc is outside the folders this server serves" in line, line
    assert server.scene()["labeling"]["case"] == "v2"  # the open folder and case stay


def test_11_a_reviewer_typed_in_the_page_holds_the_next_case(served, folder):
    server, page = served
    page.fill("#reviewer", "carol")
    click(page, "case-previous")  # v2 is given back under alice's name, c1 opened under carol's
    lab = server.wait_for(on_case("c1"), "Previous as carol")["labeling"]
    assert lab["reviewer"] == "carol"
    assert json.loads((folder / "leases" / "c1.json").read_text())["reviewer"] == "carol"
    assert not (folder / "leases" / "v2.json").exists()
    assert manifest(folder)["v2"]["reviewer"] == "alice"  # decisions keep who made them


def test_12_a_reviewer_typed_in_the_page_makes_the_decision_without_moving_first(served, folder):
    server, page = served
    page.fill("#reviewer", "dave")
    click(page, "case-accept")  # on c1, opened as carol: accepted as the name the page shows
    page.wait_for_selector('#cases [data-case="c1"][data-status="accepted"]')
    assert manifest(folder)["c1"]["reviewer"] == "dave"
    assert server.scene()["labeling"]["reviewer"] == "dave"
