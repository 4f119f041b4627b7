"""A person's sessions in the browser (issue #24), with the REAL engine on the bundled sample, step by step.

Each test is one session driven as a person would (buttons, the request field, mouse clicks and drags in the axial
view, keys), and after every step it checks the MRML scene (the server's /__scene__ report): the markups show
exactly the session's prompt state (no stale click may enter a later turn), the segment on the session's slice is
the session's mask, and the page's axial view shows an image. What each scenario adds:
- finding 1: box, a negative click, a positive click, Undo, Reject, one more click: the clicks taken back are gone
  from the scene and the page, and the new click refines the box's mask instead of re-running from stale clicks;
- finding 2: "segment the liver" on the bundled sample, nothing placed: the agent asks in one sentence with the box
  tool armed (the locator does not find this liver yet), and the person's box segments it;
- finding 3: a lone click gives a mask, and a click after a box changes it where it points;
- a long session (>= 30 actions: box, clicks, drags, Undo, Reject, Run, Step, paint, propagate, reload, the turn
  slider, Accept, Save): `medagentseg replay` of the saved trajectory gives every mask again bit for bit, and the
  saved segmentation holds the session's mask.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import test_web
from test_web import SAMPLE_LABELS, Server, chat, page_xy, shot, unpack

browser = test_web.browser  # its Chromium fixture
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "Resources" / "Samples" / "lits117_liver_ct.nrrd"
VIEWPORT = {"width": 1366, "height": 768}
SHOTS = Path(os.environ["MEDAGENTSEG_SCENARIO_SHOTS"]) if os.environ.get("MEDAGENTSEG_SCENARIO_SHOTS") else None
SLOW = 300  # seconds a real-engine step may take on 2 busy cores (the first loads the engine)


@pytest.fixture
def session(browser, tmp_path):
    """(server, page, out) with the real engine; a new server per scenario, so each starts from nothing."""
    pytest.importorskip("torch", reason="the engine extra is not installed: pip install -e '.[engine]'")
    server = Server("real", tmp_path)
    page = test_web._open(browser, server, VIEWPORT)
    yield server, page, tmp_path
    page.close()
    server.stop()


@pytest.fixture(scope="module")
def labels():
    import nrrd

    data, _ = nrrd.read(str(SAMPLE_LABELS))  # (I, J, K)
    return data


def liver_on(labels, k: int) -> np.ndarray:
    return labels[:, :, k].T == 1  # (y, x)


def interior(mask: np.ndarray) -> tuple[float, float]:
    """The pixel deepest inside the mask (distance-transform maximum), as (x, y)."""
    from scipy import ndimage

    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)
    return float(x), float(y)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


# -- steps and the checks after each ---------------------------------------------------------------------------------
def idle(server: Server, what: str, said: int | None = None, timeout: float = SLOW) -> dict:
    """The report once the step is done: the chat has more than `said` lines (every step says something; the page's
    click reaches the server a moment after Playwright's) and nothing is working."""
    def done(r: dict) -> bool:
        working = r["busy"] or (r.get("display") or {}).get("propagating")
        return not working and (said is None or len(r["messages"]) > said)

    return server.wait_for(done, what, timeout=timeout)


def said(server: Server) -> int:
    return len(server.scene()["messages"])


def check(server: Server, page, what: str, before: int | None = None) -> dict:
    """After a step: the markups are the session's prompts, the segment's slice is the session's mask, the axial view
    shows the image. before: the chat's length before the step (wait for its line). Returns the scene report."""
    report = idle(server, what, before)
    run = report["run"]
    if run is not None and run["turns"] and run["reviewed"] is None:
        shown, own = run["shown_prompts"], run["session_prompts"]
        assert (shown["box"] is None) == (own["box"] is None), (what, shown, own)
        if own["box"] is not None:
            assert np.allclose(shown["box"], own["box"], atol=0.6), (what, shown["box"], own["box"])
        assert shown["labels"] == own["labels"], (what, shown, own)
        assert np.allclose(np.reshape(shown["points"], (-1, 2)), np.reshape(own["points"], (-1, 2)), atol=0.6), what
        assert run["segment"]["sha"] == run["session_mask_sha"], f"{what}: the segment is not the session's mask"
    bb = page.locator("#view-Red").bounding_box()
    img = shot(page)[int(bb["y"]):int(bb["y"] + bb["height"]), int(bb["x"]):int(bb["x"] + bb["width"])]
    assert img.std() > 20, f"{what}: the axial view shows no image"
    if SHOTS:  # MEDAGENTSEG_SCENARIO_SHOTS=DIR keeps each step's page, to look at
        SHOTS.mkdir(parents=True, exist_ok=True)
        name = f"{len(list(SHOTS.iterdir())):03d}-{re.sub(r'[^a-z0-9]+', '-', what.lower())}.png"
        page.screenshot(path=str(SHOTS / name))
    return report


def press_button(page, key: str) -> None:
    page.locator(f"#{key}").click()


def arm(page, server: Server, role: str) -> int:
    """Press the Box / + click / - click button and wait for its hint; returns the chat's length then."""
    n = said(server)
    press_button(page, f"place-{role}")
    return len(server.wait_for(lambda r: len(r["messages"]) > n, f"the {role} tool's hint")["messages"])


def place(page, server: Server, role: str, xy: tuple[float, float]) -> int:
    """+ click / - click button, then one click in the axial view at slice pixel `xy`. Returns the chat's length
    before the click's turn."""
    report = server.scene()
    n = arm(page, server, role)
    page.mouse.click(*page_xy(page, report, *xy))
    return n


def draw_box(page, server: Server, box: tuple[float, float, float, float]) -> int:
    report = server.scene()
    n = arm(page, server, "box")
    a, b = page_xy(page, report, box[0], box[1]), page_xy(page, report, box[2], box[3])
    page.mouse.click(*a)
    page.mouse.move(*b, steps=5)
    page.mouse.click(*b)
    return n


def drag(page, server: Server, start: tuple[float, float], end: tuple[float, float]) -> None:
    report = server.scene()
    a, b = page_xy(page, report, *start), page_xy(page, report, *end)
    page.mouse.move(*a, steps=3)
    time.sleep(0.3)
    page.mouse.down()
    page.mouse.move(*b, steps=12)
    page.mouse.up()


def choose_agent(page, name: str) -> None:
    page.locator("#policy").click(force=True)  # its shown value lies over the input
    page.locator(".v-overlay .v-list-item-title", has_text=name).click()


def green_pixels(img: np.ndarray, centre: tuple[float, float], r: int = 7) -> int:
    """Pixels of a positive click's marker colour (green over grey) around a page point."""
    x, y = int(round(centre[0])), int(round(centre[1]))
    p = img[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3)
    return int(np.count_nonzero((p[:, 1] - p[:, 0] > 40) & (p[:, 1] - p[:, 2] > 40)))


def start_person_driven(server: Server, page, labels) -> tuple[dict, int, np.ndarray]:
    """Load the sample, pick the agent the person drives ("scripted") and ask for the liver: the slice is ready and
    waits for the person's box."""
    press_button(page, "load-sample")
    server.wait_for(lambda r: r["volume"] is not None, "the sample to load", timeout=120)
    choose_agent(page, "scripted")
    test_web.send(page, "segment the liver")
    report = server.wait_for(lambda r: r["run"] is not None and r["run"]["status"] != "loading" and not r["busy"],
                             "the slice to be ready", timeout=SLOW)
    k = report["run"]["slice"]
    return report, k, liver_on(labels, k)


# -- the scenarios ---------------------------------------------------------------------------------------------------
def test_finding_1_undo_and_reject_leave_no_stale_click_for_the_next_turn(session, labels):
    server, page, out = session
    report, k, liver = start_person_driven(server, page, labels)
    ys, xs = np.nonzero(liver)
    box = (float(xs.min() - 2), float(ys.min() - 2), float(xs.max() + 2), float(ys.max() + 2))
    n = draw_box(page, server, box)
    report = check(server, page, "the box", n)
    assert report["run"]["turn_names"] == ["add_bbox"], chat(report)[-5:]
    box_mask = unpack(report["run"]["segment"])
    assert dice(box_mask, liver) > 0.8

    outside = (box[0] + 3.0, box[3] - 3.0)  # a corner of the box off the liver
    assert not liver[int(outside[1]), int(outside[0])]
    n = place(page, server, "negative", outside)
    report = check(server, page, "the negative click", n)
    neg_sha = report["run"]["segment"]["sha"]
    inside = interior(liver)
    n = place(page, server, "positive", inside)
    report = check(server, page, "the positive click", n)
    assert report["run"]["turn_names"] == ["add_bbox", "add_point", "add_point"]
    marker = page_xy(page, report, *inside)
    assert green_pixels(shot(page), marker) > 0, "the positive click's marker is not drawn"

    n = said(server)
    press_button(page, "undo")
    report = check(server, page, "Undo", n)
    run = report["run"]
    assert run["turn_names"] == ["add_bbox", "add_point"] and run["segment"]["sha"] == neg_sha
    assert run["positive"] == [] and len(run["negative"]) == 1
    assert green_pixels(shot(page), marker) == 0, "the undone positive click is still drawn"

    n = said(server)
    press_button(page, "reject")
    report = check(server, page, "Reject", n)
    run = report["run"]
    assert run["turn_names"] == ["add_bbox"] and run["positive"] == [] and run["negative"] == []
    assert np.array_equal(unpack(run["segment"]), box_mask)

    n = place(page, server, "positive", inside)
    report = check(server, page, "one more click", n)
    run = report["run"]
    assert run["turn_names"] == ["add_bbox", "add_point"], run["turn_names"]
    assert len(run["session_prompts"]["points"]) == 1
    assert not any("edited prompts" in t for t in chat(report)[-3:]), chat(report)[-3:]
    after = unpack(run["segment"])
    assert after.sum() >= 0.8 * box_mask.sum(), "the mask collapsed after the click"
    assert dice(after, liver) > 0.8


def test_finding_2_the_readme_request_asks_in_one_sentence_and_a_box_finishes_it(session, labels):
    """README: load the sample, type "segment the liver", nothing placed. The shipped locator does not find this
    liver crop (issue #24 item 3 is open: its retraining on crops is not done), so the agent must ask in one short
    sentence with the box tool armed, not a wall of text, and the person's box then segments the liver."""
    server, page, _ = session
    press_button(page, "load-sample")
    server.wait_for(lambda r: r["volume"] is not None, "the sample to load", timeout=120)
    n = said(server)
    test_web.send(page, "segment the liver")
    time.sleep(1.0)
    report = check(server, page, "the agent's answer", n + 3)
    run = report["run"]
    asked = [t for t in chat(report, "agent") if "draw a box" in t.lower()]
    assert run["turns"] == 0 and asked == ["I could not find the liver in this image: draw a box around it."], asked
    assert not any("targets" in t or "library" in t.lower() for t in chat(report)[n:]), chat(report)[n:]
    ys, xs = np.nonzero(liver_on(labels, run["slice"]))
    box = (float(xs.min() - 2), float(ys.min() - 2), float(xs.max() + 2), float(ys.max() + 2))
    n = said(server)
    a, b = page_xy(page, report, box[0], box[1]), page_xy(page, report, box[2], box[3])
    page.mouse.click(*a)  # the box tool is armed already: no button to press
    page.mouse.move(*b, steps=5)
    page.mouse.click(*b)
    report = check(server, page, "the person's box", n)
    assert report["run"]["turn_names"][0] == "add_bbox" and report["run"]["sources"][0] == "user"
    assert dice(unpack(report["run"]["segment"]), liver_on(labels, run["slice"])) > 0.8


def test_finding_3_a_lone_click_gives_a_mask_and_clicks_after_a_box_correct_it(session, labels):
    server, page, _ = session
    _, k, liver = start_person_driven(server, page, labels)
    n = place(page, server, "positive", interior(liver))
    report = check(server, page, "a lone click", n)
    run = report["run"]
    assert run["turn_names"] == ["add_point"]
    lone = unpack(run["segment"])
    # the finding was an empty mask; how much of the organ one click gets is the engine's benchmark (issue #26)
    inside = (lone & liver).sum() / max(1, lone.sum())
    assert lone.sum() >= 0.2 * liver.sum() and inside >= 0.8, (int(lone.sum()), int(liver.sum()), round(inside, 2))

    n = said(server)
    press_button(page, "undo")
    check(server, page, "Undo of the lone click", n)
    ys, xs = np.nonzero(liver)
    cut = float(np.percentile(xs, 60))  # the box misses the liver's right part
    n = draw_box(page, server, (float(xs.min() - 2), float(ys.min() - 2), cut, float(ys.max() + 2)))
    report = check(server, page, "a box that misses part", n)
    boxed = unpack(report["run"]["segment"])
    missed = liver & ~boxed
    missed[:, :int(cut) + 3] = False
    assert missed.sum() > 50
    x, y = interior(missed)
    n = place(page, server, "positive", (x, y))
    report = check(server, page, "a click in the missed part", n)
    clicked = unpack(report["run"]["segment"])
    # The finding: the click changed 0 px. Now it adds liver the box missed, and keeps what the box found. How much
    # of a large missed part one click brings in is the engine's benchmark (issue #26): with the click reader's 10%
    # cap it is little here (see the closing note).
    assert (clicked & missed).sum() > 0, "the click added nothing the box had missed"
    assert (clicked & boxed & liver).sum() >= 0.9 * (boxed & liver).sum(), "the click lost liver the box had found"


def test_a_long_session_replays_bit_for_bit(session, labels):
    """More than 30 mixed actions; after each one the checks above; then Save, and `medagentseg replay` of the saved
    trajectory gives every turn's mask again, and the saved segmentation holds the session's mask."""
    import nrrd

    server, page, out = session
    press_button(page, "load-sample")
    server.wait_for(lambda r: r["volume"] is not None, "the sample to load", timeout=120)
    choose_agent(page, "heuristic")  # a GT-free agent: Run and Step act on the person's prompts
    n = said(server)
    test_web.send(page, "segment the liver")
    time.sleep(1.0)  # the agent may start on its own: its turns follow one another
    report = check(server, page, "the request", n)
    actions = 3  # load, the agent, the request
    while report["run"]["turns"]:  # the person takes back what the agent did on its own, to start from a box
        n = said(server)
        press_button(page, "undo")
        actions += 1
        report = check(server, page, "Undo of the agent's turn", n)
    k = report["run"]["slice"]
    liver = liver_on(labels, k)
    ys, xs = np.nonzero(liver)
    inside = interior(liver)
    box = (float(xs.min() - 2), float(ys.min() - 2), float(xs.max() + 2), float(ys.max() + 2))
    room = np.zeros_like(liver)
    room[8:-8, 8:-8] = True
    right = interior(~liver & room)  # off the liver, away from the image's edge: the stroke adds there
    corner = (box[0] + 3.0, box[3] - 3.0)

    def do(what: str, fn, *args, quiet: bool = False) -> dict:
        nonlocal actions
        n = said(server)
        armed = fn(*args)
        n = armed if isinstance(armed, int) else n  # a placement: its turn's line comes after the tool's hint
        actions += 1
        if quiet:  # putting a tool down says nothing
            time.sleep(1.0)
        return check(server, page, what, None if quiet else n)

    do("box", draw_box, page, server, box)
    do("negative click", place, page, server, "negative", corner)
    do("drag the negative click", drag, page, server, corner, (corner[0] + 3.0, corner[1] - 2.0))
    do("positive click", place, page, server, "positive", inside)
    do("Undo", press_button, page, "undo")
    do("Reject", press_button, page, "reject")
    do("positive click", place, page, server, "positive", inside)
    do("Step", press_button, page, "step")
    do("Undo", press_button, page, "undo")
    do("Run", press_button, page, "run")
    do("Undo", press_button, page, "undo")
    do("paint tool", press_button, page, "paint")
    report = do("paint stroke", drag, page, server, right, (right[0], right[1] + 10.0))
    assert report["run"]["turn_names"][-1] == "hand_edit"
    do("Undo the stroke", press_button, page, "undo")
    report = do("paint again", drag, page, server, right, (right[0], right[1] + 10.0))
    assert report["run"]["turn_names"][-1] == "hand_edit"
    do("put the brush down", press_button, page, "paint", quiet=True)
    do("erase tool", press_button, page, "erase")
    do("erase stroke", drag, page, server, right, (right[0], right[1] + 4.0))
    do("put the eraser down", press_button, page, "erase", quiet=True)
    do("negative click on the painted spot", place, page, server, "negative", (right[0], right[1] + 8.0))
    do("Propagate", press_button, page, "propagate")
    do("Undo the propagation", press_button, page, "undo")
    do("Propagate again", press_button, page, "propagate")
    page.reload()
    page.wait_for_selector("#send")
    actions += 1
    report = check(server, page, "reload")
    thumb = page.locator("#turn-slider .v-slider-thumb")
    thumb.focus()
    page.keyboard.press("Home")
    server.wait_for(lambda r: r["run"]["reviewed"] == "1", "the slider on turn 1")
    actions += 1
    page.keyboard.press("End")
    server.wait_for(lambda r: r["run"]["reviewed"] is None, "the slider back at the end")
    actions += 1
    do("positive click after propagation", place, page, server, "positive", (inside[0] + 4.0, inside[1]))
    do("Reject", press_button, page, "reject")
    do("Step", press_button, page, "step")
    do("Undo", press_button, page, "undo")
    report = do("Accept", press_button, page, "accept")
    assert report["run"]["status"] == "accepted"
    saved = out / "saved"
    page.fill("#save-dir", str(saved))
    report = do("Save", press_button, page, "save")
    assert actions >= 30, actions
    assert any("Saved" in t for t in chat(report, "info")[-2:])

    # the saved files: the trajectory replays bit for bit, the segmentation is the scene's
    traj = saved / "trajectory.json"
    done = subprocess.run([sys.executable, "-m", "MedAgentSegLib.cli", "replay", str(traj), "--image", str(SAMPLE),
                           "--device", "cpu"], capture_output=True, text=True, cwd=REPO, timeout=SLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every mask identical to the recording" in done.stdout
    seg, _ = nrrd.read(str(saved / "segmentation.seg.nrrd"))
    run = report["run"]
    assert run["turns"] >= 8 and run["sources"].count("user") >= 5
    mask = unpack(run["segment"])
    assert seg.ndim >= 3 and int(np.count_nonzero(seg)) >= int(mask.sum())
