"""Step-through review of a session's turns in the slice views, plain MRML (no trame).

trame-slicer has no Sequences module UI, so the app's turn slider calls `show_turn`: it selects the turn in the
session's trajectory browser (MedAgentSegModuleLib.mrml_writer.TrajectoryRecorder), shows that turn's mask and
prompts (the browser's proxy nodes, drawn like the live segment) and hides the live segmentation and prompts, which
never change while reviewing. `show_turn(run, None)` goes back to the live scene. `show_item` does the same for any
recorder, e.g. the pre-label's turns of a case in the review queue.
"""

from __future__ import annotations

from typing import Any

__all__ = ["show_turn", "show_item", "reviewed_turn"]

_ATTRIBUTE = "MedAgentSeg.ReviewedTurn"


def _display(node: Any) -> Any:
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node.GetDisplayNode()


def _set_visible(node: Any, visible: bool) -> None:
    if node is not None and node.GetScene() is not None:
        display = _display(node)
        if display is not None:
            display.SetVisibility(bool(visible))


def show_turn(run: Any, number: int | None, sequences_logic: Any) -> int | None:
    """Show turn `number` (1-based) of `run`, or the live scene for None or the latest turn. Returns the turn shown
    from the trajectory (None: live)."""
    shown = show_item(run.recorder, number, sequences_logic, run.segmentation_node, run.prompts.nodes)
    run.segmentation_node.SetAttribute(_ATTRIBUTE, str(shown) if shown is not None else "")
    return shown


def show_item(recorder: Any, number: int | None, sequences_logic: Any, live: Any, live_prompts: Any = ()
              ) -> int | None:
    """Show item `number` (1-based) of a TrajectoryRecorder over the `live` segmentation, which is hidden meanwhile
    (with `live_prompts`); None or the last item: the live scene. Returns the item shown (None: live)."""
    count = recorder.count
    review = number is not None and 1 <= int(number) < count
    if count:
        recorder.browser.SetSelectedItemNumber(int(number) - 1 if review else count - 1)
        sequences_logic.UpdateProxyNodesFromSequences(recorder.browser)
    for key, seq in recorder.sequences.items():
        proxy = recorder.browser.GetProxyNode(seq)
        if proxy is None:
            continue
        if review and key == "mask":
            _like_live(proxy, live)
        _set_visible(proxy, review)
    _set_visible(live, not review)
    for node in live_prompts:
        _set_visible(node, not review)
    return int(number) if review else None


def _like_live(proxy: Any, live: Any) -> None:
    """Draw the reviewed mask as the live segment is drawn (fill and outline), not as the outline the module uses."""
    shown, source = _display(proxy), _display(live)
    if shown is None or source is None:
        return
    shown.SetOpacity2DFill(source.GetOpacity2DFill())
    shown.SetOpacity2DOutline(source.GetOpacity2DOutline())
    shown.SetVisibility2DFill(source.GetVisibility2DFill())  # the page's outline-only mode too
    shown.SetVisibility2DOutline(True)


def reviewed_turn(run: Any) -> int | None:
    """The turn `show_turn` shows for `run` (None: the live scene)."""
    value = run.segmentation_node.GetAttribute(_ATTRIBUTE) if run is not None else None
    return int(value) if value else None
