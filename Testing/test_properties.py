"""Property tests (hypothesis, issue #18): the tool-call parser, the grid <-> pixel conversion, RLE round trips and
the trajectory loader, on inputs nobody thought to write by hand.

Each property names the only failure it allows: the parser raises ToolCallError, the loaders ValueError (one line,
saying what is wrong); anything else (a TypeError, a RecursionError, a silent wrong answer) is a bug.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fakes import BoxEngine, gray_image

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import array_shapes, arrays  # noqa: E402

from MedAgentSegLib import rle  # noqa: E402
from MedAgentSegLib.actions import (  # noqa: E402
    GRID_MAX,
    AddBBox,
    AddPoint,
    StopAction,
    ToolCallError,
    action_from_dict,
    grid_to_pixel,
    parse_tool_call,
    pixel_to_grid,
)
from MedAgentSegLib.session import Session, SessionError, load_trajectory, replay  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-(10 ** 20), 10 ** 20) | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=20)
grid = st.integers(0, GRID_MAX)


# -- the tool-call parser ------------------------------------------------------------------------------------
@st.composite
def actions(draw):
    kind = draw(st.sampled_from(["box", "point", "stop"]))
    if kind == "box":
        x1, x2 = sorted(draw(st.lists(grid, min_size=2, max_size=2, unique=True)))
        y1, y2 = sorted(draw(st.lists(grid, min_size=2, max_size=2, unique=True)))
        return AddBBox((x1, y1, x2, y2))
    if kind == "point":
        return AddPoint((draw(grid), draw(grid)), draw(st.sampled_from(["positive", "negative"])))
    return StopAction()


def _parses_or_refuses(text) -> None:
    try:
        action = parse_tool_call(text)
    except ToolCallError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(action, (AddBBox, AddPoint, StopAction))
    assert action_from_dict(action.to_dict()) == action  # what parsed is a valid action


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_parses_to_an_action_or_raises_the_parsers_error(text):
    _parses_or_refuses(text)


@SETTINGS
@given(name=st.sampled_from(["add_bbox", "add_point", "stop_action", "zoom"]) | json_values,
       arguments=json_values | st.fixed_dictionaries({"bbox_2d": json_values})
       | st.fixed_dictionaries({"point_2d": json_values, "point_type": json_values}),
       wrap=st.booleans(), prose=st.text(max_size=20))
def test_any_json_call_parses_to_an_action_or_raises_the_parsers_error(name, arguments, wrap, prose):
    body = json.dumps({"name": name, "arguments": arguments})
    _parses_or_refuses(f"{prose}<tool_call>{body}</tool_call>" if wrap else body)


@SETTINGS
@given(action=actions(), prose=st.text(alphabet=st.characters(blacklist_characters="{}<>"), max_size=40))
def test_valid_actions_round_trip_through_their_text_form(action, prose):
    text = json.dumps(action.to_dict())
    assert parse_tool_call(text) == action
    assert parse_tool_call(f"{prose} <tool_call>{text}</tool_call> {prose}") == action
    assert parse_tool_call(json.dumps({**action.to_dict(), "arguments": json.dumps(action.to_dict()["arguments"])})) \
        == action  # arguments as a JSON string, as some chat templates write them


# -- grid <-> pixel --------------------------------------------------------------------------------------------
@SETTINGS
@given(size=st.integers(1, 5000), g=grid)
def test_grid_to_pixel_stays_in_the_image(size, g):
    p = grid_to_pixel(g, size)
    assert 0.0 <= p <= size - 1 + 1e-9


@SETTINGS
@given(size=st.integers(2, 5000), frac=st.floats(0.0, 1.0))
def test_pixel_to_grid_and_back_moves_a_point_by_at_most_half_a_step(size, frac):
    p = frac * (size - 1)
    g = pixel_to_grid(p, size)
    assert 0 <= g <= GRID_MAX and isinstance(g, int)
    step = (size - 1) / GRID_MAX  # pixels per grid unit
    err = abs(grid_to_pixel(g, size) - p)
    assert err <= step / 2 + 1e-9  # half a grid step: within half a pixel wherever the grid is finer (size <= 1000)
    assert size > 1000 or err <= 0.5 + 1e-9


@SETTINGS
@given(size=st.integers(2, 1000), data=st.data())
def test_a_pixel_centre_survives_the_grid_where_the_grid_is_finer(size, data):
    p = data.draw(st.integers(0, size - 1))
    assert round(grid_to_pixel(pixel_to_grid(p, size), size)) == p


@SETTINGS
@given(size=st.integers(1000, 20000), g=grid)
def test_a_grid_unit_survives_the_pixels_where_the_pixels_are_finer(size, g):
    assert pixel_to_grid(grid_to_pixel(g, size), size) == g


def test_a_one_pixel_axis_maps_everything_to_its_only_pixel():
    assert pixel_to_grid(0, 1) == 0 and grid_to_pixel(999, 1) == 0.0


# -- RLE -------------------------------------------------------------------------------------------------------
@SETTINGS
@given(arrays(bool, array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=64)))
def test_rle_round_trips_any_mask_up_to_64x64(mask):
    enc = rle.encode(mask)
    json.dumps(enc)  # plain ints and lists: it goes into a JSON trajectory as is
    assert enc["size"] == list(mask.shape) and sum(enc["counts"]) == mask.size
    assert all(c > 0 for c in enc["counts"][1:])  # runs alternate; only the first (background) may be empty
    back = rle.decode(enc)
    assert back.dtype == bool and back.shape == mask.shape and np.array_equal(back, mask)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["size", "counts", "x"]), json_values
                       | st.lists(st.integers(-3, 40), max_size=6), max_size=3))
def test_rle_decode_of_anything_is_a_mask_of_its_size_or_a_value_error(data):
    try:
        mask = rle.decode(data)
    except ValueError as exc:
        assert str(exc)
        return
    assert list(mask.shape) == data["size"] and int(mask.sum()) == sum(data["counts"][1::2])


# -- the trajectory loader -------------------------------------------------------------------------------------
IMAGE = gray_image(24, 32, seed=3)


def _base_trajectory() -> dict:
    s = Session(BoxEngine(), IMAGE, "polyp", metadata={"image": "x.png", "slice": None})
    s.add_box(2, 3, 20, 15)
    s.add_click(8, 8, positive=False)
    s.add_click(10, 12, positive=True)
    s.set_prompts(s.prompts)
    s.stop()
    return json.loads(json.dumps(s.to_dict()))


BASE = _base_trajectory()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_trajectories(draw):
    data = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values | st.integers(-5, 80))
    return data


@pytest.fixture(scope="module")
def traj_file(tmp_path_factory):
    return tmp_path_factory.mktemp("traj") / "trajectory.json"


def _load_and_replay(data, path) -> None:
    path.write_text(json.dumps(data))
    try:
        loaded = load_trajectory(path)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    size = loaded["image"]["shape"][:2]
    assert all(list(rle.decode(t["mask_rle"]).shape) == size for t in loaded["turns"])
    try:  # what loads can be replayed, or replay says why not: never a TypeError or KeyError
        replay(loaded, BoxEngine(), IMAGE)
    except (ValueError, SessionError) as exc:
        assert str(exc)


def test_the_unchanged_trajectory_loads_and_replays(traj_file):
    traj_file.write_text(json.dumps(BASE))
    again = replay(load_trajectory(traj_file), BoxEngine(), IMAGE)
    assert len(again.turns) == len(BASE["turns"]) and again.status == "stopped"


@SETTINGS
@given(mutated_trajectories())
def test_a_mutated_trajectory_loads_and_replays_or_raises_a_value_error(traj_file, data):
    _load_and_replay(data, traj_file)


@SETTINGS
@given(json_values)
def test_any_json_document_loads_or_raises_a_value_error(traj_file, data):
    _load_and_replay(data, traj_file)


@SETTINGS
@given(st.fixed_dictionaries({"format": st.just("medagentseg-trajectory/1"), "target": json_values,
                              "turns": json_values, "image": json_values}, optional={"metadata": json_values}))
def test_any_object_with_the_format_loads_or_raises_a_value_error(traj_file, data):
    _load_and_replay(data, traj_file)


@pytest.mark.parametrize("pixels", [[math.nan, 1, 2, 3], [10 ** 30, 1, 2, 3], [-1e308, 1, 2, 3]])
def test_nan_and_huge_numbers_in_a_trajectory_are_refused_by_replay_not_crashed_on(traj_file, pixels):
    data = json.loads(json.dumps(BASE))
    data["turns"][0]["action"]["pixels"] = pixels
    traj_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="outside the 32x24 image"):
        replay(load_trajectory(traj_file), BoxEngine(), IMAGE)


def test_a_changed_mask_without_its_index_is_named_by_position(traj_file):
    data = json.loads(json.dumps(BASE))
    del data["turns"][1]["index"]
    counts = data["turns"][1]["mask_rle"]["counts"]
    counts[1], counts[2] = counts[1] + 1, counts[2] - 1  # same size, one pixel moved
    traj_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="replayed turn 1 gives a different mask"):
        replay(load_trajectory(traj_file), BoxEngine(), IMAGE)
