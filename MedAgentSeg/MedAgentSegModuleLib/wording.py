"""How the logic words turns and requests in the chat: a turn's action, the policy's reason, chat commands."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["describe_action", "describe_decision", "chat_command", "sentence", "NOUN", "last_score"]

NOUN = {"propagate": "propagation", "repropagate": "re-propagation"}
_REPROPAGATE = re.compile(r"\b(?:re-?propagate|propagate (?:again|from (?:here|this slice)))\b")
_PROPAGATE = re.compile(r"\b(?:propagate|whole volume|entire volume|full volume|all slices|every slice|in 3d|3d|"
                        r"whole scan)\b")


def describe_decision(action: dict[str, Any]) -> str | None:
    """The policy's reason for a turn and its confidence, from the turn's action dict; None if it gave none."""
    reason = str(action.get("reason") or "").strip()
    if not reason:
        return None
    conf = action.get("confidence")
    return reason if conf is None else f"{reason} \u2014 confidence {float(conf):.2f}"


def chat_command(text: str) -> str | None:
    """"repropagate" or "propagate" when a chat line asks for 3D propagation ("whole volume", "propagate", "3d",
    "re-propagate"), else None: the request parser reads it. "segment the liver in 3d" stays a segment request."""
    low = (text or "").lower()
    if _REPROPAGATE.search(low):
        return "repropagate"
    if _PROPAGATE.search(low) and not re.search(r"\bsegment\b", low):
        return "propagate"
    return None


def sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text



def describe_action(action: dict[str, Any], prompts: dict[str, Any] | None = None) -> str:
    """A chat-friendly rendering of a turn in the slice's image pixels (x = column, y = row, as the person's box and
    clicks are placed). prompts: the turn's prompt state after it (`Prompts.to_dict()`), where the agent's grid
    action gives no pixels."""
    name, args = action.get("name"), action.get("arguments", {})
    prompts = prompts or {}

    def xy(v: Any) -> str:
        return f"({float(v[0]):.0f}, {float(v[1]):.0f})"

    if name == "add_bbox":
        box = action.get("pixels") or prompts.get("box")
        return f"box {xy(box[:2])}-{xy(box[2:])} px" if box else "box"
    if name == "add_point":
        point = action.get("pixels") or (prompts.get("points") or [None])[-1]
        sign = "positive" if args.get("point_type") == "positive" else "negative"
        return f"{sign} click at {xy(point)} px" if point else f"{sign} click"
    if name == "edit_prompts":
        return f"re-ran from your edited prompts ({len(args.get('points', []))} clicks, " \
               f"{'a box' if args.get('box') else 'no box'})"
    if name == "stop_action":
        return "stop"
    if name == "specialist":
        return f"the specialist {args.get('model')}'s mask (licence: {args.get('licence')})"
    if name == "hand_edit":
        return {"paint": "your painting", "erase": "your erasing", "scissors": "your scissors cut",
                "existing": "the mask the segment already held, to go on from"}.get(args.get("tool"),
                                                                                    "your edit by hand")
    return str(name)



def last_score(run: Any) -> str:
    """The engine's predicted IoU of the run's last written turn, or "n/a"."""
    return f"{run.records[-1].turn.score:.2f}" if run.records and run.records[-1].turn.score is not None else "n/a"
