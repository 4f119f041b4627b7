"""The views: trame-slicer's layouts (four-up: axial, 3D, sagittal, coronal; or the axial view alone), each slice
view's slice number and position, and a 3D view that shows the segment (its closed surface) with the axial slice
rather than a volume rendering that would hide it."""

from __future__ import annotations

from typing import Any

from MedAgentSegModuleLib.mrml_writer import MRMLInputError, view_slice
from trame_slicer.core import LayoutManager
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

__all__ = ["ViewsFeature", "LAYOUTS", "SLICE_VIEWS"]

SLICE_VIEWS = ("Red", "Yellow", "Green")  # axial, sagittal, coronal (Slicer's names)
LAYOUTS = {"four-up": "Four-up (axial, 3D, sagittal, coronal)", "axial": "Axial only"}


def _layouts() -> dict[str, Layout]:
    axial, coronal = ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view()
    sagittal, threed = ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.threed_view()
    row = LayoutDirection.Horizontal
    four_up = Layout(LayoutDirection.Vertical, [Layout(row, [axial, threed]), Layout(row, [sagittal, coronal])])
    return {"four-up": four_up, "axial": Layout(LayoutDirection.Vertical, [axial])}


def label_key(tag: str) -> str:
    return f"slice_label_{tag}"


class ViewsFeature:
    """On `app` (a WebApp: server, state, scene, slicer_app)."""

    def __init__(self, app: Any):
        self.app = app
        for tag in SLICE_VIEWS:
            app.state[label_key(tag)] = ""
        app.state.layout = "four-up"
        app.state.layouts = [{"title": t, "value": k} for k, t in LAYOUTS.items()]

    def install(self, layout_manager: LayoutManager) -> None:
        """Register the layouts (their views are made now, so a volume shows in all of them) and show four-up."""
        layout_manager.register_layout_dict(_layouts())
        layout_manager.set_layout(self.app.state.layout)
        for tag in SLICE_VIEWS:
            view = self.app.slicer_app.view_manager.get_view(tag)
            if view is not None:
                view.modified.connect(lambda *_, t=tag: self.update_label(t))
        self.app.state.change("layout")(lambda layout, **_: layout_manager.set_layout(layout))

    def show_volume(self, volume: Any) -> None:
        """`volume` in every slice view; in 3D, the axial slice and the segments, not the volume rendered."""
        sa = self.app.slicer_app
        sa.display_manager.show_volume(volume, do_reset_views=True)
        vr = sa.volume_rendering.get_vr_display_node(volume)
        if vr is not None:
            vr.SetVisibility(False)
        for tag in SLICE_VIEWS:  # a margin: the slice slider along the view's bottom edge takes the clicks there
            view = sa.view_manager.get_view(tag)
            if view is not None:
                view.zoom(-0.25)
        red = sa.view_manager.get_view("Red")
        if red is not None:
            red.set_visible_in_3d(True)
        self._oblique_3d()
        for tag in SLICE_VIEWS:
            self.update_label(tag)

    def _oblique_3d(self) -> None:
        """From above and to the side: a segment on one axial slice is a thin slab, edge-on from the front."""
        view = self.app.slicer_app.view_manager.get_view("ThreeD")
        if view is None:
            return
        camera = view.first_renderer().GetActiveCamera()
        camera.Elevation(40.0)
        camera.Azimuth(30.0)
        camera.OrthogonalizeViewUp()
        view.reset_camera()
        view.schedule_render()

    def update_label(self, tag: str) -> None:
        """'Axial K=12 (13/24) · S 35.0 mm': the slice's index as the chat says it, its number, its position."""
        self.app.state[label_key(tag)] = self._label(tag)

    def _label(self, tag: str) -> str:
        volume = self.app.volume_node
        node = self.app.scene.GetNodeByID(f"vtkMRMLSliceNode{tag}")
        if volume is None or node is None or volume.GetScene() is None or volume.GetImageData() is None:
            return ""
        name = node.GetOrientation() or tag
        try:
            axis, index = view_slice(node, volume, tag)
        except MRMLInputError:
            return f"{name}: outside the volume"
        total = volume.GetImageData().GetDimensions()["IJK".index(axis)]
        letter = {"Axial": "S", "Sagittal": "R", "Coronal": "A"}.get(name, "")
        return f"{name} {axis}={index} ({index + 1}/{total}) · {letter} {node.GetSliceOffset():.1f} mm"

    def show_segments_in_3d(self, segmentation: Any) -> None:
        """The segment in the 3D view: its closed surface, made again by MRML whenever a turn writes the slice."""
        if segmentation is None or segmentation.GetScene() is None:
            return
        if not segmentation.GetSegmentation().ContainsRepresentation("Closed surface"):
            segmentation.CreateClosedSurfaceRepresentation()
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(True)
