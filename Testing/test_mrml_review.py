"""The review's defects in the Slicer logic (issue #17), each on a real MRML scene (PyPI slicer-core).

The volume is the bundled LiTS 117 sample with an oblique, anisotropic IJKToRAS; the engine is a fake (the mask is
the box plus disks at the clicks) so these run in seconds. What is checked:
- markups written by the logic fire their events at once and leave none pending; a drag runs one turn, at its end;
- closing the scene drops the runs and whatever was still in flight;
- the engine default is the library's (click-aware) one, every engine is offered, SAM needs its checkpoint;
- a chat request makes one segment per structure with its colour and terminology; warnings and modality are used;
- a parent transform moves the slice choice, the slice views and a new segmentation with the volume;
- the worker never reads MRML; Run while a turn is in flight leaves the session alone;
- a segment deleted while the engine loads is a chat message, not an exception in the timer;
- dependencies install in a child process; the self-test downloads nothing and is not a ctest;
- a wheel carries the shipped weights.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fakes import BoxEngine
from mrml_scene import MainThreadOnly, oblique

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: pip install -e '.[test]'")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from MedAgentSegModuleLib import deps  # noqa: E402
from MedAgentSegModuleLib.agent_logic import AgentError, AgentSegLogic, default_engine, engine_choices  # noqa: E402
from MedAgentSegModuleLib.mrml_writer import (  # noqa: E402
    MRMLInputError,
    PromptNodes,
    ensure_scene_logics,
    slice_geometry,
    view_slice,
    vtk_matrix,
)
from MedAgentSegModuleLib.worker import JobResult  # noqa: E402

from MedAgentSegLib.engines import DEFAULT_ENGINE, engine_names  # noqa: E402
from MedAgentSegLib.engines.base import Prompts  # noqa: E402

SAMPLE = REPO / "Resources" / "Samples"


# -- helpers -------------------------------------------------------------------------------------------------
FakeEngine = BoxEngine  # the box, plus a disk of radius 3 at each click (Testing/fakes.py)


class ManualExecutor:
    """A worker that runs nothing until told: `run_all()` runs the queued jobs (on this thread), `poll()` hands
    them over as the real one does. For tests that need a turn 'in flight'."""

    def __init__(self):
        self.queued, self.done = [], []

    @property
    def busy(self):
        return bool(self.queued or self.done)

    def submit(self, name, fn, *args, callback=None, **kwargs):
        self.queued.append((name, fn, args, kwargs, callback))

    def run_all(self):
        while self.queued:
            name, fn, args, kwargs, callback = self.queued.pop(0)
            try:
                self.done.append(JobResult(name, value=fn(*args, **kwargs), callback=callback))
            except Exception as exc:  # noqa: BLE001 - as the real worker
                self.done.append(JobResult(name, error=exc, callback=callback))

    def poll(self):
        while self.done:
            result = self.done.pop(0)
            if result.callback is not None:
                result.callback(result)

    def settle(self):
        while self.busy:
            self.run_all()
            self.poll()

    def shutdown(self):
        pass


def oblique_ijk_to_ras() -> np.ndarray:
    return oblique(20.0, -10.0, (0.9, 0.8, 2.0), (-30.0, 12.5, 80.0))


def errors(ctx) -> list[str]:
    return [m.text for m in ctx["messages"] if m.role == "error"]


def texts(ctx, role: str) -> list[str]:
    return [m.text for m in ctx["messages"] if m.role == role]


@pytest.fixture(scope="module")
def sample():
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "lits117_liver_ct.nrrd"))).astype(np.int16)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "lits117_liver_ct_labels.nrrd")))
    liver = labels == 1
    return image, liver, int(np.argmax(liver.sum(axis=(1, 2))))


def add_volume(scene, image: np.ndarray):
    vol = slicer.vtkMRMLScalarVolumeNode()
    vol.SetName("LiTS117 sample")
    scene.AddNode(vol)
    img = vtk.vtkImageData()
    img.SetDimensions(image.shape[2], image.shape[1], image.shape[0])
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(image.ravel()), deep=True))
    vol.SetAndObserveImageData(img)
    vol.SetIJKToRASMatrix(vtk_matrix(oblique_ijk_to_ras()))
    return vol


def add_segmentation(scene, vol, liver=None):
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("Segmentation")
    scene.AddNode(seg)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    if liver is not None:
        ref_id = seg.GetSegmentation().AddEmptySegment("reference", "liver reference")
        img = slicer.vtkOrientedImageData()
        img.SetDimensions(liver.shape[2], liver.shape[1], liver.shape[0])
        img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        img.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(liver.astype(np.uint8).ravel(), deep=True))
        img.SetImageToWorldMatrix(vtk_matrix(oblique_ijk_to_ras()))
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            img, seg, ref_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return seg


@pytest.fixture
def ctx(sample):
    image, liver, k = sample
    scene = slicer.vtkMRMLScene()
    ensure_scene_logics(scene)
    vol = add_volume(scene, image)
    seg = add_segmentation(scene, vol, liver)
    messages, changes = [], []
    logic = AgentSegLogic(scene, engine_factory=lambda name, **kw: FakeEngine(), on_message=messages.append,
                          on_change=lambda: changes.append(len(messages)))
    yield {"scene": scene, "vol": vol, "seg": seg, "k": k, "liver": liver, "logic": logic, "messages": messages,
           "changes": changes, "image": image}
    logic.cleanup()


def start_oracle(ctx, **kw):
    args = dict(target="liver", axis="K", slice_index=ctx["k"], engine="fake", policy="oracle",
                reference_segment_id="reference", max_turns=4)
    args.update(kw)
    run = ctx["logic"].start(ctx["vol"], ctx["seg"], **args)
    ctx["logic"].wait()
    assert run.session is not None, errors(ctx)
    return run


def with_click(ctx):
    """An oracle run after its box and one click: (run, the node holding the click)."""
    run = start_oracle(ctx)
    ctx["logic"].run_agent(2)
    ctx["logic"].wait()
    assert len(run.records) == 2 and not errors(ctx), errors(ctx)
    node = run.prompts.positive if run.prompts.positive.GetNumberOfControlPoints() else run.prompts.negative
    assert node.GetNumberOfControlPoints() == 1
    return run, node


# -- markups events ------------------------------------------------------------------------------------------
def test_prompt_nodes_write_fires_its_events_at_once_and_leaves_none_pending():
    scene = slicer.vtkMRMLScene()
    geom = slice_geometry(add_volume(scene, np.zeros((4, 16, 16), np.int16)), "K", 2)
    prompts = PromptNodes.create(scene, "t")
    fired = []
    node = prompts.positive
    for ev in ("PointAddedEvent", "PointPositionDefinedEvent", "PointModifiedEvent"):
        node.AddObserver(getattr(node, ev), lambda caller, event, ev=ev: fired.append(ev))
    prompts.write(Prompts(box=(2, 2, 10, 10), points=[(5.0, 5.0)], labels=[1]), geom)
    assert "PointAddedEvent" in fired, "the views were never told about the new click"
    fired.clear()
    was = node.StartModify()  # what the markups widget does on the next drag
    node.EndModify(was)
    assert fired == [], f"events were left pending and fired on the next modification: {fired}"


def test_a_drag_runs_one_turn_when_it_ends(ctx):
    logic = ctx["logic"]
    run, node = with_click(ctx)
    n0 = len(run.records)
    x, y = run.session.prompts.points[0]
    node.InvokeEvent(node.PointStartInteractionEvent)
    for dx in (1.0, 2.0, 3.0):  # the widget moves the point inside StartModify / EndModify
        was = node.StartModify()
        node.SetNthControlPointPosition(0, *run.geom.pixel_to_ras(x + dx, y))
        node.EndModify(was)
        node.InvokeEvent(node.PointPositionDefinedEvent)
        logic.wait()
        assert len(run.records) == n0 and not logic.busy, "a turn ran in the middle of the drag"
    node.InvokeEvent(node.PointEndInteractionEvent)
    logic.wait()
    assert len(run.records) == n0 + 1, "one drag must be exactly one turn"
    assert np.allclose(run.session.turns[-1].prompts.points[0], (x + 3.0, y), atol=1e-6)
    assert run.session.turns[-1].source == "user" and not errors(ctx)


# -- scene close -----------------------------------------------------------------------------------------------
def test_closing_the_scene_drops_the_runs_and_what_was_in_flight(ctx):
    logic, scene = ctx["logic"], ctx["scene"]
    run = start_oracle(ctx)
    logic.step()  # a turn in flight while the person closes the scene
    scene.Clear(0)
    logic.wait()
    assert logic.runs == {} and logic.active is None
    assert not errors(ctx), errors(ctx)
    assert any("scene was closed" in t for t in texts(ctx, "info"))
    assert run.observer_tags == []
    with pytest.raises(AgentError, match="No segmentation session"):
        logic.run_agent()
    # the logic works on the next scene
    vol = add_volume(scene, ctx["image"])
    again = logic.start(vol, None, "liver", slice_index=ctx["k"], engine="fake", policy="scripted")
    logic.wait()
    assert again.session is not None and not errors(ctx), errors(ctx)


# -- engines ---------------------------------------------------------------------------------------------------
def test_engine_default_is_the_librarys_and_every_engine_is_offered(ctx):
    assert default_engine() == DEFAULT_ENGINE
    assert engine_choices() == engine_names() and {"litemedsam", "sam_vit_b"} <= set(engine_choices())
    asked = []
    ctx["logic"].engine_factory = lambda name, **kw: asked.append((name, kw)) or FakeEngine()
    ctx["logic"].start(ctx["vol"], ctx["seg"], "liver", slice_index=ctx["k"], policy="scripted")
    ctx["logic"].wait()
    assert asked == [(DEFAULT_ENGINE, {})]  # the Qt parameter's default is wired to it: test_ui_widgets.py


def test_sam_needs_its_checkpoint_and_gets_it(ctx, tmp_path):
    logic = AgentSegLogic(ctx["scene"], on_message=ctx["messages"].append)  # the real engine checks
    try:
        with pytest.raises(AgentError, match="SAM checkpoint"):
            logic.start(ctx["vol"], ctx["seg"], "liver", engine="sam_vit_b", policy="scripted")
        with pytest.raises(AgentError, match="does not exist"):
            logic.start(ctx["vol"], ctx["seg"], "liver", engine="sam_vit_b", policy="scripted",
                        engine_options={"checkpoint": str(tmp_path / "missing.pth")})
        with pytest.raises(AgentError, match="Unknown engine"):
            logic.start(ctx["vol"], ctx["seg"], "liver", engine="sam_vit_q", policy="scripted")
        assert logic.runs == {} and ctx["seg"].GetSegmentation().GetNumberOfSegments() == 1  # nothing created
    finally:
        logic.cleanup()
    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"")
    asked = []
    ctx["logic"].engine_factory = lambda name, **kw: asked.append((name, kw)) or FakeEngine()
    ctx["logic"].start(ctx["vol"], ctx["seg"], "liver", slice_index=ctx["k"], engine="sam_vit_b", policy="scripted",
                       engine_options={"checkpoint": str(checkpoint)})
    ctx["logic"].wait()
    assert asked == [("sam_vit_b", {"checkpoint": str(checkpoint)})]  # the widget's field: test_ui_widgets.py


# -- chat requests -----------------------------------------------------------------------------------------------
def segment_names(seg) -> list[str]:
    s = seg.GetSegmentation()
    return [s.GetSegment(sid).GetName() for sid in s.GetSegmentIDs()]


def draw_and_accept(ctx, run):
    ys, xs = np.nonzero(ctx["liver"][ctx["k"]])
    run.prompts.write(Prompts(box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))), run.geom)
    ctx["logic"].sync_prompts_from_markups()
    ctx["logic"].wait()
    ctx["logic"].accept()
    ctx["logic"].wait()


@pytest.mark.parametrize("text", ["segment the left kidney and the right kidney", "segment the kidneys"])
def test_a_request_makes_one_segment_per_structure_with_its_colour_and_code(ctx, text):
    logic = ctx["logic"]
    assert logic.request(text, ctx["vol"], ctx["seg"], slice_index=ctx["k"], engine="fake",
                         policy="scripted") == "segment"
    logic.wait()
    run = logic.active
    assert run.target == "left kidney" and [t["name"] for t, _ in logic.queued] == ["right kidney"]
    assert not any("+" in n for n in segment_names(ctx["seg"]))
    segment = run.segment()
    assert np.allclose(segment.GetColor(), np.array([185, 102, 83]) / 255.0, atol=1e-6)
    assert "SCT^64033007^Kidney" in segment.GetTerminology() and "SCT^7771000^Left" in segment.GetTerminology()
    draw_and_accept(ctx, run)
    second = logic.active
    assert second is not run and second.target == "right kidney" and logic.queued == []
    assert "SCT^24028007^Right" in second.segment().GetTerminology()
    assert {"left kidney", "right kidney"} <= set(segment_names(ctx["seg"]))
    assert [m.text for m in ctx["messages"] if m.role == "user"] == [text]
    assert not errors(ctx), errors(ctx)


def test_a_request_says_the_parsers_warnings_and_uses_the_modality_it_names(ctx):
    logic = ctx["logic"]
    logic.request("segment the livr on MRI", ctx["vol"], ctx["seg"], slice_index=ctx["k"], engine="fake",
                  policy="scripted")
    logic.wait()
    warnings = texts(ctx, "warning")
    assert any("Read 'segment the livr on MRI' as" in w for w in warnings), warnings
    assert any("intensities look like CT" in w for w in warnings), warnings  # the sample is CT; said, not hidden
    assert logic.active.modality == "MR" and logic.active.target == "liver"
    assert logic.request("gibberish words", ctx["vol"], ctx["seg"]) == "unknown" and errors(ctx)


# -- parent transforms -----------------------------------------------------------------------------------------
def test_a_parent_transform_moves_the_slice_choice_the_views_and_the_segment_with_the_volume(ctx):
    scene, vol, k, logic = ctx["scene"], ctx["vol"], ctx["k"], ctx["logic"]
    t = vtk.vtkTransform()
    t.Translate(40.0, -25.0, 60.0)
    t.RotateZ(30.0)
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    transform.SetMatrixTransformToParent(t.GetMatrix())
    vol.SetAndObserveTransformNodeID(transform.GetID())

    geom = slice_geometry(vol, "K", k)
    centre_local = geom.pixel_to_ras((geom.width - 1) / 2.0, (geom.height - 1) / 2.0)
    to_world = t.GetMatrix()
    centre = np.array(to_world.MultiplyPoint([*centre_local, 1.0])[:3])
    normal_local = oblique_ijk_to_ras()[:3, 2] / np.linalg.norm(oblique_ijk_to_ras()[:3, 2])
    normal = np.array(to_world.MultiplyPoint([*normal_local, 0.0])[:3])
    red = slicer.vtkMRMLSliceNode()
    red.SetLayoutName("Red")
    red.SetName("Red")
    scene.AddNode(red)
    x_axis = np.cross([0.0, 1.0, 0.0], normal)
    red.SetSliceToRASByNTP(*normal, *(x_axis / np.linalg.norm(x_axis)), *centre, 0)
    assert view_slice(red, vol, "Red") == ("K", k)

    red.SetSliceToRASByNTP(*normal, *(x_axis / np.linalg.norm(x_axis)), *(centre + 7.0 * normal), 0)  # elsewhere
    run = logic.start(vol, None, "liver", axis="K", slice_index=k, engine="fake", policy="scripted")
    logic.wait()
    assert run.segmentation_node.GetTransformNodeID() == transform.GetID()
    assert view_slice(red, vol, "Red") == ("K", k), "the views were not moved to the session's slice"
    with pytest.raises(MRMLInputError, match="different transform"):
        logic.start(vol, ctx["seg"], "spleen", axis="K", slice_index=k, engine="fake", policy="scripted")


# -- threads ---------------------------------------------------------------------------------------------------
def test_the_worker_never_reads_mrml(ctx):
    logic = AgentSegLogic(ctx["scene"], executor=ManualExecutor(), engine_factory=lambda name, **kw: FakeEngine(),
                          on_message=ctx["messages"].append)
    run = logic.start(ctx["vol"], ctx["seg"], "liver", slice_index=ctx["k"], engine="fake", policy="scripted")
    run.volume_node = MainThreadOnly(run.volume_node)
    run.segmentation_node = MainThreadOnly(run.segmentation_node)
    out = {}
    worker = threading.Thread(target=lambda: out.update(value=logic._open_session_job(run)))
    worker.start()
    worker.join()
    assert "value" in out, "the session job failed on the worker (see the AssertionError above)"


def test_run_while_a_turn_is_in_flight_leaves_the_session_alone(ctx):
    executor = ManualExecutor()
    logic = AgentSegLogic(ctx["scene"], executor=executor, engine_factory=lambda name, **kw: FakeEngine(),
                          on_message=ctx["messages"].append)
    run = logic.start(ctx["vol"], ctx["seg"], "liver", slice_index=ctx["k"], engine="fake", policy="oracle",
                      reference_segment_id="reference", max_turns=3)
    executor.settle()
    logic.step()
    executor.settle()
    logic.stop()
    assert run.session.status == "stopped"
    turns = list(run.session.turns)
    executor.submit("a turn in flight", lambda: None)  # e.g. the person's edit, not yet run
    logic.run_agent(2)
    assert run.session.turns == turns and run.session.status == "stopped", "Run undid the stop under the worker"
    executor.settle()


# -- a deleted segment -----------------------------------------------------------------------------------------
def test_a_segment_deleted_while_the_engine_loads_is_a_chat_message(ctx):
    logic = ctx["logic"]
    run = logic.start(ctx["vol"], ctx["seg"], "liver", slice_index=ctx["k"], engine="fake", policy="scripted")
    ctx["seg"].GetSegmentation().RemoveSegment(run.segment_id)
    logic.wait()  # the callback runs in the poll timer: it must not raise there
    assert any("was deleted" in e for e in errors(ctx)), errors(ctx)
    assert logic.active is None and ctx["changes"] and ctx["changes"][-1] == len(ctx["messages"])


def test_an_exception_in_a_callback_becomes_a_chat_message(ctx, monkeypatch):
    logic = ctx["logic"]
    run = start_oracle(ctx)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while writing")

    monkeypatch.setattr(logic, "_apply_turn", broken)
    monkeypatch.setattr(logic, "_on_turn", lambda run, result, *a: broken())
    logic.step()
    logic.wait()
    assert any("simulated failure while writing" in e for e in errors(ctx)), errors(ctx)
    assert run.auto_turns_left == 0


# -- set-up and packaging -----------------------------------------------------------------------------------------
def test_dependencies_install_in_a_child_process_without_blocking():
    job = deps.start_install(["some-package"], command=[sys.executable, "-c", "import time; time.sleep(1.0); "
                                                        "print('installed')"])
    assert job.poll() is None  # started, not waited for: pip runs in a child process
    while (done := job.poll()) is None:
        time.sleep(0.05)
    assert done == (0, "installed")
    assert deps.start_install([]) is None


def test_a_wheel_carries_the_shipped_weights(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "MedAgentSegLib", src / "MedAgentSegLib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"MedAgentSegLib/weights/{p.name}" for p in (REPO / "MedAgentSegLib" / "weights").glob("*.pt")}
    assert shipped and shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
