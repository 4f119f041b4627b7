"""The agent's action space, in MedSAM-Agent's tool-call form.

Coordinates in actions are integers on a 0..999 grid over the 2D image, x first (x = column, y = row).
One convention is used everywhere (MedSAM-Agent's code mixes two):

    pixel = grid * (size - 1) / 999        grid = round(pixel * 999 / (size - 1))

so grid 0 is the first pixel centre and grid 999 the last one, for any image size. Sessions keep the
prompt state in pixels (float) and record both units in each turn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = [
    "GRID_MAX",
    "AddBBox",
    "AddPoint",
    "StopAction",
    "Action",
    "ToolCallError",
    "grid_to_pixel",
    "pixel_to_grid",
    "parse_tool_call",
    "action_from_dict",
    "tool_schemas",
]

GRID_MAX = 999


class ToolCallError(ValueError):
    """A tool call could not be understood; the message says what was wrong and what a valid call looks like."""


def grid_to_pixel(value: float, size: int) -> float:
    """Grid unit (0..999) to a pixel coordinate in [0, size - 1] along an axis of `size` pixels."""
    return float(value) * (size - 1) / GRID_MAX


def pixel_to_grid(value: float, size: int) -> int:
    """Pixel coordinate in [0, size - 1] to the nearest grid unit (0..999)."""
    if size <= 1:
        return 0
    return int(round(float(value) * GRID_MAX / (size - 1)))


def _as_tuple(tool: str, form: str, value: Any) -> tuple:
    """A list-like argument as a tuple; a number, null or an object is a malformed call, not a TypeError."""
    if not isinstance(value, (list, tuple)):
        raise ToolCallError(f"{tool} needs {form} (a list of integers), got {value!r}")
    return tuple(value)


def _check_grid(name: str, values: tuple[int, ...]) -> None:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ToolCallError(f"{name} must hold integers on the 0..999 grid, got {values!r}")
        if not 0 <= v <= GRID_MAX:
            raise ToolCallError(f"{name} {values!r} is outside the 0..999 grid; clamp it to 0..999")


@dataclass(frozen=True)
class AddBBox:
    """Place (or replace) the bounding box around the target.

    bbox_2d: [x1, y1, x2, y2] integers on the 0..999 grid, x1 < x2 and y1 < y2.
    """

    bbox_2d: tuple[int, int, int, int]
    name = "add_bbox"

    def __post_init__(self) -> None:
        box = _as_tuple("add_bbox", "bbox_2d = [x1, y1, x2, y2]", self.bbox_2d)
        if len(box) != 4:
            raise ToolCallError(f"add_bbox needs bbox_2d = [x1, y1, x2, y2], got {list(box)!r}")
        _check_grid("bbox_2d", box)
        if box[0] >= box[2] or box[1] >= box[3]:
            raise ToolCallError(f"add_bbox needs x1 < x2 and y1 < y2, got {list(box)!r}")
        object.__setattr__(self, "bbox_2d", box)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": {"bbox_2d": list(self.bbox_2d)}}


@dataclass(frozen=True)
class AddPoint:
    """Click on the image: positive inside the target, negative on wrongly included tissue.

    point_2d: [x, y] integers on the 0..999 grid. point_type: "positive" or "negative".
    """

    point_2d: tuple[int, int]
    point_type: Literal["positive", "negative"] = "positive"
    name = "add_point"

    def __post_init__(self) -> None:
        point = _as_tuple("add_point", "point_2d = [x, y]", self.point_2d)
        if len(point) != 2:
            raise ToolCallError(f"add_point needs point_2d = [x, y], got {list(point)!r}")
        _check_grid("point_2d", point)
        if self.point_type not in ("positive", "negative"):
            raise ToolCallError(f"add_point point_type must be 'positive' or 'negative', got {self.point_type!r}")
        object.__setattr__(self, "point_2d", point)

    @property
    def positive(self) -> bool:
        return self.point_type == "positive"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": {"point_2d": list(self.point_2d), "point_type": self.point_type}}


@dataclass(frozen=True)
class StopAction:
    """Finish: the current mask is the answer."""

    name = "stop_action"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": {}}


Action = Union[AddBBox, AddPoint, StopAction]

_SCHEMA_DOC = {
    "add_bbox": (AddBBox, {
        "bbox_2d": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": GRID_MAX},
                    "minItems": 4, "maxItems": 4, "description": "[x1, y1, x2, y2] on the 0..999 grid, x first"},
    }, ["bbox_2d"]),
    "add_point": (AddPoint, {
        "point_2d": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": GRID_MAX},
                     "minItems": 2, "maxItems": 2, "description": "[x, y] on the 0..999 grid"},
        "point_type": {"type": "string", "enum": ["positive", "negative"]},
    }, ["point_2d", "point_type"]),
    "stop_action": (StopAction, {}, []),
}


def tool_schemas() -> list[dict[str, Any]]:
    """JSON schemas of the three tools, in the function-calling form an LLM policy is given.

    The description is each action class's docstring, so the schema and the code cannot drift apart.
    """
    out = []
    for name, (cls, props, required) in _SCHEMA_DOC.items():
        out.append({
            "type": "function",
            "function": {
                "name": name,
                "description": " ".join((cls.__doc__ or "").split()),
                "parameters": {"type": "object", "properties": props, "required": required,
                               "additionalProperties": False},
            },
        })
    return out


_VALID = ('valid calls: {"name": "add_bbox", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}, '
          '{"name": "add_point", "arguments": {"point_2d": [x, y], "point_type": "positive"}}, '
          '{"name": "stop_action", "arguments": {}}')


def action_from_dict(call: dict[str, Any]) -> Action:
    """Build an action from {"name": ..., "arguments": {...}} (arguments may also be a JSON string)."""
    if not isinstance(call, dict) or "name" not in call:
        raise ToolCallError(f"a tool call must be an object with a 'name'; {_VALID}")
    name = call["name"]
    if not isinstance(name, str):
        raise ToolCallError(f"a tool call's 'name' must be a string, got {name!r}; {_VALID}")
    args = call.get("arguments", call.get("parameters", {})) or {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"arguments of {name!r} are not valid JSON ({exc.msg}); {_VALID}") from None
        except RecursionError:
            raise ToolCallError(f"arguments of {name!r} are nested too deeply to be a tool call; {_VALID}") from None
    if not isinstance(args, dict):
        raise ToolCallError(f"arguments of {name!r} must be an object; {_VALID}")
    if name not in _SCHEMA_DOC:
        raise ToolCallError(f"unknown tool {name!r}; {_VALID}")
    _, props, required = _SCHEMA_DOC[name]
    missing = [k for k in required if k not in args]
    if missing:
        raise ToolCallError(f"{name} is missing {', '.join(missing)}; {_VALID}")
    extra = sorted(set(args) - set(props))
    if extra:
        raise ToolCallError(f"{name} does not take {', '.join(extra)}; {_VALID}")
    if name == "add_bbox":
        return AddBBox(args["bbox_2d"])
    if name == "add_point":
        return AddPoint(args["point_2d"], args["point_type"])
    return StopAction()


_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def parse_tool_call(text: str) -> Action:
    """Parse one tool call from a policy's text output.

    Accepts a bare JSON object, or one wrapped in <tool_call>...</tool_call> (as MedSAM-Agent's policy
    writes it), possibly with prose around it. Exactly one call must be present.
    Raises ToolCallError naming what was wrong.
    """
    if not isinstance(text, str) or not text.strip():
        raise ToolCallError(f"empty tool call; {_VALID}")
    tagged = _CALL_RE.findall(text)
    if len(tagged) > 1:
        raise ToolCallError(f"found {len(tagged)} tool calls, expected exactly one per turn")
    body = tagged[0] if tagged else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ToolCallError(f"no JSON object found in {text.strip()[:80]!r}; {_VALID}")
    try:
        call = json.loads(body[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ToolCallError(f"tool call is not valid JSON ({exc.msg} at char {exc.pos}); {_VALID}") from None
    except RecursionError:  # the C decoder's depth limit: a runaway generation, not a call
        raise ToolCallError(f"tool call is nested too deeply to be one; {_VALID}") from None
    return action_from_dict(call)
