"""The keyboard shortcuts in the page: a listener on the window sends each known key to the server, except while
the person types in a field (input, text area, select, editable text); the list of keys, shown on the page."""

from __future__ import annotations

from typing import Any

from trame.widgets import client, html

from ..features.shortcuts import KEYS


def key_listener(app: Any) -> None:
    name = app.server.controller.trigger_name(app.shortcuts.press)
    known = ",".join(f"'{k}'" for k in KEYS)
    client.ClientTriggers(mounted=(
        "window.addEventListener('keydown', (e) => {"
        " const t = e.target; const tag = ((t && t.tagName) || '').toLowerCase();"
        " if (['input', 'textarea', 'select'].includes(tag) || (t && t.isContentEditable)) return;"
        " if (e.altKey || e.metaKey || e.repeat) return;"
        " const key = (e.ctrlKey ? 'ctrl+' : '') + (e.key || '').toLowerCase();"
        f" if (![{known}].includes(key)) return;"
        f" e.preventDefault(); trigger('{name}', [key]); }})"))


def key_list() -> None:
    with html.Div(classes="mas-keys mt-1", id="shortcuts"):
        with html.Div(v_for="k in shortcuts", key="k.what"):
            html.Kbd("{{ k.keys }}")
            html.Span(" {{ k.what }}")
