"""The trajectory's vocabulary and schema: the names of the actions and entries a session records, and what a saved
trajectory must hold for `replay` (checked before anything in it is used)."""

from __future__ import annotations

from typing import Any

__all__ = ["TRAJECTORY_FORMAT", "SCENE_TRAJECTORY_FORMAT", "SPECIALIST", "HAND_EDIT", "PROPAGATE", "SLICE_EDIT",
           "VOLUME_ENTRIES", "HAND_TOOLS", "TRAJECTORY_SCHEMA"]

TRAJECTORY_FORMAT = "medagentseg-trajectory/1"
# What Slicer and the browser save: {"format", "runs": [{..., "session": <a TRAJECTORY_FORMAT dict>}, ...]}
SCENE_TRAJECTORY_FORMAT = "medagentseg-slicer-trajectory/1"
SPECIALIST = "specialist"  # a turn whose mask a specialist model made (Session.add_mask); replayed from its RLE
HAND_EDIT = "hand_edit"  # a turn whose mask the person drew (Session.add_edit); replayed from its RLE
# the structure propagated through the volume from this slice (Session.add_propagation): an entry of the same
# timeline, so Undo takes back a propagation or a turn in the order they were made; the slice's own mask, prompts
# and logits do not change
PROPAGATE = "propagate"
SLICE_EDIT = "slice_edit"  # the person drew on another slice of the volume (Session.add_slice_edit): an entry too
VOLUME_ENTRIES = (PROPAGATE, SLICE_EDIT)  # entries about the volume: the slice's own mask and prompts stay
# "editor": any other Segment Editor effect (Slicer); "existing": what the segment held when the session began
HAND_TOOLS = ("paint", "erase", "scissors", "editor", "existing")


def _numbers(n: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}


_PROMPTS_SCHEMA = {"type": "object", "properties": {
    "box": {"anyOf": [{"type": "null"}, _numbers(4)]},
    "points": {"type": "array", "items": _numbers(2)},
    "labels": {"type": "array", "items": {"enum": [0, 1]}}}}
_ACTION_SCHEMA = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"enum": ["add_bbox", "add_point", "stop_action", "edit_prompts", SPECIALIST,
                                     HAND_EDIT, PROPAGATE, SLICE_EDIT]},
                   "arguments": {"type": ["object", "string"]}},
    "allOf": [
        {"if": {"properties": {"name": {"const": "add_bbox"}}}, "then": {"properties": {"pixels": _numbers(4)}}},
        {"if": {"properties": {"name": {"const": "add_point"}}, "required": ["pixels"]},
         "then": {"required": ["arguments"], "properties": {"pixels": _numbers(2), "arguments": {
             "type": "object", "required": ["point_type"]}}}},
        {"if": {"properties": {"name": {"const": "edit_prompts"}}},
         "then": {"required": ["arguments"], "properties": {"arguments": _PROMPTS_SCHEMA}}},
        {"if": {"properties": {"name": {"const": HAND_EDIT}}},
         "then": {"required": ["arguments"], "properties": {"arguments": {
             "type": "object", "required": ["tool"], "properties": {"tool": {"enum": list(HAND_TOOLS)}}}}}},
        {"if": {"properties": {"name": {"const": SPECIALIST}}},
         "then": {"required": ["arguments"], "properties": {"arguments": {
             "type": "object", "required": ["model"], "properties": {"model": {"type": "string", "minLength": 1}}}}}}]}
# What replay relies on; the RLE masks are then checked against the image's size without decoding them.
TRAJECTORY_SCHEMA = {
    "type": "object", "required": ["format", "target", "turns", "image"],
    "properties": {
        "format": {"const": TRAJECTORY_FORMAT},
        "target": {"type": "string", "minLength": 1},
        "engine": {"type": "string"}, "encoder": {"type": "string"},
        "image": {"type": "object", "required": ["shape", "sha1"], "properties": {
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 3},
            "sha1": {"type": "string"}}},
        "max_turns": {"type": "integer", "minimum": 1},
        "status": {"enum": ["open", "stopped", "accepted"]},
        "metadata": {"type": "object"},  # free-form (the Slicer logic writes its own); replay checks what it uses
        "turns": {"type": "array", "items": {
            "type": "object", "required": ["action", "mask_rle"],
            "properties": {"index": {"type": "integer"}, "source": {"enum": ["agent", "user"]},
                           "action": _ACTION_SCHEMA, "mask_rle": {"type": "object"}}}},
        "reverted": {"type": "array", "items": {"type": "object"}}}}
