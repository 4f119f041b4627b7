"""The bar above the views: layout, window/level preset, segment opacity and outline, and the hand tools (paint,
erase, scissors) with the brush size. Plain HTML controls: each has a stable id and the keyboard shortcuts leave
them alone while focused."""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3

TOOL_BUTTONS = (("Paint", "paint", "mdi-brush"), ("Erase", "erase", "mdi-eraser"), ("Scissors", "scissors",
                                                                                    "mdi-content-cut"))


def view_tools(app: Any) -> None:
    with html.Div(classes="mas-tools", id="view-tools"):
        html.Span("Layout")
        with html.Select(v_model=("layout",), id="layout"):
            html.Option("{{ l.title }}", v_for="l in layouts", key="l.value", value=("l.value",))
        html.Span("Window/level")
        with html.Select(v_model=("wl_preset",), id="wl-preset"):
            html.Option("{{ p.title }}", v_for="p in wl_presets", key="p.value", value=("p.value",))
        with html.Label(title="Drag with the left button in a slice view: sideways the window, up and down the level"):
            html.Input(type="checkbox", v_model=("wl_drag",), id="wl-drag")
            html.Span(" Drag W/L")
        html.Span("Opacity")
        html.Input(type="range", min=0, max=1, step=0.05, v_model_number=("opacity",), id="opacity",
                   style="width: 80px")
        with html.Label():
            html.Input(type="checkbox", v_model=("outline",), id="outline")
            html.Span(" Outline only")
        for text, tool, icon in TOOL_BUTTONS:
            v3.VBtn(text, id=tool, prepend_icon=icon, click=(app.editor.toggle, f"['{tool}']"), size="small",
                    variant=(f"tool === '{tool}' ? 'flat' : 'outlined'",),
                    color=(f"tool === '{tool}' ? 'primary' : ''",),
                    disabled=(f"!can_edit && tool !== '{tool}'",))
        html.Span("Brush {{ brush_mm }} mm")
        html.Input(type="range", min=1, max=50, step=1, v_model_number=("brush_mm",), id="brush-size",
                   style="width: 80px")
