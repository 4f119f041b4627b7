"""The side panel's review queue: a labeling folder's cases, moving between them, the pre-label's turns, and the
decisions."""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame_vuetify.widgets import vuetify3 as v3


def review_queue_panel(app: Any) -> None:
    queue = app.queue
    with html.Div(classes="d-flex mt-1"):
        v3.VTextField(v_model=("labeling_dir",), label="Labeling folder (on the server)", id="labeling-dir",
                      density="compact", hide_details=True)
        v3.VBtn("Open folder", id="labeling-open", click=queue.open, classes="ml-1")
    v3.VTextField(v_model=("reviewer",), label="Reviewer", id="reviewer", density="compact", hide_details=True,
                  classes="mt-1")
    with html.Div(classes="mas-cases mt-1", id="cases", v_show="cases.length"):
        html.Div("{{ c.id }} · {{ c.status }}{{ c.who ? ' · ' + c.who : '' }}{{ c.note ? ' · ' + c.note : '' }}",
                 v_for="c in cases", key="c.id", data_case=("c.id",), data_status=("c.status",),
                 __properties=[("data_case", "data-case"), ("data_status", "data-status")],
                 classes=("['case', c.current ? 'current' : '', c.taken ? 'taken' : '']",),
                 click=(queue.pick, "[c.id]"))
    with html.Div(classes="d-flex mt-1"):
        for text, key, fn in (("Previous", "case-previous", queue.previous), ("Next", "case-next", queue.next),
                              ("Next unreviewed", "case-next-unreviewed", queue.next_unreviewed)):
            v3.VBtn(text, id=key, click=fn, disabled=("!cases.length",), size="small", classes="mr-1")
    with html.Div(v_show="case_turn_count > 1", classes="mt-1", id="case-turn-slider"):
        html.Div("Pre-label turn {{ case_turn }} / {{ case_turn_count }} {{ case_turn_text }}",
                 classes="text-caption", id="case-turn-label")
        v3.VSlider(v_model_number=("case_turn",), min=1, max=("case_turn_count",), step=1, id="case-turn",
                   hide_details=True, density="compact")
    v3.VTextField(v_model=("review_note",), label="Note (required to reject)", id="review-note",
                  density="compact", hide_details=True, classes="mt-1")
    with html.Div(classes="d-flex flex-wrap mt-1"):
        for text, key, fn in (("Accept case", "case-accept", queue.accept),
                              ("Reject case", "case-reject", queue.reject),
                              ("Save edit", "case-save-edit", queue.save_edit),
                              ("Reload case", "case-reload", queue.reload)):
            v3.VBtn(text, id=key, click=fn, disabled=("!case_id",), size="small", classes="mr-1 mb-1")
