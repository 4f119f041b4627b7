"""The side panel's session part: status, engine and agent, the chat with its progress bar, the request, the
agent's buttons, the box and click tools, the turn slider and Save."""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3


def session_panel(app: Any) -> None:
    session = app.session
    html.Div("{{ status }}", id="status", classes="text-caption mb-1")
    with html.Div(classes="d-flex"):
        v3.VSelect(v_model=("engine",), items=("engines",), label="Engine", id="engine", density="compact",
                   hide_details=True, classes="mr-1")
        v3.VSelect(v_model=("policy",), items=("policies",), label="Agent", id="policy", density="compact",
                   hide_details=True)
    v3.VTextField(v_model=("checkpoint",), label="SAM checkpoint (.pth on the server)", id="checkpoint",
                  density="compact", hide_details=True, v_show="engine.startsWith('sam_')", classes="mt-1")
    with html.Div(classes="mas-chat mt-2", id="chat"), html.Div():
        html.Div("{{ m.text }}", v_for="(m, i) in messages", key="i", classes=("'m-' + m.role",))
    v3.VProgressLinear(indeterminate=True, v_show="busy && !propagating", id="progress", classes="mt-1")
    v3.VProgressLinear(model_value=("progress_value",), v_show="propagating", id="propagation-progress",
                       color="primary", height=6, classes="mt-1")
    html.Div("{{ propagating ? progress_text : busy_text }}", v_show="busy || propagating", classes="text-caption",
             id="busy-text")
    with html.Div(classes="d-flex mt-2"):
        v3.VTextField(v_model=("request",), label="Request, e.g. segment the liver", id="request",
                      density="compact", hide_details=True, v_on_keyup_enter=session.send)
        v3.VBtn("Send", id="send", click=session.send, classes="ml-1")
    _buttons(session)
    _turns_and_save(session)


def _buttons(session: Any) -> None:
    rows = ((("Run", "run", session.run, "!can_run"), ("Step", "step", session.step, "!can_act"),
             ("Stop", "stop", session.stop, "!can_stop")),
            (("Accept", "accept", session.accept, "!can_revert"), ("Reject", "reject", session.reject, "!can_revert"),
             ("Undo", "undo", session.undo, "!can_undo")))
    for row in rows:
        with html.Div(classes="d-flex mt-2"):
            for text, key, fn, disabled in row:
                v3.VBtn(text, id=key, click=fn, disabled=(disabled,), size="small", classes="mr-1")
    with html.Div(classes="d-flex mt-2"):
        for text, role in (("Box", "box"), ("+ click", "positive"), ("- click", "negative")):
            v3.VBtn(text, id=f"place-{role}", click=(session.place, f"['{role}']"), disabled=("!can_act",),
                    size="small", variant="outlined", classes="mr-1")
        v3.VBtn("Propagate", id="propagate", click=session.propagate, disabled=("!can_revert",), size="small",
                variant="outlined")


def _turns_and_save(session: Any) -> None:
    with html.Div(v_show="turn_count > 0", classes="mt-3", id="turn-slider"):
        html.Div("Turn {{ turn }} / {{ turn_count }}", classes="text-caption", id="turn-label")
        v3.VSlider(v_model_number=("turn",), min=1, max=("turn_count",), step=1, id="turn", hide_details=True,
                   density="compact")
    with html.Div(classes="d-flex mt-2"):
        v3.VTextField(v_model=("save_dir",), label="Save into folder (on the server)", id="save-dir",
                      density="compact", hide_details=True)
        v3.VBtn("Save", id="save", click=session.save, disabled=("!has_run",), classes="ml-1")
