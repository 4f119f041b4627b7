"""The agent's environment: one target on one 2D image, turn by turn.

The state is the whole prompt set (box + every click) plus the previous turn's low-res logits, all of it
re-sent to the engine each turn (MedSAM-Agent's environment forgets earlier clicks; this one does not).
Each turn is a JSON-serialisable `Turn`; a trajectory can be saved, loaded and replayed, and replaying
it on the same engine and image gives the same masks bit for bit. A `specialist` turn (`add_mask`) holds a
mask a specialist model made; replay takes it from the recorded RLE, so no specialist is needed to replay.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import rle
from .actions import Action, AddBBox, AddPoint, StopAction, action_from_dict, grid_to_pixel, pixel_to_grid
from .engines.base import Engine, Prompts, as_rgb_uint8, image_digest, mask_logits
from .observation import Observation, UndoTurn
from .oracle import mask_box
from .trajectory_schema import (
    HAND_EDIT,
    HAND_TOOLS,
    PROPAGATE,
    SCENE_TRAJECTORY_FORMAT,
    SLICE_EDIT,
    SPECIALIST,
    TRAJECTORY_FORMAT,
    TRAJECTORY_SCHEMA,
    VOLUME_ENTRIES,
)

__all__ = ["Turn", "Session", "SessionError", "replay", "load_trajectory", "check_trajectory", "TRAJECTORY_FORMAT",
           "TRAJECTORY_SCHEMA", "SPECIALIST", "HAND_EDIT", "HAND_TOOLS", "PROPAGATE", "SLICE_EDIT",
           "VOLUME_ENTRIES",
           "SCENE_TRAJECTORY_FORMAT", "trajectory_sessions"]




class SessionError(RuntimeError):
    """An action cannot be applied to the session in its present state; the message says why."""


@dataclass
class Turn:
    """One turn: what was done, by whom, the prompt state after it, the mask, score and timings.

    action: tool-call dict ({"name", "arguments"}; "edit_prompts" for a user's edit of the prompt state).
    source: "agent" or "user". prompts: pixel prompt state after the turn; prompts_grid: the same on 0..999.
    mask: (H, W) bool (serialised as RLE). logits: (1, 256, 256) float32, kept in memory only.
    """

    index: int
    action: dict[str, Any]
    source: str
    prompts: Prompts
    prompts_grid: dict[str, Any]
    mask: np.ndarray
    score: float | None
    timings: dict[str, float]
    logits: np.ndarray | None = field(default=None, repr=False)
    used_prev_logits: bool = False
    created: str = ""
    update: str = "model"  # Prediction.update: how the engine turned its answer into this mask

    @property
    def produces_mask(self) -> bool:
        return self.action["name"] != "stop_action" and self.action["name"] not in VOLUME_ENTRIES

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "action": self.action, "source": self.source,
            "prompts": self.prompts.to_dict(), "prompts_grid": self.prompts_grid,
            "mask_rle": rle.encode(self.mask), "area": int(self.mask.sum()),
            "score": None if self.score is None else round(float(self.score), 6),
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
            "used_prev_logits": self.used_prev_logits, "created": self.created, "update": self.update,
        }


def _grid_prompts(prompts: Prompts, h: int, w: int) -> dict[str, Any]:
    box = None
    if prompts.box is not None:
        x1, y1, x2, y2 = prompts.box
        box = [pixel_to_grid(x1, w), pixel_to_grid(y1, h), pixel_to_grid(x2, w), pixel_to_grid(y2, h)]
    return {"box": box, "points": [[pixel_to_grid(x, w), pixel_to_grid(y, h)] for x, y in prompts.points],
            "labels": list(prompts.labels)}


class Session:
    """Interactive segmentation of `target` on one 2D image.

    image: (H, W, 3) uint8 RGB or (H, W) uint8, the exact pixels the engine sees (see images.to_engine_rgb).
    max_turns: how many mask-producing turns `run` lets a policy take (users may always add more).
    """

    def __init__(self, engine: Engine, image: np.ndarray, target: str, max_turns: int = 5,
                 metadata: dict[str, Any] | None = None):
        if not target or not str(target).strip():
            raise SessionError("no target given: name the structure to segment, e.g. 'liver'")
        if max_turns < 1:
            raise SessionError(f"max_turns must be at least 1, got {max_turns}")
        self.engine = engine
        self.image = as_rgb_uint8(image)
        self.height, self.width = self.image.shape[:2]
        self.target = str(target)
        self.max_turns = int(max_turns)
        self.metadata = dict(metadata or {})
        self.turns: list[Turn] = []
        self.reverted: list[dict[str, Any]] = []  # agent turns the agent took back itself (UndoTurn), for review
        self.status = "open"  # open | stopped | accepted
        t0 = time.perf_counter()
        engine.set_image(self.image)
        self.encode_s = time.perf_counter() - t0

    # -- state ---------------------------------------------------------------------------------------
    @property
    def prompts(self) -> Prompts:
        return self.turns[-1].prompts.copy() if self.turns else Prompts()

    @property
    def mask(self) -> np.ndarray:
        """Current (H, W) bool mask; all False before the first turn."""
        return self.turns[-1].mask.copy() if self.turns else np.zeros((self.height, self.width), dtype=bool)

    @property
    def mask_turns(self) -> int:
        return sum(1 for t in self.turns if t.produces_mask)

    def observe(self) -> Observation:
        """What a policy may see now (no reference mask, no metadata): see `observation.Observation`."""
        steps = [t for t in self.turns if t.action["name"] not in VOLUME_ENTRIES]  # the slice's own history
        made = [t for t in steps if t.produces_mask]
        last = steps[-1] if steps else None
        return Observation(
            image=_read_only(self.image), target=self.target, mask=self.mask,
            logits=None if self._last_logits() is None else self._last_logits().copy(),
            score=None if last is None else last.score,
            scores=tuple(float("nan") if t.score is None else float(t.score) for t in made),
            masks=tuple(_read_only(t.mask) for t in made), prompts=self.prompts,
            history=tuple(copy.deepcopy(t.action) for t in steps),
            sources=tuple(t.source for t in steps), mask_turns=len(made), max_turns=self.max_turns,
            engine=_engine_view(self.engine, self.image))

    def _last_logits(self) -> np.ndarray | None:
        return self.turns[-1].logits if self.turns else None

    def _require_open(self) -> None:
        if self.status == "accepted":
            raise SessionError("the segment was accepted and is frozen; start a new session to change it")
        if self.status == "stopped":
            raise SessionError("the agent stopped; undo the stop or start a new session to keep refining")

    # -- turns ---------------------------------------------------------------------------------------
    def _run(self, action: dict[str, Any], source: str, prompts: Prompts, feed_logits: bool) -> Turn:
        prompts.validate(self.height, self.width)
        prev = self._last_logits() if feed_logits else None
        t0 = time.perf_counter()
        # The engine may have served another session since: make sure it holds this image (cached: cheap).
        self.engine.set_image(self.image)
        pred = self.engine.predict(prompts, prev_logits=prev)
        elapsed = time.perf_counter() - t0
        turn = Turn(index=len(self.turns), action=action, source=source, prompts=prompts,
                    prompts_grid=_grid_prompts(prompts, self.height, self.width), mask=pred.mask.astype(bool),
                    score=pred.score, timings={"engine_s": elapsed}, logits=pred.logits,
                    used_prev_logits=prev is not None, update=pred.update,
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.turns.append(turn)
        return turn

    def act(self, action: Action, source: str = "agent") -> Turn:
        """Apply a grid-unit action (AddBBox / AddPoint / StopAction)."""
        self._require_open()
        if isinstance(action, UndoTurn):
            return self._take_back(source)
        if isinstance(action, StopAction):
            turn = Turn(index=len(self.turns), action=action.to_dict(), source=source, prompts=self.prompts,
                        prompts_grid=_grid_prompts(self.prompts, self.height, self.width), mask=self.mask,
                        score=next((t.score for t in reversed(self.turns) if t.action["name"] not in VOLUME_ENTRIES),
                                   None), timings={},
                        logits=self._last_logits(),
                        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            self.turns.append(turn)
            self.status = "stopped"
            return turn
        if isinstance(action, AddBBox):
            g = action.bbox_2d
            box = (grid_to_pixel(g[0], self.width), grid_to_pixel(g[1], self.height),
                   grid_to_pixel(g[2], self.width), grid_to_pixel(g[3], self.height))
            return self._box(box, action.to_dict(), source)
        if isinstance(action, AddPoint):
            x, y = grid_to_pixel(action.point_2d[0], self.width), grid_to_pixel(action.point_2d[1], self.height)
            return self._click(x, y, action.positive, action.to_dict(), source)
        raise SessionError(f"unknown action {action!r}; use AddBBox, AddPoint or StopAction")

    def _box(self, box: tuple[float, float, float, float], action: dict, source: str) -> Turn:
        prompts = self.prompts
        prompts.box = tuple(float(v) for v in box)
        # A box re-reads the whole object from every prompt: it keeps the clicks but not the previous logits
        # (engines treat fed-back logits as a turn that refines around the newest click).
        return self._run(action, source, prompts, feed_logits=False)

    def _click(self, x: float, y: float, positive: bool, action: dict, source: str) -> Turn:
        prompts = self.prompts
        prompts.points.append((float(x), float(y)))
        prompts.labels.append(1 if positive else 0)
        return self._run(action, source, prompts, feed_logits=True)

    def _take_back(self, source: str) -> Turn:
        """UndoTurn: remove the agent's own last turn (kept in `reverted` for review), then stop. After a propagation
        or a slice edit (which the policy does not see) the turn is under them: the agent stops instead."""
        if self.turns and self.turns[-1].action["name"] in VOLUME_ENTRIES:
            return self.act(StopAction(), source=source)
        if not self.turns or self.turns[-1].source != "agent" or not self.turns[-1].produces_mask:
            raise SessionError("the agent can only take back its own last turn, and the last turn is not one")
        self.reverted.append(self.turns.pop().to_dict())
        return self.act(StopAction(), source=source)

    def add_box(self, x1: float, y1: float, x2: float, y2: float, source: str = "user") -> Turn:
        """Place or replace the box, in pixels (x = column, y = row)."""
        self._require_open()
        Prompts((x1, y1, x2, y2)).validate(self.height, self.width)  # before the grid: NaN or 1e308 has none
        action = {"name": "add_bbox", "arguments": {"bbox_2d": [pixel_to_grid(x1, self.width),
                  pixel_to_grid(y1, self.height), pixel_to_grid(x2, self.width), pixel_to_grid(y2, self.height)]},
                  "pixels": [float(x1), float(y1), float(x2), float(y2)]}
        return self._box((x1, y1, x2, y2), action, source)

    def add_click(self, x: float, y: float, positive: bool = True, source: str = "user") -> Turn:
        """Add a click in pixels (x = column, y = row)."""
        self._require_open()
        Prompts(None, [(x, y)], [1]).validate(self.height, self.width)
        action = {"name": "add_point", "arguments": {"point_2d": [pixel_to_grid(x, self.width),
                  pixel_to_grid(y, self.height)], "point_type": "positive" if positive else "negative"},
                  "pixels": [float(x), float(y)]}
        return self._click(x, y, positive, action, source)

    def add_mask(self, mask: np.ndarray, model: dict[str, Any], source: str = "agent") -> Turn:
        """A whole first mask made outside the engine (a specialist model's, issue #16) as one turn.

        model: what made it, kept as the action's arguments: {"model": name, "licence", "runner", "path", ...}
        (JSON values). The engine does not run: the turn's mask is `mask` itself (the trajectory's RLE replays it
        bit for bit), its prompt state is a box around it (as the agent's own re-box draws one) and its logits are
        the mask in the engine's frame, so the next click refines this mask instead of starting over."""
        self._require_open()
        mask = np.asarray(mask)
        if mask.shape != (self.height, self.width):
            raise SessionError(f"the mask is {mask.shape[::-1]} pixels but the image is {self.width}x{self.height}; "
                               "give the mask of this image (or slice)")
        mask = mask.astype(bool)
        if not mask.any():
            raise SessionError("the specialist's mask is empty on this image: there is nothing to refine from")
        if not isinstance(model.get("model"), str) or not model["model"]:
            raise SessionError("a specialist turn must name its model: give {'model': NAME, ...}")
        arguments = json.loads(json.dumps(model))  # a copy, and proof it is JSON
        return self._drawn_turn({"name": SPECIALIST, "arguments": arguments}, source, Prompts(mask_box(mask)), mask)

    def _drawn_turn(self, action: dict[str, Any], source: str, prompts: Prompts, mask: np.ndarray) -> Turn:
        """A turn whose mask was made outside the engine; its logits are the mask in the engine's frame."""
        turn = Turn(index=len(self.turns), action=action, source=source, prompts=prompts,
                    prompts_grid=_grid_prompts(prompts, self.height, self.width), mask=mask, score=None, timings={},
                    logits=mask_logits(mask), update=action["name"],
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.turns.append(turn)
        return turn

    def add_edit(self, mask: np.ndarray, tool: str, source: str = "user", box: bool = False) -> Turn:
        """A mask the person drew by hand (paint, erase, scissors in an editor) as one turn of the history.

        mask: (H, W) bool, the whole mask after the edit (may be empty: everything erased). The engine does not
        run; the box and clicks stay as they were, and the next click refines this mask (its logits are the mask
        in the engine's frame). Replay takes the mask from the trajectory's RLE, so it is bit-exact. Undo removes
        it as any turn. tool "existing": the mask a segment already held when the session began (a pre-label, an
        earlier session's); box: the prompt state becomes a box around the mask (as a first turn, so the agent, which
        refines from a box, can go on from it)."""
        self._require_open()
        mask = np.asarray(mask)
        if mask.shape != (self.height, self.width):
            raise SessionError(f"the edited mask is {mask.shape[::-1]} pixels but the image is "
                               f"{self.width}x{self.height}; give the mask of this slice")
        if tool not in HAND_TOOLS:
            raise SessionError(f"unknown hand tool {tool!r}; use one of {', '.join(HAND_TOOLS)}")
        mask = mask.astype(bool)
        prompts = self.prompts
        arguments: dict[str, Any] = {"tool": tool}
        if box and mask.any():
            prompts = Prompts(mask_box(mask))
            arguments["box"] = [float(v) for v in prompts.box]
        return self._drawn_turn({"name": HAND_EDIT, "arguments": arguments}, source, prompts, mask)

    def add_propagation(self, summary: dict[str, Any], source: str = "user") -> Turn:
        """The structure was propagated through the volume from this slice (or re-propagated from a corrected
        one): an entry of the timeline whose mask, prompts and logits are the slice's as they were. summary: what
        the propagation did (kind, axis, slices, ...: JSON). Allowed after a stop; Undo removes it as any turn."""
        return self._volume_entry(PROPAGATE, summary, source)

    def add_slice_edit(self, tool: str, slices: list[int], axis: str, source: str = "user") -> Turn:
        """The person drew on other slices of the volume (paint, erase, scissors) than this session's: an entry of
        the timeline (so Undo takes it back in order, and a re-propagation from that slice starts from it) whose
        mask, prompts and logits are this slice's as they were."""
        if tool not in HAND_TOOLS:
            raise SessionError(f"unknown hand tool {tool!r}; use one of {', '.join(HAND_TOOLS)}")
        return self._volume_entry(SLICE_EDIT, {"tool": tool, "axis": axis, "slices": [int(k) for k in slices]},
                                  source)

    def _volume_entry(self, name: str, arguments: dict[str, Any], source: str) -> Turn:
        """Append an entry about the volume. After a stop it goes under the stop, so a stopped session still ends
        with its stop (what Run, a click and Undo resume from)."""
        if self.status == "accepted":
            raise SessionError("the segment was accepted and is frozen; start a new session to change it")
        stop = self.turns.pop() if self.status == "stopped" and self.turns and \
            self.turns[-1].action["name"] == "stop_action" else None
        last = self.turns[-1] if self.turns else None
        prompts = self.prompts
        turn = Turn(index=len(self.turns), action={"name": name, "arguments": dict(arguments)}, source=source,
                    prompts=prompts, prompts_grid=_grid_prompts(prompts, self.height, self.width), mask=self.mask,
                    score=None, timings={}, logits=None if last is None else last.logits, update=name,
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.turns.append(turn)
        if stop is not None:
            stop.index = len(self.turns)
            self.turns.append(stop)
        return turn

    def remove_entry(self, entry: Turn) -> None:
        """Take a propagation or a slice edit off the timeline (Undo in the front ends); a stop after it stays.
        Nothing happens if it is not there; SessionError if it is not the last entry (past a stop)."""
        if self.status == "accepted":
            raise SessionError("the segment was accepted and is frozen; it cannot be undone here")
        i = next((i for i, t in enumerate(self.turns) if t is entry), None)
        if i is None:
            return
        if entry.action["name"] not in VOLUME_ENTRIES or \
                any(t.action["name"] != "stop_action" for t in self.turns[i + 1:]):
            raise SessionError("only the last propagation or slice edit can be taken off the timeline")
        del self.turns[i]
        for j, t in enumerate(self.turns[i:], start=i):
            t.index = j

    def set_prompts(self, prompts: Prompts, source: str = "user") -> Turn:
        """Re-run the engine from an edited prompt state (a moved or deleted click, a resized box).

        The previous logits are not fed back: they were made from the prompts being replaced.
        """
        self._require_open()
        prompts = prompts.copy()
        prompts.validate(self.height, self.width)
        if prompts.empty:
            raise SessionError("the edited prompt state is empty; keep a box or at least one click, or undo instead")
        return self._run({"name": "edit_prompts", "arguments": prompts.to_dict()}, source, prompts,
                         feed_logits=False)

    def undo(self) -> Turn | None:
        """Remove the last turn (mask, prompts and logits go back to the turn before). None if nothing to undo."""
        if self.status == "accepted":
            raise SessionError("the segment was accepted and is frozen; it cannot be undone here")
        if not self.turns:
            return None
        turn = self.turns.pop()
        if turn.action["name"] == "stop_action":
            self.status = "open"
        return turn

    reject = undo

    def accept(self) -> None:
        """Freeze the session: no further turns or undo."""
        if not self.turns:
            raise SessionError("nothing to accept yet: run at least one turn")
        self.status = "accepted"

    def stop(self) -> Turn:
        return self.act(StopAction(), source="user")

    def run(self, policy: Any, max_turns: int | None = None,
            on_turn: Callable[[Turn], None] | None = None) -> list[Turn]:
        """Let `policy.next_action(observation)` act until it stops or `max_turns` mask-producing turns are done.

        The policy sees only `observe()`. Its `last_decision` (observation.Decision), when it sets one, is kept in
        the turn's action as "reason" and "confidence"; the policy's own time as timings["policy_s"].
        """
        limit = self.max_turns if max_turns is None else max_turns
        done: list[Turn] = []
        while self.status == "open":
            if self.mask_turns >= limit:
                done.append(self.act(StopAction(), source="agent"))
                break
            turn = self.agent_turn(policy)
            done.append(turn)
            if on_turn is not None:
                on_turn(turn)
        return done

    def agent_turn(self, policy: Any) -> Turn:
        """Ask the policy for one action on `observe()` and apply it; records its reason and time."""
        self._require_open()
        if hasattr(policy, "last_decision"):
            policy.last_decision = None  # a decision is this turn's or none: never an older turn's reason
        t0 = time.perf_counter()
        action = policy.next_action(self.observe())
        policy_s = time.perf_counter() - t0
        turn = self.act(action, source="agent")
        decision = getattr(policy, "last_decision", None)
        if decision is not None:
            turn.action = {**turn.action, "reason": decision.reason}
            if decision.confidence is not None:
                turn.action["confidence"] = round(float(decision.confidence), 4)
        turn.timings["policy_s"] = policy_s
        return turn

    # -- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRAJECTORY_FORMAT, "target": self.target, "engine": getattr(self.engine, "name", "?"),
            "encoder": getattr(self.engine, "encoder_path", "torch"),
            "image": {"shape": list(self.image.shape), "sha1": image_digest(self.image)},
            "grid": "pixel = grid * (size - 1) / 999, x = column, y = row",
            "max_turns": self.max_turns, "status": self.status, "metadata": self.metadata,
            "timings": {"encode_s": round(self.encode_s, 6)},
            "turns": [t.to_dict() for t in self.turns], "reverted": self.reverted,
        }

    def save(self, path: str | Path) -> Path:
        from .fileio import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))  # never a half-written trajectory


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


class _EngineView:
    """The engine as a policy sees it: features and candidates of the session's own image, nothing else (the
    engine itself is held by the closures, not by an attribute a policy could reach)."""

    __slots__ = ("name", "embedding", "candidates")


def _engine_view(engine: Engine, image: np.ndarray) -> _EngineView:
    def embedding():
        """(1, C, h, w) image embedding tensor, or None if the engine exposes none."""
        if not hasattr(engine, "embedding_state"):
            return None
        engine.set_image(image)  # cached: makes sure the engine holds this session's image
        return engine.embedding_state()[0]

    def candidates(prompts: Prompts):
        """((K, H, W) bool, (K,) float) alternative masks for `prompts`, or None if the engine has none."""
        if not hasattr(engine, "candidates"):
            return None
        engine.set_image(image)
        return engine.candidates(prompts)

    view = _EngineView()
    view.name, view.embedding, view.candidates = getattr(engine, "name", "engine"), embedding, candidates
    return view


def load_trajectory(path: str | Path) -> dict[str, Any]:
    """Read and check a trajectory JSON (JSON only: nothing in it is executed); raises ValueError naming the
    problem. A trajectory that loads has what replay needs: known actions, masks of the image's size."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"trajectory file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; give the trajectory.json inside it") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (binary content); give a trajectory.json") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); is it a trajectory.json?") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a trajectory; give a trajectory.json") from None
    check_trajectory(data, str(path))
    return data


def trajectory_sessions(path: str | Path) -> list[dict[str, Any]]:
    """The session trajectories in a file: the one of a library trajectory, or each run's of a trajectory saved from
    Slicer or the browser; each checked as `load_trajectory` does. ValueError naming the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return [load_trajectory(path)]  # says what is wrong with the file
    if not isinstance(data, dict) or data.get("format") != SCENE_TRAJECTORY_FORMAT:
        check_trajectory(data, str(path))
        return [data]
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "session" in r for r in runs):
        raise ValueError(f"{path} is a scene trajectory without its sessions; re-save it from Slicer or the browser")
    for i, run in enumerate(runs):
        check_trajectory(run["session"], f"{path} (run {i + 1})")
    return [run["session"] for run in runs]


def check_trajectory(data: Any, source: str = "the trajectory") -> None:
    """ValueError, one line, if `data` is not a trajectory replay can use."""
    import jsonschema

    if not isinstance(data, dict) or data.get("format") != TRAJECTORY_FORMAT:
        raise ValueError(f"{source} is not a MedAgentSeg trajectory (format {TRAJECTORY_FORMAT!r} expected)")
    missing = [k for k in TRAJECTORY_SCHEMA["required"] if k not in data]
    if missing:
        raise ValueError(f"{source} is an incomplete trajectory (missing {', '.join(missing)}); re-save it from a "
                         "session")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(TRAJECTORY_SCHEMA).iter_errors(data))
    if err is not None:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"{source} is not a valid trajectory: field '{where}': {err.message[:160]}; re-save it "
                         "from a session")
    shape = data["image"]["shape"][:2]
    for i, turn in enumerate(data["turns"]):
        try:
            size, _ = rle.check(turn["mask_rle"])
        except ValueError as exc:
            raise ValueError(f"{source}: turn {i}: {exc}") from None
        if list(size) != shape:
            raise ValueError(f"{source}: turn {i}'s mask is {list(size)} but the image is {shape}: corrupt trajectory")


def replay(trajectory: dict[str, Any] | str | Path, engine: Engine, image: np.ndarray,
           check: bool = True) -> Session:
    """Re-run a saved trajectory on `image` with `engine`; returns the new session.

    check: raise ValueError if the image differs from the recorded one or a replayed mask differs from
    the recorded mask (bit-exact comparison).
    """
    if isinstance(trajectory, dict):
        check_trajectory(trajectory)
        data = trajectory
    else:
        data = load_trajectory(trajectory)
    if check and image_digest(as_rgb_uint8(image)) != data["image"]["sha1"]:  # before the engine encodes it
        raise ValueError("the image differs from the one the trajectory was recorded on; replay needs the same pixels")
    session = Session(engine, image, data["target"], max_turns=data.get("max_turns", 5),
                      metadata=data.get("metadata"))
    for i, rec in enumerate(data["turns"]):
        act, src = rec["action"], rec.get("source", "agent")
        name = act["name"]
        if name == "edit_prompts":
            turn = session.set_prompts(Prompts.from_dict(act["arguments"]), source=src)
        elif name == SPECIALIST:  # no model runs: the recorded mask is the turn (its logits follow from it)
            turn = session.add_mask(rle.decode(rec["mask_rle"]), act["arguments"], source=src)
        elif name == HAND_EDIT:  # the person's drawing: the recorded mask is the turn
            turn = session.add_edit(rle.decode(rec["mask_rle"]), act["arguments"]["tool"], source=src,
                                    box="box" in act["arguments"])
        elif name in VOLUME_ENTRIES:  # about the volume, not here: replayed as recorded (its slice unchanged)
            turn = session._volume_entry(name, act.get("arguments") or {}, src)
        elif name == "add_bbox" and "pixels" in act:
            turn = session.add_box(*act["pixels"], source=src)
        elif name == "add_point" and "pixels" in act:
            x, y = act["pixels"]
            turn = session.add_click(x, y, act["arguments"]["point_type"] == "positive", source=src)
        else:
            turn = session.act(action_from_dict(act), source=src)
        if check and not np.array_equal(turn.mask, rle.decode(rec["mask_rle"])):
            raise ValueError(f"replayed turn {i} gives a different mask than recorded "
                             f"(engine {session.engine.name} vs recorded {data.get('engine')})")
    session.reverted = list(data.get("reverted", []))
    if data.get("status") == "accepted":
        session.accept()
    return session
