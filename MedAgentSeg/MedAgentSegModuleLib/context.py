"""What the parts of the logic share: its error, its chat line, and the small context each part is given.

A part never holds the whole logic: it says (a chat line), reports a change, queues model work, and reads the
scene and the front end's words through `Context`, so the parts do not form a circle through the facade.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .words import Words

__all__ = ["AgentError", "ChatMessage", "Context"]


class AgentError(RuntimeError):
    """A request cannot be carried out; the message says what happened and what to do."""


@dataclass
class ChatMessage:
    """One line of the chat. role: "user", "agent", "info", "warning" or "error"."""

    role: str
    text: str
    turn: int | None = None


@dataclass
class Context:
    """scene: the MRML scene. words: the front end's names for its controls. say(role, text, turn=None): a chat
    line. changed(): the front end refreshes. submit(run, name, fn, *args, callback=...): model work on the worker,
    its callback on the main thread while `run` is open. busy(): the worker has a job. report_error(what, result):
    a failed job as a chat line."""

    scene: Any
    words: Words
    say: Callable[..., ChatMessage]
    changed: Callable[[], None]
    submit: Callable[..., None]
    busy: Callable[[], bool]
    report_error: Callable[[str, Any], None]
