"""What each view draws over its image: a container with a stable id (#view-Red, #view-Yellow, #view-Green,
#view-3D) and, on a slice view, the slice number and position. trame-slicer calls these when it makes a view."""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui

from ..features.views import label_key

__all__ = ["slice_view_ui", "threed_view_ui"]


def slice_view_ui(server: Any, view_id: str, view: Any) -> None:
    create_vertical_slice_view_gutter_ui(server, view_id, view)  # reset, show in 3D, the slice slider
    tag = view.get_singleton_tag()
    with html.Div(id=f"view-{tag}", classes="mas-view"):
        html.Span(f"{{{{ {label_key(tag)} }}}}", classes="label", id=f"slice-label-{tag}")


def threed_view_ui(server: Any, view_id: str, view: Any) -> None:
    create_vertical_view_gutter_ui(server, view_id, view)
    html.Div(id="view-3D", classes="mas-view")
