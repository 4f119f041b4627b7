"""The toolbar: open a volume (the sample, a path on the server, an upload)."""

from __future__ import annotations

from typing import Any

from trame_vuetify.widgets import vuetify3 as v3


def toolbar(app: Any) -> None:
    session = app.session
    v3.VSpacer()
    v3.VBtn("Load sample", id="load-sample", click=session.load_sample, variant="tonal", classes="mx-1")
    v3.VTextField(v_model=("path",), label="Volume path on the server", id="path", density="compact",
                  hide_details=True, style="max-width: 320px", classes="mx-1")
    v3.VBtn("Open", id="open-path", click=session.load_path, variant="tonal", classes="mx-1")
    v3.VFileInput(id="upload", label="Upload", density="compact", hide_details=True, style="max-width: 200px",
                  change=f"trigger('{app.server.controller.trigger_name(session.upload)}', [$event.target.files])")
