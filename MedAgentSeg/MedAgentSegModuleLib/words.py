"""The names of controls that the shared logic's messages point a person to, per front end.

The logic serves Slicer and the browser page; a message that says "correct it with the Segment Editor" is right in
Slicer and wrong in the page, which has its own Paint / Erase / Scissors buttons. Each front end hands the logic its
`Words`; the logic never spells a control's name itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Words", "SLICER", "WEB"]


@dataclass(frozen=True)
class Words:
    names_nodes: bool  # the person sees MRML node names (Slicer's Data module); the page shows none
    edit_by_hand: str  # how to correct a slice by hand
    place_box: str  # where the box tool is when the views are not armed
    unlock_segment: str  # how to clear an accepted segment's lock
    details: str  # where a traceback is shown
    install: str  # how to install missing packages
    open_volume: str  # how to load a volume
    repropagate: str  # how to propagate again from a corrected slice


SLICER = Words(
    names_nodes=True,
    edit_by_hand="the Segment Editor",
    place_box="Markups toolbar > ROI",
    unlock_segment="set its status to 'In progress' in the Segmentations module",
    details="the Python console",
    install="the 'Install dependencies' button",
    open_volume="File > Add Data or Sample Data",
    repropagate='typing "re-propagate" in the chat with that slice in the Red view',
)

WEB = Words(
    names_nodes=False,
    edit_by_hand="Paint, Erase or Scissors",
    place_box="the Box button",
    unlock_segment="start a new request with another segment name",
    details="the server's console",
    install="pip install 'medagentseg[engine]' on the server",
    open_volume="Load sample, Open or Upload",
    repropagate='typing "re-propagate" in the chat with that slice in the axial view',
)
