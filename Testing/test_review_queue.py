"""The review queue of a labeling folder (issue #19): leases, decisions in the manifest at once, a running batch.

The folder is made once by `medagentseg label` with the model-free `fakes.BoxEngine` (the mask is the prompt's box)
and copied for each test; the clock of the leases is injected.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import slicerio
from fakes import BoxEngine, gray_image
from PIL import Image

import MedAgentSegLib.engines as engines
from MedAgentSegLib.cli import main
from MedAgentSegLib.labeling import batch
from MedAgentSegLib.labeling.manifest import read_manifest
from MedAgentSegLib.labeling.review import LeaseHeldElsewhere, LeaseTaken, ReviewError, ReviewQueue

BOXES = {"c0": [5, 6, 30, 40], "c1": [10, 4, 50, 20], "c2": [0, 0, 20, 20]}


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(input folder, prompts file, labeling folder with c0..c2 pre-labelled): made once."""
    root = tmp_path_factory.mktemp("review")
    src = root / "in"
    src.mkdir()
    for i, cid in enumerate(BOXES):
        Image.fromarray(gray_image(seed=i)).save(src / f"{cid}.png")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"case": c, "box": b}) + "\n" for c, b in BOXES.items()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engines, "create_engine", lambda *a, **k: BoxEngine())
        argv = ["label", str(src), "--target", "polyp", "--prompts", str(prompts), "--out", str(root / "out")]
        assert main(argv) == 0
    return src, prompts, root / "out"


@pytest.fixture
def out(labelled, tmp_path) -> Path:
    dest = tmp_path / "out"
    shutil.copytree(labelled[2], dest)
    return dest


def _status(out: Path) -> dict[str, str]:
    return {cid: r["status"] for cid, r in read_manifest(out).items()}


def _seg(path: Path) -> dict:
    return slicerio.read_segmentation(str(path))


def test_two_reviewers_never_get_the_same_case(out):
    clock = Clock()
    alice, bob, carol, dave = (ReviewQueue(out, name, clock=clock) for name in ("alice", "bob", "carol", "dave"))
    a = alice.open_next(unreviewed_only=True)
    assert a.case_id == "c0" and _status(out)["c0"] == "in review"
    assert bob.next_case(unreviewed_only=True) == "c1"  # alice's case is skipped
    with pytest.raises(LeaseTaken, match="'c0' is being reviewed by alice until") as err:
        bob.open("c0")
    assert err.value.reviewer == "alice"
    b = bob.open_next(unreviewed_only=True)
    c = carol.open_next(unreviewed_only=True)
    assert (b.case_id, c.case_id) == ("c1", "c2")
    assert dave.open_next(unreviewed_only=True) is None  # every case is held
    assert set(alice.leases()) == {"c0", "c1", "c2"}
    with pytest.raises(LeaseTaken):
        bob.accept("c0")  # a decision needs the lease
    assert _status(out)["c0"] == "in review"


def test_reviewers_racing_for_one_case_one_wins(out):
    winners, refused = [], []
    start = threading.Barrier(6)

    def take(name):
        queue = ReviewQueue(out, name)
        start.wait()
        try:
            queue.open("c1")
            winners.append(name)
        except LeaseTaken as exc:
            refused.append(exc.reviewer)

    threads = [threading.Thread(target=take, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and refused == [winners[0]] * 5
    assert json.loads((out / "leases" / "c1.json").read_text())["reviewer"] == winners[0]


def test_a_lease_expires_and_is_taken_over(out):
    clock = Clock()
    alice, bob = ReviewQueue(out, "alice", lease_seconds=60, clock=clock), ReviewQueue(out, "bob", lease_seconds=60,
                                                                                         clock=clock)
    alice.open("c0")
    clock.now += 59
    with pytest.raises(LeaseTaken):
        bob.open("c0")
    clock.now += 1
    assert bob.open("c0").lease.reviewer == "bob"  # expired: taken over
    with pytest.raises(LeaseTaken, match="bob"):
        alice.accept("c0")
    assert alice.release("c0") is False and _status(out)["c0"] == "in review"  # bob's lease is left alone
    assert json.loads((out / "leases" / "c0.json").read_text())["reviewer"] == "bob"

    alice.open("c1")
    clock.now += 50
    alice.renew("c1")
    clock.now += 50  # 100 s after opening, 50 after the renewal
    with pytest.raises(LeaseTaken):
        bob.open("c1")
    clock.now += 100  # expired, but no one took it: still alice's to decide on
    assert alice.accept("c1")["status"] == "accepted"


def test_one_reviewer_in_two_front_ends_never_releases_or_decides_on_the_others_case(out):
    clock = Clock()
    slicer_side, web_side = (ReviewQueue(out, "alice", lease_seconds=60, clock=clock) for _ in range(2))
    slicer_side.open("c0")
    assert web_side.next_case() == "c1"  # held by the same name elsewhere: skipped, as another reviewer's
    with pytest.raises(LeaseHeldElsewhere, match="'c0' is open for alice in another review window") as err:
        web_side.open("c0")
    assert isinstance(err.value, LeaseTaken) and err.value.reviewer == "alice"  # open_next goes on past it
    # the web page moving on (or closing) gives back only its own case, never the Slicer panel's
    assert web_side.release("c0") is False and (out / "leases" / "c0.json").is_file()
    assert _status(out)["c0"] == "in review"
    with pytest.raises(LeaseHeldElsewhere):
        web_side.accept("c0")
    assert slicer_side.save_edit("c0", np.ones((48, 64), bool), [{"by": "human", "action": "paint"}])["status"] \
        == "edited"  # its edit is still saved: the lease is still its own


def test_after_a_crash_the_same_reviewer_takes_the_case_back_on_expiry_or_deliberately(out):
    clock = Clock()
    crashed = ReviewQueue(out, "alice", lease_seconds=60, clock=clock)
    crashed.open("c0")
    restarted = ReviewQueue(out, "alice", lease_seconds=60, clock=clock)
    with pytest.raises(LeaseHeldElsewhere):
        restarted.open("c0")
    assert restarted.open("c0", take_over=True).lease.token == restarted.token  # deliberately, at once
    with pytest.raises(LeaseHeldElsewhere):
        crashed.accept("c0")  # if it was alive after all, it cannot decide on the case any more
    assert crashed.release("c0") is False and crashed.current is None
    restarted.close()

    crashed.open("c1")
    again = ReviewQueue(out, "alice", lease_seconds=60, clock=clock)
    clock.now += 60  # not renewed: expired, so the new queue takes it without asking
    assert again.open("c1").lease.token == again.token
    assert again.accept("c1")["status"] == "accepted"


def test_decisions_are_in_the_manifest_at_once_and_survive_a_new_queue(out):
    clock = Clock()
    alice = ReviewQueue(out, "alice", clock=clock)
    case = alice.open("c0")
    assert case.original == (out / "cases" / "c0" / "original.seg.nrrd").resolve() and case.final is None
    assert case.trajectory.is_file() and case.propagation is None and case.mask == case.original
    clock.now += 42
    alice.accept("c0", note="fine")
    rec = read_manifest(out)["c0"]  # written before accept returned
    assert (rec["status"], rec["reviewer"], rec["review_note"], rec["review_seconds"]) == ("accepted", "alice",
                                                                                           "fine", 42.0)
    assert rec["reviewed_at"] == "1970-01-12T13:47:22Z"
    review = json.loads((out / rec["outputs"]["review"]).read_text())
    assert [(t["by"], t["action"], t["mask"]) for t in review["turns"]] == [("human", "add_bbox", "original"),
                                                                              ("human", "stop_action", "original")]
    assert rec["provenance"] == {"agent": 0, "human": 2}

    alice.open("c1")  # moving on releases c0: its decision stays
    assert not (out / "leases" / "c0.json").exists() and _status(out)["c0"] == "accepted"
    alice.reject("c1", "the polyp is cut off by the image border")
    alice.open("c2")
    alice.release("c2")  # nothing decided: back to pre-labelled
    assert _status(out) == {"c0": "accepted", "c1": "rejected", "c2": "pre-labelled"}

    again = ReviewQueue(out, "bob", clock=clock)
    records = {r["case_id"]: r for r in again.cases()}
    assert records["c1"]["review_note"] == "the polyp is cut off by the image border"
    assert again.next_case(unreviewed_only=True) == "c2"
    assert again.open("c1").record["status"] == "rejected"  # a decided case can be opened again, stays decided
    assert again.next_case("c1") == "c2" and again.previous_case("c1") == "c0" and again.previous_case("c0") is None


def test_reject_needs_a_note(out):
    alice = ReviewQueue(out, "alice")
    alice.open("c0")
    for note in ("", "   ", None):
        with pytest.raises(ReviewError, match="needs a note"):
            alice.reject("c0", note)
    assert _status(out)["c0"] == "in review" and not (out / "cases" / "c0" / "review.json").exists()


def test_save_edit_writes_the_final_mask_on_the_original_grid_with_provenance(out):
    clock = Clock()
    alice = ReviewQueue(out, "alice", clock=clock)
    alice.open("c0")
    mask = np.zeros((1, 48, 64), np.uint8)  # KJI, as Slicer's arrays are
    mask[0, 10:20, 30:50] = 1
    with pytest.raises(ReviewError, match=r"\(48, 64\) \(rows, columns\)"):
        alice.save_edit("c0", np.zeros((64, 48)), [{"by": "human", "action": "paint"}])
    with pytest.raises(ReviewError, match="provenance"):
        alice.save_edit("c0", mask, [{"by": "robot", "action": "paint"}])
    assert not (out / "cases" / "c0" / "final.seg.nrrd").exists() and _status(out)["c0"] == "in review"

    rec = alice.save_edit("c0", mask, [{"by": "agent", "action": "add_click"}, {"by": "human", "action": "paint"}],
                          note="extended to the stalk")
    assert rec["status"] == "edited" and rec["outputs"]["final"] == "cases/c0/final.seg.nrrd"
    assert read_manifest(out)["c0"]["provenance"] == {"agent": 1, "human": 3}
    original, final = _seg(out / "cases" / "c0" / "original.seg.nrrd"), _seg(out / rec["outputs"]["final"])
    assert np.allclose(final["ijkToLPS"], original["ijkToLPS"])
    for key in ("name", "color", "terminology", "labelValue"):
        assert final["segments"][0][key] == original["segments"][0][key]
    got = slicerio.segment_mask(final, final["segments"][0])
    assert got.shape == (64, 48, 1) and np.array_equal(got[:, :, 0].T, mask[0] > 0)
    review = json.loads((out / rec["outputs"]["review"]).read_text())
    assert [(t["turn"], t["by"], t["reviewer"], t["mask"]) for t in review["turns"][2:]] == [
        (3, "agent", "alice", "final"), (4, "human", "alice", "final")]
    assert review["decisions"][-1]["note"] == "extended to the stalk"
    assert alice.open("c0").final == (out / "cases" / "c0" / "final.seg.nrrd").resolve()

    # a .seg.nrrd on the same grid is taken too (here c0's final, given for c1 which has the same image size)
    alice.open("c1")
    alice.save_edit("c1", out / "cases" / "c0" / "final.seg.nrrd", [{"by": "human", "action": "segment editor"}])
    assert np.array_equal(slicerio.segment_mask(_seg(out / "cases" / "c1" / "final.seg.nrrd"), "polyp")[:, :, 0].T,
                          mask[0] > 0)


def test_a_batch_writing_another_case_while_a_reviewer_decides_keeps_both(labelled, out, monkeypatch):
    src, prompts, _ = labelled
    more = out.parent / "more"
    shutil.copytree(src, more)
    Image.fromarray(gray_image(seed=9)).save(more / "c3.png")
    prompts3 = out.parent / "prompts3.jsonl"
    prompts3.write_text(prompts.read_text() + json.dumps({"case": "c3", "box": [1, 1, 9, 9]}) + "\n")
    alice = ReviewQueue(out, "alice")
    alice.open("c0")  # before the batch starts: its copy of the manifest says c0 is in review
    real = batch.label_case

    def decide_meanwhile(task):
        rec = real(task)
        alice.accept("c0", note="while c3 was labelled")
        return rec

    monkeypatch.setattr(engines, "create_engine", lambda *a, **k: BoxEngine())
    monkeypatch.setattr(batch, "label_case", decide_meanwhile)
    assert main(["label", str(more), "--target", "polyp", "--prompts", str(prompts3), "--out", str(out)]) == 0
    records = read_manifest(out)
    assert records["c0"]["status"] == "accepted" and records["c0"]["review_note"] == "while c3 was labelled"
    assert records["c3"]["status"] == "pre-labelled" and list(records) == ["c0", "c1", "c2", "c3"]


def test_export_afterwards_picks_the_final_mask(out):
    alice = ReviewQueue(out, "alice")
    alice.open("c0")
    edited = np.zeros((48, 64), bool)
    edited[1:5, 2:9] = True
    alice.save_edit("c0", edited, [{"by": "human", "action": "paint"}])
    alice.open("c1")
    alice.reject("c1", "not a polyp")
    alice.open("c2")
    alice.accept("c2")
    alice.close()
    assert main(["export", str(out), "--format", "seg.nrrd"]) == 0
    dest = out / "export" / "seg.nrrd"
    assert sorted(p.name for p in dest.iterdir()) == ["c0.seg.nrrd", "c2.seg.nrrd"]  # the rejected one left out
    assert (dest / "c0.seg.nrrd").read_bytes() == (out / "cases" / "c0" / "final.seg.nrrd").read_bytes()
    assert (dest / "c2.seg.nrrd").read_bytes() == (out / "cases" / "c2" / "original.seg.nrrd").read_bytes()


def test_hand_broken_manifest_or_lease_is_a_clear_error_and_nothing_is_rewritten(out):
    alice = ReviewQueue(out, "alice")
    path = out / "manifest.jsonl"
    good = path.read_text()
    path.write_text(good + '{"case_id": "c9", "status": "maybe"}\n')
    with pytest.raises(ReviewError, match="line 4 is not a manifest record"):
        alice.open("c0")
    assert path.read_text() == good + '{"case_id": "c9", "status": "maybe"}\n' and not (out / "leases").exists()

    lines = good.splitlines()
    rec = json.loads(lines[0])
    rec["outputs"]["original"] = "../../etc/passwd"
    path.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    broken = path.read_text()
    with pytest.raises(ReviewError, match="not a path inside the folder"):
        alice.open("c0")
    assert path.read_text() == broken

    path.write_text(good)
    (out / "leases").mkdir()
    (out / "leases" / "c1.json").write_text("bob was here")
    with pytest.raises(ReviewError, match=r"c1\.json is not a lease.*delete the file"):
        alice.open("c1")
    assert (out / "leases" / "c1.json").read_text() == "bob was here" and path.read_text() == good

    with pytest.raises(ReviewError, match="no case 'c7'"):
        alice.open("c7")
    with pytest.raises(ReviewError, match="not a case id"):
        alice.open("../c0")


def test_a_case_without_a_pre_label_is_not_opened(out):
    path = out / "manifest.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec.update(status="failed", reason="unreadable image")
    path.write_text("\n".join([lines[0], json.dumps(rec), lines[2]]) + "\n")
    alice = ReviewQueue(out, "alice")
    with pytest.raises(ReviewError, match=r"'c1' is failed \(unreadable image\): it has no pre-label"):
        alice.open("c1")
    assert alice.next_case("c0") == "c2"
    with pytest.raises(ReviewError, match="no manifest.jsonl"):
        ReviewQueue(out / "cases", "alice")


def test_a_hand_broken_review_record_is_refused_and_the_decision_not_written(out):
    alice = ReviewQueue(out, "alice")
    alice.open("c0")
    alice.accept("c0")
    review = out / "cases" / "c0" / "review.json"
    review.write_text('{"turns": "lost"}')
    manifest = (out / "manifest.jsonl").read_text()
    with pytest.raises(ReviewError, match=r"review\.json is not a review record"):
        alice.reject("c0", "changed my mind")
    assert (out / "manifest.jsonl").read_text() == manifest and review.read_text() == '{"turns": "lost"}'
    with pytest.raises(ReviewError, match=r"review\.json is not a review record"):
        alice.save_edit("c0", np.ones((48, 64), bool), [{"by": "human", "action": "paint"}])
    assert not (out / "cases" / "c0" / "final.seg.nrrd").exists()  # no final mask the manifest does not name
    assert (out / "manifest.jsonl").read_text() == manifest and review.read_text() == '{"turns": "lost"}'
