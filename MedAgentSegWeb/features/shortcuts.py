"""Keyboard shortcuts for the main actions. The page sends each key it knows (not while the person types in a text
field: ui/shortcuts.py); the server does what the button would do, and nothing when that button is disabled."""

from __future__ import annotations

from typing import Any

__all__ = ["Shortcuts", "KEYS"]

# key (as the page sends it) -> (what it does, as listed on the page; the app's handler; the state flag that enables
# it, as the button's `disabled`)
KEYS: dict[str, tuple[str, str, str]] = {
    "b": ("Box", "place_box", "can_act"),
    "p": ("+ click", "place_positive", "can_act"),
    "n": ("- click", "place_negative", "can_act"),
    "r": ("Run", "run", "can_run"),
    "s": ("Step", "step", "can_act"),
    "u": ("Undo", "undo", "can_undo"),
    "ctrl+z": ("Undo", "undo", "can_undo"),
    "a": ("Accept", "accept", "can_revert"),
    "x": ("Reject", "reject", "can_revert"),
    "g": ("Propagate", "propagate", "can_revert"),
    "d": ("Paint", "paint", "can_edit"),
    "e": ("Erase", "erase", "can_edit"),
    "c": ("Scissors", "scissors", "can_edit"),
    "w": ("Drag W/L on / off", "wl_drag", "has_volume"),
    "escape": ("Put the tool down, else Stop", "stop", "can_stop"),
}


class Shortcuts:
    """On `app` (a WebApp): `press(key)` runs the key's action through the app's handlers."""

    def __init__(self, app: Any):
        self.app = app
        app.state.shortcuts = self.listing()

    def actions(self) -> dict[str, Any]:
        a, session, editor = self.app, self.app.session, self.app.editor
        return {"place_box": lambda: session.place("box"), "place_positive": lambda: session.place("positive"),
                "place_negative": lambda: session.place("negative"), "run": session.run, "step": session.step,
                "undo": session.undo, "accept": session.accept, "reject": session.reject,
                "propagate": session.propagate, "paint": lambda: editor.toggle("paint"),
                "erase": lambda: editor.toggle("erase"), "scissors": lambda: editor.toggle("scissors"),
                "stop": lambda: self._escape(a), "wl_drag": self._toggle_drag}

    def _toggle_drag(self) -> None:
        self.app.state.wl_drag = not self.app.state.wl_drag

    @staticmethod
    def _escape(app: Any) -> None:
        """Esc: put the tool down if one is in use, else Stop the agent."""
        if app.editor.tool:
            app.editor.stop()
            app.sync()
        else:
            app.session.stop()

    def press(self, key: str) -> None:
        entry = KEYS.get(str(key).lower())
        if entry is None:
            return
        _, action, flag = entry
        if action == "stop" and self.app.editor.tool:
            self._escape(self.app)
        elif self.app.state[flag]:
            self.actions()[action]()

    @staticmethod
    def listing() -> list[dict[str, str]]:
        """[{"keys": "U / Ctrl+Z", "what": "Undo"}, ...] in the order of KEYS, one row per action."""
        rows: dict[str, list[str]] = {}
        for key, (what, _, _) in KEYS.items():
            shown = "Esc" if key == "escape" else "+".join(part.capitalize() for part in key.split("+"))
            rows.setdefault(what, []).append(shown)
        return [{"keys": " / ".join(keys), "what": what} for what, keys in rows.items()]
