"""The browser app (`medagentseg web`, MedAgentSegWeb) driven by the system's Chromium through Playwright.

Each server is a separate process on 127.0.0.1 (Testing/web_server.py: the real app; a crash cannot take pytest
down) and is stopped at the end. The page is driven as a person would: buttons, the request field, mouse clicks and
drags in the slice view (Slicer's markups widgets place and move the box and the clicks). Every step is checked on
the MRML scene (the server's /__scene__ report, read on the thread that writes MRML) and on the screenshot's pixels.

With the fake engine (mask = box plus a disk at each positive click) and a test policy (one click beside the box per
Step) the flow is exact: load the sample; "segment the liver"; place a box; Step adds a click and the mask grows;
dragging the click is one turn; Reject restores the previous mask exactly; Accept freezes; the turn slider shows turn
1 again; Save writes segmentation.seg.nrrd and trajectory.json, read back here. A second fake server (its engine made
to fail or to wait by the test, no timing) checks the engine failing mid-turn and the page closed mid-turn. Then the
real engine segments the liver from a box (the README's screenshot comes from this test:
MEDAGENTSEG_WEB_SCREENSHOT=docs/web-app.png).

Chromium (Debian's package) and the `web` extra are installed by scripts/setup.sh; without them these tests fail
saying so, they do not skip.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("MEDAGENTSEG_CHROMIUM", "/usr/bin/chromium"))
# What the probe of these machines starts Chromium with: without the network flags, a closed network refuses its
# background connections, many at a time.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SAMPLE_LABELS = REPO / "Resources" / "Samples" / "lits117_liver_ct_labels.nrrd"
VIEWPORT = {"width": 1280, "height": 900}
BOX = (30.0, 30.0, 90.0, 100.0)  # pixel box (x1, y1, x2, y2) on the session's slice for the fake-engine flow


def _require_browser_stack():
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is not installed ({CHROMIUM} is missing): run bash scripts/setup.sh as root (it "
                    "installs Debian's chromium), or apt-get install chromium", pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the web extra is not installed ({exc}): pip install -e '.[web]' (scripts/setup.sh does)",
                    pytrace=False)


# -- servers ---------------------------------------------------------------------------------------------------
class Server:
    """Testing/web_server.py in a subprocess on a free port (options: more of its arguments); `scene()` reads its
    MRML report."""

    def __init__(self, engine: str, out: Path, *options: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = out / f"server-{engine}.log"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen([sys.executable, "-X", "faulthandler", str(REPO / "Testing" / "web_server.py"),
                                      "--port", str(self.port), "--engine", engine, "--out", str(out / "saved"),
                                      *options],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/"
        self._wait_ready(120.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the app's server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                self.scene()
                return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"the app's server did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def scene(self) -> dict:
        # the report is made on the event loop: it answers once a write in progress there (a propagation's
        # slices on a busy machine) is done
        with urllib.request.urlopen(self.url + "__scene__", timeout=60) as r:
            return json.loads(r.read())

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            report = self.scene()
            if predicate(report):
                return report
            if time.monotonic() > deadline:
                chat = [m["text"] for m in report["messages"]][-6:]
                pytest.fail(f"timed out waiting for {what}; the chat's last lines: {chat}")
            time.sleep(0.1)

    def engine(self, **ask: int) -> dict:
        """Ask the fake engine's next predict to fail (fail=1) or to wait (block=1) until release=1."""
        query = "&".join(f"{k}={v}" for k, v in ask.items())
        with urllib.request.urlopen(self.url + "__engine__?" + query, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    _require_browser_stack()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("web")


def _open(browser, server: Server, viewport: dict | None = None):
    """A new page on the server's app, once its request field is there."""
    page = browser.new_page(viewport=viewport or VIEWPORT)
    page.goto(server.url)
    page.wait_for_selector("#send")
    return page


@pytest.fixture(scope="module")
def fake(browser, out):
    """(server, page) with the fake engine, shared by the flow's tests, which run in order."""
    server = Server("fake", out)
    page = _open(browser, server)
    yield server, page
    page.close()
    server.stop()


# -- page helpers ------------------------------------------------------------------------------------------------
def page_xy(page, report: dict, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of pixel (x, y) of the session's slice in the axial view (#view-Red), through its
    XYToRAS."""
    k = report["run"]["slice"]
    dx, dy = (np.array(report["view"]["ijk_to_xy"]) @ [x, y, k, 1.0])[:2]
    w, h = report["view"]["size"]
    bb = page.locator("#view-Red").bounding_box()
    return bb["x"] + dx * bb["width"] / w, bb["y"] + (h - dy) * bb["height"] / h


def shot(page) -> np.ndarray:
    from PIL import Image

    time.sleep(0.6)  # the view's next frame reaches the page
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(np.int16)


def until_shot(page, check, what: str, timeout: float = 20.0) -> np.ndarray:
    """The page's screenshot once `check(img)` holds: the views' frames reach the page some time after the scene
    changed (four views to render on a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        img = shot(page)
        if check(img):
            return img
        if time.monotonic() > deadline:
            pytest.fail(f"the page never showed {what}")


def patch(img: np.ndarray, centre: tuple[float, float], r: int = 4) -> np.ndarray:
    x, y = int(round(centre[0])), int(round(centre[1]))
    return img[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3)


def tint(pixels: np.ndarray) -> float:
    """How far from grey: the segment's colour (liver: reddish) over a grey CT."""
    return float(np.mean(pixels.max(axis=1) - pixels.min(axis=1)))


def unpack(segment: dict) -> np.ndarray:
    h, w = segment["shape"]
    return np.unpackbits(np.frombuffer(bytes.fromhex(segment["bits"]), np.uint8))[:h * w].reshape(h, w).astype(bool)


def chat(report: dict, role: str | None = None) -> list[str]:
    return [m["text"] for m in report["messages"] if role is None or m["role"] == role]


def send(page, text: str) -> None:
    page.fill("#request", text)
    page.locator("#send").click()


def turns_are(n: int):
    return lambda r: r["run"] is not None and r["run"]["turns"] == n and not r["busy"]


STATE: dict = {}  # what one step of the flow hands to the next


# -- the flow with the fake engine ---------------------------------------------------------------------------------
def test_01_load_the_bundled_sample(fake):
    server, page = fake
    page.locator("#load-sample").click()
    report = server.wait_for(lambda r: r["volume"] is not None, "the sample to load")
    assert report["volume"]["dims"] == [128, 128, 24]
    assert any("Loaded 'lits117_liver_ct.nrrd'" in t for t in chat(report, "info"))
    view = page.locator("#view-Red").bounding_box()
    img = shot(page)[int(view["y"]):int(view["y"] + view["height"]), int(view["x"]):int(view["x"] + view["width"])]
    assert img.std() > 20, "the slice view shows no image"


def test_02_segment_the_liver_asks_for_a_box(fake):
    server, page = fake
    send(page, "segment the liver")
    report = server.wait_for(lambda r: r["run"] is not None and any("box tool is ready" in t for t in chat(r)),
                             "the agent to ask for a box")
    run = report["run"]
    assert run["target"] == "liver" and run["turns"] == 0 and run["axis"] == "K"
    assert run["segment"]["name"] == "liver"
    assert np.allclose(run["segment"]["color"], np.array([221, 130, 101]) / 255.0, atol=1e-3)
    assert "SCT^10200004^Liver" in run["segment"]["terminology"]
    assert chat(report, "user") == ["segment the liver"]


def test_03_place_a_box_with_the_mouse(fake):
    server, page = fake
    report = server.scene()
    before = shot(page)
    a, b = page_xy(page, report, BOX[0], BOX[1]), page_xy(page, report, BOX[2], BOX[3])
    page.mouse.click(*a)
    page.mouse.move(*b, steps=5)
    page.mouse.click(*b)
    report = server.wait_for(turns_are(1), "the box's turn")
    run = report["run"]
    assert np.allclose(run["box"], BOX, atol=1.0), run["box"]
    assert run["actions"] == ["add_bbox"] and run["sources"] == ["user"]
    x1, y1, x2, y2 = (int(round(v)) for v in run["box"])
    assert run["segment"]["area"] == (x2 - x1 + 1) * (y2 - y1 + 1)  # the fake engine's mask is the box
    inside = page_xy(page, report, (BOX[0] + BOX[2]) / 2 - 10, (BOX[1] + BOX[3]) / 2 + 10)
    outside = page_xy(page, report, 10.0, 120.0)
    after = until_shot(page, lambda img: tint(patch(img, inside)) > tint(patch(before, inside)) + 15,
                       "the segment's colour in the box")
    assert abs(tint(patch(after, outside)) - tint(patch(before, outside))) < 5
    STATE["turn1"] = run["segment"]["sha"]


def test_04_step_adds_a_click_and_the_mask_changes(fake):
    server, page = fake
    before_img = shot(page)
    page.locator("#step").click()
    report = server.wait_for(turns_are(2), "the agent's turn")
    run = report["run"]
    assert run["actions"] == ["add_bbox", "add_point"] and run["sources"] == ["user", "agent"]
    assert len(run["positive"]) == 1 and len(run["points"]) == 1
    assert run["segment"]["sha"] != STATE["turn1"] and run["segment"]["area"] > 0
    x, y = run["points"][0]
    assert x > BOX[2]  # beside the box: the mask grew there
    where = page_xy(page, report, x - 2.0, y)
    until_shot(page, lambda img: tint(patch(img, where, 2)) > tint(patch(before_img, where, 2)) + 15,
               "the segment's colour at the click")
    STATE.update(turn2=run["segment"]["sha"], click=(x, y))


def test_05_dragging_a_click_is_one_turn(fake):
    server, page = fake
    report = server.scene()
    x, y = STATE["click"]
    start, end = page_xy(page, report, x, y), page_xy(page, report, x, y + 6.0)
    page.mouse.move(*start, steps=3)
    time.sleep(0.3)
    page.mouse.down()
    page.mouse.move(*end, steps=12)
    page.mouse.up()
    report = server.wait_for(turns_are(3), "the drag's turn")
    time.sleep(1.0)  # nothing else may follow
    run = server.scene()["run"]
    assert run["turns"] == 3, "one drag must run exactly one turn"
    assert run["actions"][-1] == "edit_prompts" and run["sources"][-1] == "user"
    assert abs(run["points"][0][1] - (y + 6.0)) < 1.0 and abs(run["points"][0][0] - x) < 1.0
    assert run["segment"]["sha"] != STATE["turn2"]


def test_06_reject_restores_the_previous_mask_exactly(fake):
    server, page = fake
    page.locator("#reject").click()
    report = server.wait_for(turns_are(2), "Reject")
    run = report["run"]
    assert run["segment"]["sha"] == STATE["turn2"]
    assert np.allclose(run["points"][0], STATE["click"], atol=1e-6)
    assert any("Reject turn: turn 3 reverted" in t for t in chat(report, "info"))


def test_07_accept_freezes(fake):
    server, page = fake
    page.locator("#accept").click()
    report = server.wait_for(lambda r: r["run"]["status"] == "accepted", "Accept")
    assert report["run"]["locked"] and report["run"]["segment"]["sha"] == STATE["turn2"]
    page.wait_for_selector("#step[disabled]")
    page.wait_for_selector("#reject[disabled]")


def test_08_the_turn_slider_shows_turn_1_again(fake):
    server, page = fake
    report = server.scene()
    click_at = page_xy(page, report, STATE["click"][0] - 2.0, STATE["click"][1])
    before = shot(page)
    thumb = page.locator("#turn-slider .v-slider-thumb")
    thumb.focus()
    page.keyboard.press("Home")
    report = server.wait_for(lambda r: r["run"]["reviewed"] == "1", "the slider to show turn 1")
    run = report["run"]
    assert run["review_mask_sha"] == run["turn_shas"][0] == STATE["turn1"] and not run["live_visible"]
    until_shot(page, lambda img: tint(patch(img, click_at, 2)) < tint(patch(before, click_at, 2)) - 15,
               "turn 1's mask, with no click there")
    page.keyboard.press("End")
    report = server.wait_for(lambda r: r["run"]["reviewed"] is None, "the slider back at the last turn")
    assert report["run"]["live_visible"] and report["run"]["segment"]["sha"] == STATE["turn2"]


def test_09_save_and_read_the_files_back(fake, out):
    import nrrd

    server, page = fake
    folder = out / "results"
    page.fill("#save-dir", str(folder))
    page.locator("#save").click()
    report = server.wait_for(lambda r: any(t.startswith("Saved ") for t in chat(r, "info")), "Save")
    data, header = nrrd.read(str(folder / "segmentation.seg.nrrd"))
    names = [v for key, v in header.items() if key.startswith("Segment") and key.endswith("_Name")]
    assert "liver" in names
    trajectory = json.loads((folder / "trajectory.json").read_text())
    assert trajectory["format"] == "medagentseg-slicer-trajectory/1"
    (entry,) = trajectory["runs"]
    assert [t["action"]["name"] for t in entry["session"]["turns"]] == ["add_bbox", "add_point"]
    assert int(np.count_nonzero(data)) == report["run"]["segment"]["area"]  # one slice, one segment: its voxels
    assert not list(folder.glob("partial-*")) and not list(folder.glob("*.tmp"))


def test_09b_no_path_the_page_sends_leaves_the_served_folders(fake, out):
    server, page = fake
    outside = out.parent / f"{out.name}-escape"
    page.fill("#save-dir", str(out / ".." / outside.name))  # '..' resolved: outside the served folders
    page.locator("#save").click()
    server.wait_for(lambda r: any("save folder" in t and "outside the folders" in t for t in chat(r, "error")),
                    "the refused save folder")
    assert not outside.exists()
    before = server.scene()["volume"]["name"]
    page.fill("#path", "/etc/hostname")
    page.locator("#open-path").click()
    report = server.wait_for(lambda r: any("volume path" in t and "outside the folders" in t
                                           for t in chat(r, "error")), "the refused volume path")
    assert report["volume"]["name"] == before


def test_10_an_unreadable_upload_says_so_and_changes_nothing(fake, out):
    server, page = fake
    bad = out / "notes.nrrd"
    bad.write_text("this is not an image")
    page.set_input_files("#upload", str(bad))
    report = server.wait_for(lambda r: any("Could not read 'notes.nrrd'" in t for t in chat(r, "error")),
                             "the upload's error")
    assert report["volume"]["name"] == "lits117_liver_ct.nrrd" and report["run"]["segment"]["sha"] == STATE["turn2"]


def test_11_an_unknown_target_and_a_second_tab_are_chat_lines(fake, browser):
    server, page = fake
    send(page, "segment the flux capacitor")
    report = server.wait_for(lambda r: chat(r, "user")[-1] == "segment the flux capacitor" and any(
        "did not" in t for t in chat(r, "error")[-1:]), "the unknown target's answer")
    assert report["run"]["segment"]["sha"] == STATE["turn2"]  # nothing written
    second = _open(browser, server)
    try:
        server.wait_for(lambda r: any("Another browser tab" in t for t in chat(r, "warning")),
                        "the second tab's warning")
    finally:
        second.close()


# -- the engine failing and the browser closed mid-turn ---------------------------------------------------------------
@pytest.fixture(scope="module")
def faulty(browser, out):
    """A second fake-engine server whose engine the test makes fail or wait (GET /__engine__), with the sample
    loaded, "segment the liver" asked, the box placed and one agent Step done."""
    (out / "faulty").mkdir(exist_ok=True)
    server = Server("fake", out / "faulty")
    page = _open(browser, server)
    page.locator("#load-sample").click()
    server.wait_for(lambda r: r["volume"] is not None, "the sample to load")
    send(page, "segment the liver")
    report = server.wait_for(lambda r: r["run"] is not None and any("box tool is ready" in t for t in chat(r)),
                             "the agent to ask for a box")
    a, b = page_xy(page, report, BOX[0], BOX[1]), page_xy(page, report, BOX[2], BOX[3])
    page.mouse.click(*a)
    page.mouse.move(*b, steps=5)
    page.mouse.click(*b)
    server.wait_for(turns_are(1), "the box's turn")
    page.locator("#step").click()
    server.wait_for(turns_are(2), "the first agent turn")
    pages = {"page": page}
    yield server, pages
    pages["page"].close()
    server.stop()


def _whole(run: dict) -> None:
    """The scene holds whole turns: the segment is the last recorded turn's mask and the markups are the session's."""
    assert run["turn_shas"] and run["segment"]["sha"] == run["turn_shas"][-1]
    assert len(run["turn_shas"]) == run["turns"] == len(run["actions"])
    assert len(run["positive"]) + len(run["negative"]) == len(run["points"])


def test_12_the_engine_failing_mid_turn_is_a_chat_line_and_changes_nothing(faulty):
    server, pages = faulty
    page = pages["page"]
    before = server.wait_for(turns_are(2), "an idle session")["run"]
    errors = len(chat(server.scene(), "error"))
    server.engine(fail=1)
    page.locator("#step").click()
    report = server.wait_for(lambda r: len(chat(r, "error")) > errors and not r["busy"], "the failed turn's message")
    line = chat(report, "error")[-1]
    assert "The turn failed" in line and "fake engine failed on purpose" in line, line
    assert "Nothing was changed" in line and "try again" in line, line  # what happened and what to do
    run = report["run"]
    for key in ("turns", "actions", "sources", "segment", "points", "positive", "negative", "turn_shas"):
        assert run[key] == before[key], key  # exactly as before the failed Step
    _whole(run)
    page.wait_for_selector("#step:not([disabled])")
    page.locator("#step").click()  # the next Step works
    run = server.wait_for(turns_are(3), "the Step after the failure")["run"]
    assert run["actions"][-1] == "add_point" and run["segment"]["sha"] != before["segment"]["sha"]
    _whole(run)


def test_13_the_browser_closed_mid_turn_keeps_one_whole_turn(faulty, browser):
    server, pages = faulty
    before = server.wait_for(turns_are(3), "an idle session")["run"]
    server.engine(block=1)
    pages["page"].locator("#step").click()
    server.wait_for(lambda r: r["busy"], "the turn to start")
    deadline = time.monotonic() + 30
    while not server.engine()["waiting"]:  # the engine is inside predict, held there
        assert time.monotonic() < deadline, "the engine never reached predict"
        time.sleep(0.05)
    pages["page"].close()  # the person closes the browser mid-turn (no beforeunload)
    page = pages["page"] = _open(browser, server)  # and opens the app again
    report = server.scene()  # the server is alive, the turn is still held: nothing written yet
    assert report["busy"] and report["run"]["turns"] == before["turns"]
    assert report["run"]["segment"]["sha"] == before["segment"]["sha"]
    server.engine(release=1)
    report = server.wait_for(turns_are(4), "the held turn to finish")
    run = report["run"]
    assert run["actions"] == before["actions"] + ["add_point"] and len(run["points"]) == len(before["points"]) + 1
    _whole(run)  # one whole turn: segment, markups and trajectory item together
    lines = chat(report)
    assert any("Turn 4 (Agent)" in t for t in lines), lines[-6:]  # the chat says the turn completed
    assert any("page was closed while the agent worked on a turn" in t for t in lines), lines[-6:]
    assert not any("Another browser tab" in t for t in lines), "a closed page still counted as a tab"
    page.wait_for_selector("#undo:not([disabled])")
    page.locator("#undo").click()  # Undo and Step still work from the new page
    run = server.wait_for(turns_are(3), "Undo")["run"]
    assert run["segment"]["sha"] == before["segment"]["sha"] and run["points"] == before["points"]
    page.wait_for_selector("#step:not([disabled])")
    page.locator("#step").click()
    run = server.wait_for(turns_are(4), "the Step after Undo")["run"]
    _whole(run)


# -- the real engine -------------------------------------------------------------------------------------------------
def test_the_real_engine_segments_the_liver_from_a_box(browser, out):
    pytest.importorskip("torch", reason="the engine extra is not installed: pip install -e '.[engine]'")
    import nrrd

    labels, _ = nrrd.read(str(SAMPLE_LABELS))  # (I, J, K)
    server = Server("real", out)
    try:
        page = _open(browser, server)
        page.locator("#load-sample").click()
        server.wait_for(lambda r: r["volume"] is not None, "the sample to load")
        send(page, "segment the liver")
        report = server.wait_for(lambda r: r["run"] is not None and any("box tool is ready" in t for t in chat(r)),
                                 "the agent to ask for a box", timeout=120)
        k = report["run"]["slice"]
        liver = labels[:, :, k].T == 1  # (y, x)
        ys, xs = np.nonzero(liver)
        h, w = liver.shape
        a = page_xy(page, report, max(1.0, xs.min() - 2.0), max(1.0, ys.min() - 2.0))  # inside the view
        b = page_xy(page, report, min(w - 2.0, xs.max() + 2.0), min(h - 2.0, ys.max() + 2.0))
        page.mouse.click(*a)
        page.mouse.move(*b, steps=5)
        page.mouse.click(*b)
        report = server.wait_for(turns_are(1), "the engine's first turn", timeout=120)
        mask = unpack(report["run"]["segment"])
        dice = 2 * (mask & liver).sum() / (mask.sum() + liver.sum())
        assert dice > 0.8, f"the liver is not segmented (Dice {dice:.2f} against the sample's label)"
        shot_path = os.environ.get("MEDAGENTSEG_WEB_SCREENSHOT")
        if shot_path:
            time.sleep(1.0)
            page.screenshot(path=shot_path)
        page.close()
    finally:
        server.stop()
