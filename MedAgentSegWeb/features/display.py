"""How things are drawn: window/level presets (dragging in a slice view is Slicer's own window/level), the segments'
fill opacity and outline-only mode, and no node names on the image (markups labels name internal nodes such as
"MedAgentSeg liver box" or a sequence's proxy; boxes are outlines, never a filled rectangle)."""

from __future__ import annotations

from typing import Any

from trame_slicer.core.volume_window_level import VolumeWindowLevel

__all__ = ["DisplayFeature", "WL_PRESETS", "AUTO"]

AUTO = "auto"
# (window, level) in HU; "auto" is the volume's own (a percentile stretch: MR, or any image)
WL_PRESETS = {AUTO: ("Auto (MR or any image)", None), "abdomen": ("CT abdomen", (400.0, 40.0)),
              "liver": ("CT liver", (150.0, 30.0)), "lung": ("CT lung", (1500.0, -600.0)),
              "bone": ("CT bone", (2000.0, 400.0)), "brain": ("CT brain", (80.0, 40.0))}
DEFAULT_OPACITY = 0.5  # the image under a mask stays readable


class DisplayFeature:
    """On `app` (a WebApp: state, scene, volume_node)."""

    def __init__(self, app: Any):
        self.app = app
        self._styled: set[str] = set()
        s = app.state
        s.wl_preset = AUTO
        s.wl_presets = [{"title": t, "value": k} for k, (t, _) in WL_PRESETS.items()]
        s.opacity, s.outline = DEFAULT_OPACITY, False
        s.change("wl_preset")(lambda wl_preset, **_: self.apply_preset(wl_preset))
        s.change("opacity", "outline")(lambda **_: self.restyle())
        s.wl_drag = False
        s.change("wl_drag")(lambda wl_drag, **_: self.set_drag(bool(wl_drag)))

    def apply_preset(self, key: str) -> None:
        volume = self.app.volume_node
        if volume is None or key not in WL_PRESETS:
            return
        window_level = WL_PRESETS[key][1]
        if window_level is None:
            display = VolumeWindowLevel.get_volume_display_node(volume)
            display.SetAutoWindowLevel(1)
        else:
            VolumeWindowLevel.set_volume_node_window_level(volume, *window_level)

    def set_drag(self, on: bool) -> None:
        """Slicer's window/level mode: a left drag in a slice view changes the window (sideways) and the level (up
        and down). Off: the left button places and moves the box and clicks again."""
        node = self.app.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if node is None:
            return
        if on:
            self.app.editor.stop()
            node.SetCurrentInteractionMode(node.AdjustWindowLevel)
        elif node.GetCurrentInteractionMode() == node.AdjustWindowLevel:
            node.SetCurrentInteractionMode(node.ViewTransform)

    def window_level(self) -> tuple[float, float] | None:
        volume = self.app.volume_node
        if volume is None or volume.GetDisplayNode() is None:
            return None
        display = volume.GetDisplayNode()
        return float(display.GetWindow()), float(display.GetLevel())

    def restyle(self) -> None:
        """Apply opacity and outline to every segmentation drawn with a fill (the propagation's review outlines,
        drawn with no fill, stay outlines)."""
        self._styled.clear()
        self.tick()

    def tick(self) -> None:
        """Style the display nodes that appeared since the last call (after each poll: the logic adds nodes)."""
        scene, s = self.app.scene, self.app.state
        node = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if s.wl_drag and node is not None and node.GetCurrentInteractionMode() != node.AdjustWindowLevel:
            s.wl_drag = False  # a tool or the box took the left button
        opacity, outline = float(s.opacity), bool(s.outline)
        for node in _nodes(scene, "vtkMRMLSegmentationDisplayNode"):
            if node.GetID() in self._styled:
                continue
            self._styled.add(node.GetID())
            if node.GetOpacity2DFill() > 0.0:
                node.SetOpacity2DFill(opacity)
                node.SetVisibility2DFill(not outline)
                node.SetVisibility2DOutline(True)
        for node in _nodes(scene, "vtkMRMLMarkupsDisplayNode"):
            if node.GetID() in self._styled:
                continue
            self._styled.add(node.GetID())
            node.SetPropertiesLabelVisibility(False)  # the node's name drawn beside it
            if node.IsA("vtkMRMLMarkupsROIDisplayNode"):
                node.SetFillVisibility(False)
                node.SetPointLabelsVisibility(False)


def _nodes(scene: Any, class_name: str) -> list[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
