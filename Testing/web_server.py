"""The browser app as Testing/test_web.py runs it: `python Testing/web_server.py --port P [--engine fake|real]`.

A separate process (a crash in VTK or the engine cannot take pytest down with it) serving the real app
(MedAgentSegWeb.app.WebApp). With `--engine fake` the engine is a fake (the mask is the box plus a disk at each
positive click, minus one at each negative click) and every policy name gives `ClickBesideBox`, so each Step is one
known click; with `--engine real` both are the product's. One route is added for the test: GET /__scene__ answers a
JSON report of the MRML scene, computed on the server's event loop (the thread that writes MRML), so the test
asserts on the scene itself, not only on the page. GET /__engine__?fail=1 makes the fake engine's next predict
raise; ?block=1 makes the next predict wait until ?release=1 (the answer's "waiting" says whether a predict is held
there now): the fault tests need no timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from fakes import BoxEngine  # noqa: E402  (this script's own folder)

from MedAgentSegLib.agent.common import click_action  # noqa: E402
from MedAgentSegLib.observation import Decision  # noqa: E402


class EngineControl:
    """What the test asks of the fake engine's next predict: raise, or wait until released."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fail_next = False
        self.block_next = False
        self.waiting = threading.Event()  # a predict is held
        self.release = threading.Event()

    def before_predict(self) -> None:  # worker thread
        with self.lock:
            fail, block = self.fail_next, self.block_next
            self.fail_next = self.block_next = False
        if fail:
            raise RuntimeError("the fake engine failed on purpose (test)")
        if block:
            self.waiting.set()
            self.release.wait()
            self.waiting.clear()

    def handle(self, query) -> dict[str, Any]:  # event loop
        with self.lock:
            if query.get("fail"):
                self.fail_next = True
            if query.get("block"):
                self.release.clear()
                self.block_next = True
        if query.get("release"):
            self.release.set()
        return {"waiting": self.waiting.is_set()}


CONTROL = EngineControl()


class FakeEngine(BoxEngine):
    """Testing/fakes.py's BoxEngine with 4 px click disks, held or failed on request through CONTROL."""

    name = "fake"

    def __init__(self):
        super().__init__(radius=4)

    def predict(self, prompts, prev_logits=None):
        CONTROL.before_predict()
        return super().predict(prompts, prev_logits)


class ClickBesideBox:
    """No box: stop and ask for one. Otherwise a positive click 6 px right of the box's right edge, at the height of
    its middle, lower by 8 px at each further turn: each Step adds a click outside the box, so the mask grows."""

    def __init__(self):
        self.last_decision = None

    def next_action(self, obs: Any):
        from MedAgentSegLib.actions import StopAction

        if obs.prompts.box is None:
            self.last_decision = Decision("no box yet: draw a box around the target, then let me refine")
            return StopAction()
        x1, y1, x2, y2 = obs.prompts.box
        y = (y1 + y2) / 2 + 8 * len(obs.prompts.points)
        self.last_decision = Decision("positive click beside the box (test policy)", 0.5)
        return click_action(min(obs.width - 1, x2 + 6), min(obs.height - 1, y), True, obs.height, obs.width)


def _sha(mask: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(mask, dtype=bool).tobytes()).hexdigest()[:16]


def _matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def scene_report(app) -> dict[str, Any]:
    """What the test asserts on: the volume, the active run's segment, markups and trajectory, the view geometry."""
    from MedAgentSegModuleLib.mrml_writer import markups_positions, volume_ijk_to_ras
    from MedAgentSegModuleLib.slice_writer import segment_kji

    out: dict[str, Any] = {"volume": None, "run": None, "view": None}
    vol = app.volume_node
    if vol is not None:
        out["volume"] = {"name": vol.GetName(), "dims": list(vol.GetImageData().GetDimensions())}
        red = app.scene.GetNodeByID("vtkMRMLSliceNodeRed")
        dims = red.GetDimensions()
        # pixel (x, y) of slice k -> view display (x, y), origin bottom-left: inverse(XYToRAS) . IJKToRAS
        out["view"] = {"ijk_to_xy": (np.linalg.inv(_matrix(red.GetXYToRAS())) @ volume_ijk_to_ras(vol)).tolist(),
                       "size": [dims[0], dims[1]]}
    run = app.logic.active
    if run is not None:
        seg = run.segmentation_node
        segmentation = seg.GetSegmentation()
        masks = {sid: run.writer.read_slice(sid, run.geom) for sid in segmentation.GetSegmentIDs()}
        segment = run.segment()
        roi = run.prompts.roi
        out["run"] = {
            "target": run.target, "axis": run.geom.axis, "slice": run.geom.index, "status": run.status,
            "turns": len(run.records), "sources": [r.record["source"] for r in run.records],
            "actions": [r.record["action"]["name"] for r in run.records],
            "segments": {segmentation.GetSegment(sid).GetName(): {"sha": _sha(m), "area": int(m.sum())}
                         for sid, m in masks.items()},
            "segment": None if segment is None else {
                "name": segment.GetName(), "color": list(segment.GetColor()), "sha": _sha(masks[run.segment_id]),
                "area": int(masks[run.segment_id].sum()), "terminology": segment.GetTerminology(),
                "shape": list(masks[run.segment_id].shape),
                "bits": np.packbits(masks[run.segment_id]).tobytes().hex()},
            "box": None if run.session is None or run.session.prompts.box is None else list(run.session.prompts.box),
            "points": [] if run.session is None else [list(p) for p in run.session.prompts.points],
            "roi_points": roi.GetNumberOfControlPoints(), "positive": markups_positions(run.prompts.positive).tolist(),
            "negative": markups_positions(run.prompts.negative).tolist(), "locked": bool(run.prompts.roi.GetLocked()),
            # the prompt state the markups show (read back from MRML, pixels) and the session's own: Undo must keep
            # them equal, or a stale click enters the next turn
            "shown_prompts": run.prompts.read(run.geom).to_dict(),
            "session_prompts": None if run.session is None else run.session.prompts.to_dict(),
            "session_mask_sha": None if run.session is None else _sha(run.session.mask),
            "turn_names": [] if run.session is None else [t.action["name"] for t in run.session.turns],
            "turn_shas": [_sha(m) for m in _turn_masks(run)],
            "reviewed": seg.GetAttribute("MedAgentSeg.ReviewedTurn") or None,
            "review_mask_sha": _review_sha(run),
            "live_visible": bool(seg.GetDisplayNode().GetVisibility()),
            "surface_points": _surface_points(seg, run.segment_id),
            "voxels": int(segment_kji(seg, run.segment_id, app.volume_node).sum()),  # the whole volume's
        }
    out["labeling"] = labeling_report(app)
    out["display"] = display_report(app)
    out["messages"] = [{"role": m.role, "text": m.text} for m in app.logic.messages]
    out["busy"] = app.logic.busy
    return out


def _surface_points(segmentation_node, segment_id: str) -> int:
    """Points of the segment's closed surface (what the 3D view draws); 0 when it has none."""
    import vtk

    poly = vtk.vtkPolyData()
    if not segmentation_node.GetSegmentation().ContainsRepresentation("Closed surface"):
        return 0
    segmentation_node.GetClosedSurfaceRepresentation(segment_id, poly)
    return int(poly.GetNumberOfPoints())


def _nodes(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def display_report(app) -> dict[str, Any]:
    """How the page draws: the volume's window/level, the segments' 2D fill and outline, whether any markups draws
    its node's name or a box filled, the layout, the slice labels, the hand tool in use and the propagation bar."""
    s = app.state
    window_level = None
    vol = app.volume_node
    if vol is not None and vol.GetDisplayNode() is not None:
        window_level = [float(vol.GetDisplayNode().GetWindow()), float(vol.GetDisplayNode().GetLevel())]
    seg = app.segmentation_node
    seg_display = None if seg is None else seg.GetDisplayNode()
    markups = _nodes(app.scene, "vtkMRMLMarkupsDisplayNode")
    return {
        "window_level": window_level, "wl_preset": s.wl_preset, "layout": s.layout,
        "fill_opacity": None if seg_display is None else float(seg_display.GetOpacity2DFill()),
        "fill_visible": None if seg_display is None else bool(seg_display.GetVisibility2DFill()),
        "outline_visible": None if seg_display is None else bool(seg_display.GetVisibility2DOutline()),
        "names_drawn": sorted(d.GetDisplayableNode().GetName() for d in markups
                              if d.GetPropertiesLabelVisibility() and d.GetDisplayableNode() is not None),
        "filled_boxes": sum(1 for d in markups if d.IsA("vtkMRMLMarkupsROIDisplayNode") and d.GetFillVisibility()),
        "slice_labels": {tag: s[f"slice_label_{tag}"] for tag in ("Red", "Yellow", "Green")},
        "tool": s.tool, "propagating": bool(s.propagating), "progress_value": s.progress_value,
        "messages_shown": [m["text"] for m in s.messages],
    }


def labeling_report(app) -> dict[str, Any] | None:
    """The review queue's open case: its mask on the slice in view (what edits change) and the pre-label's turn the
    case's slider shows there, each as packed bits, and which of the two is visible."""
    from MedAgentSegModuleLib.mrml_writer import view_slice
    from MedAgentSegModuleLib.review_queue import segment_kji

    review = app.labeling.review
    if review is None:
        return None
    out: dict[str, Any] = {"case": app.labeling.case_id, "reviewer": review.reviewer, "dirty": review.dirty(),
                           "volume": None if app.volume_node is None else app.volume_node.GetName()}
    if review.case is not None:
        _, k = view_slice(app.scene.GetNodeByID("vtkMRMLSliceNodeRed"), review.volume, "Red")
        seg = review.segmentation
        out.update(slice=k, mask=_bits(segment_kji(seg, review.segment_id, review.volume)[k]),
                   mask_visible=bool(seg.GetDisplayNode().GetVisibility()), turn=None, turn_visible=False)
        if review.trajectory is not None:
            proxy = review.trajectory.browser.GetProxyNode(review.trajectory.sequences["mask"])
            if proxy is not None and proxy.GetDisplayNode() is not None:
                out.update(turn=_bits(segment_kji(proxy, review.segment_id, review.volume)[k]),
                           turn_visible=bool(proxy.GetDisplayNode().GetVisibility()))
    return out


def _bits(mask: np.ndarray) -> dict[str, Any]:
    return {"shape": list(mask.shape), "area": int(mask.sum()), "bits": np.packbits(mask).tobytes().hex()}


def _turn_masks(run) -> list[np.ndarray]:
    """The mask each recorded turn wrote (the trajectory sequence's items), on the session's slice."""
    out = []
    seq = run.recorder.sequences["mask"]
    for i in range(seq.GetNumberOfDataNodes()):
        out.append(_read_node_slice(seq.GetNthDataNode(i), run))
    return out


def _read_node_slice(node, run) -> np.ndarray:
    import slicer
    from vtk.util import numpy_support

    img = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation(run.segment_id, img)
    out = np.zeros((run.geom.height, run.geom.width), bool)
    e = img.GetExtent()
    if e[0] > e[1] or img.GetPointData().GetScalars() is None:
        return out
    full = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(
        e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    k = run.geom.index
    if not e[4] <= k <= e[5]:
        return out
    out[e[2]:e[3] + 1, e[0]:e[1] + 1] = full[k - e[4]] > 0
    return out


def _review_sha(run) -> str | None:
    proxy = run.recorder.browser.GetProxyNode(run.recorder.sequences["mask"])
    if proxy is None or proxy.GetDisplayNode() is None or not proxy.GetDisplayNode().GetVisibility():
        return None
    return _sha(_read_node_slice(proxy, run))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", choices=["fake", "real"], default="fake")
    parser.add_argument("--out", default=None)
    parser.add_argument("--labeling", default=None)
    parser.add_argument("--reviewer", default=None)
    args = parser.parse_args()
    os.environ["TRAME_ARGS"] = ""  # only these options, not argv
    from MedAgentSegWeb.app import WebApp

    fake = args.engine == "fake"
    app = WebApp(engine_factory=(lambda name, **kw: FakeEngine()) if fake else None,
                 policy_factory=(lambda name, gt, **kw: ClickBesideBox()) if fake else None, device="cpu",
                 out_dir=args.out, data_dirs=[str(Path(args.out).parent)] if args.out else None,
                 labeling=args.labeling, reviewer=args.reviewer)

    def bind(wslink_server) -> None:
        from aiohttp import web

        async def report(request):
            return web.json_response(json.loads(json.dumps(scene_report(app), default=float)))

        async def engine(request):
            return web.json_response(CONTROL.handle(request.query))

        wslink_server.app.router.add_get("/__scene__", report)
        wslink_server.app.router.add_get("/__engine__", engine)

    app.server.controller.on_server_bind.add(bind)
    app.server.start(host="127.0.0.1", port=args.port, open_browser=False, timeout=0, show_connection_info=True)


if __name__ == "__main__":
    main()
