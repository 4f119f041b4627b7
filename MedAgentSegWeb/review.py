"""Step-through review of a session's turns in the slice views, plain MRML (no trame).

trame-slicer has no Sequences module UI, so the app's turn slider calls `show_turn`: it selects the turn in the
session's trajectory browser (MedAgentSegModuleLib.mrml_writer.TrajectoryRecorder), shows that turn's mask and
prompts (the browser's proxy nodes, drawn like the live segment) and hides the live segmentation and prompts, which
never change while reviewing. `show_turn(run, None)` goes back to the live scene.
"""

from __future__ import annotations

from typing import Any

__all__ = ["show_turn", "reviewed_turn"]

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


def _proxies(run: Any) -> dict[str, Any]:
    browser = run.recorder.browser
    return {key: browser.GetProxyNode(seq) for key, seq in run.recorder.sequences.items()}


def show_turn(run: Any, number: int | None, sequences_logic: Any) -> int | None:
    """Show turn `number` (1-based) of `run`, or the live scene for None or the latest turn. Returns the turn shown
    from the trajectory (None: live)."""
    count = run.recorder.count
    review = number is not None and 1 <= int(number) < count
    if count:
        run.recorder.browser.SetSelectedItemNumber(int(number) - 1 if review else count - 1)
        sequences_logic.UpdateProxyNodesFromSequences(run.recorder.browser)
    for key, proxy in _proxies(run).items():
        if proxy is None:
            continue
        if review and key == "mask":
            _like_live(proxy, run.segmentation_node)
        _set_visible(proxy, review)
    _set_visible(run.segmentation_node, not review)
    for node in run.prompts.nodes:
        _set_visible(node, not review)
    run.segmentation_node.SetAttribute(_ATTRIBUTE, str(int(number)) if review else "")
    return int(number) if review else None


def _like_live(proxy: Any, live: Any) -> None:
    """Draw the reviewed mask as the live segment is drawn (fill and outline), not as the outline the module uses."""
    shown, source = _display(proxy), _display(live)
    if shown is None or source is None:
        return
    shown.SetOpacity2DFill(source.GetOpacity2DFill())
    shown.SetOpacity2DOutline(source.GetOpacity2DOutline())
    shown.SetVisibility2DFill(True)
    shown.SetVisibility2DOutline(True)


def reviewed_turn(run: Any) -> int | None:
    """The turn `show_turn` shows for `run` (None: the live scene)."""
    value = run.segmentation_node.GetAttribute(_ATTRIBUTE) if run is not None else None
    return int(value) if value else None
