"""Action space: grid convention, tool schemas, and the strict tool-call parser."""

import pytest

from MedAgentSegLib.actions import (
    AddBBox,
    AddPoint,
    StopAction,
    ToolCallError,
    grid_to_pixel,
    parse_tool_call,
    pixel_to_grid,
    tool_schemas,
)


@pytest.mark.parametrize("size", [2, 128, 512, 999, 1000, 1348])
def test_grid_endpoints_map_to_first_and_last_pixel(size):
    assert grid_to_pixel(0, size) == 0.0
    assert grid_to_pixel(999, size) == pytest.approx(size - 1)
    assert pixel_to_grid(size - 1, size) == 999
    for p in range(0, size, max(1, size // 17)):
        # a round trip moves a pixel by at most half a grid step
        assert abs(grid_to_pixel(pixel_to_grid(p, size), size) - p) <= (size - 1) / 999 / 2 + 1e-9


def test_schemas_cover_the_three_tools_and_use_docstrings():
    names = [s["function"]["name"] for s in tool_schemas()]
    assert names == ["add_bbox", "add_point", "stop_action"]
    point = tool_schemas()[1]["function"]
    assert point["parameters"]["properties"]["point_type"]["enum"] == ["positive", "negative"]
    assert "Click on the image" in point["description"]


def test_parse_wrapped_and_bare_calls():
    text = 'I will box it. <tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [10, 20, 300, 400]}}</tool_call>'
    assert parse_tool_call(text) == AddBBox((10, 20, 300, 400))
    assert parse_tool_call('{"name":"add_point","arguments":{"point_2d":[5,6],"point_type":"negative"}}') == \
        AddPoint((5, 6), "negative")
    assert parse_tool_call('{"name": "stop_action", "arguments": "{}"}') == StopAction()
    assert AddBBox((1, 2, 3, 4)).to_dict() == {"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, 3, 4]}}


@pytest.mark.parametrize("text,fragment", [
    ("", "empty tool call"),
    ("just prose", "no JSON object"),
    ('{"name": "add_bbox", "arguments": {"bbox_2d": [10, 20, 300]}}', "bbox_2d = [x1, y1, x2, y2]"),
    ('{"name": "add_bbox", "arguments": {"bbox_2d": [300, 20, 10, 400]}}', "x1 < x2"),
    ('{"name": "add_bbox", "arguments": {"bbox_2d": [0, 0, 1200, 400]}}', "outside the 0..999 grid"),
    ('{"name": "add_point", "arguments": {"point_2d": [1.5, 2], "point_type": "positive"}}', "integers"),
    ('{"name": "add_point", "arguments": {"point_2d": [1, 2], "point_type": "maybe"}}', "'positive' or 'negative'"),
    ('{"name": "add_point", "arguments": {"point_2d": [1, 2]}}', "missing point_type"),
    ('{"name": "zoom", "arguments": {}}', "unknown tool 'zoom'"),
    ('{"name": "add_bbox", "arguments": {"bbox_2d": [1,2,3,4], "x": 1}}', "does not take x"),
    ('{"name": "add_bbox", "arguments": {bbox_2d: [1,2,3,4]}}', "not valid JSON"),
    ('<tool_call>{"name": "stop_action"}</tool_call><tool_call>{"name": "stop_action"}</tool_call>', "exactly one"),
])
def test_malformed_calls_are_rejected_with_a_reason(text, fragment):
    with pytest.raises(ToolCallError, match=None) as err:
        parse_tool_call(text)
    assert fragment in str(err.value)
